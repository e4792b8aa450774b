"""DeepSpeed ZeRO checkpoints (issue #19 item 1), against real DeepSpeed's own answers.

The fixtures (tests/fixtures/deepspeed/, scripts/fixtures/make_deepspeed.py) were written by
DeepSpeed 0.19.8 on CPU; their expected.pt holds what DeepSpeed's ``safe_get_full_optimizer_
state`` / ``safe_get_full_fp32_param`` (live engine) and ``get_fp32_state_dict_from_zero_
checkpoint`` (saved folder) returned. optstate reassembles the same float32 numbers from the
rank files, so everything is compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from optstate.io.deepspeed import read_deepspeed
from optstate.io.source import open_source

FIXTURES = Path(__file__).parent / "fixtures" / "deepspeed"
# ZeRO 1/2/3 runs (zero0_*: DeepSpeed without ZeRO, an ordinary checkpoint: tested apart)
CASES = sorted(p.name for p in FIXTURES.iterdir()
               if (p / "expected.pt").is_file() and not p.name.startswith("zero0_"))
TAG = "global_step3"


def _by_name(obj: dict) -> dict[str, int]:
    return {n: i for g in obj["optimizer"]["param_groups"]
            for i, n in zip(g["params"], g["param_names"], strict=True)}


def test_every_configuration_is_there():
    # zero{1,2,3} x {fp32,bf16,fp16} x ws{1,2} + groups2_frozen, odd; zero2_bf16_ws1_sched
    assert len(CASES) == 25


@pytest.mark.parametrize("case", CASES)
def test_reassembled_state_is_deepspeeds_bit_for_bit(case):
    folder = FIXTURES / case
    expected = torch.load(folder / "expected.pt", weights_only=True)
    meta = json.loads((folder / "expected.json").read_text())
    obj = read_deepspeed(folder / "checkpoint").obj
    state, index = obj["optimizer"]["state"], _by_name(obj)
    trainable = [n for n in meta["parameter_order"] if n not in (meta.get("frozen") or [])]
    # every trainable param, with its name and shape, and nothing else
    assert sorted(index) == sorted(trainable)
    assert sorted(obj["fp32_master_weights"]) == sorted(trainable)
    compared = 0
    for key, want in expected.items():
        entry, name = key.split("/", 1)
        if entry in ("exp_avg", "exp_avg_sq"):
            got = state[index[name]][entry]
        elif entry == "fp32" or name in obj["fp32_master_weights"]:  # zero_to_fp32 too
            got = obj["fp32_master_weights"][name]
        else:  # zero_to_fp32 of a frozen param (ZeRO 2/3): a model weight, not state
            assert name in (meta.get("frozen") or [])
            continue
        assert got.dtype == want.dtype == torch.float32, key
        assert tuple(got.shape) == tuple(meta["params"][name]["shape"]), key
        assert torch.equal(got, want), key
        compared += 1
    assert compared >= 3 * len(trainable)
    for i in index.values():  # step: one per param, as torch.optim keeps it
        assert list(state[i]) == ["step", "exp_avg", "exp_avg_sq"]
        assert state[i]["step"].item() == meta["optimizer_step_values"][0] == 3
    facts = obj["deepspeed"]
    assert facts["zero_stage"] == meta["zero_stage"]
    assert facts["world_size"] == meta["world_size"]
    assert facts["dtype"] == meta["dtype"]
    assert facts["loss_scale"] == meta["loss_scale"]
    assert facts["dynamic_loss_scale"] is (meta["dtype"] == "fp16")
    assert facts["skipped_steps"] == meta["skipped_steps"]
    assert facts["global_steps"] == meta["engine_global_steps"]
    assert facts["tag"] == meta["tag"] == TAG
    assert facts["frozen_params"] == (meta.get("frozen") or [])


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("groups2_frozen")])
def test_two_groups_keep_their_hyperparameters_and_members(case):
    """The HF Trainer's two groups; for ZeRO 1/2 the second group is where DeepSpeed's own
    safe_get_full_optimizer_state failed (the generator re-ran its lazy init to get the
    expected values): optstate reads the files, so it needs no such workaround."""
    meta = json.loads((FIXTURES / case / "expected.json").read_text())
    obj = read_deepspeed(FIXTURES / case / "checkpoint").obj
    groups = obj["optimizer"]["param_groups"]
    assert [g["param_names"] for g in groups] == [g["names"] for g in meta["param_groups"]]
    for got, want in zip(groups, meta["param_groups"], strict=True):
        assert (got["lr"], got["weight_decay"]) == (want["lr"], want["weight_decay"])
    expected = torch.load(FIXTURES / case / "expected.pt", weights_only=True)
    index = _by_name(obj)
    for name in meta["param_groups"][1]["names"]:
        for entry in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(obj["optimizer"]["state"][index[name]][entry],
                               expected[f"{entry}/{name}"])
    if meta["zero_stage"] < 3:
        assert meta["deepspeed_workaround"]  # the fixture did meet DeepSpeed's bug


def test_a_plain_torch_optimizer_loads_the_state():
    obj = read_deepspeed(FIXTURES / "zero2_fp32_ws2" / "checkpoint").obj
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10),
                                torch.nn.ReLU(), torch.nn.Linear(10, 3, bias=False))
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(obj["optimizer"])
    p = dict(model.named_parameters())["3.weight"]
    assert torch.equal(opt.state[p]["exp_avg"],
                       obj["optimizer"]["state"][_by_name(obj)["3.weight"]]["exp_avg"])
    assert opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("given", ["checkpoint", f"checkpoint/{TAG}",
                                   f"checkpoint/{TAG}/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                   f"checkpoint/{TAG}/zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_run_folder_tag_folder_or_one_rank_file(given):
    src = open_source(FIXTURES / "zero3_bf16_ws2" / given)
    assert src.format == "deepspeed"
    assert src.file == FIXTURES / "zero3_bf16_ws2" / "checkpoint" / TAG
    assert src.walk is not None and src.walk.tensors > 0
    whole = [n["code"] for n in src.notes] == ["deepspeed_whole_tag"]
    assert whole is given.endswith(".pt")
    assert src.summary == ("DeepSpeed ZeRO stage 3, world size 2, bf16 run (fp32 master weights "
                           "and optimizer state), loss scale 1 (static), global step 3, "
                           "tag global_step3, DeepSpeed 0.19.8")


# ------------------------------------------------------------------------------ CLI


def test_inspect_says_what_it_read(cli):
    r = cli("inspect", FIXTURES / "zero2_fp16_ws2" / "checkpoint")
    assert r.exit_code == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert "format DeepSpeed ZeRO checkpoint (all ranks' files, per param)" in flat
    assert ("DeepSpeed ZeRO stage 2, world size 2, fp16 run (fp32 master weights and optimizer "
            "state), loss scale 256 (dynamic), global step 3") in flat
    assert "names 9 of 9 from DeepSpeed's param_shapes (its model states file)" in flat
    assert "optimizer AdamW" in flat


def test_inspect_json_and_frozen_params_are_said(cli):
    r = cli("inspect", "--json", FIXTURES / "zero1_bf16_ws2_groups2_frozen" / "checkpoint")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["file"]["format"] == "deepspeed"
    details = report["file"]["details"]
    assert (details["zero_stage"], details["world_size"], details["dtype"]) == (1, 2, "bf16")
    assert details["frozen_params"] == ["0.weight", "0.bias"]
    assert [p["name"] for p in report["params"]] == ["3.weight", "5.weight", "7.weight",
                                                      "1.weight", "1.bias", "3.bias", "5.bias"]
    frozen = [n for n in report["notes"] if n["code"] == "deepspeed_frozen"]
    assert frozen and "0.weight, 0.bias" in frozen[0]["message"]
    assert report["warnings"] == []


def test_diff_folder_vs_folder(cli):
    # same seed, same data, fp32: ZeRO 1 and ZeRO 3 over two ranks end bit-identical
    same = cli("diff", FIXTURES / "zero1_fp32_ws2" / "checkpoint",
               FIXTURES / "zero3_fp32_ws2" / "checkpoint", "--json")
    assert same.exit_code == 0, same.stdout
    by_entry = json.loads(same.stdout)["by_entry"]
    assert {e["entry"]: (e["compared"], e["differ"]) for e in by_entry} == {
        "step": (9, 0), "exp_avg": (9, 0), "exp_avg_sq": (9, 0)}
    # world size 2 sees rank 1's batch too: every moment differs, step does not
    other = cli("diff", FIXTURES / "zero2_bf16_ws1" / "checkpoint",
                FIXTURES / "zero2_bf16_ws2" / "checkpoint", "--json")
    assert other.exit_code == 1
    report = json.loads(other.stdout)
    assert report["counts"]["numeric"] == 18 and report["counts"]["structural"] == 0
    assert {c["path"].rsplit(".", 1)[1] for c in report["changes"]} == {"exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("case", ["zero3_bf16_ws2_groups2_frozen", "zero1_fp16_ws1"])
def test_convert_to_file_and_dcp_and_back(cli, tmp_path, case):
    src = FIXTURES / case / "checkpoint"
    r = cli("convert", src, tmp_path / "opt.pt", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["source_format"], out["destination_format"]) == ("deepspeed", "zip")
    n = out["tensors_verified"]
    written = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert set(written) == {"optimizer", "fp32_master_weights", "deepspeed"}
    r = cli("convert", src, tmp_path / "opt_dcp", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["destination_format"] == "dcp"
    assert (tmp_path / "opt_dcp" / ".metadata").is_file()
    r = cli("convert", tmp_path / "opt_dcp", tmp_path / "back.pt", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tensors_verified"] == n
    for other in ("opt.pt", "opt_dcp", "back.pt"):  # vs a torch.save of the same state
        d = cli("diff", src, tmp_path / other)
        assert d.exit_code == 0, (other, d.stdout)
    rerun = cli("convert", src, tmp_path / "opt.pt")
    assert rerun.exit_code == 2 and "already exists" in rerun.stderr


# --------------------------------------------------------------------------- errors


def _copy(tmp_path: Path, case: str = "zero2_bf16_ws2") -> Path:
    dst = tmp_path / case
    shutil.copytree(FIXTURES / case / "checkpoint", dst)
    return dst


def _one_error(cli, path: Path) -> str:
    r = cli("inspect", path)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Error: ") and len([ln for ln in lines if ln]) <= 2, lines
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_rank_file(cli, tmp_path):
    run = _copy(tmp_path)
    (run / TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    assert _one_error(cli, run) == (
        f"Error: {run / TAG} is missing the optimizer file of rank 1 "
        "(bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt): the checkpoint was written by 2 "
        "ranks and every rank's file is needed")


def test_missing_rank_zero_is_named_too(cli, tmp_path):
    run = _copy(tmp_path, "zero3_fp32_ws2")
    (run / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert "missing the optimizer file of rank 0 (zero_pp_rank_0_mp_rank_00_optim_states.pt)" \
        in _one_error(cli, run)


def test_latest_names_a_missing_tag(cli, tmp_path):
    run = _copy(tmp_path)
    (run / "latest").write_text("global_step9")
    assert _one_error(cli, run) == (f"Error: {run / 'latest'} names the tag 'global_step9', "
                                    f"but {run / 'global_step9'} does not exist")


def test_latest_naming_a_path_is_refused(cli, tmp_path):
    run = _copy(tmp_path)
    (run / "latest").write_text("../../etc")
    assert "does not hold a tag folder's name" in _one_error(cli, run)


def test_truncated_rank_file(cli, tmp_path):
    run = _copy(tmp_path)
    f = run / TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    f.write_bytes(f.read_bytes()[:5000])
    assert "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" in _one_error(cli, run)


def test_missing_model_states(cli, tmp_path):
    run = _copy(tmp_path)
    (run / TAG / "mp_rank_00_model_states.pt").unlink()
    assert "has no mp_rank_00_model_states.pt: the parameter names and shapes" in \
        _one_error(cli, run)


def test_rank_files_of_another_world_size(cli, tmp_path):
    run = _copy(tmp_path, "zero2_bf16_ws1")
    shutil.copy(FIXTURES / "zero2_bf16_ws2" / "checkpoint" / TAG /
                "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", run / TAG)
    assert "holds 2 optimizer files but its partition_count says 1 ranks" in _one_error(cli, run)


def test_rank_file_from_another_run_does_not_add_up(tmp_path):
    """Rank 1 of the two-group run beside rank 0 of the one-group run: refused, not mixed."""
    from optstate.base.errors import CheckpointError

    run = _copy(tmp_path, "zero2_bf16_ws2")
    shutil.copy(FIXTURES / "zero2_bf16_ws2_groups2_frozen" / "checkpoint" / TAG /
                "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", run / TAG)
    with pytest.raises(CheckpointError):
        read_deepspeed(run)


def test_a_huge_latest_file_is_not_read_whole(cli, tmp_path):
    run = _copy(tmp_path)
    (run / "latest").write_bytes(b"global_step3" + b" " * 10_000)
    assert "does not hold a tag folder's name" in _one_error(cli, run)


def test_param_shapes_claiming_more_than_the_files_hold(tmp_path):
    """A model states file whose param_shapes ask for more elements than the rank files
    hold (hostile, or another run's): refused before any tensor is built."""
    from optstate.base.errors import CheckpointError

    run = _copy(tmp_path, "zero3_fp32_ws2")
    f = run / TAG / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    model = torch.load(f, weights_only=True)
    model["param_shapes"][0]["0.weight"] = torch.Size([2**40, 2**20])
    torch.save(model, f)
    with pytest.raises(CheckpointError, match="needs more elements than each rank file holds"):
        read_deepspeed(run)


def test_no_stats_reads_no_tensor_data(monkeypatch):
    """The per-param tensors are lazy: inspect without statistics joins no pieces."""
    from optstate.analysis.inspect import inspect_source
    from optstate.io import lazy

    loads = []
    real = lazy.LazyTensor.load
    monkeypatch.setattr(lazy.LazyTensor, "load", lambda self: loads.append(1) or real(self))
    src = open_source(FIXTURES / "zero2_bf16_ws2" / "checkpoint")
    report = inspect_source(src, stats=False)
    assert [p["name"] for p in report["params"]][:2] == ["0.weight", "0.bias"]
    assert loads == []
    inspect_source(src)
    assert len(loads) > 0


def test_set_refuses_a_deepspeed_checkpoint_and_says_what_to_do(cli, tmp_path):
    src = FIXTURES / "zero1_fp32_ws1" / "checkpoint"
    r = cli("set", src, "-o", tmp_path / "out.pt", "--lr", "0.001")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {src} is a DeepSpeed ZeRO checkpoint, which set does not rewrite",
        f"Hint: convert it to one file and set that: optstate convert {src} one.pt"]
    assert not (tmp_path / "out.pt").exists()


