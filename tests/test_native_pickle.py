"""The native torch.save reader (``io/native_pickle.py``) against ``torch.load``.

Real torch.save files of real torch.optim states (and the odd values states carry) read
natively must give the same tree as ``torch.load(weights_only=True)``: containers of the
same types and keys, every tensor with the same dtype, shape, strides, storage offset and
storage bytes, storages shared where torch's are. Whatever the native reader does not
know raises ``NativeUnsupported``, and ``open_source(reader="auto")`` then says exactly
what the torch path says. Reading natively never imports torch (in a fresh process).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from optstate.base.errors import OptstateError
from optstate.io.native_pickle import NativeUnsupported, read_native
from optstate.io.native_tensor import NativeTensor, as_torch, dtype_name
from optstate.io.source import open_source
from optstate.io.torch_file import load_torch_file
from tests.conftest import ROOT
from tests.hostile_corpus import _rezip, _write_zip, _zip_members

# ----------------------------------------------------------------------- real states


def _trained(opt_cls, params, steps=3, **kw):
    opt = opt_cls(params, **kw)
    for i in range(steps):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.full_like(p, 0.25 * (i + 1)) + torch.randn_like(p) * 0.1
        opt.step()
    return opt.state_dict()


def adam_groups():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(torch.randn(2, 2, 2))]
    return _trained(torch.optim.Adam, [{"params": a}, {"params": b, "lr": 1e-2}])


def sgd_momentum():
    torch.manual_seed(1)
    ps = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(()))]
    return _trained(torch.optim.SGD, ps, lr=0.1, momentum=0.9)


def adamw_bf16():
    torch.manual_seed(2)
    ps = [torch.nn.Parameter(torch.randn(4, 4, dtype=torch.bfloat16)),
          torch.nn.Parameter(torch.randn(6, dtype=torch.float16))]
    return _trained(torch.optim.AdamW, ps, steps=2)


def odd_values():
    """Everything else torch.save writes into states: every dtype, views, shared and
    expanded storages, 0-d and empty tensors, Parameters, nested OrderedDicts, bytes."""
    torch.manual_seed(3)
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    shared = torch.randn(10)
    inner = OrderedDict(a=torch.ones(2), b=OrderedDict(c=torch.tensor(7, dtype=torch.int64)))
    state = adam_groups()
    state["extra"] = {
        "dtypes": {str(d): (torch.randn(5) * 10).to(d) for d in (
            torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
            torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.int8,
            torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
            torch.uint64, torch.bool)},
        "complex": [torch.randn(3, dtype=torch.complex64), torch.randn(2, dtype=torch.complex128)],
        "offset_view": base[2:, 3:],
        "transposed": base.t(),
        "strided": base[:, ::3],
        "row": base[4],
        "expanded": torch.arange(3.0)[None].expand(4, 3),
        "shared": (shared[:4], shared[2:], shared),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(3)),
        "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
        "nested": OrderedDict(inner=inner, n=1),
        "bytes": b"\x00\xffraw",
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "dtype": torch.bfloat16,
        "set": {1, 2, 3},
        "complex_scalar": 1 + 2j,
        "big_int": 2**70,
        "floats": [math.nan, math.inf, -0.0],
        "text": "é ✓",
        "none": None,
    }
    return state


STATES = {"adam_groups": adam_groups, "sgd_momentum": sgd_momentum,
          "adamw_bf16": adamw_bf16, "odd_values": odd_values}


def _storage_bytes(t: torch.Tensor) -> bytes:
    st = t.untyped_storage()
    return bytes(torch.empty(0, dtype=torch.uint8).set_(st).numpy().tobytes())


def assert_same_tree(native, ref, where="", storages=None):
    """``native`` (read_native's tree) is ``ref`` (torch.load's), field by field and byte
    by byte; ``storages`` pairs torch's storage addresses with NativeStorages 1:1."""
    storages = {} if storages is None else storages
    if isinstance(ref, torch.Tensor):
        assert type(native) is NativeTensor, where
        assert dtype_name(native.dtype) == dtype_name(ref.dtype), where
        assert native.shape == tuple(ref.shape), where
        assert native.stride() == ref.stride(), where
        assert native.storage_offset() == ref.storage_offset(), where
        assert bytes(native.storage.buffer) == _storage_bytes(ref), where
        def raw(t):  # the elements' bytes, in order
            return t.contiguous().reshape(-1).view(torch.uint8).tolist()

        assert raw(as_torch(native)) == raw(ref), where
        ptr = ref.untyped_storage().data_ptr()
        if ptr:  # empty storages have no address to share
            assert storages.setdefault(ptr, native.storage) is native.storage, where
        return
    if isinstance(ref, torch.Size):
        assert type(native) is tuple and native == tuple(ref), where
        return
    if isinstance(ref, torch.device):  # prints as torch's: the same report
        assert (str(native), repr(native)) == (str(ref), repr(ref)), where
        return
    if isinstance(ref, torch.dtype):
        assert dtype_name(native) == dtype_name(ref), where
        return
    assert type(native) is type(ref), where
    if isinstance(ref, dict):
        assert list(native) == list(ref), where
        for k in ref:
            assert_same_tree(native[k], ref[k], f"{where}/{k}", storages)
    elif isinstance(ref, (list, tuple)):
        assert len(native) == len(ref), where
        for i, (n, r) in enumerate(zip(native, ref, strict=True)):
            assert_same_tree(n, r, f"{where}/{i}", storages)
    elif isinstance(ref, float) and math.isnan(ref):
        assert math.isnan(native), where
    else:
        assert native == ref, where


