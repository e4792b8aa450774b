"""Reading torch.distributed.checkpoint (DCP) folders: structure from metadata, tensors one
at a time, safely; inspect and diff work on them as on torch.save files."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from optstate.base.errors import CheckpointError, UnsafeCheckpointError
from optstate.io.dcp import DcpCheckpoint
from optstate.io.dcp_layout import chunk_layout
from optstate.io.lazy import KEPT, LazyTensor, materialize
from optstate.io.source import open_source
from optstate.numeric.stats import summarize


def dcp_save(obj, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process on purpose
        dcp.save(obj, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    return folder


def trained(steps: int = 3):
    """A two-layer model and its Adam optimizer after ``steps`` real steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return model, opt


def same(a, b) -> bool:
    """Exactly equal trees: same types, tensor dtypes and values."""
    if isinstance(a, torch.Tensor):
        return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


@pytest.fixture
def adam():
    return trained()


@pytest.fixture
def fqn_dir(tmp_path, adam):
    """The layout FSDP users save: get_optimizer_state_dict (keys are parameter names)."""
    model, opt = adam
    return dcp_save(get_optimizer_state_dict(model, opt), tmp_path / "fqn_dcp")


@pytest.fixture
def pos_dirs(tmp_path, adam):
    """The same optimizer's plain state_dict(), as a DCP folder and a torch.save file."""
    _, opt = adam
    sd = opt.state_dict()
    torch.save(sd, tmp_path / "adam.pt")
    return dcp_save(sd, tmp_path / "pos_dcp"), tmp_path / "adam.pt"


# ----------------------------------------------------------------------------- LazyTensor


def test_lazy_tensor_structure_reads_no_data():
    calls = []

    def loader():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    t = LazyTensor((2, 3), torch.float32, loader)
    assert isinstance(t, torch.Tensor)
    assert (tuple(t.shape), t.dtype, t.numel(), t.element_size(), t.dim()) == (
        (2, 3), torch.float32, 6, 4, 2)
    assert repr(t) == "LazyTensor(shape=[2, 3], dtype=torch.float32)"
    assert calls == []
    assert summarize(t) == summarize(torch.arange(6.0).reshape(2, 3))
    assert calls == [1]  # summarize detaches once, then works on the plain tensor
    assert type(t + 1) is torch.Tensor
    assert torch.equal(t * 2, torch.arange(6.0).reshape(2, 3) * 2)


def test_lazy_tensor_pickles_its_data_not_its_loader(tmp_path):
    t = LazyTensor((3,), torch.float64, lambda: torch.tensor([1.0, -2.0, 3.5], dtype=torch.float64))
    torch.save({"x": t}, tmp_path / "x.pt")
    back = torch.load(tmp_path / "x.pt", weights_only=True)
    assert type(back["x"]) is torch.Tensor
    assert torch.equal(back["x"], torch.tensor([1.0, -2.0, 3.5], dtype=torch.float64))
    assert same(materialize({"a": [t, (t, 1)]}),
                {"a": [back["x"], (back["x"], 1)]})


def test_lazy_tensor_refuses_a_loader_that_disagrees_with_the_metadata():
    t = LazyTensor((2,), torch.float32, lambda: torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"expected torch.float32 \(2,\)"):
        t.sum()


# ----------------------------------------------------------------------------- reading


def test_fqn_layout_reads_back_exactly(fqn_dir, adam):
    model, opt = adam
    expected = get_optimizer_state_dict(model, opt)
    src = open_source(fqn_dir)
    assert src.format == "dcp"
    assert list(src.obj["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert src.obj["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert all(isinstance(v, LazyTensor) for st in src.obj["state"].values()
               for v in st.values())
    assert same(materialize(src.obj), expected)


def test_positional_layout_reads_back_exactly(pos_dirs, adam):
    """DCP writes state keys 0, 1, ... as '0', '1' and drops nothing else; we restore them."""
    folder, _ = pos_dirs
    assert same(materialize(open_source(folder).obj), adam[1].state_dict())


def test_fresh_optimizer_keeps_its_empty_state(tmp_path):
    params = [torch.zeros(2, requires_grad=True)]
    sd = torch.optim.SGD(params, lr=0.1).state_dict()
    folder = dcp_save(sd, tmp_path / "fresh")
    assert same(open_source(folder).obj, sd)


def test_nested_containers_come_back_as_lists_and_dicts(tmp_path):
    obj = {"optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(2)}},
                                 "param_groups": [{"lr": 0.5, "params": [0]}]}],
           "epoch": 3, "tag": "x"}
    folder = dcp_save(obj, tmp_path / "lightning")
    assert same(materialize(open_source(folder).obj), obj)


