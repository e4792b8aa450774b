"""``optstate convert``: torch.save file <-> DCP folder, verified, atomic, never clobbering."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.base.errors import CheckpointError, OutputExistsError
from optstate.edit.convert import convert
from optstate.io.lazy import materialize
from optstate.io.source import open_source
from optstate.io.torch_file import load_torch_file
from optstate.numeric.leaves import same_tensor
from optstate.numeric.trees import verify_copy


def adamw_state(steps: int = 3) -> dict:
    torch.manual_seed(1)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 0.3}],
                            lr=0.01, amsgrad=True)
    for _ in range(steps):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    return opt.state_dict()


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return type(b) is torch.Tensor and same_tensor(a, b, strides=False)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@pytest.fixture
def saved(tmp_path):
    sd = adamw_state()
    torch.save({"optimizer_state_dict": sd, "epoch": 7}, tmp_path / "run.pt")
    return tmp_path / "run.pt", sd


def test_file_to_dcp_and_back_is_exact(tmp_path, saved):
    path, sd = saved
    r1 = convert(path, tmp_path / "run_dcp")
    assert (r1.source_format, r1.destination_format, r1.tensors) == ("zip", "dcp", 8)
    assert sorted(os.listdir(tmp_path / "run_dcp")) == [".metadata", "__0_0.distcp"]
    assert same(materialize(open_source(tmp_path / "run_dcp").obj),
                {"optimizer_state_dict": sd, "epoch": 7})
    r2 = convert(tmp_path / "run_dcp", tmp_path / "back.pt")
    assert (r2.source_format, r2.destination_format, r2.tensors) == ("dcp", "zip", 8)
    assert same(load_torch_file(tmp_path / "back.pt").obj,
                {"optimizer_state_dict": sd, "epoch": 7})
    assert not [p for p in os.listdir(tmp_path) if "optstate" in p]  # no temp leftovers


def test_cli_convert_and_diff_equal(cli, tmp_path, saved):
    path, _ = saved
    r = cli("convert", path, tmp_path / "d", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["schema"] == "optstate.convert/1"
    assert (rep["tensors_verified"], rep["warnings"]) == (8, [])
    assert rep["bytes"] == sum(f.stat().st_size for f in (tmp_path / "d").iterdir())
    assert cli("diff", path, tmp_path / "d").exit_code == 0
    r = cli("convert", tmp_path / "d", tmp_path / "e.pt")
    assert r.exit_code == 0
    assert r.stdout.startswith(f"converted {tmp_path / 'd'} (dcp) -> {tmp_path / 'e.pt'} (zip): "
                               "8 tensors verified bit for bit")
    assert cli("diff", tmp_path / "e.pt", path).exit_code == 0


def test_existing_destination_needs_force(cli, tmp_path, saved):
    path, sd = saved
    d = tmp_path / "d"
    assert cli("convert", path, d).exit_code == 0
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    r = cli("convert", path, d)
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"Error: {d} already exists",
                                     "Hint: pass --force to overwrite it"]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert cli("convert", path, d, "--force").exit_code == 0
    assert sorted(os.listdir(d)) == [".metadata", "__0_0.distcp"]
    assert sorted(os.listdir(tmp_path)) == ["d", "run.pt"]  # the old folder is gone too
    torch.save({"old": 1}, tmp_path / "out.pt")
    old = (tmp_path / "out.pt").read_bytes()
    assert cli("convert", d, tmp_path / "out.pt").exit_code == 2
    assert (tmp_path / "out.pt").read_bytes() == old
    assert cli("convert", d, tmp_path / "out.pt", "--force").exit_code == 0
    assert same(load_torch_file(tmp_path / "out.pt").obj["optimizer_state_dict"], sd)


def test_force_never_deletes_a_folder_that_is_not_a_dcp_checkpoint(cli, tmp_path, saved):
    """issue #16 item 7: --force replaced any folder, the user's own files included."""
    path, _ = saved
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    r = cli("convert", path, mine, "--force")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {mine} is not a DCP checkpoint folder (it holds no .metadata); --force "
        "replaces only a checkpoint of the kind being written, never a folder of other files",
        "Hint: remove it yourself, or give another name"]
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == [
        "notes.txt", "sub", "sub/data.bin"]
    assert sorted(os.listdir(tmp_path)) == ["mine", "run.pt"]  # no temp folder left