def _native(path: Path):
    loaded = load_torch_file(path, reader="native")
    assert loaded.reader == "native", loaded.reader_note
    return loaded


@pytest.mark.parametrize("name", sorted(STATES))
def test_native_tree_is_torch_load(tmp_path, name):
    path = tmp_path / f"{name}.pt"
    torch.save(STATES[name](), path)
    loaded = _native(path)
    ref = torch.load(path, weights_only=True, map_location="cpu")
    storages: dict = {}
    assert_same_tree(loaded.obj, ref, storages=storages)
    assert len({id(s) for s in storages.values()}) == len(storages)  # 1:1
    # the walk sees what it sees over torch's tree
    torch_walk = load_torch_file(path, mmap=True).walk
    for field in ("nodes", "distinct", "depth", "tensors", "empty_tensors", "dtypes",
                  "expand_bytes", "expand_worst", "storage_bytes"):
        assert getattr(loaded.walk, field) == getattr(torch_walk, field), field


def test_shared_and_expanded_storages(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(odd_values(), path)
    extra = _native(path).obj["extra"]
    a, b, whole = extra["shared"]
    assert a.storage is b.storage is whole.storage
    assert (a.storage_offset(), b.storage_offset()) == (0, 2)
    assert extra["expanded"].stride() == (0, 1)
    assert extra["offset_view"].storage_offset() == 19
    assert not extra["transposed"].is_contiguous()
    assert extra["scalar"].item() == 3.5 and extra["scalar"].shape == ()
    assert extra["param"].info.get("parameter") is True
    assert extra["bytes"] == b"\x00\xffraw"


# --------------------------------------------------------------------------- refusals


def _one_tensor(tmp_path: Path) -> Path:
    path = tmp_path / "one.pt"
    torch.save({"state": {0: {"exp_avg": torch.arange(4.0)}}, "param_groups": []}, path)
    return path


def _pkl(path: Path) -> bytes:
    return dict((n.split("/", 1)[1], d) for n, d in _zip_members(path))["data.pkl"]


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def _os_system(tmp_path):
    return _rezip(_one_tensor(tmp_path), tmp_path / "system.pt",
                  replace={"data.pkl": pickle.dumps({"x": _System()}, protocol=2)})


def _sparse(tmp_path):
    path = tmp_path / "sparse.pt"
    torch.save({"state": {}, "param_groups": [], "s": torch.eye(3).to_sparse()}, path)
    return path


def _compressed(tmp_path):
    src = _one_tensor(tmp_path)
    return _write_zip(tmp_path / "deflated.pt", _zip_members(src), zipfile.ZIP_DEFLATED)


def _short_record(tmp_path):
    src = _one_tensor(tmp_path)
    return _rezip(src, tmp_path / "short.pt", replace={"data/0": b"\x00" * 12})


def _storage_too_big(tmp_path):
    """The pickle claims 8 floats for a record of 4."""
    src = _one_tensor(tmp_path)
    pkl, n = re.subn(rb"(cpu(?:q.)?)K\x04t", lambda m: m.group(1) + b"K\x08t", _pkl(src))
    assert n == 1
    return _rezip(src, tmp_path / "claims.pt", replace={"data.pkl": pkl})


def _tensor_outside(tmp_path):
    """A tensor of 6 elements over a storage of 4 (torch's set_ refuses it)."""
    src = _one_tensor(tmp_path)
    pkl = _pkl(src)
    assert pkl.count(b"K\x00K\x04\x85") == 1  # offset 0, size (4,)
    pkl = pkl.replace(b"K\x00K\x04\x85", b"K\x00K\x06\x85")
    return _rezip(src, tmp_path / "outside.pt", replace={"data.pkl": pkl})


def _big_endian(tmp_path):
    src = _one_tensor(tmp_path)
    return _rezip(src, tmp_path / "big.pt", replace={"byteorder": b"big"})


def _build_on_tensor(tmp_path):
    """BUILD (None, {"shape": (100,)}) on the tensor: its slots would be set past the
    checks of its constructor (torch's loader calls Tensor.set_ with that state)."""
    src = _one_tensor(tmp_path)
    pkl = _pkl(src)
    tail = b"N}X\x05\x00\x00\x00shapeKd\x85s\x86b"
    end = pkl.rindex(b"Rq")  # the exp_avg tensor's REDUCE, then its memo slot
    pkl = pkl[:end + 3] + tail + pkl[end + 3:]
    return _rezip(src, tmp_path / "build_tensor.pt", replace={"data.pkl": pkl})


def _build_on_global(tmp_path):
    """BUILD on the FloatStorage GLOBAL: it would change the type for every later file."""
    src = _one_tensor(tmp_path)
    build = b"N}X\x05\x00\x00\x00dtypeNs\x86b"  # (None, {"dtype": None}), BUILD
    pkl, n = re.subn(rb"FloatStorage\nq.", lambda m: m.group(0) + build, _pkl(src))
    assert n == 1
    return _rezip(src, tmp_path / "build_global.pt", replace={"data.pkl": pkl})


def _conjugate(tmp_path):
    path = tmp_path / "conj.pt"
    torch.save({"c": torch.randn(3, dtype=torch.complex64).conj()}, path)
    return path


REFUSED = {"conjugate": (_conjugate, "conjugate or negative bit"),
           "build_on_tensor": (_build_on_tensor, "NativeTensor objects cannot be changed"),
           "build_on_global": (_build_on_global, "sets attributes of a torch object"),
           "os_system": (_os_system, "needs posix.system"),
           "sparse": (_sparse, "a sparse tensor, which the native reader does not decode"),
           "compressed": (_compressed, "compressed"),
           "short_record": (_short_record, "record data/0 holds 12 bytes, its storage 16"),
           "storage_too_big": (_storage_too_big, "holds 16 bytes, its storage 32"),
           "tensor_outside": (_tensor_outside, "does not fit its storage"),
           "big_endian": (_big_endian, "little-endian")}


def _outcome(path: Path, reader: str):
    try:
        src = open_source(path, reader=reader)
    except OptstateError as e:
        return type(e).__name__, str(e)
    return "ok", src.reader


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_natively_then_as_torch_says(tmp_path, name):
    build, why = REFUSED[name]
    path = build(tmp_path)
    with pytest.raises(NativeUnsupported, match=re.escape(why)):
        from optstate.io.torch_zip import check_zip, data_pkl

        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            zinfo = check_zip(path, f, size)
            if zinfo.compressed:
                raise NativeUnsupported("compressed")
            read_native(path, f, size, zinfo, data_pkl(path, f, zinfo))
    torch_says = _outcome(path, "torch")
    assert _outcome(path, "auto") == torch_says
    if torch_says[0] == "ok":  # read by torch, and the note says why
        src = open_source(path, reader="auto")
        assert src.reader == "torch" and why in src.reader_note


def test_a_counter_is_read_natively_as_torch_reads_it(tmp_path):
    """MultiStepLR saves its milestones as a collections.Counter; torch's weights_only
    loader takes it, and so does the native reader (timeline needs it without torch)."""
    from collections import Counter

    path = tmp_path / "counter.pt"
    torch.save({"state": {}, "param_groups": [], "c": Counter({30: 1, 80: 2})}, path)
    src = open_source(path, reader="auto")
    assert src.reader == "native"
    assert type(src.obj["c"]) is Counter
    assert src.obj["c"] == torch.load(path, weights_only=True)["c"]


def test_os_system_is_refused_by_both(tmp_path):
    kind, message = _outcome(_os_system(tmp_path), "auto")
    assert kind == "UnsafeCheckpointError" and "posix.system" in message


# --------------------------------------------------------------------- choosing a reader


def test_reader_choice(tmp_path, monkeypatch):
    path = _one_tensor(tmp_path)
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    src = open_source(path)
    assert (src.reader, src.reader_note) == ("torch", None)  # the default: torch
    src = open_source(path, reader="auto")
    assert (src.reader, src.reader_note) == ("native", None)
    assert type(src.obj["state"][0]["exp_avg"]) is NativeTensor
    monkeypatch.setenv("OPTSTATE_READER", "torch")
    src = open_source(path, reader="auto")
    assert (src.reader, src.reader_note) == ("torch", "OPTSTATE_READER=torch")
    assert isinstance(src.obj["state"][0]["exp_avg"], torch.Tensor)
    monkeypatch.delenv("OPTSTATE_READER")
    src = open_source(path, reader="auto", unsafe=True)
    assert src.reader == "torch" and "unsafe" in src.reader_note
    with pytest.raises(ValueError):
        open_source(path, reader="fast")


def test_legacy_file_goes_to_torch(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(adam_groups(), path, _use_new_zipfile_serialization=False)
    src = open_source(path, reader="auto")
    assert (src.reader, src.reader_note) == ("torch", "the legacy (non-zip) torch.save format")


def _trainer_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    params[0].grad = torch.ones(3)
    opt.step()
    sched.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    return folder


def test_trainer_folder_and_scheduler_native(tmp_path):
    folder = _trainer_folder(tmp_path)
    src = open_source(folder, reader="auto")
    assert src.reader == "native"
    ref = torch.load(folder / "scheduler.pt", weights_only=True)
    assert_same_tree(src.siblings["scheduler"], ref)


NO_TORCH = """
import sys
from pathlib import Path
import optstate.io.native_pickle
from optstate.io.source import open_source
for p in sys.argv[1:]:
    src = open_source(Path(p), reader="auto")
    assert src.reader == "native", (p, src.reader_note)
    assert src.walk.tensors > 0
    for t in src.obj["state"][0].values():
        t.tolist()
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""


def test_native_read_never_imports_torch(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(odd_values(), path)
    folder = _trainer_folder(tmp_path)
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(path), str(folder)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "OPTSTATE_READER": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no torch"


MODEL_NO_TORCH = """
import json, sys
from optstate.io.model_tensors import read_model_file
got = read_model_file(sys.argv[1])
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps([[t.name, list(t.shape), t.dtype, list(t.aliases)] for t in got.tensors]))
"""


def test_model_file_named_without_torch(tmp_path):
    """A model state_dict read to name params (``model_tensors``) while torch is not
    imported is read natively: same names, shapes, dtypes and tied names as with torch."""
    import json

    from optstate.io.model_tensors import read_model_file

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False),
                                torch.nn.LayerNorm(5))
    model[1].weight = model[0].weight  # tied, as a language model's head
    path = tmp_path / "pytorch_model.bin"
    torch.save(model.state_dict(), path)
    want = [[t.name, list(t.shape), t.dtype, list(t.aliases)]
            for t in read_model_file(path).tensors]
    assert any(aliases for *_, aliases in want)
    out = subprocess.run([sys.executable, "-c", MODEL_NO_TORCH, str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == want


def _fixture_files() -> list[Path]:
    roots = [ROOT / "tests" / "fixtures", ROOT / "sample_checkpoints"]
    return sorted(f for root in roots if root.is_dir() for f in root.rglob("*")
                  if f.is_file() and f.suffix in (".pt", ".bin", ".pth")
                  and f.read_bytes()[:4] == b"PK\x03\x04")


def test_every_fixture_file_reads_as_torch_loads():
    """Every torch.save zip of the suite: read natively it is torch.load's tree (byte by
    byte), or the native reader steps aside and the torch path reads it as before."""
    files = _fixture_files()
    native = 0
    for f in files:
        try:
            by_torch = load_torch_file(f)
        except OptstateError as e:
            with pytest.raises(type(e)) as got:
                load_torch_file(f, reader="auto")
            assert str(got.value) == str(e), f
            continue
        loaded = load_torch_file(f, reader="auto")
        if loaded.reader == "torch":
            assert loaded.reader_note, f
            continue
        native += 1
        assert_same_tree(loaded.obj, torch.load(f, weights_only=True, map_location="cpu"),
                         str(f))
        assert loaded.walk.tensors == by_torch.walk.tensors, f
    assert native >= len(files) // 2, (native, len(files))


@pytest.mark.parametrize(("where", "note"), [
    ("tests/fixtures/deepspeed/zero3_fp32_ws1/checkpoint", "a DeepSpeed checkpoint"),
    ("tests/fixtures/fsdp2/adamw_ws2", "FSDP2 rank files"),
])
def test_formats_only_torch_reads_say_so(where, note, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    src = open_source(ROOT / where, reader="auto")
    assert src.reader == "torch" and note in src.reader_note
    assert open_source(ROOT / where).reader_note is None  # reader="torch": nothing to say


def test_huge_memo_index_goes_to_torch(tmp_path):
    """``LONG_BINPUT 2**24``: torch's unpickler keeps its memo in a dict, Python's C one
    (the native reader's) in an array of twice the index (2**31: 32 GiB, cleared). The
    pre-scan's highest index sends such a file to torch, which reads it as before."""
    src = _one_tensor(tmp_path)
    pkl = _pkl(src)
    assert pkl[2:3] == b"}"  # PROTO 2, EMPTY_DICT: memoised at a slot no pickler uses
    pkl = pkl[:3] + b"r" + (2**24).to_bytes(4, "little") + pkl[3:]
    path = _rezip(src, tmp_path / "memo.pt", replace={"data.pkl": pkl})
    src = open_source(path, reader="auto")
    assert src.reader == "torch" and "memo slot 16,777,216" in src.reader_note
    assert src.walk.tensors == 1


def test_zip64_records(tmp_path):
    """Members written with zip64 headers (torch.save's past 4 GiB): the data offsets come
    from the local headers' own lengths, as torch's reader finds them."""
    src = tmp_path / "small.pt"
    torch.save(odd_values(), src)
    path = tmp_path / "zip64.pt"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _zip_members(src):
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=True) as w:
                w.write(data)
    assert_same_tree(_native(path).obj, torch.load(path, weights_only=True))


