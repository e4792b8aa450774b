"""FSDP2 optimizer state saved with plain torch.save (issue #19 item 3): DTensor entries
read as each rank's shard, against the values torch itself gathered (``full_tensor()``)
in ``tests/fixtures/fsdp2/adamw_ws2`` (scripts/fixtures/make_fsdp2.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from optstate.io.torch_file import load_torch_file
from optstate.state.view import OptimizerStateView

CASE = Path(__file__).parent / "fixtures" / "fsdp2" / "adamw_ws2"
EXPECTED = torch.load(CASE / "expected.pt", weights_only=True)
INFO = json.loads((CASE / "expected.json").read_text())
ORDER = INFO["parameter_order"]
WORLD = INFO["world_size"]


def view_of(rank: int) -> OptimizerStateView:
    return OptimizerStateView.from_state_dict(load_torch_file(CASE / f"rank{rank}.pt").obj)


@pytest.mark.parametrize("rank", range(WORLD))
def test_each_entry_is_this_ranks_shard_of_what_torch_gathered(rank):
    view = view_of(rank)
    assert [p.position for p in view.params] == list(range(len(ORDER)))
    for p, name in zip(view.params, ORDER, strict=True):
        assert float(p.state["step"]) == INFO["steps"]
        for entry in ("exp_avg", "exp_avg_sq"):
            full = EXPECTED[f"{entry}/{name}"]
            local = p.state[entry]
            assert type(local) is torch.Tensor
            # Shard(0): torch.chunk's split, the last rank's shard shorter (7 rows: 4 + 3)
            assert torch.equal(local, full.chunk(WORLD, dim=0)[rank]), (name, entry)
            meta = INFO["params"][name]["entries"][entry]
            assert p.stored[entry] == {
                "format": "dtensor", "from": [entry], "dtype": "float32",
                "global_shape": meta["global_shape"],
                "local_shape": meta["local_shape_rank"][str(rank)],
                "placements": ["Shard(0)"], "mesh": [WORLD], "rank": rank}
        assert "step" not in p.stored
        assert p.raw_state is not None and set(p.raw_state) == set(p.state)


def test_the_shards_of_all_ranks_concatenate_to_the_whole():
    views = [view_of(r) for r in range(WORLD)]
    for i, name in enumerate(ORDER):
        for entry in ("exp_avg", "exp_avg_sq"):
            whole = torch.cat([v.params[i].state[entry] for v in views], dim=0)
            assert torch.equal(whole, EXPECTED[f"{entry}/{name}"])


def test_inspect_shows_the_local_shard_and_says_statistics_are_this_ranks(run_cli):
    r = run_cli("inspect", CASE / "rank1.pt", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    p2 = rep["params"][2]  # 2.weight: 7 x 16, rank 1 holds rows 4..6
    local = EXPECTED["exp_avg/2.weight"][4:]
    ea = p2["state"]["exp_avg"]
    assert ea["shape"] == [3, 16] and ea["numel"] == 48
    assert ea["mean"] == pytest.approx(float(local.double().mean()), rel=1e-6)
    assert ea["norm"] == pytest.approx(float(local.double().norm()), rel=1e-6)
    assert ea["max"] == float(local.max())
    assert rep["totals"]["state_tensors"] == 12 and rep["totals"]["numel"] == 2 * (
        8 * 12 + 8 + 3 * 16 + 3 + 2 * 7 + 2) + 6  # + the steps
    notes = {n["code"]: n["message"] for n in rep["notes"]}
    assert notes["dtensor_shard"] == (
        "12 state entries are FSDP2 DTensor shards (Shard(0)): shapes and statistics cover "
        "rank 1's shard of a [2] device mesh only, not the whole parameter; each entry's "
        "global shape is in its storage description")
    assert not rep["warnings"]


def test_names_come_from_a_model_by_the_global_shapes(tmp_path, run_cli):
    model = tmp_path / "model.pt"
    torch.save({name: EXPECTED[f"param/{name}"] for name in ORDER}, model)
    r = run_cli("inspect", CASE / "rank0.pt", "--model", model, "--json", "--no-stats")
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)["params"]] == ORDER


def test_a_dtensor_without_its_local_tensor_is_one_error_line(tmp_path, run_cli):
    from optstate.io.inert import InertTensor
    from optstate.state.packed import unpack_state

    sd = load_torch_file(CASE / "rank0.pt").obj
    dt = sd["state"][0]["exp_avg"]
    broken = InertTensor(dt.qualname, dt.dtype, dt.shape, dt.stride,
                         {k: v for k, v in dt.state.items() if k != "_local_tensor"})
    from optstate.base.errors import CheckpointError

    with pytest.raises(CheckpointError, match="DTensor without its local tensor"):
        unpack_state({"exp_avg": broken})


def test_unsafe_loads_torchs_own_dtensor_and_reads_it_the_same_way(run_cli):
    # full pickle builds the real DTensor, a wrapper with no data of its own: statistics
    # on it crashed; its local shard is read instead, described as the inert one is
    safe = json.loads(run_cli("inspect", CASE / "rank1.pt", "--json").stdout)
    r = run_cli("inspect", CASE / "rank1.pt", "--json", "--unsafe")
    assert r.returncode == 0, r.stderr[-2000:]
    unsafe = json.loads(r.stdout)
    assert unsafe["params"] == safe["params"]
    assert unsafe["totals"] == safe["totals"] and unsafe["notes"] == safe["notes"]


def test_the_human_view_says_how_each_entry_is_sharded(run_cli):
    r = run_cli("inspect", CASE / "rank1.pt")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert ("state[2].exp_avg: DTensor shard (FSDP2): float32, local [3, 16] of [7, 16], "
            "Shard(0) on a [2] device mesh, rank 1's shard") in text
    assert "shapes and statistics cover rank 1's shard of a [2] device mesh only" in text


def test_a_folder_of_the_rank_files_is_the_whole_state_as_full_tensor_gives_it():
    from optstate.io.source import open_source

    src = open_source(CASE)
    assert src.format == "fsdp2-ranks"
    assert src.summary == "FSDP2, 2 ranks, Shard(0) on a [2] device mesh"
    assert src.notes == [{"code": "fsdp2_joined", "where": [], "message": (
        "12 DTensor entries joined from 2 rank files (rank0.pt, rank1.pt; Shard(0) on a [2] "
        "device mesh): the whole state, as DTensor.full_tensor() gives it")}]
    view = OptimizerStateView.from_state_dict(src.obj)
    for p, name in zip(view.params, ORDER, strict=True):
        assert p.stored == {}  # plain tensors now: nothing is a shard
        assert float(p.state["step"]) == INFO["steps"]
        for entry in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(p.state[entry], EXPECTED[f"{entry}/{name}"]), (name, entry)
            assert list(p.state[entry].shape) == INFO["params"][name]["global_shape"]


def copy_ranks(tmp_path: Path, names: dict[str, str]) -> Path:
    folder = tmp_path / "ranks"
    folder.mkdir()
    for src, dst in names.items():
        shutil.copy(CASE / src, folder / dst)
    return folder


@pytest.mark.parametrize(("files", "says"), [
    (["rank0.pt"], "no file holds shard 1"),
    (["rank1.pt"], "no file holds shard 0"),
    (["rank0.pt", "rank0.pt"], "no file holds shard 1; shard 0 in more than one file"),
    (["rank0.pt", "rank1.pt", "rank0.pt"], "shard 0 in more than one file"),
])
def test_rank_files_that_are_not_each_shard_once_are_refused_in_one_line(
        tmp_path, run_cli, files, says):
    folder = copy_ranks(tmp_path, {})
    for i, f in enumerate(files):
        shutil.copy(CASE / f, folder / f"rank{i}.pt")
    names = ", ".join(f"rank{i}.pt" for i in range(len(files)))
    r = run_cli("inspect", folder)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == (
        f"Error: state[0].exp_avg: the rank files ({names}) do not hold each shard of the "
        f"2-way mesh once: {says}")


def test_rank_files_of_different_states_are_refused(tmp_path, run_cli):
    folder = copy_ranks(tmp_path, {"rank0.pt": "rank0.pt", "rank1.pt": "rank1.pt"})
    sd = load_torch_file(CASE / "rank1.pt").obj
    sd["param_groups"][0]["lr"] = 0.5
    torch.save(torch.load(CASE / "rank1.pt", weights_only=False) | {
        "param_groups": sd["param_groups"]}, folder / "rank1.pt")
    r = run_cli("inspect", folder)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        "Error: the rank files differ at param_groups[0].lr (other values): they are not the "
        "shards of one state (rank0.pt, rank1.pt)")


def test_a_damaged_spec_is_described_as_far_as_it_goes_and_never_joined(tmp_path):
    from optstate.io.inert import Inert, InertTensor
    from optstate.state.packed import unpack_state

    dt = load_torch_file(CASE / "rank0.pt").obj["state"][2]["exp_avg"]
    spec = Inert()
    spec.state.update({"placements": 5, "mesh": "no mesh", "tensor_meta": Inert("x", 1)})
    odd = InertTensor(dt.qualname, dt.dtype, dt.shape, dt.stride,
                      {"_local_tensor": dt.get("_local_tensor"), "_spec": spec})
    entries, stored = unpack_state({"exp_avg": odd})
    assert torch.equal(entries["exp_avg"], EXPECTED["exp_avg/2.weight"][:4])
    assert stored["exp_avg"] == {"format": "dtensor", "from": ["exp_avg"], "dtype": "float32",
                                 "global_shape": [7, 16], "local_shape": [4, 16],
                                 "placements": ["?"]}


# ------------------------------------------------------------- R1's review (issue #19)
def test_diff_of_two_ranks_files_is_refused_they_are_different_slices(run_cli):
    """R1: rows 0:8 against 8:16 compared as one tensor ('96/96 outside')."""
    r = run_cli("diff", CASE / "rank0.pt", CASE / "rank1.pt")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "Error: a is rank 0's shard (Shard(0) on a [2] device mesh), b is rank 1's shard "
        "(Shard(0) on a [2] device mesh): different slices of the same params (FSDP2 "
        "DTensors), not two states to compare entry by entry",
        "Hint: give the same rank of two checkpoints, or the two folders of all rank files "
        "(each read as the whole state)"]
    r = run_cli("diff", CASE / "rank1.pt", CASE)  # one rank's shard against the whole
    assert r.returncode == 2
    assert r.stderr.startswith("Error: a is rank 1's shard (Shard(0) on a [2] device mesh), "
                               "b is a whole state: different slices")
    r = run_cli("diff", CASE / "rank1.pt", CASE / "rank1.pt")  # the same rank: compared
    assert r.returncode == 0, r.stderr
    r = run_cli("diff", CASE, CASE)  # the whole states
    assert r.returncode == 0, r.stderr


def test_set_on_a_rank_folder_says_what_it_is(run_cli, tmp_path):
    """R1: 'is a directory. Hint: give a checkpoint file ...', though inspect reads it."""
    r = run_cli("set", CASE, "--lr", "0.1", "-o", tmp_path / "out.pt")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"Error: {CASE} is an FSDP2 rank folder (one file per rank, each DTensor a shard), "
        "which set does not rewrite",
        f"Hint: convert it to one file (the whole state) and set that: optstate convert "
        f"{CASE} one.pt"]
    assert list(tmp_path.iterdir()) == []


def test_set_on_one_rank_file_does_not_call_dtensor_a_foreign_library(run_cli, tmp_path):
    r = run_cli("set", CASE / "rank0.pt", "--lr", "0.1", "-o", tmp_path / "out.pt")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "Error: the checkpoint holds torch.distributed.tensor.DTensor objects, which optstate "
        "reads as stand-ins (torch's class is never imported for a safe load) but cannot "
        "write back",
        "Hint: for FSDP2 rank files, convert the folder of all of them to one file and "
        "change that; or change them with torch.distributed"]


def test_the_rank_folder_format_is_named_in_words(run_cli):
    r = run_cli("inspect", CASE, "--no-stats")
    assert r.returncode == 0, r.stderr
    assert "fsdp2-ranks" not in r.stdout
    assert ("format    FSDP2 rank files (one torch.save per rank; DTensors joined)\n"
            "          FSDP2, 2 ranks, Shard(0) on a [2] device mesh\n") in r.stdout


def test_unsafe_lets_no_torch_log_line_through(run_cli):
    """R1: a 'W... device_mesh.py:396] ... pickling/unpickling of the DeviceMesh' line."""
    r = run_cli("inspect", CASE, "--unsafe", "--no-stats")
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stderr.splitlines()] == ["WARNING"]


def test_a_folder_read_as_one_state_is_not_called_a_file(run_cli):
    r = run_cli("inspect", CASE, "--no-stats")
    assert "found at  top level (the whole checkpoint is the optimizer state)" in r.stdout
