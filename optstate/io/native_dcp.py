"""DCP folders read without torch: ``.metadata`` decoded inertly, tensors as NativeTensors.

A torch.distributed.checkpoint folder is a pickled ``.metadata`` (plain dataclasses: keys,
shapes, dtypes, chunks, where each chunk's bytes are) and ``__R_I.distcp`` data files in
which torch's ``FileSystemWriter`` writes every item as its own small torch.save zip: a
tensor chunk is ``torch.save(chunk)`` (a ``data.pkl`` naming one storage record), a
non-tensor value ``torch.save(value)``. ``read_dcp_native`` reads such a folder into what
``source._open_dcp`` makes the same ``Source`` of as from torch's engine (``dcp.py``),
with ``reader="native"``:

- ``.metadata`` is pre-scanned (``prescan.scan_any``), then unpickled by an unpickler of
  its own whose only globals are the DCP metadata classes torch 2.4 .. 2.14 write, each
  decoded into an inert record of its fields (``_Record``, its classes made and locked
  per load; functions and paths as ``dcp_metadata.Call``s), dtypes by name (never the
  shared ``NativeDtype`` objects, which a pickle's BUILD would rewrite); then checked
  by ``dcp_metadata``'s own checks (``check_metadata``: limits, keys, shapes, chunks,
  paths; ``storage_files``: the storage table, the data files inside the folder,
  expansion), whose verdict becomes ``NativeUnsupported``, and by what only this reader
  refuses (a dtype it does not know, a layout other than strided, transforms, symlinks).
- The non-tensor values (hyperparameters, ``params`` lists) are read now, each pre-scanned
  like the torch path does and unpickled with plain containers, ``OrderedDict()`` and
  ``Counter()``/``Counter(dict)`` only (``native_pickle.build_counter``: never built from
  another iterable, never the class itself, which a BUILD would change).
- Each tensor is a ``NativeTensor`` of its full shape over a storage whose bytes are found
  when a statistic first touches them (``--no-stats`` reads no chunk): a tensor stored in
  one contiguous, aligned chunk is a view of the memory-mapped data file; one stored in
  several chunks (a sharded save), or a view, or not aligned to its element size (the C
  kernel reads elements in place), is copied into one buffer (the last few kept, as
  ``dcp.py`` keeps the last tensors it loaded); chunks that overlap go to torch's path.

Anything this reader does not know raises ``NativeUnsupported`` at open, and the caller
opens the folder with torch, which gives its own verdict (every established message). A
chunk that turns out odd only when its bytes are read (damaged, a transform, a stored
class outside the allow-list) is read by torch's path at that moment
(``DcpCheckpoint.load_tensor``): the same data, or the same error, as with torch.

The tree is put back together as ``dcp.py`` does (``rebuild_tree``: positional optimizer
state keys, lists, a fresh optimizer's empty ``state``). ``layout_native`` is
``inspect --layout``'s data (``dcp_layout.layout_report``) from the metadata alone.

About 820 lines: the metadata classes and the chunk reader are one reader that mirrors
``dcp_metadata`` + ``dcp.py`` (the checks of the metadata and the tree rebuild are shared:
``dcp_metadata``, ``dcp_tree``), and reads best as one file.
"""

from __future__ import annotations

import heapq
import io
import itertools
import math
import mmap
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from optstate.base.errors import CheckpointError, OptstateError
from optstate.base.limits import LimitError
from optstate.base.limits import current as current_limits
from optstate.io import dcp_tree
from optstate.io.dcp_metadata import (
    Call,
    Locked,
    check_metadata,
    is_index,
    path_text,
    short_repr,
    storage_files,
)
from optstate.io.native_pickle import (
    build_counter,
    build_frozenset,
    build_ordered_dict,
    build_set,
)
from optstate.io.native_tensor import (
    DTYPES,
    NativeDtype,
    NativeStorage,
    NativeTensor,
    NativeUnsupported,
)
from optstate.io.prescan import scan_any
from optstate.io.walk import WalkReport, walk

METADATA_FILE = ".metadata"