def _record_at(path: Path, base: str) -> int:
    """Where the data of member PREFIX/base starts in the file."""
    import struct

    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.split("/", 1)[1] == base)
    data = path.read_bytes()
    n, extra = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + n + extra


def _mutated(path: Path, at: int, value: int) -> Path:
    data = bytearray(path.read_bytes())
    data[at] = value
    out = path.with_name(f"{path.stem}-{at}-{value}.pt")
    out.write_bytes(bytes(data))
    return out


def _same_verdict(path: Path) -> None:
    torch_says, got = _outcome(path, "torch"), _outcome(path, "auto")
    assert got[0] == torch_says[0] and (got[0] == "ok" or got == torch_says), path


@pytest.mark.parametrize("where", ["eocd_disk", "central_flags", "serialization_id",
                                   "version", "zip64_entries"])
def test_damaged_archive_is_judged_by_torch(tmp_path, where):
    """Fields Python's zipfile lets pass and torch's zip reader (miniz) or its loader
    refuses: the native reader steps aside, so the verdict is torch's."""
    src = _one_tensor(tmp_path)
    data = src.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    central = data.find(b"PK\x01\x02")
    at, value = {
        "eocd_disk": (eocd + 4, 1),
        "central_flags": (central + 8, 0x09),  # + encrypted
        "serialization_id": (_record_at(src, ".data/serialization_id"), 0x9F),
        "version": (_record_at(src, "version"), ord("x")),
        "zip64_entries": (data.rfind(b"PK\x06\x06") + 24, 99),
    }[where]
    assert at > 0
    path = _mutated(src, at, value)
    with pytest.raises(NativeUnsupported):
        from optstate.io.torch_zip import check_zip, data_pkl

        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            zinfo = check_zip(path, f, size)
            read_native(path, f, size, zinfo, data_pkl(path, f, zinfo))
    _same_verdict(path)


