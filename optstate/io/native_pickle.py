"""torch.save's ``data.pkl`` read without torch: a tree of plain containers and NativeTensors.

A torch.save zip holds ``PREFIX/data.pkl`` (the pickled structure) and one raw, stored
(uncompressed) record ``PREFIX/data/KEY`` per storage. The pickle names each storage by a
persistent id ``('storage', <storage type>, KEY, location, numel)`` and rebuilds each
tensor by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
hooks[, metadata])`` (``_v3`` adds the dtype: float8, the unsigned types, untyped
storages). ``read_native`` unpickles it with Python's C unpickler restricted to exactly
what torch.save writes (``TORCH_GLOBALS``: the rebuild calls, storage types, dtypes,
OrderedDict, Counter (MultiStepLR's milestones), ``torch.Size``, ``torch.device``,
``_codecs.encode`` for bytes, set and complex) and builds inert results: containers as
Python containers, each tensor a ``NativeTensor`` over a ``NativeStorage`` whose bytes
are a ``memoryview`` slice of one read-only ``mmap`` of the file at its record's data
(local headers parsed here). A GLOBAL never hands out a class or function of the
process: each is a frozen wrapper (a BUILD on it is refused), and the containers are
built only from what their reduce writes: ``OrderedDict()``, ``Counter()`` or
``Counter(dict)``, ``set(list)``, ``complex(float, float)`` (``set(t)`` of a tensor
expanded to 10**12 elements would iterate it).

Everything else raises ``NativeUnsupported(reason)``: a GLOBAL outside the list, an
opcode torch's safe unpickler refuses or a memo index past the pickle's size (the
pre-scan sees them first: ``PickleCounts.native_refusal``), a BUILD on anything but an
OrderedDict or Counter instance (torch's loader sets their ``__dict__``, e.g. a model
state_dict's ``_metadata``; ``walk`` refuses one that shadows a dict method; our globals
refuse attributes, and every tensor is checked unchanged after the last opcode), a
container built from other arguments than its reduce writes, a compressed record, a
record of another size than its storage, a tensor outside its storage, a key seen with
two storage types or sizes, tensor metadata (conj/neg bits), a big-endian file, and what
torch's rebuild refuses: an integer or bool tensor that requires grad, a ``torch.device``
in another form than torch.save writes (read ones are ``NativeDevice``s, printing as
torch's), sizes, strides or offsets past int64 or an element count or byte extent that
overflows it. The caller then reads the file with torch, whose verdict (and wording) is
the established one: this reader never judges a file itself.
One difference is left: SETITEM on a list (``l[0] = x``, only in a hand-made pickle)
is refused by torch's unpickler and done by the C one; no byte outside a record is read.

For other pickles (a DCP ``.metadata``), ``RestrictedUnpickler`` takes any allow-list.

About 550 lines on purpose: the allow-list, the storages and the zip checks are one
contract with torch's loader (accept nothing it refuses), read best side by side.
"""

from __future__ import annotations

import mmap
import pickle
import re
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from optstate.io.native_tensor import (
    DTYPES,
    NativeDevice,
    NativeDtype,
    NativeStorage,
    NativeTensor,
    NativeUnsupported,
)

__all__ = ["NativeUnsupported", "RestrictedUnpickler", "TORCH_GLOBALS", "build_counter",
           "build_frozenset", "build_ordered_dict", "build_set", "read_native",
           "restricted_loads"]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # a zip local file header (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"


class RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler with an allow-list: ``globals`` maps ``(module, name)`` to what the
    GLOBAL becomes (a function of ours for calls, a value for constants); anything else,
    and any persistent id, raises ``NativeUnsupported``. ``encoding="utf-8"`` as torch.load
    (protocol-2 ``str`` of Python 2)."""

    def __init__(self, data: Any, globals: Mapping[tuple[str, str], Any]) -> None:
        import io

        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._globals = globals

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            from optstate.io.reader_notes import needs_global

            raise NativeUnsupported(needs_global(module, name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise NativeUnsupported("the pickle names an object outside it (a persistent id)")


def restricted_loads(data: Any, globals: Mapping[tuple[str, str], Any]) -> Any:
    """Unpickle ``data`` with only ``globals`` allowed; every failure is NativeUnsupported."""
    return _load(RestrictedUnpickler(data, globals))


def _load(unpickler: pickle.Unpickler) -> Any:
    try:
        return unpickler.load()
    except NativeUnsupported:
        raise
    except RecursionError:
        raise NativeUnsupported("the pickle nests too deeply") from None
    except Exception as e:  # UnpicklingError, TypeError, KeyError, EOFError, ...
        text = str(e).splitlines()[0][:120] if str(e) else ""
        raise NativeUnsupported(f"the pickle does not unpickle natively "
                                f"({type(e).__name__}{': ' + text if text else ''})") from None


# ----------------------------------------------------------------------- torch's globals


class _Frozen:
    """What the pickle can reach of ours refuses attributes: a BUILD opcode (which sets
    an object's ``__dict__`` or slots) on it fails, and the file goes to torch."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise NativeUnsupported("the pickle sets attributes of a torch object (BUILD)")

    def _init(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)


class _Call(_Frozen):
    """An allowed function, as a GLOBAL gives it (a function object's attributes could be
    set by BUILD: its defaults, for every later file of the process)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._init(fn=fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _StorageType(_Frozen):
    """A storage type GLOBAL (``torch.FloatStorage``...): its dtype; None: untyped."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: NativeDtype | None) -> None:
        self._init(name=name, dtype=dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


# torch's legacy typed storage classes, by the dtype they hold (torch/storage.py)
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class _Stored(_Frozen):
    """What a storage persistent id resolves to: the bytes and the type it was named with."""

    __slots__ = ("native", "stype", "numel")

    def __init__(self, native: NativeStorage, stype: _StorageType, numel: int) -> None:
        self._init(native=native, stype=stype, numel=numel)


_INT = {int}


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or value and set(map(type, value)) != _INT:  # bool too
        raise NativeUnsupported(f"a tensor's {what} is not a tuple of integers")
    return value


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
            dtype: NativeDtype | None, metadata: Any) -> NativeTensor:
    if type(storage) is not _Stored:
        raise NativeUnsupported("a tensor is rebuilt from something other than a storage")
    if dtype is None:
        raise NativeUnsupported("a tensor over an untyped storage without a dtype")
    if type(offset) is not int or type(requires_grad) is not bool:
        raise NativeUnsupported("a tensor's offset or requires_grad has the wrong type")
    if metadata:  # the conj / neg bits: values would read differently
        raise NativeUnsupported("a tensor with metadata (conjugate or negative bit)")
    if requires_grad and dtype.kind not in "fc":  # torch: only float and complex can
        raise NativeUnsupported("an integer or bool tensor that requires grad")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    _fits_int64(shape, strides, offset, dtype.itemsize)
    try:
        return NativeTensor(storage.native, dtype, shape, strides, offset,
                            {"requires_grad": True} if requires_grad else None)
    except ValueError as e:  # outside its storage: torch's set_ says so in its words
        raise NativeUnsupported(f"a tensor does not fit its storage ({e})") from None


_INT64_MAX = 2**63 - 1


def _fits_int64(shape: tuple[int, ...], strides: tuple[int, ...], offset: int,
                itemsize: int) -> None:
    """torch's overflow checks, kept on the safe side: every size, stride and the offset
    in [0, 2**63), the element count (every partial product of the sizes, as torch's
    ``numel`` multiplies them) and the byte extent of the elements (offset included) at
    most int64's maximum. Anything past them is torch's to judge (it refuses most)."""
    if len(shape) != len(strides):
        raise NativeUnsupported("a tensor without as many strides as sizes")
    if any(not 0 <= v <= _INT64_MAX for v in (*shape, *strides, offset)):
        raise NativeUnsupported("a tensor's size, stride or offset is negative or past int64")
    count = 1
    for n in shape:
        count *= n or 1  # a 0 after an overflow does not undo it (torch's numel)
        if count > _INT64_MAX:
            raise NativeUnsupported("a tensor's element count overflows int64")
    extent = offset + 1 + sum((n - 1) * st for n, st in zip(shape, strides, strict=True) if n)
    if extent * itemsize > _INT64_MAX:
        raise NativeUnsupported("a tensor's byte extent overflows int64")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, metadata: Any = None
                       ) -> NativeTensor:
    dtype = storage.stype.dtype if type(storage) is _Stored else None
    return _tensor(storage, storage_offset, size, stride, requires_grad, dtype, metadata)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> NativeTensor:
    if type(dtype) is not NativeDtype:
        raise NativeUnsupported("a tensor's dtype is not a dtype")
    if type(storage) is _Stored and storage.stype.dtype is not None:
        raise NativeUnsupported("a tensor over a typed storage (an odd layout)")
    return _tensor(storage, storage_offset, size, stride, requires_grad, dtype, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> NativeTensor:
    """A Parameter stays a tensor (as torch's loader keeps its data): its values are all
    optstate reads."""
    if type(data) is not NativeTensor or type(requires_grad) is not bool:
        raise NativeUnsupported("a Parameter of something other than a tensor")
    if requires_grad and data.dtype.kind not in "fc":
        raise NativeUnsupported("an integer or bool Parameter that requires grad")
    data.info["parameter"] = True
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> NativeTensor:
    plain = not state or (type(state) is tuple and not any(state))
    if not plain:
        raise NativeUnsupported("a Parameter with Python attributes")
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _size(*args: Any) -> tuple[int, ...]:
    if len(args) != 1 or type(args[0]) not in (tuple, list) \
            or any(type(v) is not int for v in args[0]):
        raise NativeUnsupported("a torch.Size of something other than integers")
    return tuple(args[0])


# the device types torch.device takes (torch 2.x; "mkldnn" warns, so torch says it)
_DEVICE_TYPES = frozenset((
    "cpu", "cuda", "ipu", "xpu", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia",
    "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone"))


def _device(*args: Any) -> NativeDevice:
    """torch.device('cpu') / ('cuda', 0), in the form torch.save writes (its reduce: a
    known type, an index 0..127); any other form is torch's to judge."""
    if not 1 <= len(args) <= 2 or type(args[0]) is not str \
            or args[0] not in _DEVICE_TYPES \
            or len(args) == 2 and (type(args[1]) is not int or not 0 <= args[1] <= 127):
        raise NativeUnsupported("a torch.device of unexpected arguments")
    return NativeDevice(args[0], args[1] if len(args) == 2 else None)


# The containers a pickle may build, each from what its ``__reduce__`` writes (protocol 2)
# and nothing else: never an iterable of another kind (``set(t)`` of a tensor expanded to
# 10**12 elements iterates it, element by element), never the class itself (a BUILD on
# ``collections.Counter`` would set attributes of the class for the whole process).


def build_counter(*args: Any) -> Counter[Any]:
    """``Counter()`` or ``Counter(d)`` of a plain dict (``Counter.__reduce__``)."""
    if len(args) > 1 or args and type(args[0]) is not dict:
        raise NativeUnsupported("a Counter built from something other than a dict")
    return Counter(*args)


def build_set(*args: Any) -> set[Any]:
    """``set()`` or ``set(items)`` of a plain list or tuple (protocol 2 writes a list)."""
    if len(args) > 1 or args and type(args[0]) not in (list, tuple):
        raise NativeUnsupported("a set built from something other than a list")
    return set(*args)


def build_frozenset(*args: Any) -> frozenset[Any]:
    """``frozenset()`` or ``frozenset(items)`` of a plain list or tuple."""
    return frozenset(build_set(*args))


def build_ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    """``OrderedDict()``: its reduce writes no argument (the items follow, SETITEMS)."""
    if args:
        raise NativeUnsupported("an OrderedDict built from arguments")
    return OrderedDict()


def _complex(*args: Any) -> complex:
    """``complex(real, imag)`` of two floats (its reduce), or ints."""
    if not 1 <= len(args) <= 2 or any(type(v) not in (float, int) for v in args):
        raise NativeUnsupported("a complex number of unexpected arguments")
    return complex(*args)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(str, 'latin1')``: how pickle protocol 2 writes ``bytes``."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise NativeUnsupported("bytes encoded otherwise than pickle encodes them")
    return text.encode("latin1")


def _torch_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _Call(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"):
            _Call(_rebuild_parameter_with_state),
        # a BUILD on an instance sets its __dict__, as torch's loader does (a state
        # dict's _metadata); the instance's class is never handed out
        ("collections", "OrderedDict"): _Call(build_ordered_dict),
        ("collections", "Counter"): _Call(build_counter),  # torch's loader takes it too
        ("torch", "Size"): _Call(_size),
        ("torch", "device"): _Call(_device),
        ("_codecs", "encode"): _Call(_encode),
        ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
    }
    for module in ("builtins", "__builtin__"):  # protocol 2 writes __builtin__
        table[(module, "set")] = _Call(build_set)
        table[(module, "complex")] = _Call(_complex)
    for name, dtype in DTYPES.items():
        table[("torch", name)] = dtype
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(name, DTYPES[dtype])
    return table


TORCH_GLOBALS: dict[tuple[str, str], Any] = _torch_globals()
_REBUILDS = [TORCH_GLOBALS[("torch._utils", n)] for n in (
    "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state")]


# --------------------------------------------------------------------------- the zip


class _TorchUnpickler(RestrictedUnpickler):
    """``data.pkl`` of a torch.save zip: storages by persistent id, from ``record``."""

    def __init__(self, data: Any, record: Callable[[str, int], NativeStorage]) -> None:
        super().__init__(data, TORCH_GLOBALS)
        self._record = record
        self._storages: dict[str, _Stored] = {}
        self.tensors: list[tuple[NativeTensor, tuple[Any, ...]]] = []

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if found in _REBUILDS:  # each tensor noted, to be checked after the last opcode
            tensors = self.tensors

            def rebuild(*args: Any) -> NativeTensor:
                t = found(*args)
                tensors.append((t, _fields(t)))
                return t

            return _Call(rebuild)
        return found

    def checked(self, obj: Any) -> Any:
        """``obj``, once no tensor was changed after it was built (a BUILD opcode can set
        a NativeTensor's slots: its shape, past the checks of its constructor)."""
        for t, fields in self.tensors:
            now = _fields(t)
            if any(a is not b for a, b in zip(now, fields, strict=True)):
                raise NativeUnsupported("the pickle sets attributes of a tensor (BUILD)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise NativeUnsupported("the pickle names an object outside it that is not a "
                                    "storage")
        _, stype, key, location, numel = pid
        if type(key) is bytes:
            key = key.decode("ascii", "replace")
        if type(stype) is not _StorageType or type(key) is not str \
                or type(location) not in (str, bytes) or type(numel) is not int or numel < 0:
            raise NativeUnsupported("a storage named with unexpected fields")
        known = self._storages.get(key)
        if known is not None:
            if known.stype is not stype or known.numel != numel:
                raise NativeUnsupported(f"storage {key} is named with two types or sizes")
            return known
        itemsize = stype.dtype.itemsize if stype.dtype is not None else 1
        stored = _Stored(self._record(key, numel * itemsize), stype, numel)
        self._storages[key] = stored
        return stored


def read_native(p: Path, f: Any, size: int, zinfo: Any, pickle_bytes: bytes) -> Any:
    """The object tree of the torch.save zip open as ``f`` (``size`` bytes, checked by
    ``torch_zip.check_zip`` as ``zinfo``, its ``data.pkl`` read and pre-scanned as
    ``pickle_bytes``). Raises NativeUnsupported for anything torch should judge."""
    if zinfo.compressed:
        raise NativeUnsupported("the zip's members are compressed (torch.save stores them "
                                "uncompressed, so it was re-zipped)")
    try:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise NativeUnsupported(f"the file cannot be memory-mapped ({e})") from None
    view = memoryview(mapped)
    size = min(size, len(view))  # what is mapped is what is read (the file may shrink)
    _check_archive(mapped, view, zinfo, size)
    if "byteorder" in zinfo.sizes:  # absent in older files: little-endian, as written
        if _member(view, zinfo, "byteorder", size, 16) != b"little":
            raise NativeUnsupported("the file was not written little-endian")

    def record(key: str, nbytes: int) -> NativeStorage:
        name = f"data/{key}"
        start = _data_offset(view, zinfo, name, size)
        stored = zinfo.sizes[name]
        if stored != nbytes:
            raise NativeUnsupported(f"record {name} holds {stored} bytes, its storage "
                                    f"{nbytes}")
        return NativeStorage(view[start:start + nbytes], key=name, file=p)

    unpickler = _TorchUnpickler(pickle_bytes, record)
    return unpickler.checked(_load(unpickler))


def _fields(t: NativeTensor) -> tuple[Any, ...]:
    return (type(t), t.storage, t.dtype, t.shape, t.stride(), t.storage_offset(), t.info)


def _data_offset(view: Any, zinfo: Any, name: str, size: int) -> int:
    """Where the bytes of the stored member ``PREFIX/name`` start, from its local header
    (the central directory's offset, as torch's reader finds it)."""
    header = zinfo.headers.get(name)
    if header is None:
        raise NativeUnsupported(f"tensor data {name} is missing")
    if header + _LOCAL.size > size:
        raise NativeUnsupported(f"the local header of {name} is outside the file")
    magic, _, _, method, _, _, _, _, _, n, extra = _LOCAL.unpack_from(view, header)
    full = f"{zinfo.prefix}/{name}".encode()
    if magic != _LOCAL_MAGIC or method != 0 or bytes(view[header + 30:header + 30 + n]) \
            != full:
        raise NativeUnsupported(f"the local header of {name} does not match the directory")
    start = header + _LOCAL.size + n + extra
    if start + zinfo.sizes[name] > size:
        raise NativeUnsupported(f"record {name} runs past the end of the file")
    return start


def _member(view: Any, zinfo: Any, name: str, size: int, limit: int) -> bytes | None:
    """The bytes of a small member (None: larger than ``limit``)."""
    if zinfo.sizes[name] > limit:
        return None
    start = _data_offset(view, zinfo, name, size)
    return bytes(view[start:start + zinfo.sizes[name]])


_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory (22 bytes)
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory (56 bytes)
_LOCATOR64 = struct.Struct("<4sIQI")  # zip64 end of central directory locator (20 bytes)
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # a central directory entry (46 bytes)
# the general purpose flags torch.save sets: sizes in a data descriptor, UTF-8 names
_TORCH_FLAGS = 0x8 | 0x800


def _check_archive(mapped: Any, view: Any, zinfo: Any, size: int) -> None:
    """What torch's zip reader (miniz) refuses and Python's zipfile lets pass, checked
    here so that the native reader never reads an archive torch calls damaged: more than
    one disk, a count of entries that is not the directory's, encryption flags, a local
    header that does not match its directory entry (every member: torch reads
    ``version``, ``.format_version``, ``byteorder``, the serialization id), names that are
    not ASCII, a ``version`` record torch would not accept. Any doubt steps aside."""
    at = mapped.rfind(b"PK\x05\x06", max(0, size - 22 - 65535), size)
    if at < 0 or at + _EOCD.size > size:
        raise NativeUnsupported("no end of central directory where torch looks for it")
    _, disk, cdir_disk, here, total, cdir_size, cdir_at, _ = _EOCD.unpack_from(view, at)
    loc = at - _LOCATOR64.size
    if loc >= 0 and bytes(view[loc:loc + 4]) == b"PK\x06\x07":  # miniz reads it if there
        _, loc_disk, at64, disks = _LOCATOR64.unpack_from(view, loc)
        if loc_disk != 0 or disks != 1 or at64 + _EOCD64.size > size:
            raise NativeUnsupported("a zip64 archive on more than one disk")
        fields = _EOCD64.unpack_from(view, at64)
        if fields[0] != b"PK\x06\x06" or any(
                short not in (long, 0xFFFF, 0xFFFFFFFF)
                for short, long in zip((disk, cdir_disk, here, total, cdir_size, cdir_at),
                                       fields[4:], strict=True)):
            raise NativeUnsupported("the zip64 end of central directory does not match")
        disk, cdir_disk, here, total, cdir_size, cdir_at = fields[4:]
    elif 0xFFFF in (here, total) or 0xFFFFFFFF in (cdir_size, cdir_at):
        raise NativeUnsupported("a zip64 archive without its locator")
    end = cdir_at + cdir_size
    if disk != 0 or cdir_disk != 0 or here != total or total != len(zinfo.infos) \
            or end > size:
        raise NativeUnsupported("the zip's end of central directory does not match it")
    at = cdir_at
    for info in zinfo.infos:  # in the directory's order, as zipfile read it
        name = info.filename
        if at + _CENTRAL.size > end:
            raise NativeUnsupported("the zip's central directory is cut short")
        (sig, _, _, flags, method, _, _, _, packed, unpacked, n, extra, comment, start, _, _,
         header) = _CENTRAL.unpack_from(view, at)
        raw = bytes(view[at + _CENTRAL.size:at + _CENTRAL.size + n])
        at += _CENTRAL.size + n + extra + comment
        if sig != b"PK\x01\x02" or flags & ~_TORCH_FLAGS or method != 0 \
                or packed != unpacked or start != 0 or not name.isascii() \
                or raw != name.encode("ascii") or at > end \
                or header not in (info.header_offset, 0xFFFFFFFF):
            raise NativeUnsupported(f"zip member {name!r} has fields torch.save never writes")
        h = info.header_offset
        if h + _LOCAL.size > size:
            raise NativeUnsupported(f"the local header of {name} is outside the file")
        magic, _, local_flags, method, _, _, _, _, _, n, _ = _LOCAL.unpack_from(view, h)
        if magic != _LOCAL_MAGIC or method != 0 or local_flags != flags \
                or bytes(view[h + 30:h + 30 + n]) != raw:
            raise NativeUnsupported(f"the local header of {name} does not match the directory")
    if ".data/serialization_id" in zinfo.sizes:  # torch reads it as text
        sid = _member(view, zinfo, ".data/serialization_id", size, 64)
        if sid is None or not sid.isascii() or not sid.isalnum():
            raise NativeUnsupported("the archive's serialization id is not one torch reads")
    base = ".data/version" if ".data/version" in zinfo.sizes else "version"
    text = _member(view, zinfo, base, size, 32) if base in zinfo.sizes else None
    if text is None or not re.fullmatch(rb"[0-9]{1,3}\n?", text) or not 1 <= int(text) <= 10:
        raise NativeUnsupported("the archive's version record is not one torch reads")
