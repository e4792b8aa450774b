"""``optstate set``: hyperparameters changed in a copy of a checkpoint, nothing else.

Every checkpoint here comes from real torch.optim optimizers and schedulers stepped on
real gradients and written with torch.save; every proof re-reads the written file with
torch.load and compares it with the input, and loads the result into a fresh optimizer.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.base.errors import CheckpointError, ConfigError
from optstate.edit.hyperparameters import set_hyperparameters
from optstate.io.torch_file import detect_format
from optstate.numeric.leaves import same_tensor
from optstate.numeric.trees import compare_trees


def _trained(lr=0.1, steps=3, group_lrs=(None, 0.5)):
    """Adam over two groups (2x2 and 3) with a StepLR, stepped ``steps`` times."""
    torch.manual_seed(0)
    ps = [torch.randn(2, 2, requires_grad=True), torch.randn(3, requires_grad=True)]
    groups = [{"params": [p]} if glr is None else {"params": [p], "lr": glr}
              for p, glr in zip(ps, group_lrs, strict=True)]
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
    return ps, opt, sched


def _fresh():
    ps = [torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    opt = torch.optim.Adam([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.123)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    return ps, opt, sched


@pytest.fixture
def tutorial_ckpt(tmp_path):
    """The PyTorch tutorial's general checkpoint: model, optimizer, scheduler, epoch."""
    ps, opt, sched = _trained()
    path = tmp_path / "tut.pt"
    torch.save({"epoch": 3, "model_state_dict": {"w": ps[0].detach(), "b": ps[1].detach()},
                "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict(), "loss": 0.25}, path)
    return path


@pytest.fixture
def bare_ckpt(tmp_path):
    _, opt, _ = _trained()
    path = tmp_path / "bare.pt"
    torch.save(opt.state_dict(), path)
    return path


def _load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def _every_tensor(obj, path=""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _every_tensor(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _every_tensor(v, f"{path}/{i}")


def _count_leaves(obj):
    if isinstance(obj, dict):
        return sum(_count_leaves(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_leaves(v) for v in obj)
    return 1


# --------------------------------------------------------------------------- round trip


def test_lr_everywhere_round_trip(cli, tutorial_ckpt, tmp_path):
    out = tmp_path / "out.pt"
    r = cli("set", tutorial_ckpt, "-o", out, "--lr", "0.01")
    assert r.exit_code == 0, r.stderr
    before, after = _load(tutorial_ckpt), _load(out)
    compared = compare_trees(before, after)
    diffs, count = compared.paths, compared.leaves
    assert sorted(diffs) == sorted([
        "optimizer_state_dict.param_groups[0].lr",
        "optimizer_state_dict.param_groups[0].initial_lr",
        "optimizer_state_dict.param_groups[1].lr",
        "optimizer_state_dict.param_groups[1].initial_lr",
        "scheduler_state_dict.base_lrs[0]", "scheduler_state_dict.base_lrs[1]",
        "scheduler_state_dict._last_lr[0]", "scheduler_state_dict._last_lr[1]",
    ])
    assert count == _count_leaves(before) == 48
    # Independently of compare_trees: every tensor is the same tensor, bit for bit.
    tb, ta = dict(_every_tensor(before)), dict(_every_tensor(after))
    assert list(tb) == list(ta) and len(tb) == 8
    for k in tb:
        assert tb[k].dtype == ta[k].dtype and torch.equal(tb[k], ta[k]), k
    assert after["epoch"] == 3 and after["loss"] == 0.25
    for g in after["optimizer_state_dict"]["param_groups"]:
        assert g["lr"] == 0.01 and g["initial_lr"] == 0.01
    assert after["scheduler_state_dict"]["base_lrs"] == [0.01, 0.01]
    # What the user wanted: a fresh optimizer + scheduler resumed from it runs at 0.01.
    ps, opt, sched = _fresh()
    opt.load_state_dict(after["optimizer_state_dict"])
    sched.load_state_dict(after["scheduler_state_dict"])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert sched.get_last_lr() == [0.01, 0.01]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()  # epoch 4: StepLR(step_size=2) decays from the new lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001], rel=1e-12)
    assert "wrote " in r.stdout and "only the 8 changes above differ" in r.stdout


def test_inspect_shows_the_new_values(cli, tutorial_ckpt, tmp_path):
    out = tmp_path / "out.pt"
    assert cli("set", tutorial_ckpt, "-o", out, "--group", "1", "--lr", "0.03",
               "--set", "betas=0.8,0.9").exit_code == 0
    r = cli("inspect", out, "--json")
    assert r.exit_code == 0, r.stderr
    groups = json.loads(r.stdout)["param_groups"]
    assert [(g["hyperparams"]["lr"], g["hyperparams"]["betas"]) for g in groups] == [
        (_load(tutorial_ckpt)["optimizer_state_dict"]["param_groups"][0]["lr"], [0.9, 0.999]),
        (0.03, [0.8, 0.9]),
    ]


def test_without_set_the_old_lr_wins(tutorial_ckpt):
    """The problem `set` solves, shown with torch itself: the constructor's lr is lost."""
    obj = _load(tutorial_ckpt)
    _, opt, _ = _fresh()  # built with lr=0.123
    opt.load_state_dict(obj["optimizer_state_dict"])
    assert [g["lr"] for g in opt.param_groups] == [
        g["lr"] for g in obj["optimizer_state_dict"]["param_groups"]]
    assert 0.123 not in [g["lr"] for g in opt.param_groups]


def test_one_group_and_tuple_stays_tuple(cli, tutorial_ckpt, tmp_path):
    out = tmp_path / "out.pt"
    r = cli("set", tutorial_ckpt, "-o", out, "--group", "1", "--set", "betas=0.9,0.95",
            "--set", "eps=1e-6", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["schema"] == "optstate.set/1"
    assert [(c["path"], c["old"], c["new"]) for c in report["changes"]] == [
        ("optimizer_state_dict.param_groups[1].betas", [0.9, 0.999], [0.9, 0.95]),
        ("optimizer_state_dict.param_groups[1].eps", 1e-08, 1e-06),
    ]
    before, after = _load(tutorial_ckpt), _load(out)
    assert report["outputs"] == [str(out)]
    assert report["verified"] == {str(out): _count_leaves(before)}
    g0b, g0a = (x["optimizer_state_dict"]["param_groups"][0] for x in (before, after))
    assert g0a == g0b
    g1 = after["optimizer_state_dict"]["param_groups"][1]
    assert g1["betas"] == (0.9, 0.95) and type(g1["betas"]) is tuple and g1["eps"] == 1e-6
    assert after["scheduler_state_dict"] == before["scheduler_state_dict"]


def test_diff_shows_only_the_requested_paths(tutorial_ckpt, tmp_path):
    diff = pytest.importorskip("optstate.analysis.diff")
    out = tmp_path / "out.pt"
    set_hyperparameters(tutorial_ckpt, {"lr": 0.02, "weight_decay": 0.1}, output=out,
                        group=0)
    a, b = _load(tutorial_ckpt), _load(out)
    d = diff.diff_states(a["optimizer_state_dict"], b["optimizer_state_dict"],
                         scheduler_a=a["scheduler_state_dict"],
                         scheduler_b=b["scheduler_state_dict"])
    assert sorted(d.paths()) == sorted([
        "param_groups[0].lr", "param_groups[0].initial_lr", "param_groups[0].weight_decay",
        "scheduler.base_lrs", "scheduler._last_lr",
    ])


def test_int_weight_decay_accepts_a_float(bare_ckpt, tmp_path):
    """torch writes weight_decay=0 as an int; 1e-4 must still be accepted (as a float)."""
    out = tmp_path / "o.pt"
    res = set_hyperparameters(bare_ckpt, {"weight_decay": 1e-4}, output=out)
    assert [(c.old, c.new) for c in res.changes] == [(0, 1e-4), (0, 1e-4)]
    groups = _load(out)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4]


def test_tensor_lr_stays_a_tensor(tmp_path):
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01), foreach=False)
    p.grad = torch.ones(3)
    opt.step()
    src, out = tmp_path / "t.pt", tmp_path / "o.pt"
    torch.save(opt.state_dict(), src)
    set_hyperparameters(src, {"lr": 0.5}, output=out)
    lr = _load(out)["param_groups"][0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.item() == 0.5


# --------------------------------------------------------------------------- containers


def test_lightning_container_needs_key_and_keeps_the_rest(cli, tmp_path):
    _, opt_a, sched_a = _trained(lr=0.1)
    _, opt_b, sched_b = _trained(lr=0.2)
    path, out = tmp_path / "l.ckpt", tmp_path / "o.ckpt"
    torch.save({"epoch": 7, "global_step": 70, "state_dict": {"w": torch.ones(2)},
                "optimizer_states": [opt_a.state_dict(), opt_b.state_dict()],
                "lr_schedulers": [sched_a.state_dict(), sched_b.state_dict()],
                "callbacks": {"ModelCheckpoint": {"best": torch.tensor(0.5)}}}, path)
    r = cli("set", path, "-o", out, "--lr", "0.03")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and "2 optimizer states" in r.stderr
    assert not out.exists()
    r = cli("set", path, "-o", out, "--lr", "0.03", "--key", "optimizer_states[1]")
    assert r.exit_code == 0, r.stderr
    before, after = _load(path), _load(out)
    diffs = compare_trees(before, after).paths
    assert sorted(diffs) == sorted(
        [f"optimizer_states[1].param_groups[{g}].{k}" for g in (0, 1)
         for k in ("lr", "initial_lr")]
        + [f"lr_schedulers[1].{k}[{g}]" for g in (0, 1) for k in ("base_lrs", "_last_lr")])
    assert [g["lr"] for g in after["optimizer_states"][1]["param_groups"]] == [0.03, 0.03]
    assert after["lr_schedulers"][1]["base_lrs"] == [0.03, 0.03]


@pytest.fixture
def hf_folder(tmp_path):
    _, opt, sched = _trained()
    d = tmp_path / "checkpoint-500"
    d.mkdir()
    torch.save(opt.state_dict(), d / "optimizer.pt")
    torch.save(sched.state_dict(), d / "scheduler.pt")
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "trainer_state.json").write_text('{"global_step": 500}')
    return d


def test_hf_folder_copy(cli, hf_folder, tmp_path):
    out = tmp_path / "checkpoint-500-lr"
    r = cli("set", hf_folder, "-o", out, "--lr", "0.005", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["outputs"] == [str(out / "optimizer.pt"), str(out / "scheduler.pt")]
    assert sorted(p.name for p in out.iterdir()) == [
        "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"]
    assert (out / "model.safetensors").read_bytes() == (hf_folder / "model.safetensors"
                                                        ).read_bytes()
    assert (out / "trainer_state.json").read_text() == '{"global_step": 500}'
    assert [g["lr"] for g in _load(out / "optimizer.pt")["param_groups"]] == [0.005, 0.005]
    assert _load(out / "scheduler.pt")["base_lrs"] == [0.005, 0.005]
    diffs = compare_trees(_load(hf_folder / "scheduler.pt"), _load(out / "scheduler.pt")).paths
    assert sorted(diffs) == ["_last_lr[0]", "_last_lr[1]", "base_lrs[0]", "base_lrs[1]"]
    # the input folder is untouched
    assert [g["lr"] for g in _load(hf_folder / "optimizer.pt")["param_groups"]] != [0.005] * 2
    assert not [p for p in tmp_path.iterdir() if "optstate-tmp" in p.name]


def test_hf_folder_view_counts_changes_per_file(cli, hf_folder, tmp_path):
    r = cli("set", hf_folder, "-o", tmp_path / "c", "--lr", "0.005", env={"COLUMNS": "200"})
    assert r.exit_code == 0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("wrote ")]
    n_opt = _count_leaves(_load(hf_folder / "optimizer.pt"))
    n_sched = _count_leaves(_load(hf_folder / "scheduler.pt"))
    assert lines == [
        f"wrote {tmp_path}/c/optimizer.pt (re-read and compared: {n_opt} values, only the 4 "
        "changes above differ)",  # lr and initial_lr of 2 groups
        f"wrote {tmp_path}/c/scheduler.pt (re-read and compared: {n_sched} values, only the "
        "4 changes above differ)",  # base_lrs and _last_lr of 2 groups
    ]


def test_hf_folder_in_place(cli, hf_folder):
    model = (hf_folder / "model.safetensors").read_bytes()
    r = cli("set", hf_folder, "--in-place", "--lr", "0.004", "--no-scheduler")
    assert r.exit_code == 0, r.stderr
    assert [g["lr"] for g in _load(hf_folder / "optimizer.pt")["param_groups"]] == [0.004] * 2
    assert _load(hf_folder / "scheduler.pt")["base_lrs"] == [0.1, 0.5]  # --no-scheduler
    assert (hf_folder / "model.safetensors").read_bytes() == model
    assert sorted(p.name for p in hf_folder.iterdir()) == [
        "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"]


def test_legacy_format_is_kept(tmp_path):
    _, opt, _ = _trained()
    src, out = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(opt.state_dict(), src, _use_new_zipfile_serialization=False)
    res = set_hyperparameters(src, {"lr": 0.7}, output=out)
    assert detect_format(out) == "legacy"
    assert any("legacy" in n for n in res.notes)
    assert [g["lr"] for g in _load(out)["param_groups"]] == [0.7, 0.7]


# --------------------------------------------------------------------------- refusals


def test_refuses_to_overwrite(cli, bare_ckpt, tmp_path):
    out = tmp_path / "exists.pt"
    out.write_bytes(b"keep me")
    r = cli("set", bare_ckpt, "-o", out, "--lr", "0.3")
    assert r.exit_code == 2
    assert r.stderr == f"Error: {out} already exists\nHint: pass --force to overwrite it\n"
    assert out.read_bytes() == b"keep me"
    torch.save({"old": 1}, out)  # --force replaces a checkpoint, never another file
    r = cli("set", bare_ckpt, "-o", out, "--lr", "0.3", "--force")
    assert r.exit_code == 0
    assert [g["lr"] for g in _load(out)["param_groups"]] == [0.3, 0.3]


def test_refuses_to_write_onto_its_input(cli, bare_ckpt):
    data = bare_ckpt.read_bytes()
    r = cli("set", bare_ckpt, "-o", bare_ckpt, "--lr", "0.3", "--force")
    assert r.exit_code == 2
    assert r.stderr == (f"Error: -o {bare_ckpt} is the input checkpoint\n"
                        "Hint: pass --in-place to rewrite the input, or -o another path\n")
    assert bare_ckpt.read_bytes() == data
    r = cli("set", bare_ckpt, "--in-place", "--lr", "0.3")
    assert r.exit_code == 0, r.stderr
    assert [g["lr"] for g in _load(bare_ckpt)["param_groups"]] == [0.3, 0.3]
    assert not [p for p in bare_ckpt.parent.iterdir() if "optstate-tmp" in p.name]


def test_needs_a_destination_and_dry_run_writes_nothing(cli, bare_ckpt, tmp_path):
    r = cli("set", bare_ckpt, "--lr", "0.3")
    assert r.exit_code == 2 and r.stderr.startswith("Error: say where to write the result\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("set", bare_ckpt, "--lr", "0.3", "--dry-run", "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert report["dry_run"] is True and report["outputs"] == []
    assert [c["new"] for c in report["changes"]] == [0.3, 0.3, 0.3, 0.3]  # lr, initial_lr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args, message", [
    (["--set", "betas=0.9"], "betas (param group 0) must be 2 comma-separated values like "
     "0.9,0.999 (the checkpoint holds (0.9, 0.999)), got 0.9"),
    (["--set", "amsgrad=1"], "amsgrad (param group 0) must be true or false (the checkpoint "
     "holds False), got 1"),
    (["--set", "lr=fast"], "lr (param group 0) must be a number (the checkpoint holds 0.1), "
     "got 'fast'"),
    (["--lr", "nan"], "lr (param group 0) must be a finite number (the checkpoint holds 0.1), "
     "got nan"),
    (["--set", "momentum=0.9"], "param group 0 has no hyperparameter 'momentum'"),
    (["--set", "params=1"], "'params' is bookkeeping, not a hyperparameter; set cannot "
     "change it"),
    (["--group", "2", "--lr", "1"], "--group 2: this optimizer state has 1 param group(s), "
     "numbered 0 to 0"),
    ([], "nothing to set"),
])
def test_bad_values(cli, tmp_path, args, message):
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1)
    src, out = tmp_path / "a.pt", tmp_path / "o.pt"
    torch.save(opt.state_dict(), src)
    r = cli("set", src, "-o", out, *args)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == f"Error: {message}"
    assert "Traceback" not in r.stderr and not out.exists()


def test_verification_failure_leaves_nothing(monkeypatch, bare_ckpt, tmp_path):
    """If the re-read file differed anywhere else, nothing is written (and no temp file
    is left behind)."""
    import optstate.edit.set_write as edit
    from optstate.numeric.trees import Difference

    real = edit.compare_trees

    def tampered(a, b, path=""):
        result = real(a, b, path)
        result.differences.append(Difference("state[0].exp_avg", "tampered"))
        return result

    monkeypatch.setattr(edit, "compare_trees", tampered)
    out = tmp_path / "o.pt"
    with pytest.raises(CheckpointError, match="would differ from the input at state"):
        set_hyperparameters(bare_ckpt, {"lr": 0.3}, output=out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt"]


def test_unsafe_warns(cli, bare_ckpt, tmp_path):
    r = cli("set", bare_ckpt, "-o", tmp_path / "o.pt", "--lr", "0.3", "--unsafe")
    assert r.exit_code == 0
    assert r.stderr.startswith("WARNING: --unsafe: loading with full pickle")


def test_help_teaches(cli):
    r = cli("set", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "Example: optstate set ckpt.pt -o ckpt-lr.pt --lr 0.01" in text
    assert "LambdaLR, the Hugging Face default" in text


# --------------------------------------------------------------------------- compare_trees


def test_tensor_identity_is_bitwise():
    a = torch.tensor([0.0, 1.0, float("nan")])
    assert same_tensor(a, a.clone())
    assert not same_tensor(a, torch.tensor([-0.0, 1.0, float("nan")]))
    assert not same_tensor(a, a.double())
    assert not same_tensor(torch.zeros(2, 3), torch.zeros(3, 2).t())  # strides
    assert same_tensor(torch.tensor([True, False]), torch.tensor([True, False]))


def test_compare_trees_finds_every_kind_of_difference():
    a = {"x": [1, (2.0, 3.0)], "t": torch.ones(2), "s": "a"}
    same = compare_trees(a, {"x": [1, (2.0, 3.0)], "t": torch.ones(2), "s": "a"})
    assert (same.paths, same.leaves, same.tensors) == ([], 5, 1)
    b = {"x": [1, [2.0, 3.0]], "t": torch.tensor([1.0, 2.0]), "s": "a"}
    assert compare_trees(a, b).paths == ["x[1]", "t"]
    assert compare_trees(a, {"s": "a", "x": [1, (2.0, 3.0)], "t": torch.ones(2)}).paths == [
        "(top level)"]  # key order is part of the file
    assert compare_trees({"v": 1}, {"v": 1.0}).paths == ["v"]


def test_compare_trees_of_a_copy_in_another_format():
    """exact=False (convert): key order, dict type and strides may change, empty
    containers may be dropped; values may not."""
    from collections import OrderedDict

    t = torch.arange(6.0).reshape(2, 3)
    a = OrderedDict(x=t.t(), e={"s": []}, y=[1, 2])
    copy = {"y": [1, 2], "x": t.t().contiguous()}
    loose = compare_trees(a, copy, exact=False)
    assert (loose.differences, loose.tensors, loose.dropped) == ([], 1, ["e"])
    assert compare_trees(a, copy).paths == ["(top level)"]
    bad = compare_trees(a, {"y": [1, 2], "x": t.t() + 1, "z": 0}, exact=False)
    assert [(d.path, d.what) for d in bad.differences] == [
        ("x", "tensor values, shape or dtype changed"), ("", "unexpected key 'z'")]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(min_value=1e-12, max_value=10.0, allow_nan=False),
       beta2=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_values_survive_write_then_read(bare_ckpt, tmp_path, lr, beta2):
    out = tmp_path / "h.pt"
    set_hyperparameters(bare_ckpt, {"lr": lr, "betas": (0.9, beta2)}, output=out, force=True)
    groups = _load(out)["param_groups"]
    for g in groups:
        assert g["lr"] == lr and g["betas"] == (0.9, beta2)
        assert math.copysign(1, g["lr"]) == 1
    diffs = compare_trees(_load(bare_ckpt), _load(out)).paths
    assert all(".lr" in d or ".initial_lr" in d or ".betas" in d for d in diffs)


def test_config_error_type():
    with pytest.raises(ConfigError):
        set_hyperparameters(Path("/nonexistent.pt"), {}, output=None)


def test_dcp_folder_is_refused_with_the_way_round(cli, bare_ckpt, tmp_path):
    dcp = tmp_path / "dcp"
    r = cli("convert", bare_ckpt, dcp)
    if r.exit_code != 0:
        pytest.skip(f"convert unavailable here: {r.stderr}")
    r = cli("set", dcp, "-o", tmp_path / "x", "--lr", "0.1")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {dcp} is a torch.distributed.checkpoint (DCP) folder, which set does not "
        "rewrite",
        f"Hint: convert it to one file, set that, and convert back: optstate convert {dcp} "
        "one.pt",
    ]


def test_trial_warns_when_the_new_state_would_not_step(cli, bare_ckpt, tmp_path):
    """amsgrad=True on a state saved without it: the file is written as asked, and set
    warns with the error torch itself raises at step()."""
    out = tmp_path / "ams.pt"
    r = cli("set", bare_ckpt, "-o", out, "--set", "amsgrad=true", "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert report["trial"] == "KeyError: missing key 'max_exp_avg_sq'"
    assert r.stderr == ("Warning: torch's load_state_dict + step() on the new state fails: "
                        "KeyError: missing key 'max_exp_avg_sq'\n")
    ps, opt, _ = _fresh()
    opt.load_state_dict(_load(out))
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(KeyError, match="max_exp_avg_sq"):
        opt.step()
    r = cli("set", bare_ckpt, "-o", tmp_path / "lr.pt", "--lr", "0.2", "--json")
    assert json.loads(r.stdout)["trial"] == "ok" and r.stderr == ""
    r = cli("set", bare_ckpt, "-o", tmp_path / "no.pt", "--set", "amsgrad=true", "--json",
            "--no-trial")
    assert json.loads(r.stdout)["trial"] is None and r.stderr == ""


def test_hf_folder_force_replaces_an_existing_folder(cli, hf_folder, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    r = cli("set", hf_folder, "-o", out, "--lr", "0.006")
    assert r.exit_code == 2 and r.stderr.startswith(f"Error: {out} already exists")
    # --force replaces only a checkpoint folder of this kind, never a folder of other files
    r = cli("set", hf_folder, "-o", out, "--lr", "0.006", "--force")
    assert r.exit_code == 2 and r.stderr.startswith(
        f"Error: {out} is not a checkpoint folder (it holds no optimizer.pt)")
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]
    shutil.copy(hf_folder / "optimizer.pt", out / "optimizer.pt")  # an old checkpoint
    r = cli("set", hf_folder, "-o", out, "--lr", "0.006", "--force")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-500", "taken"]


def test_shared_state_changes_only_where_asked(tmp_path):
    """torch.save pickles an object referenced twice once; after loading, both locations
    are one dict. Setting one location must not change the other."""
    _, opt, _ = _trained()
    sd = opt.state_dict()
    src, out = tmp_path / "shared.pt", tmp_path / "o.pt"
    torch.save({"optimizer": sd, "ema_optimizer": sd}, src)
    loaded = _load(src)
    assert loaded["optimizer"] is loaded["ema_optimizer"]
    set_hyperparameters(src, {"lr": 0.9}, output=out, key="optimizer")
    after = _load(out)
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == [0.9, 0.9]
    assert after["ema_optimizer"]["param_groups"] == loaded["ema_optimizer"]["param_groups"]
    assert after["optimizer"]["state"][0]["exp_avg"].untyped_storage().data_ptr() == \
        after["ema_optimizer"]["state"][0]["exp_avg"].untyped_storage().data_ptr()


def test_scheduler_settings(cli, tutorial_ckpt, tmp_path):
    out = tmp_path / "s.pt"
    r = cli("set", tutorial_ckpt, "-o", out, "--lr", "0.02", "--scheduler-set", "step_size=10",
            "--scheduler-set", "gamma=0.5", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    assert "│ scheduler │       │ step_size  │ 2" in r.stdout
    before, after = _load(tutorial_ckpt), _load(out)
    diffs = compare_trees(before, after).paths
    assert sorted(d for d in diffs if d.startswith("scheduler")) == [
        "scheduler_state_dict._last_lr[0]", "scheduler_state_dict._last_lr[1]",
        "scheduler_state_dict.base_lrs[0]", "scheduler_state_dict.base_lrs[1]",
        "scheduler_state_dict.gamma", "scheduler_state_dict.step_size"]
    # torch: the restored scheduler has the new settings, whatever its constructor said
    _, opt, sched = _fresh()
    opt.load_state_dict(after["optimizer_state_dict"])
    sched.load_state_dict(after["scheduler_state_dict"])
    assert (sched.step_size, sched.gamma) == (10, 0.5)
    r = cli("set", tutorial_ckpt, "-o", out, "--force", "--scheduler-set", "T_max=3")
    assert r.exit_code == 2
    assert r.stderr == ("Error: the scheduler state has no 'T_max'\n"
                        "Hint: its settings: step_size, gamma, base_lrs, last_epoch\n")
    r = cli("set", tutorial_ckpt, "-o", out, "--force", "--scheduler-set", "step_size=2.5")
    assert r.exit_code == 0  # an int setting given a float: stored as given, like torch would


# --------------------------------------------------------------------------- --base-lr
#
# A config's lr is a scheduler's base lr. ``--base-lr X`` must give the run that would
# have started at base lr X: every later lr, step by step, the same as a fresh run's.
# Comparison: bit for bit when X / old base is a power of two (scaling by 2**k commutes
# with every rounding the schedulers do: they multiply, add and interpolate lrs); for
# other factors the scale itself rounds (half an ulp) and each later step rounds in each
# run on its own, so the two runs agree to a few ulps: 8 ulps over the 12 resumed steps
# below (measured: at most 2, for factors 0.3, 0.777, 1.234 and 0.02 on each scheduler).

def _make_sched(name, opt):
    S = torch.optim.lr_scheduler
    if name == "StepLR":
        return S.StepLR(opt, step_size=3, gamma=0.5)
    if name == "CosineAnnealingLR":
        return S.CosineAnnealingLR(opt, T_max=15)
    if name == "LinearLR":
        return S.LinearLR(opt, start_factor=0.1, total_iters=8)
    if name == "SequentialLR":
        return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.25, total_iters=4),
                                    S.CosineAnnealingLR(opt, T_max=14)], milestones=[4])
    if name == "OneCycleLR":  # its base lr (initial_lr) is max_lr / div_factor
        return S.OneCycleLR(opt, max_lr=[g["lr"] * 25 for g in opt.param_groups],
                            total_steps=20)
    if name == "LambdaLR":
        return S.LambdaLR(opt, _warmup)
    raise AssertionError(name)


def _warmup(epoch):
    return min(1.0, (epoch + 1) / 5)


_BASE_SCHEDULERS = ["StepLR", "CosineAnnealingLR", "LinearLR", "SequentialLR", "OneCycleLR",
                    "LambdaLR"]


def _scheduled_run(name, lrs, steps, state=None):
    """AdamW over two groups at base ``lrs`` (or resumed from ``state``); the lr of every
    group after each of ``steps`` steps, and the optimizer/scheduler."""
    torch.manual_seed(1)
    ps = [torch.randn(2, 2, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(ps, lrs, strict=True)])
    sched = _make_sched(name, opt)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    seen = [[g["lr"] for g in opt.param_groups] + sched.get_last_lr()]
    for _ in range(steps):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
        seen.append([g["lr"] for g in opt.param_groups] + sched.get_last_lr())
    return seen, opt, sched


def _base_of(opt, gi):
    return opt.param_groups[gi]["initial_lr"]  # SequentialLR's own state has no base_lrs


@pytest.mark.parametrize("name", _BASE_SCHEDULERS)
@pytest.mark.parametrize("exact", [True, False], ids=["power-of-two", "any-factor"])
def test_base_lr_resumes_as_a_fresh_run_at_that_base(cli, tmp_path, name, exact):
    saved_at, resumed_for = 8, 12
    _, opt, sched = _scheduled_run(name, [1e-3, 2.5e-4], saved_at)
    src, out = tmp_path / "run.pt", tmp_path / "new.pt"
    torch.save({"model": {}, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, src)
    old = [_base_of(opt, gi) for gi in range(2)]
    # one --base-lr for both groups: factors 0.5 and 2 (exact) or 0.3 and 1.2
    x = old[0] / 2 if exact else 3e-4
    if exact:
        assert x == old[1] * 2
    r = cli("set", src, "-o", out, "--base-lr", repr(x))
    assert r.exit_code == 0, r.stderr
    edited = _load(out)
    assert edited["scheduler"].get("base_lrs", [x, x]) == [x, x]
    assert [g["initial_lr"] for g in edited["optimizer"]["param_groups"]] == [x, x]
    resumed, _, _ = _scheduled_run(name, [0.123, 0.456], resumed_for, state=edited)
    # a fresh run at base x (OneCycleLR: at max_lr scaled alike, as its base lr is
    # max_lr / div_factor, and (x * 25) / 25 need not be x)
    fresh_lrs = ([lr * x / b for lr, b in zip([1e-3, 2.5e-4], old, strict=True)]
                 if name == "OneCycleLR" else [x, x])
    fresh, _, _ = _scheduled_run(name, fresh_lrs, saved_at + resumed_for)
    expected = fresh[saved_at:]
    assert len(resumed) == len(expected) == resumed_for + 1
    for step, (got, want) in enumerate(zip(resumed, expected, strict=True)):
        for a, b in zip(got, want, strict=True):
            if exact:
                assert a == b, (step, got, want)
            else:
                assert abs(a - b) <= 8 * math.ulp(b), (step, got, want)
    # the decay the run had made is kept: resumed lr / base lr is the saved run's
    for gi in range(2):
        assert edited["optimizer"]["param_groups"][gi]["lr"] / x == pytest.approx(
            opt.param_groups[gi]["lr"] / old[gi], rel=1e-12)


def test_base_lr_one_group_and_the_changes_table(cli, tmp_path):
    _, opt, sched = _scheduled_run("StepLR", [1e-3, 2.5e-4], 7)
    src, out = tmp_path / "run.pt", tmp_path / "new.pt"
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, src)
    r = cli("set", src, "-o", out, "--base-lr", "5e-4", "--group", "1",
            env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    before, after = _load(src), _load(out)
    diffs = compare_trees(before, after).paths
    assert sorted(diffs) == ["optimizer.param_groups[1].initial_lr",
                             "optimizer.param_groups[1].lr",
                             "scheduler._last_lr[1]", "scheduler.base_lrs[1]"]
    assert after["optimizer"]["param_groups"][1]["lr"] == 2 * opt.param_groups[1]["lr"]
    assert after["scheduler"]["_last_lr"][1] == 2 * sched.get_last_lr()[1]
    assert "base lr 0.00025 -> 0.0005 (x2)" in r.stdout


@pytest.mark.parametrize("make, message", [
    (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
     "Error: --base-lr: the scheduler state has no base_lrs (ReduceLROnPlateau changes the "
     "lr from the metric it is given, not from a base lr): set the lr itself with --lr"),
    (lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-4, max_lr=1e-2),
     "Error: --base-lr: CyclicLR moves the lr between base_lrs and max_lrs (0.01), an "
     "absolute lr of its own: scaling cannot give the run that started at another base lr"),
    (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-5),
     "Error: --base-lr: the scheduler's eta_min = 1e-05 is an absolute lr: the schedule is "
     "not proportional to its base lr, so scaling cannot give the run that started at "
     "another base lr"),
])
def test_base_lr_refused_where_the_schedule_is_not_proportional(cli, tmp_path, make, message):
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1e-3, momentum=0.9)
    sched = make(opt)
    for _ in range(3):
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step(1.0) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) \
            else sched.step()
    src, out = tmp_path / "run.pt", tmp_path / "new.pt"
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, src)
    r = cli("set", src, "-o", out, "--base-lr", "2e-3")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0] == message
    assert "Traceback" not in r.stderr and not out.exists()