def test_random_damage_same_verdict_as_torch(tmp_path):
    """Random bytes of a real file changed (seeded): whatever torch says of it, the auto
    reader says too; what both read is the same tree."""
    import random

    src = tmp_path / "adam.pt"
    torch.save(adam_groups(), src)
    size = src.stat().st_size
    rng = random.Random(7)
    for _ in range(60):
        path = _mutated(src, rng.randrange(size), rng.randrange(256))
        _same_verdict(path)
        path.unlink()


# ------------------------------------------- what torch's rebuild refuses (R1 finding 4)


class _St:
    """A storage, pickled as torch.save names one (a persistent id)."""

    def __init__(self, stype, numel):
        self.stype, self.numel = stype, numel


class _Reduce:
    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) + ((self.state,) if self.state is not None else ())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _St):
            return ("storage", obj.stype, "0", "cpu", obj.numel)
        return None


def _crafted(tmp_path: Path, name: str, exp_avg, group=None) -> Path:
    """A torch.save zip (one 16-byte record, data/0) whose pickle holds ``exp_avg`` as
    written here, with real torch GLOBALs: what torch.save would write for those fields."""
    import io

    state = {"state": {0: {"exp_avg": exp_avg}},
             "param_groups": [{"params": [0], "lr": 0.1, **(group or {})}]}
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return _rezip(_one_tensor(tmp_path), tmp_path / f"{name}.pt",
                  replace={"data.pkl": buf.getvalue()})