# dcp_remote.METADATA_BYTES_PER_ITEM: .metadata may hold this many bytes per ``items``
# limit entry (one pickled chunk entry is well under 256 bytes)
_METADATA_BYTES_PER_ITEM = 256
# Assembled tensors kept (a param's moments are looked at again right after their
# statistics): the last two, more while they are small (``io.lazy.KEPT``).
_KEPT = 2
_KEPT_BYTES = 64 * 2**20


# ---------------------------------------------------------------- .metadata, inertly


class _Record(metaclass=Locked):
    """One DCP metadata dataclass, as plain fields (``kind``: torch's class name). Each
    load has its own record classes (``_metadata_classes``), locked (``Locked``: a
    BUILD on a class is refused); an instance takes one state of public field names."""

    kind = "record"
    _defaults: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slots) of a dataclass with __slots__
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and k.isidentifier() and not k.startswith("_")
                and k != "kind" for k in state) or self.__dict__:
            raise pickle.UnpicklingError(f"bad state for {self.kind}")
        self.__dict__.update(self._defaults)
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:  # a field an older torch did not write
        if name.startswith("__"):
            raise AttributeError(name)
        return self._defaults.get(name)

    def __repr__(self) -> str:
        return f"{self.kind}({self.__dict__})"


def _record(name: str, base: type[_Record] = _Record, **defaults: Any) -> type[_Record]:
    return Locked(name, (base,), {"kind": name, "_defaults": defaults})


class _TensorProperties(_Record):
    """``TensorProperties``: pickled as a tuple (dtype, layout, requires_grad,
    memory format, pin_memory) since torch 2.1, as a dict before."""

    kind = "TensorProperties"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            dtype, layout, requires_grad, fmt, pin = state
            state = {"dtype": dtype, "layout": layout, "requires_grad": requires_grad,
                     "memory_format": fmt, "pin_memory": pin}
        super().__setstate__(state)


_MD = "torch.distributed.checkpoint.metadata"


def _metadata_classes() -> dict[tuple[str, str], Any]:
    """What a ``.metadata`` pickle may name, made afresh for each load: record classes
    (locked) and ``Call``s, never a class or function another load or the process uses."""
    return {
        (_MD, "Metadata"): _record("Metadata", planner_data=None, storage_data=None,
                                   storage_meta=None, version=None),
        (_MD, "TensorStorageMetadata"): _record("TensorStorageMetadata"),
        (_MD, "BytesStorageMetadata"): _record("BytesStorageMetadata"),
        (_MD, "ChunkStorageMetadata"): _record("ChunkStorageMetadata"),
        (_MD, "TensorProperties"): _record("TensorProperties", _TensorProperties),
        (_MD, "MetadataIndex"): _record("MetadataIndex", offset=None, index=None),
        (_MD, "StorageMeta"): _record("StorageMeta"),
        (_MD, "_MEM_FORMAT_ENCODING"): Call(lambda value: ("memory_format", value),
                                            "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"):
            _record("_StorageInfo", transform_descriptors=None),
        ("torch.serialization", "_get_layout"):
            Call(lambda name: str(name).removeprefix("torch."), "_get_layout"),
        ("torch", "Size"): Call(lambda dims=(): tuple(dims), "Size"),
        ("pathlib", "PosixPath"): path_text(PurePosixPath, "PosixPath"),
        ("pathlib", "PurePosixPath"): path_text(PurePosixPath, "PurePosixPath"),
        ("pathlib", "WindowsPath"): path_text(PureWindowsPath, "WindowsPath"),
        ("pathlib", "PureWindowsPath"): path_text(PureWindowsPath, "PureWindowsPath"),
        # containers as Calls too (a BUILD on the class would change it for the process),
        # built only from what their reduce writes
        ("collections", "OrderedDict"): Call(build_ordered_dict, "OrderedDict"),
        ("builtins", "set"): Call(build_set, "set"),
        ("builtins", "frozenset"): Call(build_frozenset, "frozenset"),
    }


# layouts and memory formats an older torch pickled by name (GLOBAL torch.strided)
_TORCH_NAMES = {"strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr",
                "sparse_bsc", "_mkldnn", "jagged", "contiguous_format", "channels_last",
                "channels_last_3d", "preserve_format"}


