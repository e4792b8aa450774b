"""The ``.metadata`` of a torch.distributed.checkpoint (DCP) folder, read safely.

A DCP checkpoint is a folder with a pickled ``.metadata`` file and one ``*.distcp`` file
per rank. The metadata lists every flattened key (``state.layer.weight.exp_avg``,
``param_groups.0.lr``), the global shape and dtype of each tensor, how it is split into
chunks across ranks (and where each chunk's bytes are), and (``planner_data``) the path
of each key in the original nested state dict. Everything here is checked before any
data is read (``dcp.py`` reads the data):

- torch's ``FileSystemReader.read_metadata`` runs ``pickle.load`` on ``.metadata``, which
  executes code from a hostile checkpoint. ``read_metadata`` unpickles it with an
  allow-list of the DCP metadata classes (``dcp_reader.SafeFileSystemReader`` hands that to
  torch), handing out no class or function a pickle's BUILD could change for the whole
  process (``Locked`` subclasses made per load, ``Call``s, paths as text; also used by
  ``native_dcp``).
- A folder from a stranger reads only itself and costs what it stores (``limits.py``):
  every file it names, and ``.metadata``, must resolve to a regular file directly inside
  it (``inside``); ``.metadata`` is scanned before it is unpickled (``prescan.scan_any``),
  then its keys, paths, shapes and chunks are checked against the limits
  (``check_metadata``); every data file it names must exist and hold the bytes its chunks
  claim, and a chunk that claims more data than it stores (an expanded view) is refused
  before anything is read (``storage_files``). The native reader (``native_dcp``) runs
  these same checks on its own records of the metadata (``_is``, ``_is_dtype``).

About 465 lines: the unpickler, its locked hand-outs and the checks of what it returns are
one safety boundary, read best in one file.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import pickle
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from optstate.base.errors import CheckpointError, UnsafeCheckpointError
from optstate.base.limits import LimitError, Limits, size_text
from optstate.base.limits import current as current_limits
from optstate.io.native_tensor import NativeDtype
from optstate.io.prescan import scan_any

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

# torch is imported only by the functions that unpickle metadata with it (this module is
# imported on the native reader's path too: ``is_index``, ``is_dcp_folder``, the checks);
# the metadata classes are told by name (the unpickler's allow-list admits only torch's).

METADATA_FILE = ".metadata"

# The classes a DCP .metadata pickle is made of (torch 2.4 .. 2.13).
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset"},
}


class Locked(type):
    """The metaclass of a class handed to a pickle: a BUILD on the class itself (which
    sets its attributes: ``PurePosixPath._str`` made every path of the process one file)
    is refused, so no pickle changes a class a later load or the rest of the process
    uses."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"a pickle may not change {cls.__name__}")

    def __delattr__(cls, name: str) -> None:
        raise pickle.UnpicklingError(f"a pickle may not change {cls.__name__}")