def test_a_file_is_never_replaced_by_a_folder(tmp_path, saved):
    path, _ = saved
    (tmp_path / "x").write_bytes(b"a file")
    with pytest.raises(OutputExistsError, match="already exists"):
        convert(path, tmp_path / "x")
    with pytest.raises(OutputExistsError, match="is a file; force=True replaces only a "
                                                "checkpoint folder here"):
        convert(path, tmp_path / "x", force=True)
    assert (tmp_path / "x").read_bytes() == b"a file"


def test_source_is_not_a_state_dict(cli, tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    r = cli("convert", tmp_path / "t.pt", tmp_path / "d")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: {tmp_path / 't.pt'} holds a Tensor; a DCP checkpoint stores a non-empty "
        "dict (a state dict)")
    assert sorted(os.listdir(tmp_path)) == ["t.pt"]


def test_source_equals_destination(cli, saved):
    path, _ = saved
    r = cli("convert", path, path)
    assert r.exit_code == 2
    assert "is the source itself" in r.stderr


def test_a_change_dcp_cannot_represent_is_refused_and_nothing_written(tmp_path):
    """DCP writes the integer keys of {0: t, 1: t} as strings '0', '1' (only an optimizer's
    state can be repaired, from its params lists); converting this would not give the same
    object back, so the check refuses it before the folder is put in place."""
    torch.save({"buffers": {0: torch.ones(2), 1: torch.zeros(2)}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"cannot store the key 0 \(int\) at buffers: .*"
                                              "nothing was written"):
        convert(tmp_path / "m.pt", tmp_path / "d")
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_empty_containers_are_reported(cli, tmp_path):
    sd = adamw_state()
    torch.save({"optimizer": sd, "extra": {}}, tmp_path / "a.pt")
    r = cli("convert", tmp_path / "a.pt", tmp_path / "d")
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [
        "Warning: DCP does not store empty containers; dropped extra"]


def test_fresh_optimizer_round_trips(tmp_path):
    sd = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1).state_dict()
    torch.save(sd, tmp_path / "fresh.pt")
    res = convert(tmp_path / "fresh.pt", tmp_path / "d")
    assert res.warnings == []  # the empty state is restored on reading, not lost
    assert same(open_source(tmp_path / "d").obj, sd)


def test_verify_copy_counts_and_catches():
    a = {"x": torch.tensor([1.0, float("nan"), -0.0]), "y": [1, (2.5, "s")]}
    assert verify_copy(a, {"x": a["x"].clone(), "y": [1, (2.5, "s")]}) == (1, [])
    with pytest.raises(CheckpointError, match="at x: tensor values"):
        verify_copy(a, {"x": torch.tensor([1.0, float("nan"), 0.0]), "y": [1, (2.5, "s")]})
    with pytest.raises(CheckpointError, match=r"at y\[1\]\[0\]: 2.5 became 2.0"):
        verify_copy(a, {"x": a["x"], "y": [1, (2.0, "s")]})


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int8, torch.bool, torch.complex64]


@st.composite
def states(draw):
    """An optimizer-shaped state: a few params, tensors of many dtypes and shapes."""
    n = draw(st.integers(1, 3))
    state = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        t = (torch.randn(shape, generator=gen) * 100).to(dtype)
        state[i] = {"buf": t, "step": torch.tensor(float(draw(st.integers(0, 9))))}
    groups = [{"lr": draw(st.floats(1e-6, 1.0)), "betas": (0.9, 0.99),
               "foreach": draw(st.sampled_from([None, True])), "params": list(range(n))}]
    return {"state": state, "param_groups": groups}


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sd=states())
def test_round_trip_property(tmp_path_factory, sd):
    d = tmp_path_factory.mktemp("prop")
    torch.save(sd, d / "a.pt")
    convert(d / "a.pt", d / "dcp")
    convert(d / "dcp", d / "b.pt")
    assert same(load_torch_file(d / "b.pt").obj, sd)


