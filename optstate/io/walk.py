"""A bounded, iterative walk over a loaded checkpoint, before anything else touches it.

What ``torch.load(weights_only=True)`` returns is still untrusted. The pickle format has a
memo, so a 1.5 KB file can hold a list that refers to another list ten times, nine levels
deep: 10**9 leaves for anything that walks it as a tree (``json.dumps``, a recursive
printer, ``find_optimizer_states``). Lists can contain themselves, and nesting can be
200 000 levels deep, far past Python's recursion limit. Sparse tensors are rebuilt
without their invariants checked, and indexing one with out-of-range indices reads
outside its memory.

``walk`` visits each distinct container once (depth first, an explicit stack, no
recursion), computes the size the object has *as a tree* from its children's sizes, and
refuses what later code could not handle: a cycle, a tree larger than ``max_nodes``,
nesting deeper than ``max_depth``, an invalid sparse tensor, a dict subclass instance (an
OrderedDict or Counter a BUILD gave attributes) whose own attribute hides a method of its
class (``items``: later code would call what the file put there). It reads dicts with
``dict.items``, never a method of the instance. Its cost is linear in the
number of distinct objects, which the file size bounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.base.limits import LimitError, Limits, current, size_text
from optstate.io.inert import Inert, InertTensor
from optstate.io.native_tensor import NativeTensor

# Real optimizer states are a few levels deep (Lightning: 4) and hold a handful of
# entries per parameter; these limits (``limits.py``: depth, nodes) are orders of
# magnitude above any real one.
MAX_DEPTH = Limits().depth
MAX_NODES = Limits().nodes
# A sparse tensor declares a shape; code that densifies it (statistics, comparisons)
# allocates that shape in full. 2**28 elements is 1 GiB of float32.
MAX_SPARSE_DENSE = 2**28

_CONTAINERS = (dict, list, tuple, set, frozenset, Inert, InertTensor)


@dataclass
class WalkReport:
    """What a walk saw: sizes as a tree, and the tensors by kind."""

    nodes: int = 0  # size of the object as a tree (shared objects counted each time)
    distinct: int = 0  # distinct containers and tensors
    depth: int = 0  # longest chain of nested containers
    tensors: int = 0  # distinct tensors
    meta_tensors: int = 0
    empty_tensors: int = 0
    sparse_tensors: int = 0
    first_sparse: str | None = None  # where the first sparse tensor is (paths.py syntax)
    dtypes: Counter[str] = field(default_factory=Counter)
    # data address -> bytes of each CPU storage, when asked for (see torch_file.py)
    storages: dict[int, int] | None = None
    # Views that repeat elements (stride 0, overlapping strides): bytes a copy of them
    # would add to the bytes they cover, and the largest one (location, elements, covered)
    expand_bytes: int = 0
    expand_worst: tuple[str, int, int] | None = None
    # bytes of the distinct CPU storages the tensors use (each storage once): what a file
    # must hold, since every storage torch.save writes is a record of it
    storage_bytes: int = 0
    _seen_storages: set[int] = field(default_factory=set, repr=False)


class _Frame:
    """One container on the walk's stack."""

    __slots__ = ("obj", "items", "size", "height", "parent", "key")

    def __init__(self, obj: Any, parent: _Frame | None, key: Any) -> None:
        self.obj = obj
        self.items = _children(obj)  # an iterator: a for loop over it resumes where it was
        self.size = 1
        self.height = 1
        self.parent = parent
        self.key = key