def test_tensors_are_loaded_one_at_a_time(fqn_dir):
    """Tensors are read on demand, and only the last ``lazy.KEPT`` stay in memory (a param's
    moments, looked at again after their statistics, are not read twice)."""
    ckpt = DcpCheckpoint(fqn_dir)
    obj = ckpt.rebuild()
    assert not ckpt._cached  # opening read metadata and hyperparameters only
    w = obj["state"]["1.weight"]["exp_avg"]
    assert float(w.sum()) == float(ckpt.load_tensor("state.1.weight.exp_avg").sum())
    assert list(ckpt._cached) == ["state.1.weight.exp_avg"]
    obj["state"]["0.bias"]["exp_avg_sq"].max()
    obj["state"]["0.bias"]["exp_avg"].max()
    assert KEPT == 2 and list(ckpt._cached) == ["state.0.bias.exp_avg_sq", "state.0.bias.exp_avg"]
    assert ckpt._scalars is None
    assert obj["state"]["1.bias"]["step"].item() == 3.0  # every step count, in one read
    assert sorted(ckpt._scalars) == [f"state.{n}.step" for n in
                                     ("0.bias", "0.weight", "1.bias", "1.weight")]
    # the big-tensor slots are untouched
    assert list(ckpt._cached) == ["state.0.bias.exp_avg_sq", "state.0.bias.exp_avg"]


def test_a_dcp_folder_passes_the_same_walk_as_a_file(fqn_dir, tmp_path):
    """open_source is the one way in: a DCP folder's tree is walked like a loaded file's,
    and the report (kept on the Source) counts its lazy tensors without reading them."""
    src = open_source(fqn_dir)
    assert src.format == "dcp" and src.walk is not None
    assert src.walk.tensors == len(DcpCheckpoint(fqn_dir).tensor_keys()) == 12
    assert src.walk.first_sparse is None
    sparse = {"state": {0: {"step": torch.tensor(1.0), "m": torch.eye(3).to_sparse()}},
              "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save(sparse, tmp_path / "sparse.pt")
    assert open_source(tmp_path / "sparse.pt").walk.first_sparse == "state[0].m"


def test_chunk_layout_of_a_single_process_save(fqn_dir):
    layout = chunk_layout(open_source(fqn_dir).obj)
    assert layout["state.0.weight.exp_avg"] == [
        {"offsets": [0, 0], "sizes": [4, 3], "file": "__0_0.distcp"}]
    assert layout["state.0.weight.step"] == [{"offsets": [], "sizes": [], "file": "__0_0.distcp"}]
    assert len(layout) == 12


def _corrupt_tensor_data(folder: Path, keys: list[str]) -> None:
    """Overwrite the stored bytes of ``keys`` (tensors) with garbage, leaving the rest."""
    md = DcpCheckpoint(folder).metadata
    for index, info in md.storage_data.items():
        if index.fqn in keys:
            with open(folder / info.relative_path, "r+b") as f:
                f.seek(info.offset)
                f.write(b"\xff" * info.length)


def test_no_stats_reads_no_tensor_data(cli, fqn_dir):
    """With the data of every non-scalar tensor destroyed, --no-stats still works (it never
    reads them) and statistics fail with one clean line."""
    md = DcpCheckpoint(fqn_dir).metadata
    big = [k for k, v in md.state_dict_metadata.items()
           if getattr(v, "size", None) is not None and len(v.size) > 0]
    assert len(big) == 8
    _corrupt_tensor_data(fqn_dir, big)
    r = cli("inspect", fqn_dir, "--no-stats", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    entry = rep["params"][0]["state"]["exp_avg"]
    assert entry == {"shape": [4, 3], "dtype": "float32", "numel": 12, "bytes": 48}
    r = cli("inspect", fqn_dir)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: cannot read the tensor state.0.weight.exp_avg from ")
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- safety


class _Touch:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_hostile_metadata_is_refused_without_running(tmp_path, fqn_dir):
    marker = tmp_path / "pwned"
    (fqn_dir / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"needs pathlib.Path.touch|not DCP metadata"):
        open_source(fqn_dir)
    assert not marker.exists()


def test_hostile_value_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    folder = dcp_save({"state": {}, "param_groups": [{"lr": _Touch(marker), "params": []}]},
                      tmp_path / "evil")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"the hyperparameters need \S+, which safe "
                       r"loading does not allow; refused without running it"):
        open_source(folder)
    assert not marker.exists()


def test_cli_refuses_hostile_metadata_in_one_line(cli, tmp_path, fqn_dir):
    (fqn_dir / ".metadata").write_bytes(pickle.dumps(_Touch(tmp_path / "pwned")))
    r = cli("inspect", fqn_dir)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"Error: {fqn_dir}/.metadata needs pathlib.Path.touch, which is not DCP metadata; "
        "refused without running it")
    assert not (tmp_path / "pwned").exists()


def test_missing_rank_file_is_one_error_with_a_hint(fqn_dir):
    (fqn_dir / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError) as e:
        open_source(fqn_dir)
    assert e.value.message == f"{fqn_dir} is an incomplete DCP checkpoint: __0_0.distcp missing"
    assert "every *.distcp" in e.value.hint