def test_world_size_save_to_a_file_name_writes_one_file(cli, tmp_path):
    """issue #15 item 6: --world-size 2 --save w2.pt made a folder named w2.pt."""
    out = tmp_path / "w2.pt"
    r = cli("simulate", "--world-size", "2", "-O", "adam", "--steps", "3", "--save", out)
    assert r.exit_code == 0, r.stderr
    assert out.is_file()
    sd = load_torch_file(out).obj  # one torch.save file, the DCP folder's content
    assert sorted(sd) == ["param_groups", "state"]
    assert all(float(s["step"]) == 3.0 for s in sd["state"].values())
    # the same run as a DCP folder (no suffix) holds the same tensors
    r = cli("simulate", "--world-size", "2", "-O", "adam", "--steps", "3", "--save",
            tmp_path / "w2_dcp")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "w2_dcp" / ".metadata").is_file()
    back = load_torch_file(convert(tmp_path / "w2_dcp", tmp_path / "back.pt").destination).obj
    assert same(back, sd)
    assert sorted(os.listdir(tmp_path)) == ["back.pt", "w2.pt", "w2_dcp"]


def test_world_size_save_name_that_could_be_either_is_refused(cli, tmp_path):
    r = cli("simulate", "--world-size", "2", "--save", tmp_path / "w2.txt")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: --save {tmp_path / 'w2.txt'}: give a folder name (no suffix) for a DCP "
        "checkpoint, or a file name ending in .pt, .pth, .pkl, .bin, .ckpt for one "
        "torch.save file"]
    assert os.listdir(tmp_path) == []


def test_an_old_copy_left_by_an_older_optstate_is_restored(cli, tmp_path, saved):
    """A replace interrupted between its two renames (optstate before the exchange, or the
    fallback) left the target absent and the whole old folder hidden beside it."""
    path, sd = saved
    convert(path, tmp_path / "d")
    hidden = tmp_path / ".d.ab12cd_4.optstate-old"  # tempfile.mkdtemp's name
    os.rename(tmp_path / "d", hidden)
    r = cli("convert", path, tmp_path / "d")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {tmp_path / 'd'} already exists",
        f"Hint: restored {tmp_path / 'd'} from .d.ab12cd_4.optstate-old, the old copy an "
        "interrupted replace had moved aside; pass --force to overwrite it"]
    assert sorted(os.listdir(tmp_path)) == ["d", "run.pt"]
    assert same(open_source(tmp_path / "d").obj["optimizer_state_dict"], sd)


@pytest.mark.parametrize("command", ["convert", "set", "simulate"])
def test_force_never_replaces_a_file_that_is_not_a_checkpoint(cli, tmp_path, saved, command):
    """issue #16 item 7, files: -o train.py --force by a slip replaced the script."""
    path, _ = saved
    victim = tmp_path / "train.py"
    victim.write_text("print('my training script')\n")
    if command == "convert":
        convert(path, tmp_path / "d")
        args = ["convert", tmp_path / "d", victim, "--force"]
    elif command == "set":
        args = ["set", path, "-o", victim, "--lr", "0.5", "--force"]
    else:
        args = ["simulate", "--steps", "1", "--save", victim, "--force"]
    r = cli(*args)
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {victim} is not a torch.save checkpoint; --force replaces only a checkpoint "
        "file, never another file", "Hint: remove it yourself, or give another name"]
    assert victim.read_text() == "print('my training script')\n"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize("victim_kind", ["zip", "pickle"])
