"""Containers a hostile pickle builds (issue #22): Counter, set, OrderedDict and kin.

1. A BUILD on an allowed *global* (``collections.Counter`` itself) would set attributes of
   a class of the process: every allowed global of the native readers' allow-lists
   (``native_pickle.TORCH_GLOBALS``, ``native_dcp``'s three unpicklers) refuses it.
2. ``Counter(t)`` / ``set(t)`` of a tensor expanded to 10**12 elements (a 2 KB file) would
   be iterated element by element, by the native reader and by torch's own unpickler: the
   native readers build containers only from what their reduce writes, and the pre-scan
   refuses a container built from a tensor before torch.load sees it.
3. A BUILD on a Counter / OrderedDict instance that shadows a dict method (``items``) is
   refused by the walk, which never calls a method of the instance.
"""

from __future__ import annotations

import collections
import pickle
import struct

import pytest

from optstate.io import native_dcp as nd
from optstate.io.native_pickle import TORCH_GLOBALS, restricted_loads
from optstate.io.native_tensor import NativeUnsupported


def _u(text: str) -> bytes:
    """BINUNICODE ``text``."""
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# BUILD states: (None, {name: value}) sets attributes one by one (setattr), {name: value}
# updates the object's __dict__
def _builds(names: list[str]) -> list[bytes]:
    out = []
    for name in names:
        out.append(b"N}" + _u(name) + _u("pwned") + b"s\x86b")
        out.append(b"}" + _u(name) + _u("pwned") + b"sb")
    return out


def _names(obj) -> list[str]:
    """Attributes a BUILD could aim at: the object's own slots and fields, and a method."""
    names = {"update", "__call__", "__new__"}
    for cls in type(obj).__mro__:
        names.update(getattr(cls, "__slots__", ()))
    names.update(getattr(obj, "__dict__", {}))
    return sorted(n for n in names if isinstance(n, str))


def _snapshot(obj):
    state = dict(vars(obj)) if hasattr(obj, "__dict__") else None
    slots = {n: getattr(obj, n, None) for n in _names(obj)}
    return state, slots


_REAL = (collections.Counter, collections.OrderedDict, set, frozenset, complex)


def _real_snapshot():
    return [dict(vars(cls)) for cls in _REAL]


def _assert_process_unchanged(before):
    assert _real_snapshot() == before
    assert collections.Counter([1, 1, 2]) == {1: 2, 2: 1}
    assert set([1, 2]) == {1, 2}


@pytest.mark.parametrize("key", sorted(TORCH_GLOBALS), ids=lambda k: ".".join(k))
def test_a_build_on_any_native_global_is_refused(key):
    module, name = key
    target = TORCH_GLOBALS[key]
    before, real = _snapshot(target), _real_snapshot()
    for build in _builds(_names(target)):
        # protocol 4: the names reach find_class as written (no __builtin__ mapping)
        data = b"\x80\x04" + _global(module, name) + build + b"."
        with pytest.raises(NativeUnsupported):
            restricted_loads(data, TORCH_GLOBALS)
    assert _snapshot(target) == before
    _assert_process_unchanged(real)


def _dcp_globals() -> list[tuple[str, str, str]]:
    out = [("metadata", m, n) for m, n in nd._metadata_classes()]
    out += [("metadata", "torch", n) for n in (*nd.DTYPES, *sorted(nd._TORCH_NAMES))]
    out += [("value", "collections", n) for n in ("OrderedDict", "Counter")]
    out += [("chunk", "torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_tensor_v3")]
    out += [("chunk", "collections", "OrderedDict"), ("chunk", "torch.storage", "UntypedStorage")]
    out += [("chunk", "torch", n) for n in (*nd._STORAGES, *nd.DTYPES)]
    return out


_UNPICKLERS = {"metadata": nd._MetadataUnpickler, "value": nd._ValueUnpickler,
               "chunk": nd._ChunkUnpickler}