def test_base_lr_needs_a_scheduler_and_not_lr_too(cli, bare_ckpt, tutorial_ckpt, tmp_path):
    out = tmp_path / "new.pt"
    plain = tmp_path / "plain.pt"
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1e-3)
    torch.save(opt.state_dict(), plain)
    r = cli("set", plain, "-o", out, "--base-lr", "2e-3")
    assert r.exit_code == 2 and r.stderr.splitlines()[0] == (
        "Error: --base-lr: no scheduler state beside the optimizer state and no initial_lr "
        "in its groups: without a scheduler the lr is the base lr; use --lr")
    # bare_ckpt: a StepLR ran (initial_lr in the groups) but its state was not saved
    r = cli("set", bare_ckpt, "-o", out, "--base-lr", "2e-3")
    assert r.exit_code == 2 and r.stderr.splitlines()[0] == (
        "Error: --base-lr: the groups have initial_lr (a scheduler ran) but no scheduler "
        "state was found beside the optimizer state: its base_lrs and _last_lr could not "
        "follow")
    r = cli("set", tutorial_ckpt, "-o", out, "--base-lr", "2e-3", "--lr", "1e-3")
    assert r.exit_code == 2 and r.stderr.splitlines()[0] == (
        "Error: give --lr or --base-lr, not both")
    r = cli("set", tutorial_ckpt, "-o", out, "--base-lr", "2e-3", "--no-scheduler")
    assert r.exit_code == 2 and r.stderr.splitlines()[0] == (
        "Error: --base-lr changes the scheduler state with the groups; it cannot be used "
        "with --no-scheduler")
    assert not out.exists()


def test_help_teaches_base_lr(cli):
    text = " ".join(cli("set", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "--base-lr" in text and "so the resumed run is the one that started at this " \
        "base lr" in text