def _t(stype=None, numel=4, offset=0, size=(4,), stride=(1,), rg=False):
    return _Reduce(torch._utils._rebuild_tensor_v2, _St(stype or torch.FloatStorage, numel),
                   offset, tuple(size), tuple(stride), rg, OrderedDict())


FLOAT4 = _t()
TORCH_REFUSES = {
    "int_requires_grad": dict(exp_avg=_t(torch.LongStorage, 2, size=(2,), rg=True)),
    "bool_requires_grad": dict(exp_avg=_t(torch.BoolStorage, 16, size=(16,), rg=True)),
    "int_parameter_requires_grad": dict(exp_avg=_Reduce(
        torch._utils._rebuild_parameter, _t(torch.LongStorage, 2, size=(2,)), True,
        OrderedDict())),
    "device_banana": dict(exp_avg=FLOAT4, group={"device": _Reduce(torch.device, "banana", -3)}),
    "device_negative_index": dict(exp_avg=FLOAT4,
                                  group={"device": _Reduce(torch.device, "cuda", -1)}),
    "device_bool_index": dict(exp_avg=FLOAT4,
                              group={"device": _Reduce(torch.device, "cuda", True)}),
    "device_empty": dict(exp_avg=FLOAT4, group={"device": _Reduce(torch.device, "")}),
    "device_build": dict(exp_avg=FLOAT4, group={"device": _Reduce(
        torch.device, "cpu", state={"type": "cuda"})}),  # BUILD on the device
    "device_huge_index": dict(exp_avg=FLOAT4,
                              group={"device": _Reduce(torch.device, "cuda", 2**70)}),
    "size_2p64_stride0": dict(exp_avg=_t(size=(2**64,), stride=(0,))),
    "size_2p63_stride0": dict(exp_avg=_t(size=(2**63,), stride=(0,))),
    "zero_then_2p64": dict(exp_avg=_t(size=(0, 2**64), stride=(1, 1))),
    "numel_2p80": dict(exp_avg=_t(size=(2**40, 2**40), stride=(0, 0))),
    "numel_2p64": dict(exp_avg=_t(size=(2**62, 4), stride=(0, 1))),
    "numel_2p63": dict(exp_avg=_t(size=(2**61, 4), stride=(0, 0))),
    "overflow_then_zero": dict(exp_avg=_t(size=(2**40, 2**40, 0), stride=(0, 0, 0))),
    "negative_size": dict(exp_avg=_t(size=(-1,), stride=(1,))),
    "negative_stride": dict(exp_avg=_t(size=(2,), stride=(-1,))),
    "negative_offset": dict(exp_avg=_t(offset=-1, size=(1,))),
    "offset_past_int64": dict(exp_avg=_t(offset=2**63, size=(0,))),
    "stride_past_int64": dict(exp_avg=_t(size=(1,), stride=(2**64,))),
    "byte_extent_overflows": dict(exp_avg=_t(offset=2**62, size=(1,))),
    "stride_extent_overflows": dict(exp_avg=_t(size=(2,), stride=(2**62,))),
}


