"""DCP folders read without torch (``io/native_dcp.py``): the same tree as torch's path,
tensors read only when touched, and everything odd left to torch's path and its messages."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from optstate.base.errors import CheckpointError, UnsafeCheckpointError
from optstate.base.limits import LimitError
from optstate.io.dcp import DcpCheckpoint
from optstate.io.native_dcp import NativeDcp, layout_native, read_dcp_native
from optstate.io.native_tensor import NativeTensor, NativeUnsupported, as_torch
from optstate.io.source import open_source
from tests.test_dcp import dcp_save

FIXTURES = Path(__file__).parent / "fixtures" / "runs" / "dcp"


def trained(opt_class=torch.optim.Adam, steps: int = 3, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = opt_class(model.parameters(), **kw)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return model, opt


def _build(root: Path) -> dict[str, Path]:
    """DCP folders of the layouts the suite writes, one process each."""
    model, opt = trained(lr=0.01, weight_decay=0.1)
    out = {
        "fqn": dcp_save(get_optimizer_state_dict(model, opt), root / "fqn"),
        "pos": dcp_save(opt.state_dict(), root / "pos"),
        "fresh": dcp_save(torch.optim.Adam(nn.Linear(2, 2).parameters()).state_dict(),
                          root / "fresh"),
        "app": dcp_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "epoch": 3, "nested": [{"a": 1}, [2, 3.5]]}, root / "app"),
    }
    _, sgd = trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    out["sgd"] = dcp_save(sgd.state_dict(), root / "sgd")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    out["dtypes"] = dcp_save({
        "state": {0: {"step": torch.tensor(7), "exp_avg": base.to(torch.bfloat16),
                      "exp_avg_sq": base.to(torch.float16),
                      "fp8": (base / 10).to(torch.float8_e4m3fn),
                      "f64": base.double() - 0.5, "mask": base > 5,
                      "view": base.t(),  # stored as a transposed view of its storage
                      "slice": base[1:3, 2:5],
                      "nan": torch.tensor([1.0, float("nan"), float("inf")]),
                      "u16": torch.arange(5).to(torch.uint16),
                      "wide_view": torch.randn(80, 60, generator=torch.Generator().manual_seed(1)
                                               ).t()}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": "g"}],
    }, root / "dtypes")
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("native_dcp"))


@pytest.fixture
def fqn(tmp_path, folders) -> Path:
    """A private copy, to damage."""
    return Path(shutil.copytree(folders["fqn"], tmp_path / "fqn"))


def same(a, b, where: str = "") -> None:
    """The native tree equals torch's: containers and values exactly, each NativeTensor
    with a torch tensor of the same dtype, shape and bytes (and the same layout info)."""
    if isinstance(a, NativeTensor):
        assert isinstance(b, torch.Tensor), where
        x, y = as_torch(a), b.load() if hasattr(b, "load") else b
        assert (x.dtype, x.shape) == (y.dtype, y.shape), where
        assert x.is_contiguous(), where
        raw = [t.reshape(-1).view(torch.uint8).tolist() for t in (x, y)]
        assert raw[0] == raw[1], where
        assert a.info == b.info, where
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


def _tensors(obj) -> list[NativeTensor]:
    if isinstance(obj, NativeTensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _check_same_as_torch(folder: Path) -> None:
    native = open_source(folder, reader="native")
    assert (native.reader, native.reader_note) == ("native", None)
    ref = open_source(folder)
    assert ref.reader == "torch"
    same(native.obj, ref.obj)
    for field in ("path", "file", "format", "bytes", "details", "notes", "summary",
                  "siblings", "sibling_files", "read"):
        assert getattr(native, field) == getattr(ref, field), field
    assert (native.walk.tensors, native.walk.nodes, native.walk.depth, native.walk.dtypes) == (
        ref.walk.tensors, ref.walk.nodes, ref.walk.depth, ref.walk.dtypes)


@pytest.mark.parametrize("name", ["fqn", "pos", "fresh", "app", "sgd", "dtypes"])
def test_same_tree_as_the_torch_path(folders, name):
    _check_same_as_torch(folders[name])


@pytest.mark.parametrize("step", [10, 20, 30, 40, 50])
def test_the_run_fixture_reads_the_same(step):
    """Written by torch 2.14.1 (the pickle of another version than the venv's)."""
    _check_same_as_torch(FIXTURES / f"step_{step}")


@pytest.mark.slow
def test_a_two_rank_sharded_folder_is_put_together_as_torch_does(cli, tmp_path, monkeypatch):
    """simulate --world-size 2: each moment split in two chunks (one of them empty), the
    chunks copied into one buffer, byte for byte what torch's path assembles."""
    r = cli("simulate", "-O", "adam", "--shape", "5x3", "--shape", "7", "--group",
            "1x4 lr=0.2", "--steps", "3", "--seed", "3", "--world-size", "2",
            "--save", tmp_path / "sharded", "--json")
    assert r.exit_code == 0, r.stderr
    folder = tmp_path / "sharded"
    md = DcpCheckpoint(folder).metadata
    split = [k for k, v in md.state_dict_metadata.items()
             if len(getattr(v, "chunks", ())) == 2]
    assert len(split) == 6
    _check_same_as_torch(folder)
    from optstate.io.dcp_layout import layout_report

    assert layout_native(folder) == layout_report(str(folder))
    native = _json(cli, monkeypatch, "native", "inspect", folder)
    assert native["file"]["reader"] == "native"
    _close(native, _json(cli, monkeypatch, "torch", "inspect", folder))
    monkeypatch.delenv("OPTSTATE_READER")
    _overlapping_chunks_are_left_to_torch(folder, split[0])


def _overlapping_chunks_are_left_to_torch(folder: Path, key: str) -> None:
    """Chunks whose sizes add up to the tensor's but that overlap (leaving a hole): the
    native reader does not guess what the hole holds; torch's path reads the tensor."""
    md = pickle.loads((folder / ".metadata").read_bytes())
    entry = md.state_dict_metadata[key]
    (o0, _), (o1, s1) = [(tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks]
    moved = torch.Size([o1[0] - 1, *o1[1:]])
    entry.chunks[1].offsets = moved
    for index in list(md.storage_data):
        if index.fqn == key and tuple(index.offset) == o1:
            info = md.storage_data.pop(index)
            md.storage_data[type(index)(key, moved, index.index)] = info
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    ckpt = NativeDcp(folder)
    with pytest.raises(NativeUnsupported, match="overlap"):
        ckpt.tensor_bytes(key)
    src = open_source(folder, reader="native")
    assert src.reader == "native", src.reader_note
    t = src.obj
    for part in ckpt.md.paths[key]:
        t = t[part]
    assert len(bytes(t.storage.buffer)) == t.numel() * 4  # read by torch's path


def test_structure_reads_no_chunk(fqn):
    """Every tensor chunk destroyed: opening reads none of them (``--no-stats``); touching
    one reads it through torch's path, with torch's message."""
    md = DcpCheckpoint(fqn).metadata
    for index, info in md.storage_data.items():
        if index.offset is not None:  # a tensor chunk, not a value
            with open(fqn / info.relative_path, "r+b") as f:
                f.seek(info.offset)
                f.write(b"\xff" * info.length)
    src = open_source(fqn, reader="native")
    assert src.reader == "native"
    t = src.obj["state"]["0.weight"]["exp_avg"]
    assert (t.shape, str(t.dtype), t.numel()) == ((4, 3), "torch.float32", 12)
    with pytest.raises(CheckpointError) as e:
        t.tolist()
    assert e.value.message.startswith("cannot read the tensor state.0.weight.exp_avg from ")


def test_reading_every_tensor_imports_no_torch(folders):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from optstate.io.source import open_source\n"
        "from optstate.io.native_tensor import NativeTensor\n"
        "def leaves(o):\n"
        "    if isinstance(o, NativeTensor): yield o\n"
        "    elif isinstance(o, dict): yield from (t for v in o.values() for t in leaves(v))\n"
        "    elif isinstance(o, (list, tuple)): yield from (t for v in o for t in leaves(v))\n"
        "n = 0\n"
        "for p in sys.argv[1:]:\n"
        "    src = open_source(Path(p), reader='native')\n"
        "    assert src.reader == 'native', src.reader_note\n"
        "    for t in leaves(src.obj):\n"
        "        assert len(bytes(t.storage.buffer)) == t.numel() * t.element_size()\n"
        "        t.tolist(); n += 1\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(n)\n"
    )
    paths = [str(folders[k]) for k in ("fqn", "app", "dtypes")] + [str(FIXTURES / "step_10")]
    env = {k: v for k, v in os.environ.items() if k != "OPTSTATE_READER"}
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 12 + 16 + 11 + 16


def test_an_assembled_tensor_is_read_once_and_a_mapped_one_is_a_view(folders):
    got = read_dcp_native(folders["dtypes"])
    state = got.obj["state"][0]
    view = state["view"]  # a transposed view in its chunk: copied into a contiguous buffer
    assert as_torch(view).tolist() == torch.arange(24.0).reshape(4, 6).t().tolist()
    assert isinstance(view.storage.buffer.obj, bytearray)
    assert view.storage.buffer is view.storage.buffer  # kept, not read again
    assert view.is_contiguous() and view.stride() == (4, 1)


@pytest.mark.parametrize("name", ["fqn", "app", "dtypes"])
def test_layout_from_the_metadata_alone(folders, name):
    from optstate.io.dcp_layout import layout_report

    assert layout_native(folders[name]) == layout_report(str(folders[name]))
    assert layout_native(FIXTURES / "step_10") == layout_report(str(FIXTURES / "step_10"))


# ----------------------------------------------------------------------------- refusals


class _Touch:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_hostile_metadata_is_left_to_torch_and_its_message(tmp_path, fqn):
    marker = tmp_path / "pwned"
    (fqn / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(NativeUnsupported, match="pathlib.Path.touch"):
        read_dcp_native(fqn)
    with pytest.raises(UnsafeCheckpointError) as e:
        open_source(fqn, reader="native")
    assert e.value.message == (f"{fqn}/.metadata needs pathlib.Path.touch, which is not DCP "
                               "metadata; refused without running it")
    assert not marker.exists()


def test_hostile_value_is_left_to_torch_and_its_message(tmp_path):
    marker = tmp_path / "pwned"
    folder = dcp_save({"state": {}, "param_groups": [{"lr": _Touch(marker), "params": []}]},
                      tmp_path / "evil")
    with pytest.raises(NativeUnsupported, match="a value needs "):
        read_dcp_native(folder)
    with pytest.raises(UnsafeCheckpointError, match="the hyperparameters need"):
        open_source(folder, reader="native")
    assert not marker.exists()


# GLOBAL torch.<dtype>, {"itemsize": 1}, BUILD: a pickle writing into what its global names
_REWRITE_DTYPE = b"\x80\x02ctorch\n%s\n}X\x08\x00\x00\x00itemsizeK\x01sb."


@pytest.mark.parametrize("name", [b"float32", b"FloatStorage", b"float8_e4m3fn"])
def test_a_pickle_cannot_rewrite_the_shared_dtypes(fqn, name):
    """The unpicklers hand out dtype names, never the process-wide NativeDtype objects,
    which a BUILD would rewrite (float32 of itemsize 1: later reads out of bounds)."""
    from optstate.io import native_dcp
    from optstate.io.native_tensor import DTYPES

    (fqn / ".metadata").write_bytes(_REWRITE_DTYPE % name)
    with pytest.raises(NativeUnsupported):
        read_dcp_native(fqn)
    with pytest.raises(NativeUnsupported):
        native_dcp._unpickle(native_dcp._ChunkUnpickler, _REWRITE_DTYPE % name, "a chunk")
    assert [d.itemsize for d in (DTYPES["float32"], DTYPES["float8_e4m3fn"])] == [4, 1]


@pytest.mark.parametrize("damage", ["truncate", "missing", "chunks", "rank_file"])
def test_damage_gets_the_torch_path_verdict(fqn, damage):
    meta = fqn / ".metadata"
    if damage == "truncate":
        meta.write_bytes(meta.read_bytes()[:len(meta.read_bytes()) // 2])
    elif damage == "missing":
        (fqn / "__0_0.distcp").unlink()
    elif damage == "rank_file":
        data = (fqn / "__0_0.distcp").read_bytes()
        (fqn / "__0_0.distcp").write_bytes(data[:len(data) // 2])
    else:
        md = DcpCheckpoint(fqn).metadata
        entry = md.state_dict_metadata["state.0.weight.exp_avg"]
        entry.chunks = entry.chunks + entry.chunks
        meta.write_bytes(pickle.dumps(md))
    with pytest.raises(NativeUnsupported):
        read_dcp_native(fqn)
    with pytest.raises(CheckpointError) as torch_error:
        open_source(fqn)
    with pytest.raises(CheckpointError) as native_error:
        open_source(fqn, reader="native")
    assert (type(native_error.value), native_error.value.message, native_error.value.hint) == (
        type(torch_error.value), torch_error.value.message, torch_error.value.hint)


def test_the_metadata_prescan_limits_come_first(fqn, monkeypatch):
    monkeypatch.setenv("OPTSTATE_LIMITS", "string=8")
    with pytest.raises(LimitError) as native_error:
        read_dcp_native(fqn)
    with pytest.raises(LimitError) as torch_error:
        open_source(fqn)
    assert native_error.value.message == torch_error.value.message


def test_the_metadata_checks_are_torchs_for_every_path(fqn, monkeypatch):
    """Both readers check ``.metadata`` with the same code (``dcp_metadata.check_metadata``):
    a path part past the ``string`` limit (a pathlib path, joined from parts the pre-scan
    lets by), of a key the metadata does not even list, makes the native reader give way,
    and both give torch's path's LimitError."""
    from pathlib import PurePosixPath

    md = DcpCheckpoint(fqn).metadata
    md.planner_data["unlisted"] = (PurePosixPath("a" * 1500, "b" * 1500),)
    (fqn / ".metadata").write_bytes(pickle.dumps(md))
    monkeypatch.setenv("OPTSTATE_LIMITS", "string=2000")
    with pytest.raises(NativeUnsupported, match="has a part of 3,001 characters"):
        read_dcp_native(fqn)
    with pytest.raises(LimitError) as torch_error:
        open_source(fqn)
    with pytest.raises(LimitError) as native_error:
        open_source(fqn, reader="native")
    assert native_error.value.message == torch_error.value.message


def test_optstate_reader_torch_forces_the_torch_path(folders, monkeypatch):
    monkeypatch.setenv("OPTSTATE_READER", "torch")
    src = open_source(folders["fqn"], reader="auto")
    assert (src.reader, src.reader_note) == ("torch", "OPTSTATE_READER=torch")


# ----------------------------------------------------------------------------- the CLI


def _close(native, ref):
    """The same JSON through both readers: the reader keys aside, float sums within
    ``numeric.tolerance.sum_rtol`` of their numel (``test_reader_equivalence.differences``,
    the one statement of what may differ)."""
    from tests.test_reader_equivalence import differences

    found = differences(ref, native)
    assert not found, found


def _json(cli, monkeypatch, reader: str, *args):
    monkeypatch.setenv("OPTSTATE_READER", reader)
    r = cli(*args, "--json")
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", ["fqn", "pos", "app", "sgd", "dtypes"])
def test_inspect_json_is_the_same_through_both_readers(cli, monkeypatch, folders, name):
    native = _json(cli, monkeypatch, "native", "inspect", folders[name])
    ref = _json(cli, monkeypatch, "torch", "inspect", folders[name])
    if "reader" in ref["file"]:  # once inspect asks for reader="auto"
        assert native["file"]["reader"] == "native", native["file"].get("reader_note")
    _close(native, ref)


def test_diff_json_is_the_same_through_both_readers(cli, monkeypatch, folders):
    a, b = FIXTURES / "step_10", FIXTURES / "step_50"
    native = _json(cli, monkeypatch, "native", "diff", a, b)
    ref = _json(cli, monkeypatch, "torch", "diff", a, b)
    _close(native, ref)


# ----------------------------------------------------- hostile pickles (R1, issue #22)

# GLOBAL <module> <name>, (None, {<attr>: <value>}), BUILD, POP: a pickle that writes into
# whatever the unpickler hands out for a global, before the real metadata
def _build_on(module: str, name: str, attr: str, value: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return b"X" + len(b).to_bytes(4, "little") + b
    return (f"c{module}\n{name}\n".encode() + b"N}" + s(attr.encode()) + value + b"s\x86b0")


_POISON_CHECK = r"""
import io, pathlib, pickle, sys
from pathlib import Path
folder, target = Path(sys.argv[1]), sys.argv[2]
before = str(Path("/etc/hosts"))
from optstate.io import dcp_metadata, native_dcp
from optstate.io.native_tensor import NativeUnsupported
from optstate.base.errors import CheckpointError
from optstate.io.source import open_source
out = []
try:
    native_dcp.read_dcp_native(folder)
    out.append("native read")
except NativeUnsupported as e:
    out.append("native NativeUnsupported")
for reader in ("native", "torch"):
    try:
        open_source(folder, reader=reader)
        out.append(reader + " read")
    except CheckpointError as e:
        out.append(reader + " Error: " + e.message)
import torch.distributed.checkpoint.metadata as m, torch.serialization as ser
hit = [x.__name__ for x in (pathlib.PurePosixPath, pathlib.PosixPath, m.Metadata,
                   m.TensorStorageMetadata, m._MEM_FORMAT_ENCODING, ser._get_layout)
       if "poisoned" in vars(x)]
print(repr((before, str(Path("/etc/hosts")), hit, out)))
"""


def _poison_run(folder: Path, target: str) -> tuple[str, str, list, list]:
    r = subprocess.run([sys.executable, "-c", _POISON_CHECK, str(folder), target],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import ast

    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module,name,attr", [
    ("pathlib", "PurePosixPath", "_str"), ("pathlib", "PosixPath", "_str"),
    ("torch.distributed.checkpoint.metadata", "Metadata", "poisoned"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata", "poisoned"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", "poisoned"),
    ("torch.serialization", "_get_layout", "poisoned"),
    ("torch.serialization", "_get_layout", "__defaults__"),
])
def test_a_metadata_pickle_cannot_rewrite_a_class_of_the_process(fqn, tmp_path, module, name,
                                                                  attr):
    """R1 F1: a BUILD on a global the metadata unpicklers hand out (``pathlib``'s
    ``_str`` made every Path of the process one attacker-chosen file): both readers
    refuse it, and nothing of the process changes; the verdict is torch's one line."""
    target = str(tmp_path / "elsewhere")
    value = (b"(}t" if attr == "__defaults__" else
             b"X" + len(target.encode()).to_bytes(4, "little") + target.encode())
    meta = fqn / ".metadata"
    orig = meta.read_bytes()
    meta.write_bytes(orig[:2] + _build_on(module, name, attr, value) + orig[2:])
    before, after, hit, out = _poison_run(fqn, target)
    assert (after, hit) == (before, []), out
    assert out[0] == "native NativeUnsupported"
    assert out[1].removeprefix("native ") == out[2].removeprefix("torch ")
    assert out[2] == f"torch Error: {fqn}/.metadata is damaged: a pickle may not change {name}"


def test_a_chunk_pickle_cannot_rewrite_the_rebuild_functions():
    """R1 F6: GLOBAL torch._utils._rebuild_tensor_v2, BUILD __defaults__: the chunk
    unpickler hands out a locked object per load, never its module-level function."""
    script = r"""
import io, pickle
from optstate.io import native_dcp as nd
payload = (b"ctorch._utils\n_rebuild_tensor_v2\n" + b"N}X\x0c\x00\x00\x00__defaults__(}"
           b"X\x01\x00\x00\x00xK\x01st" b"s\x86b.")
seen = [f.__defaults__ for f in (nd._rebuild_tensor, nd._rebuild_tensor_v3)]
for name in (b"_rebuild_tensor_v2", b"_rebuild_tensor_v3"):
    try:
        nd._unpickle(nd._ChunkUnpickler, payload.replace(b"_rebuild_tensor_v2", name), "c")
        print("loaded")
    except Exception as e:
        print(type(e).__name__)
print(seen == [f.__defaults__ for f in (nd._rebuild_tensor, nd._rebuild_tensor_v3)])
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.split() == ["NativeUnsupported", "NativeUnsupported", "True"], r.stderr


def test_the_overlap_check_is_a_sort_not_every_pair():
    """R1 F9: 4000 one-element chunks were 8 million pair tests (and the check ran for
    every load): now one sorted pass, each run of elements compared with the previous."""
    from optstate.io.native_dcp import _overlap

    n = 4000
    chunks = [((i,), (1,)) for i in range(n)][::-1]
    assert _overlap((n,), chunks) == (False, n - 1)
    assert _overlap((n,), [((0,), (2,)), *chunks[:-1]])[0] is True  # element 1 twice
    # columns of a 2-d tensor: each chunk is one run per row
    cols = [((0, j), (3, 1)) for j in range(5)]
    assert _overlap((3, 5), cols) == (False, 14)
    assert _overlap((3, 5), [((0, 0), (3, 2)), ((0, 1), (3, 1)), ((0, 3), (3, 2))])[0]
    assert _overlap((3, 5), [((0, 0), (3, 0)), ((0, 0), (3, 5))]) == (False, 0)  # one run
    assert _overlap((), [((), ())]) == (False, 0)
    assert _overlap((2, 2, 2), [((0, 0, 0), (2, 1, 2)), ((0, 1, 0), (2, 1, 2))]) == (False, 3)
    assert _overlap((2, 2, 2), [((0, 0, 0), (2, 2, 1)), ((0, 1, 0), (2, 1, 2))])[0]


def test_an_assembled_tensor_is_checked_for_overlap_once(folders, monkeypatch, tmp_path):
    from optstate.io import native_dcp

    calls = []
    real = native_dcp._overlap
    monkeypatch.setattr(native_dcp, "_overlap", lambda *a: calls.append(a) or real(*a))
    folder = tmp_path / "split"
    dcp_save({"state": {0: {"exp_avg": torch.arange(12.0).reshape(4, 3)}},
              "param_groups": [{"lr": 0.1, "params": [0]}]}, folder)
    md = pickle.loads((folder / ".metadata").read_bytes())
    _split_in_two(md, "state.0.exp_avg")
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    ckpt = NativeDcp(folder)
    for _ in range(3):
        assert bytes(ckpt.tensor_bytes("state.0.exp_avg")) == torch.arange(
            12.0).numpy().tobytes()
    assert len(calls) == 1


def _split_in_two(md, key: str) -> None:
    """``key``'s one chunk (4 x 3) and a second, empty one: two chunks to check, copied
    into one buffer."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    entry = md.state_dict_metadata[key]
    empty = ChunkStorageMetadata(torch.Size([4, 0]), torch.Size([0, 3]))
    entry.chunks = [*entry.chunks, empty]
    info = next(v for k, v in md.storage_data.items() if k.fqn == key)
    md.storage_data[MetadataIndex(key, torch.Size([4, 0]), 1)] = info


def test_an_item_running_into_the_next_is_left_to_torch(fqn):
    """R1 F3: an item's length in ``.metadata`` runs into the next item's zip: the
    native reader read that zip (the next tensor's numbers, exit 0); it now reads an item
    only when its end of central directory ends the item's bytes, else torch's path."""
    import dataclasses

    md = pickle.loads((fqn / ".metadata").read_bytes())
    items = sorted(md.storage_data.items(), key=lambda kv: (kv[1].relative_path,
                                                            kv[1].offset))
    key = next(a.fqn for (a, x), (b, y) in zip(items, items[1:], strict=False)
               if a.fqn.endswith(".exp_avg") and b.fqn == a.fqn + "_sq"
               and x.relative_path == y.relative_path)
    (index, info), = [(k, v) for k, v in md.storage_data.items() if k.fqn == key]
    nxt = next(v for k, v in md.storage_data.items() if k.fqn == key + "_sq")
    md.storage_data[index] = dataclasses.replace(info, length=info.length + nxt.length)
    (fqn / ".metadata").write_bytes(pickle.dumps(md))
    ckpt = NativeDcp(fqn)
    shape, dtype, chunks = ckpt.md.tensors[key]
    with pytest.raises(NativeUnsupported, match="end of central directory"):
        ckpt.chunk(key, chunks[0][0], chunks[0][1], dtype)
    native, ref = open_source(fqn, reader="native"), open_source(fqn)
    path = ckpt.md.paths[key]
    a, b = native.obj, ref.obj
    for part in path:
        a, b = a[part], b[part]
    assert as_torch(a).tolist() == (b.load() if hasattr(b, "load") else b).tolist()