class Call:
    """A function handed to a pickle for a global (a path, ``torch.Size``, a layout): it
    calls ``fn`` with positional arguments; a BUILD on it, or any attribute set, is
    refused (never the function itself, whose ``__defaults__`` a BUILD would rewrite)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Any, name: str) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"a pickle may not change {self._name}")

    def __delattr__(self, name: str) -> None:
        raise pickle.UnpicklingError(f"a pickle may not change {self._name}")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"a pickle may not change {self._name}")


def path_text(pure: type[PurePath], name: str) -> Call:
    """``pathlib.PosixPath(*parts)`` as a pickle builds it: the path's text, a plain
    ``str`` (immutable), made from string parts only."""

    def make(*parts: Any) -> str:
        if not all(type(p) is str for p in parts):
            raise pickle.UnpicklingError("a path made of other things than strings")
        return str(pure(*parts))

    return Call(make, name)


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; refuses any global that is not plain metadata. It hands
    out no class or function of the process that a BUILD could change: torch's metadata
    classes as subclasses made for this load (``Locked``, turned back into torch's own
    classes after loading: ``_unlock``), functions as ``Call``s, paths as text."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.made: dict[type, type] = {}  # this load's subclass -> torch's class

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if name in _METADATA_CLASSES.get(module, ()):
            if module == "pathlib":
                return path_text(PureWindowsPath if "Windows" in name else PurePosixPath, name)
            found = super().find_class(module, name)
            if module == "torch.distributed.checkpoint.metadata" and name == (
                    "_MEM_FORMAT_ENCODING") or module == "torch.serialization":
                return Call(found, name)
            if module.startswith("torch.distributed.checkpoint"):
                return self._locked(found)
            return found  # torch.Size, OrderedDict, set, frozenset: immutable types
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)  # no attribute of these can be set
        raise pickle.UnpicklingError(f"global {module}.{name}")

    def _locked(self, cls: type) -> type:
        for sub, real in self.made.items():
            if real is cls:
                return sub
        sub = Locked(cls.__name__, (cls,), {"__slots__": (), "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})
        self.made[sub] = cls
        return sub


_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})


def _unlock(obj: Any, made: dict[type, type]) -> None:
    """Every instance of a class ``_MetadataUnpickler`` made for the load becomes an
    instance of torch's class again (the same fields: the subclass adds none)."""
    seen: set[int] = set()
    todo = [obj]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        real = made.get(type(x))
        if real is not None:
            object.__setattr__(x, "__class__", real)
        if isinstance(x, dict):
            items: Any = itertools.chain(x.keys(), x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            items = x
        elif real is not None:
            items = getattr(x, "__dict__", {}).values()
        else:
            continue
        todo.extend(y for y in items if type(y) not in _ATOMS)


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it is a regular file that really lives in
    ``folder``: a DCP folder from a stranger must not make optstate read (and ``convert``
    copy) a file elsewhere through a symlink or a ``..`` in its metadata."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeCheckpointError(f"{folder} names a data file outside itself: {name!r}; "
                                    "refused")
    path = folder / name
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.dirname(real) != real_folder:
        raise UnsafeCheckpointError(
            f"{path} is a link to {real}, outside the checkpoint folder; refused",
            hint="a DCP folder holds its own files; copy the real files into it if you trust "
            "them",
        )
    return path


def read_metadata(path: Path) -> Metadata:
    """The ``.metadata`` of a DCP folder, unpickled with the allow-list above."""
    file = path / METADATA_FILE
    try:
        if os.path.lexists(file):
            inside(path, METADATA_FILE)
        with open(file, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path} has no {METADATA_FILE} file; not a DCP checkpoint") from None
    except PermissionError:
        raise CheckpointError(f"permission denied reading {file}") from None
    return parse_metadata(data, str(file))


def parse_metadata(data: bytes, file: str) -> Metadata:
    """``.metadata``'s bytes (read from a folder or by range requests: ``dcp_remote``),
    pre-scanned, unpickled with the allow-list and checked; ``file`` names it in messages."""
    try:
        scan_any(data, current_limits(), file)  # before the C unpickler's memo grows
        unpickler = _MetadataUnpickler(io.BytesIO(data))
        md = unpickler.load()
        _unlock(md, unpickler.made)
    except pickle.UnpicklingError as e:
        text = str(e)
        if text.startswith("global "):
            raise UnsafeCheckpointError(
                f"{file} needs {text.removeprefix('global ')}, which is not DCP metadata; "
                "refused without running it"
            ) from None
        raise CheckpointError(f"{file} is damaged: {text}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, RecursionError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{file} is damaged or truncated ({type(e).__name__})") from None
    check_metadata(md, file)
    return md


def check_metadata(md: Any, file: str | Path) -> None:
    """What a ``.metadata`` pickle gave, checked before anything else uses it: every key,
    shape, dtype and chunk (``_check_entry``), the counts against the limits, the paths
    (``_check_paths``). ``md`` is torch's ``Metadata`` or the native reader's records of it
    (``native_dcp``: ``_is``), which turns these verdicts into ``NativeUnsupported``."""
    if not _is(md, "Metadata") or not isinstance(
            getattr(md, "state_dict_metadata", None), dict):
        raise CheckpointError(f"{file} does not hold DCP metadata")
    limits = current_limits()
    entries = md.state_dict_metadata
    if len(entries) > limits.items:
        raise LimitError(str(file), f"lists more than {limits.items:,} keys", "items",
                         limits.items)
    tensors = chunks = 0
    for key, entry in entries.items():
        _check_entry(file, key, entry, limits)
        if _is(entry, "TensorStorageMetadata"):
            tensors += 1
            chunks += len(entry.chunks)
    if tensors > limits.tensors:
        raise LimitError(str(file), f"lists more than {limits.tensors:,} tensors", "tensors",
                         limits.tensors)
    if chunks > limits.items:
        raise LimitError(str(file), f"lists more than {limits.items:,} tensor chunks",
                         "items", limits.items)
    _check_paths(file, md, limits)