def _native_verdict(path: Path) -> None:
    from optstate.io.torch_zip import check_zip, data_pkl

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        zinfo = check_zip(path, f, size)
        read_native(path, f, size, zinfo, data_pkl(path, f, zinfo))


@pytest.mark.parametrize("name", sorted(TORCH_REFUSES))
def test_what_torch_refuses_steps_aside(tmp_path, name):
    """Each file's fields are ones torch's loader refuses (the requires_grad of an integer
    tensor, a device torch does not know, sizes, strides and offsets past int64 or whose
    element count or byte extent overflows it): the native reader steps aside and the
    user gets the torch path's exact outcome."""
    path = _crafted(tmp_path, name, **TORCH_REFUSES[name])
    with pytest.raises(NativeUnsupported):
        _native_verdict(path)
    torch_says = _outcome(path, "torch")
    assert torch_says[0] == "CheckpointError", torch_says  # torch refuses every one
    assert _outcome(path, "auto") == torch_says


@pytest.mark.parametrize("fields", [
    dict(exp_avg=_t(rg=True)),  # a float tensor may require grad
    dict(exp_avg=FLOAT4, group={"device": _Reduce(torch.device, "cuda", 0)}),
    dict(exp_avg=FLOAT4, group={"device": _Reduce(torch.device, "meta")}),
    dict(exp_avg=_t(size=(2**63 - 1,), stride=(0,))),  # the largest numel torch takes
], ids=["float_requires_grad", "cuda0", "meta", "numel_int64_max"])
def test_what_torch_takes_still_reads_natively(tmp_path, fields):
    path = _crafted(tmp_path, "taken", **fields)
    _native_verdict(path)
    assert _outcome(path, "auto") == ("ok", "native")
    assert _outcome(path, "torch") == ("ok", "torch")