@pytest.mark.parametrize("which,module,name", _dcp_globals(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_build_on_any_dcp_global_is_refused(which, module, name):
    unpickler = _UNPICKLERS[which]
    found = unpickler(__import__("io").BytesIO(b"")).find_class(module, name)
    real = _real_snapshot()
    for build in _builds(_names(found)):
        data = b"\x80\x04" + _global(module, name) + build + b"."
        with pytest.raises(NativeUnsupported):
            nd._unpickle(unpickler, data, "a pickle")
    _assert_process_unchanged(real)
    if which == "value":  # the values' unpickler builds Counters still, from a dict
        data = pickle.dumps({"m": collections.Counter({30: 1, 80: 2})}, protocol=2)
        got = nd._unpickle(unpickler, data, "a value")["m"]
        assert type(got) is collections.Counter and got == {30: 1, 80: 2}


def test_the_reviewers_counter_poison_changes_nothing(tmp_path):
    """counter2.py: BUILD (None, {"update": set}) on GLOBAL collections.Counter, read by
    the native reader, made every later Counter of the process empty (torch's too)."""
    import torch

    from optstate.base.errors import OptstateError
    from optstate.io.source import open_source
    from tests.hostile_corpus import _rezip

    base = tmp_path / "base.pt"
    torch.save({"state": {}, "param_groups": [], "pad": torch.zeros(4)}, base)
    poison = (b"\x80\x02}" + _u("state") + b"}s" + _u("param_groups") + b"]s" + _u("x")
              + _global("collections", "Counter") + b"N}" + _u("update")
              + _global("__builtin__", "set") + b"s\x86bs.")
    path = _rezip(base, tmp_path / "poison.pt", replace={"data.pkl": poison})
    real = _real_snapshot()
    for reader in ("auto", "native", "torch"):
        try:
            open_source(path, reader=reader)
        except (OptstateError, NativeUnsupported):
            pass
    _assert_process_unchanged(real)


# ------------------------------------------------ 3. an instance's attribute hides a method


def _base(tmp_path):
    import torch

    base = tmp_path / "base.pt"
    if not base.exists():
        torch.save({"state": {}, "param_groups": [], "pad": torch.zeros(4)}, base)
    return base


def _with_x(tmp_path, name: str, x_ops: bytes):
    """A torch.save zip whose data.pkl is {"state": {}, "param_groups": [], "x": X}, X
    built by the opcodes ``x_ops``."""
    from tests.hostile_corpus import _rezip

    pkl = (b"\x80\x02}" + _u("state") + b"}s" + _u("param_groups") + b"]s" + _u("x")
           + x_ops + b"s.")
    return _rezip(_base(tmp_path), tmp_path / f"{name}.pt", replace={"data.pkl": pkl})


def _errors(path, run_cli):
    """What open_source says with each reader, and the CLI (one Error: line, exit 2)."""
    from optstate.base.errors import OptstateError
    from optstate.io.source import open_source

    said = []
    for reader in ("auto", "torch"):
        with pytest.raises(OptstateError) as e:
            open_source(path, reader=reader)
        said.append((type(e.value).__name__, str(e.value)))
    r = run_cli("inspect", path, timeout=60)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return said, errors[0]


@pytest.mark.parametrize("cls", ["OrderedDict", "Counter"])
@pytest.mark.parametrize("method", ["items", "keys", "values", "get"])
def test_an_attribute_that_hides_a_dict_method_is_refused(tmp_path, run_cli, cls, method):
    """BUILD {method: "x"} on an instance (torch's loader allows BUILD on both, as a
    state_dict's _metadata needs): the walk called obj.items() and crashed."""
    ops = _global("collections", cls) + b")R}" + _u(method) + _u("x") + b"sb"
    said, line = _errors(_with_x(tmp_path, f"{cls}_{method}", ops), run_cli)
    for kind, text in said:
        assert kind == "CheckpointError"
        assert f"object of type {cls} whose own attribute '{method}' hides" in text
    assert f"attribute '{method}' hides the method" in line


def test_the_walk_reads_a_dict_subclass_without_calling_it():
    from optstate.base.errors import CheckpointError
    from optstate.io.walk import walk

    od = collections.OrderedDict(a=1)
    od._metadata = {"": {"version": 1}}  # what torch.save writes for a model state_dict
    assert walk({"m": od}).nodes == 3  # the dict, the OrderedDict, its item

    od.keys = "x"
    with pytest.raises(CheckpointError, match="attribute 'keys' hides"):
        walk([od])


def test_a_model_state_dict_with_its_metadata_is_read(tmp_path):
    import torch

    from optstate.io.source import open_source

    path = tmp_path / "model.pt"
    torch.save({"state": {}, "param_groups": [], "model": torch.nn.Linear(2, 2).state_dict()},
               path)
    for reader in ("auto", "torch"):
        src = open_source(path, reader=reader)
        assert src.obj["model"]._metadata == {"": {"version": 1}}


# ------------------------------------------------------ 2. a container built from a tensor

_N = 10**7  # already seconds for torch's unpickler; refused without iterating it


class _FromTensor:
    """Pickles as ``ctor(t)``, ``t`` a tensor of one stored element expanded to ``n``."""

    def __init__(self, ctor, n=_N, rows=False):
        self.ctor, self.n, self.rows = ctor, n, rows

    def __reduce__(self):
        import torch

        t = torch.zeros(1, 1).expand(self.n, 2) if self.rows else torch.zeros(1).expand(self.n)
        return (self.ctor, (t,))


def _from_tensor(tmp_path, name, value):
    import re

    import torch

    from tests.hostile_corpus import _rezip, _zip_members

    path = tmp_path / f"{name}.pt"
    if value == "args":  # complex(*t): the argument list itself is a tensor (a pickler
        torch.save({"state": {}, "param_groups": [], "x": _FromTensor(complex)}, path)
        pkl = dict((n.split("/", 1)[1], d) for n, d in _zip_members(path))["data.pkl"]
        last = list(re.finditer(rb"\x85q.R", pkl, re.S))[-1]  # (t,) of complex((t,))
        pkl = pkl[:last.start()] + b"R" + pkl[last.end():]  # writes none: made by hand)
        return _rezip(path, tmp_path / "args.pt", replace={"data.pkl": pkl})
    torch.save({"state": {}, "param_groups": [], "x": value}, path)
    assert path.stat().st_size < 4096
    return path


_CASES = {
    "counter": (lambda: _FromTensor(collections.Counter), "a Counter built from a tensor"),
    "set": (lambda: _FromTensor(set), "a set built from a tensor"),
    "ordered_dict": (lambda: _FromTensor(collections.OrderedDict, rows=True),
                     "an OrderedDict built from a tensor"),
    "args_are_a_tensor": (lambda: "args", "a call whose argument list is a tensor"),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_a_container_built_from_a_tensor_is_refused_at_once(tmp_path, run_cli, name):
    import time

    make, what = _CASES[name]
    path = _from_tensor(tmp_path, name, make())
    t0 = time.monotonic()
    said, line = _errors(path, run_cli)
    assert time.monotonic() - t0 < 60
    for kind, text in said:
        assert kind == "UnsafeCheckpointError", text
        assert f"holds {what}: iterating it could take forever; refused" in text
    assert what in line


def test_a_tensor_reaching_a_container_through_the_memo_is_seen():
    """The tensor and the Counter class memoised first, called later from their slots;
    a tensor put into a list after the list was memoised (and used once, clean); a set
    called by _rebuild_from_type_v2(set, type, (t,), {}), which calls its first argument."""
    from optstate.base.errors import UnsafeCheckpointError
    from optstate.base.limits import Limits
    from optstate.io.prescan import scan

    tensor = (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + b"K\x00" + b"t" + b"R")
    ctr = _global("collections", "Counter")
    memo = b"\x80\x02" + ctr + b"q\x01" + tensor + b"q\x02" + b"]h\x01h\x02\x85Ra."
    with pytest.raises(UnsafeCheckpointError, match="a Counter built from a tensor"):
        scan(memo, 0, Limits(), "f")
    late = (b"\x80\x02]" + b"]q\x01" + ctr + b"h\x01\x85R" + b"a" + b"h\x01" + tensor + b"a"
            + ctr + b"h\x01\x85\x85Ra.")
    with pytest.raises(UnsafeCheckpointError, match="a Counter built from a tensor"):
        scan(late, 0, Limits(), "f")
    via_rebuild = (b"\x80\x02" + _global("torch._tensor", "_rebuild_from_type_v2") + b"("
                   + _global("__builtin__", "set") + b"N" + tensor + b"\x85}tR.")
    with pytest.raises(UnsafeCheckpointError, match="a set built from a tensor"):
        scan(via_rebuild, 0, Limits(), "f")


def test_honest_containers_still_read(tmp_path):
    import torch

    from optstate.io.source import open_source

    path = tmp_path / "honest.pt"
    value = {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"params": [0]}],
             "milestones": collections.Counter({30: 1, 80: 2}), "names": {"a", "b"},
             "od": collections.OrderedDict(w=torch.ones(2)), "z": 1 + 2j,
             "size": torch.Size([2, 3]), "model": torch.nn.Linear(2, 2).state_dict()}
    torch.save(value, path)
    for reader in ("auto", "torch"):
        src = open_source(path, reader=reader)
        assert src.obj["milestones"] == value["milestones"] and src.obj["names"] == {"a", "b"}
    assert open_source(path, reader="auto").reader == "native"