def _children(obj: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(obj, dict):  # dict's own method: nothing of the instance is called
        return iter(list(dict.items(obj)))
    if isinstance(obj, (Inert, InertTensor)):  # a foreign object decoded inertly
        obj = obj.fields()
        return iter(list(obj.items()))
    if isinstance(obj, (set, frozenset)):
        return ((None, v) for v in list(obj))
    return enumerate(list(obj))


def location_of(frame: _Frame | None, key: Any = None) -> str:
    """The location of ``key`` inside ``frame``, in the syntax of ``paths.py``."""
    parts: list[Any] = [] if key is None else [key]
    while frame is not None and frame.parent is not None:
        parts.append(frame.key)
        frame = frame.parent
    from optstate.base.paths import display, format_path

    return display(format_path(reversed(parts)))


# Leaves that need no look: the common hyperparameter and bookkeeping values.
_SCALARS = frozenset({int, float, str, bool, type(None), bytes, complex})


def walk(obj: Any, *, max_depth: int | None = None, max_nodes: int | None = None,
         label: str = "the checkpoint", storages: bool = False) -> WalkReport:
    """Check ``obj`` (see module docstring); raise CheckpointError naming where it fails.
    The limits default to those in force (``limits.current()``: depth, nodes)."""
    import sys

    if max_depth is None or max_nodes is None:
        limits = current()
        max_depth = limits.depth if max_depth is None else max_depth
        max_nodes = limits.nodes if max_nodes is None else max_nodes

    torch = None  # no torch tensors can exist without it
    if "torch" in sys.modules:  # imported, or being imported by another thread (timeline's
        import torch  # readers: a sibling file read with torch): wait until it is whole
    tensor_type = (torch.Tensor, NativeTensor) if torch is not None else NativeTensor
    if torch is not None and not _STRIDED:
        _STRIDED.append(torch.strided)
    report = WalkReport(storages={} if storages else None)
    dtypes: dict[Any, int] = {}
    if not isinstance(obj, _CONTAINERS):
        report.nodes = report.depth = 1
        if isinstance(obj, tensor_type):
            _tensor(obj, report, dtypes, None, None, label)
        _finish(report, dtypes)
        return report

    done: dict[int, tuple[int, int]] = {}  # id -> (tree size, height) of finished objects
    active: set[int] = {id(obj)}  # containers on the current path
    _plain_dict(obj, None, None, label)
    stack = [_Frame(obj, None, None)]
    report.distinct = 1
    while stack:
        top = stack[-1]
        pushed = False
        for key, child in top.items:
            if type(child) in _SCALARS:
                top.size += 1
                continue
            cid = id(child)
            known = done.get(cid)
            if known is not None:
                size, height = known
            elif isinstance(child, _CONTAINERS):
                if cid in active:
                    raise CheckpointError(
                        f"{label} contains itself: {location_of(top, key)} refers back to "
                        "an object that encloses it",
                        hint="a checkpoint written by torch.save from an optimizer never "
                        "does this; the file was built by hand or is damaged",
                    )
                if len(stack) >= max_depth:
                    raise LimitError(
                        label, f"is nested more than {max_depth} levels deep (at "
                        f"{_short(location_of(top, key))})", "depth", max_depth)
                _plain_dict(child, top, key, label)
                active.add(cid)
                stack.append(_Frame(child, top, key))
                report.distinct += 1
                pushed = True
                break
            else:
                size, height = 1, 0
                if isinstance(child, tensor_type):
                    _tensor(child, report, dtypes, top, key, label)
                    done[cid] = (1, 0)  # checked once, however often it is referenced
            top.size += size
            if height >= top.height:
                top.height = height + 1
            if top.size > max_nodes:
                raise _too_big(label, top, max_nodes)
        if top.size > max_nodes:
            raise _too_big(label, top, max_nodes)
        if pushed:
            continue
        stack.pop()
        done[id(top.obj)] = (top.size, top.height)
        active.discard(id(top.obj))
        if stack:
            parent = stack[-1]
            parent.size += top.size
            if top.height >= parent.height:
                parent.height = top.height + 1
        else:
            report.nodes, report.depth = top.size, top.height
    _finish(report, dtypes)
    return report


def _plain_dict(obj: Any, frame: _Frame | None, key: Any, label: str) -> None:
    """Refuse a dict subclass instance (an OrderedDict, a Counter) with an attribute of
    its own that hides one of its class (``items``, ``keys``, ``get``...): a BUILD opcode
    sets an instance's ``__dict__`` (torch's loader does, for an OrderedDict's
    ``_metadata``, the only attribute torch.save writes), and later code calling
    ``obj.items()`` would call what the file put there."""
    if type(obj) is dict or not isinstance(obj, dict):
        return
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return
    cls = type(obj)
    for name in attrs:
        if type(name) is str and hasattr(cls, name):
            where = _short(location_of(frame, key)) if frame is not None else "the top"
            raise CheckpointError(
                f"{label} holds, at {where}, an object of type {cls.__name__} whose own "
                f"attribute {_short(repr(name), 40)} hides the method of that name; refused",
                hint="torch.save never writes this; the file was built by hand")


def _finish(report: WalkReport, dtypes: dict[Any, int]) -> None:
    for dtype, n in dtypes.items():
        report.dtypes[str(dtype).removeprefix("torch.")] += n


def _too_big(label: str, frame: _Frame, max_nodes: int) -> CheckpointError:
    # a small file that unfolds like this is a 'billion laughs' bomb
    return LimitError(
        label, f"unfolds to more than {max_nodes:,} objects (at {_short(location_of(frame))}):"
        " the same objects are referenced over and over", "nodes", max_nodes)


def _short(location: str, limit: int = 80) -> str:
    return location if len(location) <= limit else location[:limit] + "…"


def _tensor(t: Any, report: WalkReport, dtypes: dict[Any, int], frame: _Frame | None,
            key: Any, label: str) -> None:
    report.distinct += 1
    report.tensors += 1
    dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    if type(t) is NativeTensor:  # strided, on the CPU, inside its storage (its check)
        _native_tensor(t, report, frame, key)
        return
    if t.is_meta:
        report.meta_tensors += 1
        return
    if t.numel() == 0:
        report.empty_tensors += 1
    if t.layout is not _STRIDED[0]:
        report.sparse_tensors += 1
        where = location_of(frame, key)
        if report.first_sparse is None:
            report.first_sparse = where
        check_sparse(t, f"{label} at {where}")
    else:
        _count_expansion(t, report, frame, key)
    if t.layout is _STRIDED[0]:
        st = t.untyped_storage()
        n = st.nbytes()
        if n:
            try:
                ptr = st.data_ptr()
            except RuntimeError:  # a wrapper with no data yet (a DCP LazyTensor)
                return
            if ptr not in report._seen_storages:
                report._seen_storages.add(ptr)
                report.storage_bytes += n
            if report.storages is not None:
                report.storages[ptr] = max(n, report.storages.get(ptr, 0))


_STRIDED: list[Any] = []  # torch.strided, filled on first walk (torch may not be loaded)


def _native_tensor(t: NativeTensor, report: WalkReport, frame: _Frame | None,
                   key: Any) -> None:
    if t.numel() == 0:
        report.empty_tensors += 1
    _count_expansion(t, report, frame, key)
    st = t.storage
    n = st.nbytes
    if not n:
        return
    sid = id(st)  # one NativeStorage per stored record, alive as long as the tree
    if sid not in report._seen_storages:
        report._seen_storages.add(sid)
        report.storage_bytes += n
    if report.storages is not None:
        ptr = st.address()
        report.storages[ptr] = max(n, report.storages.get(ptr, 0))


def covered_elements(shape: Any, strides: Any) -> int:
    """How many storage elements a strided view of ``shape`` can touch at most: the
    span from its first to its last element. A view with more elements than this
    (stride 0, overlapping strides) repeats some; a copy of it stores every repeat."""
    span = 1
    for n, s in zip(shape, strides, strict=True):
        if n == 0:
            return 0
        span += (int(n) - 1) * abs(int(s))
    return span


def _count_expansion(t: Any, report: WalkReport, frame: _Frame | None, key: Any) -> None:
    numel = t.numel()
    if numel <= 1:
        return
    covered = covered_elements(t.shape, t.stride())
    if numel <= covered:
        return
    extra = (numel - covered) * t.element_size()
    report.expand_bytes += extra
    if report.expand_worst is None or numel > report.expand_worst[1]:
        report.expand_worst = (location_of(frame, key), numel, covered)


def check_copyable(report: WalkReport, label: str, action: str,
                   limit: int | None = None) -> None:
    """Refuse, before ``action`` copies every tensor, a checkpoint whose views would grow
    past the ``expand`` limit once copied (a 4-byte storage viewed as 2**40 elements)."""
    limit = current().expand if limit is None else limit
    if report.expand_bytes <= limit or report.expand_worst is None:
        return
    where, numel, covered = report.expand_worst
    raise LimitError(
        label,
        f"has views that repeat their stored elements ({where}: {numel:,} elements over "
        f"{covered:,} stored); {action} copies tensors, which would add "
        f"{size_text(report.expand_bytes)}", "expand", limit)


def check_sparse(t: Any, where: str) -> None:
    """Validate a sparse tensor's invariants (indices inside its shape, compressed
    indices sorted) before anything reads it; torch skips this on load by default."""
    import torch

    if t.is_meta:
        return
    dense = 1
    for n in t.shape:
        dense *= int(n)
    if dense > MAX_SPARSE_DENSE:
        raise CheckpointError(
            f"{where}: a sparse tensor of shape {list(t.shape)} ({dense:,} elements when "
            f"dense), more than optstate reads (max {MAX_SPARSE_DENSE:,})"
        )
    try:
        if t.layout == torch.sparse_coo:
            torch._validate_sparse_coo_tensor_args(
                t._indices(), t._values(), t.size(), t.is_coalesced(), check_pinning=False
            )
        elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
            torch._validate_sparse_compressed_tensor_args(
                t.crow_indices(), t.col_indices(), t.values(), t.size(), t.layout,
                check_pinning=False,
            )
        elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
            torch._validate_sparse_compressed_tensor_args(
                t.ccol_indices(), t.row_indices(), t.values(), t.size(), t.layout,
                check_pinning=False,
            )
        else:
            raise CheckpointError(f"{where}: a tensor with layout {t.layout}, which optstate "
                                  "does not read")
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: invalid sparse tensor ({msg})") from None