def _check_paths(file: str | Path, md: Metadata, limits: Limits) -> None:
    """The nested path of every key (``planner_data``): as deep as the ``depth`` limit
    allows, made of short strings and indices."""
    pd = getattr(md, "planner_data", None)
    if not isinstance(pd, dict):
        return
    for key, path in pd.items():
        if not isinstance(path, tuple):
            continue
        if len(path) > limits.depth:
            raise LimitError(f"{file}: the path of key {short_repr(key)}",
                             f"is {len(path):,} levels deep", "depth", limits.depth)
        for part in path:
            if isinstance(part, str) and len(part) > limits.string:
                raise LimitError(f"{file}: the path of key {short_repr(key)}",
                                 f"has a part of {len(part):,} characters", "string",
                                 limits.string)


def short_repr(key: Any, limit: int = 80) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[:limit] + "…"


def is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _native_kind(obj: Any) -> str | None:
    """What the native reader's unpickler made ``obj`` as (``native_dcp``: a record of
    torch's class ``kind``, or a dtype's name, of kind "dtype"): its classes are
    ``Locked`` and say their ``kind``; None for anything else."""
    cls = type(obj)
    return getattr(cls, "kind", None) if type(cls) is Locked else None


def _is(obj: Any, name: str) -> bool:
    """``obj`` is DCP's metadata class ``name`` (``Metadata``, ``TensorStorageMetadata``,
    ``BytesStorageMetadata``), or the native reader's record of it: told by name, without
    importing torch."""
    cls = type(obj)
    return (cls.__name__ == name and cls.__module__.startswith("torch.distributed.checkpoint")
            or _native_kind(obj) == name)


def _is_dtype(v: Any) -> bool:
    """A torch.dtype, the native reader's ``NativeDtype``, or the dtype name its metadata
    unpickler hands out (``native_dcp._DtypeName``, which has an ``itemsize`` too)."""
    if isinstance(v, NativeDtype) or _native_kind(v) == "dtype":
        return True
    cls = type(v)
    return cls.__module__ == "torch" and cls.__name__ == "dtype"


# torch counts elements and bytes in int64: a shape past this is damage, not a tensor
_MAX_ELEMENTS = 2**62