def test_device_values_read_as_torch_prints_them(tmp_path):
    """A torch.device in a group (and in the state) reads natively as a value that prints,
    compares and hashes as torch's does, and ``inspect --json`` is the same JSON through
    both readers."""
    import json

    from typer.testing import CliRunner

    from optstate.cli import app
    from optstate.io.native_tensor import NativeDevice

    sd = adam_groups()
    sd["param_groups"][0]["device"] = torch.device("cuda", 0)
    sd["param_groups"][1]["device"] = torch.device("cpu")
    sd["state"][0]["where"] = torch.device("meta")
    path = tmp_path / "dev.pt"
    torch.save(sd, path)
    tree = _native(path).obj
    ref = torch.load(path, weights_only=True)
    for native, dev in ((tree["param_groups"][0]["device"], ref["param_groups"][0]["device"]),
                        (tree["param_groups"][1]["device"], ref["param_groups"][1]["device"]),
                        (tree["state"][0]["where"], ref["state"][0]["where"])):
        assert type(native) is NativeDevice
        assert (str(native), repr(native), native.type, native.index) == (
            str(dev), repr(dev), dev.type, dev.index)
    assert NativeDevice("cuda", 0) == tree["param_groups"][0]["device"]
    assert hash(NativeDevice("cuda", 0)) == hash(tree["param_groups"][0]["device"])
    assert NativeDevice("cuda", 1) != NativeDevice("cuda", 0) != NativeDevice("cpu", None)
    with pytest.raises(TypeError):
        tree["param_groups"][0]["device"].__setstate__({"type": "cpu"})

    outs = {}
    for reader in ("torch", "native"):
        res = CliRunner().invoke(app, ["inspect", str(path), "--json"],
                                 env={"OPTSTATE_READER": reader, "NO_COLOR": "1"})
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["file"].pop("reader") == reader
        out["file"].pop("reader_note")
        outs[reader] = out
    assert outs["torch"] == outs["native"]
    assert "device(type='cuda', index=0)" in json.dumps(outs["native"])


def test_device_diff_across_readers_is_no_change(tmp_path):
    """diff with one side read natively and the other by torch: a device is the same
    value by its name (diff_walk._read_alike)."""
    from optstate.analysis.diff_walk import _read_alike
    from optstate.io.native_tensor import NativeDevice

    assert _read_alike(NativeDevice("cuda", 0), torch.device("cuda", 0))
    assert _read_alike(torch.device("cpu"), NativeDevice("cpu", None))
    assert not _read_alike(NativeDevice("cpu", None), "cpu")