class _DtypeName(str, metaclass=Locked):
    """A dtype as an unpickler hands it out: a name, turned into the shared ``NativeDtype``
    after loading. Never the shared object itself: a pickle's BUILD on it would rewrite
    that object's fields (``float32``'s itemsize) for every later read in the process.
    ``kind`` and ``itemsize`` are what ``dcp_metadata``'s checks ask of a dtype."""

    __slots__ = ()
    kind = "dtype"

    @property
    def itemsize(self) -> int:
        return DTYPES[str(self)].itemsize


def _dtype(value: Any) -> NativeDtype | None:
    return DTYPES.get(str(value)) if type(value) is _DtypeName else None


class _MetadataUnpickler(pickle.Unpickler):
    """The DCP metadata classes only, as ``_Record``s; anything else is unknown here."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.classes = _metadata_classes()

    def find_class(self, module: str, name: str) -> Any:
        found = self.classes.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in DTYPES:
            return _DtypeName(name)
        if module == "torch" and name in _TORCH_NAMES:
            return name
        raise NativeUnsupported(f".metadata needs {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise NativeUnsupported(".metadata holds a persistent id")


def _unpickle(unpickler: type[pickle.Unpickler], data: bytes | memoryview, what: str) -> Any:
    try:
        return unpickler(io.BytesIO(data)).load()
    except NativeUnsupported:
        raise
    except Exception as e:  # damage of any kind: torch's path says what it is
        raise NativeUnsupported(f"{what} does not unpickle here ({type(e).__name__})") from None


def _is_dims(v: Any) -> bool:
    return isinstance(v, tuple) and all(is_index(n) for n in v)


class _Metadata:
    """What a DCP folder's ``.metadata`` says, checked by ``dcp_metadata``'s own checks
    (``check_metadata``, ``storage_files``), whose verdict is ``NativeUnsupported`` here
    (torch's path says it), then by what only this reader asks (dtypes it knows, strided
    tensors, no transforms, no symlinks, plain file names): tensor key -> (shape, dtype,
    chunks), value keys, each key's path, and each item's (file, offset, length)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        file = folder / METADATA_FILE
        if os.path.islink(file) or not file.is_file():
            raise NativeUnsupported(".metadata is not a regular file of the folder")
        limits = current_limits()
        if file.stat().st_size > limits.items * _METADATA_BYTES_PER_ITEM:
            raise NativeUnsupported(".metadata is larger than the limits allow")
        data = file.read_bytes()
        scan_any(data, limits, str(file))  # LimitError: the same verdict as torch's path
        md = _unpickle(_MetadataUnpickler, data, ".metadata")
        try:
            check_metadata(md, str(file))
        except OptstateError as e:
            raise NativeUnsupported(str(e)) from None
        self.tensors: dict[str, tuple[tuple[int, ...], NativeDtype, list[tuple]]] = {}
        self.values: list[str] = []
        self.order: list[str] = []
        for key, entry in md.state_dict_metadata.items():
            self._entry(key, entry)
        self.paths = self._paths(md.planner_data)
        self._check_storage(md.storage_data)
        try:  # every data file inside the folder and long enough, no expanded chunk
            storage_files(folder, md)
        except OptstateError as e:
            raise NativeUnsupported(str(e)) from None
        self.items, self.file_sizes = self._storage(md.storage_data)
        self.version = md.version

    def _entry(self, key: str, entry: Any) -> None:
        self.order.append(key)
        if entry.kind == "BytesStorageMetadata":
            self.values.append(key)
            return
        props = entry.properties
        dtype = _dtype(props.dtype)
        if dtype is None:
            raise NativeUnsupported(f"key {key!r} has a dtype this reader does not know")
        if getattr(props, "layout", "strided") not in ("strided", None):
            raise NativeUnsupported(f"key {key!r} is not a strided tensor")
        self.tensors[key] = (entry.size, dtype, [(c.offsets, c.sizes) for c in entry.chunks])

    def _paths(self, pd: Any) -> dict[str, tuple[Any, ...]]:
        """Each key's path in the nested state (``DcpCheckpoint.path_of``)."""
        out: dict[str, tuple[Any, ...]] = {}
        for key in self.order:
            path = pd.get(key) if isinstance(pd, dict) else None
            if isinstance(path, tuple) and path and all(
                    isinstance(p, str) or is_index(p) for p in path):
                out[key] = path
            else:
                out[key] = (key,)
        return out

    def _check_storage(self, storage: Any) -> None:
        """What only this reader refuses in the storage table: a data file name torch's
        path may take for another one, an item stored through transforms."""
        for info in storage.values() if isinstance(storage, dict) else ():
            rel = getattr(info, "relative_path", None)
            if isinstance(rel, str) and any(c in rel for c in "\\\0"):
                raise NativeUnsupported(f"a bad data file name {rel!r}")
            if getattr(info, "transform_descriptors", None):
                raise NativeUnsupported(f"{rel} stores items through transforms")

    def _storage(self, storage: dict[Any, Any]
                 ) -> tuple[dict[tuple[str, Any], tuple[str, int, int]], dict[str, int]]:
        """(key, chunk offsets or None) -> (data file, offset, length), from the table
        ``storage_files`` checked; and each data file's size, none a symlink."""
        sizes: dict[str, int] = {}
        out: dict[tuple[str, Any], tuple[str, int, int]] = {}
        for index, info in storage.items():
            rel, start, length = info.relative_path, info.offset, info.length
            if rel not in sizes:
                f = self.folder / rel
                if os.path.islink(f) or not f.is_file():
                    raise NativeUnsupported(f"{rel} is missing or not a regular file")
                sizes[rel] = f.stat().st_size
            if start + length > sizes[rel]:  # it changed since storage_files looked
                raise NativeUnsupported(f"{rel} is shorter than its items")
            offset = index.offset
            out[(index.fqn, tuple(offset) if offset is not None else None)] = (rel, start,
                                                                               length)
        return out, sizes