def test_rank_files_of_different_steps_are_not_mixed():
    from optstate.base.errors import CheckpointError
    from optstate.io.deepspeed_zero import reassemble
    from optstate.io.torch_file import load_torch_file

    tag = FIXTURES / "zero3_fp32_ws2" / "checkpoint" / TAG
    names = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    states = [load_torch_file(tag / n).obj["optimizer_state_dict"] for n in names]
    shapes = load_torch_file(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").obj
    reassemble(3, 2, states, shapes["param_shapes"], names)  # as saved: fine
    states[1]["optimizer_state_dict"]["state"][0]["step"] += 1  # rank 1 one step later
    with pytest.raises(CheckpointError, match="step of sub-group 0 is 4.0, rank 0's 3.0: rank "
                       "files of different steps mixed"):
        reassemble(3, 2, states, shapes["param_shapes"], names)


def test_trainer_scheduler_beside_latest_is_read(cli, tmp_path):
    """The Hugging Face Trainer with DeepSpeed writes scheduler.pt beside 'latest'."""
    run = _copy(tmp_path)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), run / "scheduler.pt")
    r = cli("inspect", "--json", "--no-stats", run)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["file"]["siblings"] == {"scheduler": str(run / "scheduler.pt")}
    assert (report["scheduler"]["kind"], report["scheduler"]["last_epoch"]) == ("StepLR", 3)