def _check_entry(file: str | Path, key: Any, entry: Any, limits: Limits) -> None:
    """Metadata a torch-written checkpoint always satisfies; anything else is damage (or
    a crafted file) and gets one line, not an internal error later."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file} is damaged: key {short_repr(key)} {what}")

    if not isinstance(key, str):
        raise bad("is not a string")
    if len(key) > limits.string:
        raise LimitError(str(file), f"has a key of {len(key):,} characters ({short_repr(key)})",
                         "string", limits.string)
    if _is(entry, "BytesStorageMetadata"):
        return
    if not _is(entry, "TensorStorageMetadata"):
        raise bad(f"has unknown metadata {type(entry).__name__}")
    size = getattr(entry, "size", None)
    if not isinstance(size, tuple) or not all(is_index(n) for n in size):
        raise bad(f"has a bad shape {short_repr(size)}")
    if len(size) > limits.depth:
        raise LimitError(f"{file}: key {short_repr(key)}", f"has {len(size):,} dimensions",
                         "depth", limits.depth)
    if math.prod(size) > _MAX_ELEMENTS:
        raise bad(f"has a shape of {math.prod(size):,} elements, more than torch can count "
                  f"(shape {short_repr(list(size))})")
    if not _is_dtype(getattr(getattr(entry, "properties", None), "dtype", None)):
        raise bad("has no dtype")
    if not isinstance(getattr(entry, "chunks", None), list):
        raise bad("has no chunk list")
    for c in entry.chunks:
        offsets, sizes = getattr(c, "offsets", None), getattr(c, "sizes", None)
        if not (isinstance(offsets, tuple) and isinstance(sizes, tuple)
                and len(offsets) == len(sizes) == len(size)
                and all(is_index(o) and is_index(n) and o + n <= whole
                        for o, n, whole in zip(offsets, sizes, size, strict=True))):
            raise bad(f"has a chunk outside its shape {list(size)}")
    if len(entry.chunks) > limits.items:
        raise LimitError(f"{file}: key {short_repr(key)}", f"has {len(entry.chunks):,} chunks",
                         "items", limits.items)
    if sum(math.prod(c.sizes) for c in entry.chunks) != math.prod(size):
        raise bad(f"has chunks that do not cover its shape {short_repr(list(size))}")



def is_dcp_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


def storage_files(path: Any, metadata: Metadata, *, sizes: dict[str, int] | None = None,
                  where: str | None = None
                  ) -> tuple[dict[tuple[str, Any], str], dict[str, list[Any]]]:
    """Check the storage table of ``metadata`` against the files of the folder ``path``:
    every named file exists inside it and holds the bytes its chunks claim, every tensor
    chunk and value has data, no chunk stores a view. Returns chunk (key, offset) -> data
    file name, and tensor key -> its chunks' ``_StorageInfo``. A folder in object storage
    gives its files' ``sizes`` (one listing) and the name to say (``where``: no
    credentials) instead of being looked at here."""
    label = where if where is not None else str(path)
    out: dict[tuple[str, Any], str] = {}
    chunk_infos: dict[str, list[Any]] = {}
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise CheckpointError(f"{label}/{METADATA_FILE} has no storage table")
    missing: set[str] = set()
    found: dict[str, int] = {}
    lengths: dict[tuple[str, Any], int] = {}
    for index, info in storage.items():
        if not (isinstance(getattr(index, "fqn", None), str)
                and (index.offset is None or isinstance(index.offset, tuple))):
            raise CheckpointError(f"{label}/{METADATA_FILE} is damaged: a bad "
                                  "storage index")
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or "/" in rel or rel in ("", ".", ".."):
            raise CheckpointError(f"{label}/{METADATA_FILE} names a bad data file: {rel!r}")
        if rel not in found:
            if sizes is not None:
                found[rel] = sizes.get(rel, -1)
            else:
                f = path / rel
                if os.path.lexists(f):
                    inside(path, rel)
                found[rel] = f.stat().st_size if f.is_file() else -1
        if found[rel] < 0:
            missing.add(rel)
        elif not (is_index(getattr(info, "offset", None))
                  and is_index(getattr(info, "length", None))
                  and info.offset + info.length <= found[rel]):
            raise CheckpointError(
                f"{label}/{rel} is truncated: it ends before the data of {index.fqn}",
                hint="re-copy the checkpoint folder",
            )
        where = (index.fqn, tuple(index.offset) if index.offset is not None else None)
        out[where] = rel
        if index.offset is not None:
            chunk_infos.setdefault(index.fqn, []).append(info)
        lengths[where] = info.length if is_index(getattr(info, "length", None)) else 0
    if missing:
        names = sorted(missing)
        raise CheckpointError(
            f"{label} is an incomplete DCP checkpoint: {', '.join(names[:3])}"
            + (f" and {len(names) - 3} more" if len(names) > 3 else "") + " missing",
            hint="copy every *.distcp file of the checkpoint, not only some ranks'",
        )
    for key, entry in metadata.state_dict_metadata.items():
        if _is(entry, "TensorStorageMetadata"):
            if any((key, tuple(c.offsets)) not in out for c in entry.chunks):
                raise CheckpointError(
                    f"{label}/{METADATA_FILE} is damaged: a chunk of {key} has no data")
        elif (key, None) not in out:
            raise CheckpointError(
                f"{label}/{METADATA_FILE} is damaged: the value {key} has no data")
    _check_expansion(label, metadata, lengths)
    return out, chunk_infos


def _check_expansion(path: str, metadata: Metadata,
                     lengths: dict[tuple[str, Any], int]) -> None:
    """Each chunk is read whole into a tensor of the shape the metadata gives it. A
    chunk stored as a view (a 2 KB ``torch.zeros(1).expand(2**30)``) would become
    gigabytes: chunks may add at most the ``expand`` limit to the bytes stored."""
    limit = current_limits().expand
    extra, worst = 0, None
    for key, entry in metadata.state_dict_metadata.items():
        if not _is(entry, "TensorStorageMetadata"):
            continue
        itemsize = entry.properties.dtype.itemsize
        for c in entry.chunks:
            claimed = math.prod(c.sizes) * itemsize
            stored = lengths.get((key, tuple(c.offsets)), 0)
            if claimed > stored:
                extra += claimed - stored
                if worst is None or claimed - stored > worst[1] - worst[2]:
                    worst = (key, claimed, stored)
    if extra > limit and worst is not None:
        key, claimed, stored = worst
        raise LimitError(
            str(path),
            f"has tensor chunks that claim more data than they store ({key}: "
            f"{claimed:,} bytes from {stored:,} stored); reading them would add "
            f"{size_text(extra)}", "expand", limit)