# ---------------------------------------------------------------- stored items


class _View(io.RawIOBase):
    """A memoryview as a seekable read-only file (for zipfile and the pre-scan)."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        stop = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos:stop]) if stop > self._pos else b""
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


_ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"


def _zip_records(view: memoryview, label: str) -> tuple[bytes, dict[str, memoryview]]:
    """An item's torch.save zip: its ``data.pkl`` and its ``data/<key>`` records (views of
    ``view``), after the pre-scan torch's path runs on the same bytes."""
    from optstate.io.torch_file import prescan_stream

    if bytes(view[:4]) != _ZIP_MAGIC:
        raise NativeUnsupported(f"{label} is not a torch.save zip")
    n = len(view)
    # the item is its bytes [offset, offset + length) only: the zip's end of central
    # directory must end them (no comment), its central directory where it says, with
    # nothing before the zip (zipfile would find a later item's end record, or shift
    # every offset, and read another zip than torch's reader does)
    if n < 22 or bytes(view[n - 22:n - 18]) != _EOCD or view[n - 2:] != b"\0\0":
        raise NativeUnsupported(f"{label}: its end of central directory does not end the "
                                "item")
    cd_size, cd_offset = struct.unpack_from("<II", view, n - 10)
    if cd_offset == 0xFFFFFFFF or cd_offset + cd_size > n - 22:
        raise NativeUnsupported(f"{label}: its end of central directory is not a plain one")
    try:
        counts = prescan_stream(_View(view), len(view), label)
        zf = zipfile.ZipFile(_View(view))
        infos = zf.infolist()
    except (CheckpointError, Exception) as e:
        raise NativeUnsupported(f"{label}: {type(e).__name__}") from None
    if zf.start_dir != cd_offset:
        raise NativeUnsupported(f"{label}: its end of central directory is another zip's "
                                "(bytes before it)")
    prefix = infos[0].filename.split("/", 1)[0] if infos else ""
    pkl, records = None, {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or "/" not in info.filename:
            raise NativeUnsupported(f"{label} is not a plain torch.save zip")
        at = info.header_offset
        if bytes(view[at:at + 4]) != _ZIP_MAGIC:
            raise NativeUnsupported(f"{label} is damaged")
        name_len, extra_len = struct.unpack_from("<HH", view, at + 26)
        start = at + 30 + name_len + extra_len
        if start + info.file_size > len(view):
            raise NativeUnsupported(f"{label} is damaged")
        part = view[start:start + info.file_size]
        name = info.filename[len(prefix) + 1:]
        if name == "data.pkl":
            pkl = bytes(part)
        elif name.startswith("data/"):
            records[name[5:]] = part
    if pkl is None:
        raise NativeUnsupported(f"{label} has no data.pkl")
    why = counts.native_refusal(len(pkl))  # opcodes torch refuses, a memo index too big
    if why is not None:
        raise NativeUnsupported(f"{label}: {why}")
    return pkl, records


class _ValueUnpickler(pickle.Unpickler):
    """A non-tensor value: plain containers and scalars, ``OrderedDict()``, ``Counter()``
    or ``Counter(dict)`` (``Call``s: never the class, which a BUILD would change)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return Call(build_ordered_dict, "OrderedDict")
        if (module, name) == ("collections", "Counter"):  # MultiStepLR's milestones
            return Call(build_counter, "Counter")
        raise NativeUnsupported(f"a value needs {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise NativeUnsupported("a value holds a tensor")


# torch.save's storage classes (older dtypes); newer dtypes are named by the dtype itself
_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "ComplexFloatStorage": "complex64",
             "ComplexDoubleStorage": "complex128", "CharStorage": "int8",
             "ByteStorage": "uint8", "ShortStorage": "int16", "IntStorage": "int32",
             "LongStorage": "int64", "BoolStorage": "bool"}


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                    hooks: Any, metadata: Any = None) -> tuple[Any, ...]:
    if hooks or metadata:  # backward hooks, or tensor metadata (python attrs)
        raise NativeUnsupported("a chunk is more than a plain tensor")
    return ("tensor", storage, offset, tuple(size), tuple(stride))


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, metadata: Any = None) -> tuple[Any, ...]:
    """The newer dtypes (float8, uint16 ...): an untyped storage and the dtype apart."""
    native = _dtype(dtype)
    if not (isinstance(storage, tuple) and storage[1] is _UNTYPED and native is not None):
        raise NativeUnsupported("a chunk's storage is not an untyped one")
    typed = ("storage", native, storage[2], storage[3] // native.itemsize)
    return _rebuild_tensor(typed, offset, size, stride, requires_grad, hooks, metadata)


_UNTYPED = "UntypedStorage"  # its numel counts bytes


class _ChunkUnpickler(pickle.Unpickler):
    """A tensor chunk: ``_rebuild_tensor_v2`` over one storage record."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return Call(_rebuild_tensor, name)  # never the function: its __defaults__
        if (module, name) == ("torch._utils", "_rebuild_tensor_v3"):
            return Call(_rebuild_tensor_v3, name)
        if (module, name) == ("collections", "OrderedDict"):
            return Call(build_ordered_dict, "OrderedDict")
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _UNTYPED
        if module == "torch" and name in _STORAGES:
            return _DtypeName(_STORAGES[name])
        if module == "torch" and name in DTYPES:
            return _DtypeName(name)
        from optstate.io.reader_notes import needs_global

        raise NativeUnsupported(f"a tensor chunk: {needs_global(module, name)}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and (_dtype(pid[1]) is not None or pid[1] is _UNTYPED)
                and isinstance(pid[2], str)
                and is_index(pid[4])):
            raise NativeUnsupported("a chunk names an odd storage")
        return ("storage", _dtype(pid[1]) or pid[1], pid[2], pid[4])


# ---------------------------------------------------------------- tensors


class _LazyStorage(NativeStorage):
    """A storage whose bytes are found (mapped or assembled) when first touched."""

    __slots__ = ("_load", "_nbytes", "_bytes")

    def __init__(self, nbytes: int, load: Callable[[], Any], key: str, file: Path,
                 info: dict[str, Any]) -> None:
        self._nbytes, self._load, self._bytes = nbytes, load, None
        self.key, self.file, self.info = key, file, info

    @property
    def buffer(self) -> memoryview:  # type: ignore[override]
        if self._bytes is None:
            mv = memoryview(self._load())
            self._bytes = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        return self._bytes

    @property
    def nbytes(self) -> int:  # type: ignore[override]
        return self._nbytes

    def loaded(self) -> bool:
        return self._bytes is not None

    def drop(self) -> None:
        self._bytes = None


def _aligned(view: memoryview, itemsize: int) -> bool:
    from optstate.io.native_tensor import buffer_address

    return not len(view) or buffer_address(view) % min(itemsize, 8) == 0


def _copy_chunk(dst: memoryview, shape: tuple[int, ...], chunk: NativeTensor,
                offsets: tuple[int, ...]) -> None:
    """Copy ``chunk`` (any strides) into its place in ``dst``, a contiguous tensor of
    ``shape``: contiguous runs at a time (whole rows, or more when the chunk spans the
    trailing dimensions)."""
    n, size = len(shape), chunk.element_size()
    sizes, strides = chunk.shape, chunk.stride()
    if chunk.numel() == 0:
        return
    target = [1] * n
    for d in range(n - 2, -1, -1):
        target[d] = target[d + 1] * shape[d + 1]
    # the block: dims j.. contiguous in the chunk's storage and in the target
    j, run = n, 1
    while j > 0:
        d = j - 1
        src_ok = sizes[d] == 1 or strides[d] == run
        dst_ok = j == n or sizes[j] == shape[j] and all(sizes[k] == shape[k]
                                                       for k in range(j, n))
        if not (src_ok and dst_ok):
            break
        run *= sizes[d]
        j = d
    if run == 1 and chunk.numel() > 4096 and _copy_with_numpy(dst, shape, chunk, offsets):
        return  # element by element: numpy when it is there
    src = chunk.storage.buffer
    nbytes = run * size
    base_src = chunk.storage_offset()
    base_dst = sum(o * t for o, t in zip(offsets, target, strict=True))
    for idx in itertools.product(*(range(s) for s in sizes[:j])):
        s = (base_src + sum(i * st for i, st in zip(idx, strides, strict=False))) * size
        t = (base_dst + sum(i * tt for i, tt in zip(idx, target, strict=False))) * size
        dst[t:t + nbytes] = src[s:s + nbytes]


def _copy_with_numpy(dst: memoryview, shape: tuple[int, ...], chunk: NativeTensor,
                     offsets: tuple[int, ...]) -> bool:
    try:
        import numpy as np
    except ImportError:
        return False
    from optstate.io.native_tensor import NUMPY_DTYPES

    whole = np.frombuffer(dst, dtype=NUMPY_DTYPES[chunk.dtype.name]).reshape(shape)
    whole[tuple(slice(o, o + n) for o, n in zip(offsets, chunk.shape, strict=True))] = (
        chunk.array())
    return True


def _runs(shape: tuple[int, ...], offsets: tuple[int, ...],
          sizes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """A non-empty chunk's elements as (start, stop) runs of the whole tensor's row-major
    element indices, in increasing order: one run per index of the dimensions before
    those the chunk spans whole (one run for a chunk of whole rows)."""
    n = len(shape)
    if n == 0:
        yield 0, 1
        return
    target = [1] * n
    for d in range(n - 2, -1, -1):
        target[d] = target[d + 1] * shape[d + 1]
    j = n - 1
    while j > 0 and sizes[j] == shape[j]:
        j -= 1
    run, base = sizes[j] * target[j], offsets[j] * target[j]
    for idx in itertools.product(*(range(o, o + s) for o, s in zip(offsets[:j], sizes[:j],
                                                                     strict=True))):
        start = base + sum(i * t for i, t in zip(idx, target, strict=False))
        yield start, start + run


def _overlap(shape: tuple[int, ...],
             chunks: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> tuple[bool, int]:
    """Whether two non-empty chunks share an element (their sizes add up to the whole
    tensor's, checked at open: disjoint chunks then tile it), and how many runs were
    compared: every chunk's runs merged in order of their start (``heapq.merge``, n log n
    in the runs, which the copy walks anyway), each compared with the furthest end
    before it."""
    end, compared = -1, 0
    runs = [_runs(shape, o, s) for o, s in chunks if math.prod(s)]
    for i, (start, stop) in enumerate(heapq.merge(*runs)):
        if i:
            compared += 1
            if start < end:
                return True, compared
        end = max(end, stop)
    return False, compared


class NativeDcp:
    """An open DCP folder read without torch: the checked metadata, the data files mapped
    when first needed, each tensor's bytes found on first touch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.md = _Metadata(folder)
        self._maps: dict[str, memoryview] = {}
        self._kept: OrderedDict[int, _LazyStorage] = OrderedDict()
        self._torch: Any = None  # dcp.DcpCheckpoint, for a chunk this reader cannot read
        self._overlaps: dict[str, bool] = {}  # tensor key -> whether its chunks overlap

    def _item(self, key: str, offsets: tuple[int, ...] | None) -> memoryview:
        rel, start, length = self.md.items[(key, offsets)]
        view = self._maps.get(rel)
        if view is None:
            from optstate.io import readguard

            path = self.folder / rel
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != self.md.file_sizes[rel]:
                    raise NativeUnsupported(f"{rel} changed size")
                if not self.md.file_sizes[rel]:
                    view = memoryview(b"")
                else:
                    view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
                    readguard.watch(f, path)
            self._maps[rel] = view
        return view[start:start + length]

    def value(self, key: str) -> Any:
        label = f"{self.folder}: the value {short_repr(key)}"
        pkl, records = _zip_records(self._item(key, None), label)
        if records:
            raise NativeUnsupported(f"{label} holds tensor data")
        return _unpickle(_ValueUnpickler, pkl, label)

    def chunk(self, key: str, offsets: tuple[int, ...], sizes: tuple[int, ...],
              dtype: NativeDtype) -> NativeTensor:
        """One stored chunk, as saved (its own strides and offset in its record)."""
        label = f"{self.folder}: the chunk of {short_repr(key)}"
        pkl, records = _zip_records(self._item(key, offsets), label)
        got = _unpickle(_ChunkUnpickler, pkl, label)
        try:  # what _rebuild_tensor returned, or whatever else a pickle built
            tag, (kind, sdtype, skey, numel), offset, size, stride = got
            record = records.get(skey) if isinstance(skey, str) else None
            if not (tag == "tensor" and kind == "storage" and sdtype is dtype
                    and size == sizes and record is not None and is_index(offset)
                    and is_index(numel) and len(record) >= numel * dtype.itemsize
                    and _is_dims(stride)):
                raise ValueError
            return NativeTensor(NativeStorage(record, skey, self.folder), dtype, size, stride,
                                offset)
        except (ValueError, TypeError):  # NativeTensor: elements outside the storage
            raise NativeUnsupported(f"{label} is not one tensor as the metadata says") from None

    def tensor_bytes(self, key: str) -> Any:
        """The whole tensor ``key``, contiguous: a view of the mapped file when one chunk
        holds it as such, else a buffer its chunks are copied into."""
        shape, dtype, chunks = self.md.tensors[key]
        nbytes = math.prod(shape) * dtype.itemsize
        if len(chunks) == 1 and all(o == 0 for o in chunks[0][0]):
            t = self.chunk(key, chunks[0][0], chunks[0][1], dtype)
            start, stop = t.byte_range()
            view = t.storage.buffer[start:start + nbytes]
            if t.is_contiguous() and stop - start == nbytes and _aligned(view, dtype.itemsize):
                return view
        if key not in self._overlaps:  # once per tensor: its copy is rebuilt when dropped
            self._overlaps[key] = _overlap(shape, chunks)[0]
        if self._overlaps[key]:  # holes left: torch's path decides what they hold
            raise NativeUnsupported(f"the chunks of {key!r} overlap")
        out = bytearray(nbytes)
        dst = memoryview(out)
        for offsets, sizes in chunks:
            if math.prod(sizes):
                _copy_chunk(dst, shape, self.chunk(key, offsets, sizes, dtype), offsets)
        return out

    def _load(self, key: str, storage: _LazyStorage) -> Any:
        try:
            data = self.tensor_bytes(key)
        except NativeUnsupported:
            data = self._torch_bytes(key)
        if not isinstance(data, memoryview):  # a copy: keep only the last few
            self._kept[id(storage)] = storage
            while len(self._kept) > _KEPT and sum(
                    s.nbytes for s in self._kept.values()) > _KEPT_BYTES:
                self._kept.popitem(last=False)[1].drop()
        return data

    def _torch_bytes(self, key: str) -> bytearray:
        """What torch's path reads for ``key`` (or its error): a chunk this reader does
        not know, found only when its bytes were needed."""
        import ctypes

        if self._torch is None:
            from optstate.io.dcp import DcpCheckpoint

            self._torch = DcpCheckpoint(self.folder)
        t = self._torch.load_tensor(key).contiguous()
        n = t.numel() * t.element_size()
        return bytearray(ctypes.string_at(t.data_ptr(), n) if n else b"")

    def tensor(self, key: str) -> NativeTensor:
        shape, dtype, chunks = self.md.tensors[key]
        info = {"dcp_key": key, "dcp_folder": str(self.folder),
                "chunks": [{"offsets": list(o), "sizes": list(s),
                            "file": self.md.items[(key, o)][0]} for o, s in chunks]}
        storage = _LazyStorage(math.prod(shape) * dtype.itemsize, lambda: None, key,
                               self.folder, {"lazy": True, "dcp_key": key})
        storage._load = lambda: self._load(key, storage)
        return NativeTensor(storage, dtype, shape, None, 0, info)

    def rebuild(self) -> dict[Any, Any]:
        """The nested state dict, as ``DcpCheckpoint.rebuild`` gives it."""
        limits = current_limits()
        values = {key: self.value(key) for key in self.md.values}
        try:
            for key, value in values.items():
                walk(value, label=f"{self.folder}: the value {short_repr(key)}",
                     max_depth=limits.depth, max_nodes=limits.nodes)
        except CheckpointError as e:  # torch's path says it, after its own reading
            raise NativeUnsupported(f"a value fails the walk: {e}") from None
        return rebuild_tree(self.md.order, self.md.paths, values, self.tensor, limits.depth,
                            str(self.folder))


# ---------------------------------------------------------------- the nested tree


def rebuild_tree(keys: list[str], paths: dict[str, tuple[Any, ...]], values: dict[str, Any],
                 tensor: Callable[[str], Any], depth: int, where: str) -> dict[Any, Any]:
    """The nested state from DCP's flat keys (``DcpCheckpoint.rebuild``'s rules)."""
    return dcp_tree.rebuild_tree(keys, values, paths.__getitem__,
                                 lambda key: values[key] if key in values else tensor(key),
                                 depth, where)


# ---------------------------------------------------------------- inspect --layout

_RANK_FILE = re.compile(r"__(\d+)_\d+\.distcp")


def layout_native(folder: Path) -> dict[str, Any]:
    """``dcp_layout.layout_report`` of a local folder from its metadata alone, without
    torch (the same plain data); ``NativeUnsupported`` as for reading it."""
    md = _Metadata(Path(folder))
    files = {f.name: f.stat().st_size for f in sorted(Path(folder).iterdir())
             if f.is_file() and not f.is_symlink() and f.name != METADATA_FILE}
    tensors = []
    for key, (shape, dtype, chunks) in md.tensors.items():
        out = []
        for offsets, sizes in chunks:
            file = md.items[(key, offsets)][0]
            m = _RANK_FILE.fullmatch(file)
            out.append({"offsets": list(offsets), "sizes": list(sizes), "file": file,
                        "rank": int(m.group(1)) if m else None})
        tensors.append({"key": key, "path": list(md.paths[key]), "shape": list(shape),
                        "dtype": dtype.name, "chunks": out})
    ranks = sorted({c["rank"] for t in tensors for c in t["chunks"] if c["rank"] is not None})
    return {"format": "dcp", "files": files, "ranks": ranks, "tensors": tensors}


# ---------------------------------------------------------------- the Source


def folder_bytes(folder: Path) -> int:
    """What ``DcpCheckpoint.total_bytes`` counts: the folder's regular files."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.is_symlink())


@dataclass
class NativeDcpRead:
    """A local DCP folder read without torch: what ``source`` makes its ``Source`` of
    (``format="dcp"``, ``reader="native"``), as ``source._open_dcp`` does from torch's."""

    obj: Any
    bytes: int
    walk: WalkReport


def read_dcp_native(path: Path) -> NativeDcpRead:
    """A local DCP folder's tree (NativeTensors, real values), size and walk, without
    torch; raises ``NativeUnsupported`` for anything the torch path must judge (and
    ``LimitError`` from the pre-scan of ``.metadata``, as that path would)."""
    p = Path(path)
    obj = NativeDcp(p).rebuild()
    try:
        report = walk(obj, label=str(p))  # built from the folder's metadata: untrusted too
    except LimitError:
        raise
    except CheckpointError as e:
        raise NativeUnsupported(f"the tree fails the walk: {e}") from None
    return NativeDcpRead(obj, folder_bytes(p), report)