def test_a_huge_partition_count_is_counted_not_listed(tmp_path):
    """partition_count comes from the file: 10**12 ranks is one Error, found at once."""
    from optstate.base.errors import CheckpointError
    from optstate.io.deepspeed import _check_ranks

    ranks = {0: tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    with pytest.raises(CheckpointError, match=r"missing the optimizer file of rank 1 "
                       r"\(zero_pp_rank_1_mp_rank_00_optim_states.pt\) and "
                       r"999,999,999,998 more: the checkpoint was written by "
                       r"1,000,000,000,000 ranks"):
        _check_ranks(tmp_path, ranks, 10**12, ranks[0].name)


def test_convert_says_what_reading_said(cli, tmp_path):
    tag = FIXTURES / "zero2_bf16_ws2_groups2_frozen" / "checkpoint" / TAG
    r = cli("convert", tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            tmp_path / "o.pt", "--json")
    assert r.exit_code == 0, r.stderr
    said = json.loads(r.stdout)["warnings"]
    assert said == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt is one file of a DeepSpeed checkpoint; "
        f"the whole tag folder {tag} was read (one rank's file is not the whole state)",
        "2 frozen param(s) have no optimizer state (DeepSpeed keeps them apart): 0.weight, "
        "0.bias"]


@pytest.mark.parametrize("which", ["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                   "mp_rank_00_model_states.pt"])
def test_a_payload_in_a_rank_file_never_runs(cli, tmp_path, which):
    """A DeepSpeed folder is read file by file with the same safe loader: a rank file (or
    the model states) that is a torch.save with code in its pickle is refused, by name."""
    from tests import hostile_corpus as hc

    run = _copy(tmp_path)
    sd = hc.adamw_state()
    sd["state"][0]["hook"] = hc._Reduce(os.system, hc._touch_cmd(run / TAG))
    torch.save(sd, run / TAG / which)
    line = _one_error(cli, run)
    assert which in line
    assert not (run / TAG / hc.MARKER).exists()


@pytest.mark.parametrize("given", ["checkpoint", f"checkpoint/{TAG}",
                                   f"checkpoint/{TAG}/mp_rank_00_model_states.pt"])
def test_without_zero_the_model_states_file_is_an_ordinary_checkpoint(given):
    """Stage 0 writes no rank files: the client optimizer's state_dict is in the model
    states file ('optimizer'), its module beside it names the params."""
    from optstate.analysis.inspect import inspect_source

    case = FIXTURES / "zero0_fp32_ws1"
    src = open_source(case / given)
    assert src.format == "zip" and src.file.name == "mp_rank_00_model_states.pt"
    assert src.summary.startswith("DeepSpeed without ZeRO")
    report = inspect_source(src, stats=False)
    assert report["location"] == "optimizer"
    names = [p["name"] for p in report["params"]]
    meta = json.loads((case / "expected.json").read_text())
    assert names == meta["parameter_order"]
    expected = torch.load(case / "expected.pt", weights_only=True)
    state = src.obj["optimizer"]["state"]
    for i, name in enumerate(names):
        for entry in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[i][entry], expected[f"{entry}/{name}"])
        assert torch.equal(src.obj["module"][name], expected[f"fp32/{name}"])


def _zero12_inputs(case: str):
    from optstate.io.torch_file import load_torch_file

    tag = FIXTURES / case / "checkpoint" / TAG
    names = sorted(f.name for f in tag.glob("*_optim_states.pt"))
    states = [load_torch_file(tag / n).obj["optimizer_state_dict"] for n in names]
    shapes = load_torch_file(tag / "mp_rank_00_model_states.pt").obj["param_shapes"]
    return states, shapes, names


def test_older_files_without_param_alignment_paddings():
    """DeepSpeed's files before param_alignment_paddings existed: read as zero_to_fp32
    reads them (the group's end may hold alignment padding), same numbers."""
    from optstate.io.deepspeed_zero import reassemble

    states, shapes, names = _zero12_inputs("zero2_fp32_ws2_odd")
    for st in states:
        del st["param_alignment_paddings"]
    params, _ = reassemble(2, 2, states, shapes, names)
    expected = torch.load(FIXTURES / "zero2_fp32_ws2_odd" / "expected.pt", weights_only=True)
    for p in params:
        assert torch.equal(p["state"]["exp_avg"], expected[f"exp_avg/{p['name']}"])
        assert torch.equal(p["fp32"], expected[f"fp32/{p['name']}"])


@pytest.mark.parametrize("pads", [[0, 0, "x", 0, 0, 0, 0, 0], [0, 0, -4, 0, 0, 0, 0, 0], [0]])
def test_hostile_param_alignment_paddings(pads):
    from optstate.base.errors import CheckpointError
    from optstate.io.deepspeed_zero import reassemble

    states, shapes, names = _zero12_inputs("zero1_fp32_ws2_odd")
    states[0]["param_alignment_paddings"] = [pads]
    with pytest.raises(CheckpointError, match=r"param_alignment_paddings\[0\] does not list"):
        reassemble(1, 2, states, shapes, names)


def test_zero3_params_that_are_not_the_sub_groups():
    from optstate.base.errors import CheckpointError
    from optstate.io.deepspeed_zero import reassemble
    from optstate.io.torch_file import load_torch_file

    tag = FIXTURES / "zero3_fp32_ws2_odd" / "checkpoint" / TAG
    names = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    states = [load_torch_file(tag / n).obj["optimizer_state_dict"] for n in names]
    shapes = load_torch_file(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").obj
    states[0]["optimizer_state_dict"]["param_groups"][0]["params"] = ["a", 1]
    with pytest.raises(CheckpointError, match="are not the 2 sub-groups param_shapes lists"):
        reassemble(3, 2, states, shapes["param_shapes"], names)


# ------------------------------------------------------- a rank file that is another rank's


@pytest.mark.parametrize("case", ["zero1_fp32_ws2", "zero2_bf16_ws2", "zero3_fp32_ws2"])
def test_a_rank_file_copied_over_another_is_refused(cli, tmp_path, case):
    """Rank 0's optimizer file copied over rank 1's: not two ranks; refused, both named."""
    run = _copy(tmp_path, case)
    files = sorted((run / TAG).glob("*_optim_states.pt"))
    shutil.copy(files[0], files[1])
    err = _one_error(cli, run)
    assert files[0].name in err and files[1].name in err and "identical" in err


def test_a_rank_file_holding_another_ranks_partition_is_refused():
    """ZeRO 1/2: each rank file's param_slice_mappings name what its partition holds; a
    file whose mappings are another rank's (not byte-identical) is refused, named."""
    from optstate.base.errors import CheckpointError
    from optstate.io.deepspeed_zero import reassemble

    states, shapes, names = _zero12_inputs("zero2_fp32_ws2")
    states[1]["param_slice_mappings"] = states[0]["param_slice_mappings"]
    with pytest.raises(CheckpointError, match=f"{names[1]} does not hold rank 1's partition"):
        reassemble(2, 2, states, shapes, names)


@pytest.mark.parametrize("case", CASES)
def test_every_fixture_rank_holds_its_own_partition(case):
    """The check above passes on every real run (no false refusal)."""
    assert read_deepspeed(FIXTURES / case / "checkpoint").obj["fp32_master_weights"]


def test_missing_model_states_lists_what_is_there(cli, tmp_path):
    run = _copy(tmp_path, "zero2_fp32_ws2")
    (run / TAG / "mp_rank_00_model_states.pt").unlink()
    r = cli("inspect", run)
    assert r.exit_code == 2
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in r.stderr
    assert "none" not in r.stderr.split("Hint")[-1]


def test_latest_given_itself_points_to_the_folder(cli):
    r = cli("inspect", FIXTURES / "zero2_fp32_ws2" / "checkpoint" / "latest")
    assert r.exit_code == 2
    flat = " ".join(r.stderr.split())
    assert "DeepSpeed's 'latest' file" in flat
    assert str(FIXTURES / "zero2_fp32_ws2" / "checkpoint") in flat


def test_every_file_read_is_listed():
    facts = read_deepspeed(FIXTURES / "zero3_fp32_ws2" / "checkpoint").obj["deepspeed"]
    assert facts["files"] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                              "zero_pp_rank_1_mp_rank_00_optim_states.pt",
                              "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    # rank 1's model states (its pieces of the 16-bit model) are not needed: said, not hidden
    assert facts["files_not_read"] == ["zero_pp_rank_1_mp_rank_00_model_states.pt"]


def test_nan_in_the_fp32_master_weights_is_a_warning():
    """DeepSpeed's master weights are what the run resumes from: a NaN or Inf there is
    warned about, naming the param (ZeRO 3 fixture, its numbers changed in memory)."""
    from optstate.analysis.inspect import inspect_source

    src = open_source(FIXTURES / "zero3_fp32_ws2" / "checkpoint")
    weights = src.obj["fp32_master_weights"]
    bad = weights["0.weight"].clone()
    bad.view(-1)[7] = float("nan")
    bad.view(-1)[8] = float("inf")
    weights["0.weight"] = bad
    report = inspect_source(src)
    found = {w["code"]: w for w in report["warnings"]}
    assert found["master_weight_nan"]["where"] == ['fp32_master_weights["0.weight"]']
    assert "0.weight (1 NaN)" in found["master_weight_nan"]["message"]
    assert "0.weight (1 Inf)" in found["master_weight_inf"]["message"]
    assert found["master_weight_nan"]["names"] == ["0.weight"]
    # without statistics no tensor is read, and nothing is claimed
    quiet = inspect_source(src, stats=False)
    assert not [w for w in quiet["warnings"] if w["code"].startswith("master_weight")]


# ------------------------------------------- DeepSpeed's own scheduler and client_state

SCHED = FIXTURES / "zero2_bf16_ws1_sched"


def test_deepspeeds_scheduler_and_client_state_are_shown(cli):
    """WarmupLR from the ds_config: inspect names it with its settings and its state
    (last_batch_iteration, as DeepSpeed saved it); the client_state keys are listed."""
    meta = json.loads((SCHED / "expected.json").read_text())
    r = cli("inspect", "--json", SCHED / "checkpoint")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    sched = report["scheduler"]
    assert sched["kind"] == "DeepSpeed WarmupLR"
    assert sched["location"] == "lr_scheduler"
    assert sched["settings"] == {"last_batch_iteration":
                                 meta["lr_scheduler_state"]["last_batch_iteration"],
                                 "warmup_min_lr": 0, "warmup_max_lr": 0.01,
                                 "warmup_num_steps": 10}
    details = report["file"]["details"]
    assert details["client_state_keys"] == sorted(meta["client_state"])
    notes = {n["code"]: n["message"] for n in report["notes"]}
    assert "best, my_epoch" in notes["deepspeed_client_state"]
    assert report["param_groups"][0]["hyperparams"]["lr"] == meta["lr_at_save"][0]


def _config_with_lr(cli, run: Path, tmp_path: Path, lr: float = 0.01) -> Path:
    """The checkpoint's own config (optstate config) with another lr, as a user edits it."""
    text = cli("config", run).stdout
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(f"lr = {lr}" if ln.startswith("lr = ") else ln
                             for ln in text.splitlines()) + "\n")
    assert f"lr = {lr}" in cfg.read_text()
    return cfg


def test_check_does_not_say_the_lr_replaces_the_configs(cli, tmp_path):
    """DeepSpeed's scheduler sets the lr at every step on resume: check does not claim
    the checkpoint's lr replaces the config's, and suggests no `optstate set` line (set
    does not write DeepSpeed checkpoints)."""
    cfg = _config_with_lr(cli, SCHED / "checkpoint", tmp_path)
    r = cli("check", SCHED / "checkpoint", "--config", cfg, "--json")
    report = json.loads(r.stdout)
    codes = {f["code"]: f for f in report["findings"]}
    assert "hyperparams-override" not in codes, codes
    assert codes["lr-scheduled"]["level"] == "info"
    assert "DeepSpeed" in codes["lr-scheduled"]["message"]
    assert report["fixes"] == []
    assert r.exit_code == 0, r.stdout


def test_no_set_line_is_suggested_for_a_deepspeed_checkpoint(cli, tmp_path):
    cfg = _config_with_lr(cli, FIXTURES / "zero2_bf16_ws1" / "checkpoint", tmp_path, 0.02)
    r = cli("check", FIXTURES / "zero2_bf16_ws1" / "checkpoint", "--config", cfg, "--json")
    report = json.loads(r.stdout)
    assert "hyperparams-override" in {f["code"] for f in report["findings"]}
    assert report["fixes"] == []
    assert "DeepSpeed" in report["no_fix_reason"]


def test_config_says_the_lr_is_the_schedulers(cli):
    r = cli("config", SCHED / "checkpoint")
    assert r.exit_code == 0, r.stderr
    comments = " ".join(ln.lstrip("# ") for ln in r.stdout.splitlines() if ln.startswith("#"))
    assert "current value of DeepSpeed's WarmupLR" in " ".join(comments.split())
    assert "[scheduler]" not in r.stdout.splitlines()  # no torch scheduler rebuilt


def test_diff_says_what_differs_beside_the_optimizer_state(cli):
    """fp16 vs fp32 runs: the run's facts (dtype, loss scale) and the fp32 master weights
    are said in notes (they are not optimizer state: not counted as changes)."""
    r = cli("diff", FIXTURES / "zero2_fp16_ws2" / "checkpoint",
            FIXTURES / "zero2_fp32_ws2" / "checkpoint", "--json")
    notes = " ".join(json.loads(r.stdout)["notes"])
    assert "DeepSpeed: dtype fp16 -> fp32, loss_scale 256 -> 1" in notes
    assert "fp32 master weights: 9 of 9 params differ" in notes
    same = cli("diff", FIXTURES / "zero1_fp32_ws2" / "checkpoint",
               FIXTURES / "zero3_fp32_ws2" / "checkpoint", "--json")
    notes = " ".join(json.loads(same.stdout)["notes"])
    assert "DeepSpeed: zero_stage 1 -> 3" in notes
    assert "fp32 master weights: all 9 params equal" in notes


def test_names_say_they_come_from_deepspeeds_param_shapes():
    """The names are DeepSpeed's own record (param_shapes), not an optimizer's
    param_names: the names line and name_source say so."""
    import optstate

    rep = optstate.inspect(FIXTURES / "zero3_bf16_ws2_groups2_frozen" / "checkpoint",
                           stats=False)
    assert rep["naming"]["source"] == "deepspeed"
    assert {p["name_source"] for p in rep["params"]} == {"deepspeed"}