def test_damaged_metadata(fqn_dir):
    data = (fqn_dir / ".metadata").read_bytes()
    (fqn_dir / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        open_source(fqn_dir)
    assert e.value.message == f"{fqn_dir}/.metadata is damaged: pickle data was truncated"


# ----------------------------------------------------------------------------- inspect, diff


def test_inspect_dcp_equals_inspect_of_the_torch_save_file(cli, pos_dirs):
    folder, file = pos_dirs
    a = json.loads(cli("inspect", folder, "--json").stdout)
    b = json.loads(cli("inspect", file, "--json").stdout)
    assert a["file"]["format"] == "dcp"
    for key in ("params", "param_groups", "optimizer", "totals", "warnings"):
        assert a[key] == b[key], key


def test_inspect_shows_parameter_names(cli, fqn_dir, adam):
    rep = json.loads(cli("inspect", fqn_dir, "--json").stdout)
    assert [p["id"] for p in rep["params"]] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    _, opt = adam
    exp_avg = opt.state_dict()["state"][2]["exp_avg"]
    assert rep["params"][2]["state"]["exp_avg"]["norm"] == float(exp_avg.double().norm())
    assert rep["params"][2]["state"]["exp_avg"]["max"] == float(exp_avg.max())


def test_diff_across_formats(cli, pos_dirs, fqn_dir):
    folder, file = pos_dirs
    assert cli("diff", folder, file).exit_code == 0
    assert cli("diff", file, folder).exit_code == 0
    assert cli("diff", fqn_dir, folder).exit_code == 0  # matched by position


def test_diff_sees_one_more_step_across_formats(cli, tmp_path, pos_dirs):
    folder, _ = pos_dirs
    _, opt = trained(steps=4)
    torch.save(opt.state_dict(), tmp_path / "later.pt")
    r = cli("diff", folder, tmp_path / "later.pt", "--json")
    assert r.exit_code == 1
    paths = {c["path"] for c in json.loads(r.stdout)["changes"]}
    assert {"state[0].exp_avg", "state[3].exp_avg_sq", "state[2].step"} <= paths


@pytest.mark.parametrize("damage, what", [
    (lambda e: setattr(e, "size", torch.Size([4, -1])), "has a bad shape"),
    (lambda e: setattr(e.chunks[0], "sizes", torch.Size([5, 3])), "has a chunk outside its shape"),
    (lambda e: setattr(e.properties, "dtype", "float32"), "has no dtype"),
])
def test_inconsistent_metadata_is_one_error(fqn_dir, damage, what):
    from optstate.io.dcp_metadata import read_metadata

    md = read_metadata(fqn_dir)
    damage(md.state_dict_metadata["state.0.weight.exp_avg"])
    with open(fqn_dir / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(CheckpointError) as e:
        open_source(fqn_dir)
    assert e.value.message.startswith(
        f"{fqn_dir}/.metadata is damaged: key 'state.0.weight.exp_avg' {what}")


def test_app_state_with_model_and_optimizer(cli, tmp_path, adam):
    """The torchtitan / FSDP tutorial layout: one DCP folder with model and optimizer."""
    model, opt = adam
    folder = dcp_save({"model": model.state_dict(),
                       "optimizer": get_optimizer_state_dict(model, opt)}, tmp_path / "app")
    rep = json.loads(cli("inspect", folder, "--json").stdout)
    assert rep["location"] == "optimizer"
    assert [p["name"] for p in rep["params"]] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_truncated_rank_file_is_one_error(fqn_dir):
    data = (fqn_dir / "__0_0.distcp").read_bytes()
    (fqn_dir / "__0_0.distcp").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"__0_0.distcp is truncated: it ends before "
                                              "the data of state.1.bias.exp_avg_sq"):
        open_source(fqn_dir)


def test_chunks_must_cover_the_tensor(fqn_dir):
    """A missing chunk would leave uninitialised memory in the loaded tensor."""
    from optstate.io.dcp_metadata import read_metadata

    md = read_metadata(fqn_dir)
    entry = md.state_dict_metadata["state.0.weight.exp_avg"]
    entry.chunks[0].sizes = torch.Size([2, 3])
    with open(fqn_dir / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(CheckpointError, match="has chunks that do not cover its shape"):
        open_source(fqn_dir)


@pytest.mark.parametrize("target", [".metadata", "__0_0.distcp"])
def test_corrupted_bytes_never_escape_as_internal_errors(tmp_path, fqn_dir, target):
    """Random byte flips and truncations: each either still reads (DCP has no checksums, so
    a flipped tensor byte is a different value) or is one clean OptstateError."""
    import random
    import shutil

    from optstate.base.errors import OptstateError

    rng = random.Random(20261125)
    orig = (fqn_dir / target).read_bytes()
    outcomes = {"read": 0, "refused": 0}
    for i in range(60):
        case = tmp_path / f"case{i}"
        shutil.copytree(fqn_dir, case)
        data = bytearray(orig)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        (case / target).write_bytes(bytes(data))
        try:
            materialize(open_source(case).obj)
            outcomes["read"] += 1
        except OptstateError:
            outcomes["refused"] += 1
        shutil.rmtree(case)
    assert outcomes["refused"] > 0