def test_force_never_replaces_a_zip_or_pickle_that_is_not_torch(cli, tmp_path, saved,
                                                                 victim_kind):
    """--force judged a file by its first bytes only: any zip archive (PK..) or any pickle
    (\\x80) counted as a torch.save file and was replaced."""
    import pickle
    import zipfile

    path, _ = saved
    convert(path, tmp_path / "d")
    victim = tmp_path / f"mine.{victim_kind}"
    if victim_kind == "zip":
        with zipfile.ZipFile(victim, "w") as z:
            z.writestr("notes.txt", "mine")
    else:
        victim.write_bytes(pickle.dumps({"x": 1}, protocol=2))
    before = victim.read_bytes()
    r = cli("convert", tmp_path / "d", victim, "--force")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {victim} is not a torch.save checkpoint; --force replaces only a checkpoint "
        "file, never another file", "Hint: remove it yourself, or give another name"]
    assert victim.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_force_replaces_a_torch_save_file_of_either_format(cli, tmp_path, saved, legacy):
    path, sd = saved
    convert(path, tmp_path / "d")
    old = tmp_path / "old.pt"
    torch.save({"x": torch.ones(2)}, old, _use_new_zipfile_serialization=not legacy)
    assert cli("convert", tmp_path / "d", old, "--force").exit_code == 0
    assert same(load_torch_file(old).obj["optimizer_state_dict"], sd)


def test_force_never_deletes_the_users_files_in_a_dcp_folder(cli, tmp_path, saved):
    """A folder holding .metadata was replaced whole with --force, the user's other files
    in it (notes, a sub-folder) deleted with the old checkpoint."""
    path, _ = saved
    d = tmp_path / "d"
    convert(path, d)
    (d / "notes.txt").write_text("mine")
    (d / "sub").mkdir()
    before = sorted(os.listdir(d))
    r = cli("convert", path, d, "--force")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {d} holds files that are not part of a DCP checkpoint (notes.txt, sub); "
        "--force replaces only a checkpoint folder, never the files beside it",
        "Hint: move them out of the folder, or give another name"]
    assert sorted(os.listdir(d)) == before
    assert (d / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["d", "run.pt"]


def test_a_sparse_state_entry_is_refused_for_dcp_with_its_path(cli, tmp_path):
    """DCP's writer stores strided tensors only; a sparse momentum buffer (real SGD state,
    made sparse) was an internal error from inside torch. Now one line naming where."""
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4, 3)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = sd["state"][0]["momentum_buffer"].to_sparse()
    torch.save(sd, tmp_path / "sp.pt")
    r = cli("convert", tmp_path / "sp.pt", tmp_path / "out")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: {tmp_path / 'sp.pt'} holds a sparse tensor at state[0].momentum_buffer; a DCP "
        "checkpoint stores dense (strided) tensors only")
    assert not (tmp_path / "out").exists()


# ------------------------------------------ issue #19: FSDP2 rank folders, torchao, one rule
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FSDP2 = os.path.join(FIXTURES, "fsdp2", "adamw_ws2")
AO4 = os.path.join(FIXTURES, "lowbit", "torchao_AdamW4bit")


def test_an_fsdp2_rank_folder_to_a_file_name_is_one_file_and_joining_is_no_warning(
        cli, tmp_path):
    """R1: '-> fs.pt (dcp)' made a DCP folder named fs.pt, with a Warning: for the joining."""
    out = tmp_path / "fs.pt"
    r = cli("convert", FSDP2, out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(f"converted {FSDP2} (FSDP2 rank files (2)) -> {out} (zip): "
                               "18 tensors verified bit for bit")
    assert out.is_file()  # one torch.save file, the whole state as full_tensor() gives it
    whole = open_source(FSDP2).obj
    assert same(load_torch_file(out).obj, materialize(whole))
    expected = torch.load(os.path.join(FSDP2, "expected.pt"), weights_only=True)
    order = json.load(open(os.path.join(FSDP2, "expected.json")))["parameter_order"]
    sd = load_torch_file(out).obj
    for i, name in enumerate(order):
        assert torch.equal(sd["state"][i]["exp_avg"], expected[f"exp_avg/{name}"])
    # any other name: a DCP folder; the joining is a note of the JSON, not a warning
    r = cli("convert", FSDP2, tmp_path / "fs_dcp", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["destination_format"], rep["warnings"]) == ("dcp", [])
    assert rep["notes"] == [
        "12 DTensor entries joined from 2 rank files (rank0.pt, rank1.pt; Shard(0) on a [2] "
        "device mesh): the whole state, as DTensor.full_tensor() gives it"]
    assert (tmp_path / "fs_dcp" / ".metadata").is_file()


def test_a_torch_save_file_to_a_file_name_is_one_error(cli, tmp_path, saved):
    src, _ = saved
    r = cli("convert", src, tmp_path / "x.pt")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {src} is a torch.save file already; convert writes it as a DCP folder "
        "(DST x.pt ends in .pt: one torch.save file)",
        f"Hint: give DST a folder name without .pt, .pth, .bin, .ckpt, e.g. {tmp_path / 'x'}"]
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("dst", ["ao.pt", "ao.dcp"])
def test_torchao_low_bit_entries_are_written_dequantized_and_torch_adamw_loads_them(
        cli, tmp_path, dst):
    """R1: 'torch.distributed.checkpoint could not save this state: ... OptimState4bit'."""
    out = tmp_path / dst
    r = cli("convert", os.path.join(AO4, "optimizer.pt"), out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == [
        "Warning: 2 torchao low-bit entries (2 OptimState4bit) written dequantized as "
        "float32: the copy is a plain torch.optim state (torch.optim.Adam / AdamW load it); "
        "torchao's low-bit optimizer will not load it as low-bit"]
    assert "10 tensors verified bit for bit" in r.stdout
    sd = materialize(open_source(out).obj)
    expected = torch.load(os.path.join(AO4, "expected.pt"), weights_only=True)
    # 0.weight's moments are torchao's own dequantize(); the small params were 32-bit
    for i, name in enumerate(["0.weight", "0.bias", "1.weight"]):
        for entry in ("exp_avg", "exp_avg_sq"):
            got = sd["state"][i][entry]
            assert type(got) is torch.Tensor and got.dtype == torch.float32
            assert torch.equal(got, expected[f"{entry}/{name}"]), (name, entry)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((64, 80), (64,), (16, 64))]
    opt = torch.optim.AdamW(params)
    step = float(sd["state"][0]["step"])
    opt.load_state_dict(sd)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.state[params[0]]["step"]) == step + 1
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("dst", ["r0.pt", "r0_dcp"])
def test_one_fsdp2_rank_file_is_refused_with_the_folder_hint(cli, tmp_path, dst):
    r = cli("convert", os.path.join(FSDP2, "rank0.pt"), tmp_path / dst)
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"Error: {os.path.join(FSDP2, 'rank0.pt')} holds DTensors (at state[0].exp_avg): it "
        "is one rank's file of an FSDP2 run, each entry that rank's shard, not the param",
        "Hint: give the folder of all rank files: it is converted as the whole state"]
    assert os.listdir(tmp_path) == []


def test_optstates_own_refusal_is_not_blamed_on_dcp(cli, tmp_path):
    """R1: 'torch.distributed.checkpoint could not save this state: ... cannot write back'."""
    src = os.path.join(FIXTURES, "third_party", "pytorch-optimizer_scalableshampoo",
                       "optimizer.pt")
    r = cli("convert", src, tmp_path / "sh_dcp")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        "Error: the checkpoint holds pytorch_optimizer.optimizer.utils.preconditioner."
        "PreConditioner objects, which optstate reads (decoded without their library) but "
        "cannot write back",
        "Hint: change this checkpoint with the library that wrote it"]
    assert os.listdir(tmp_path) == []
