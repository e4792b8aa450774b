"""Tensors described, not built: what the native reader gives instead of ``torch.Tensor``.

The native reader (``native_pickle`` for torch.save zip files, ``native_dcp`` for DCP
folders) never imports torch. Each tensor of a checkpoint becomes a ``NativeTensor``: an
inert descriptor of a dtype, a shape, strides and a storage offset over a
``NativeStorage``, whose bytes are a read-only ``memoryview`` of the memory-mapped file.
Nothing is read until a statistic touches the bytes, as with torch's ``mmap=True``.

A ``NativeTensor`` answers the part of ``torch.Tensor``'s interface that the read-only
pipeline uses (``shape``, ``dtype``, ``numel()``, ``stride()``, ``is_contiguous()``,
``item()``, ``tolist()``, ``is_meta`` ...), so code written for torch tensors mostly needs
``is_tensor(x)`` instead of ``isinstance(x, torch.Tensor)``; ``NativeDtype`` prints as
torch's dtype does (``str(t.dtype) == "torch.float32"``). What needs torch operations
converts one tensor with ``as_torch`` (which imports torch): the same values, sharing the
mapped bytes.

Values are decoded exactly as torch converts them: IEEE half and bfloat16 by their bits,
the float8 formats through 256-entry tables (``FP8_TABLES``; the tests compare every code
with torch's ``.float()``).

About 470 lines on purpose: the descriptor, its element types and their exact decoding are
one contract that every native reader and kernel relies on, and read best side by side.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class NativeUnsupported(Exception):
    """The native reader does not know this (a format, a class, a layout, damage): the
    caller reads the file with torch instead, which gives its own verdict. The text is one
    line saying why (``Source.reader_note``)."""


@dataclass(frozen=True)
class NativeDtype:
    """A tensor element type, by torch's name for it."""

    name: str  # torch's: "float32", "bfloat16", "float8_e4m3fn", ...
    itemsize: int
    kind: str  # "f" float, "c" complex, "i" signed int, "u" unsigned int, "b" bool

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__

    # Immutable for a pickle too: a BUILD opcode on a dtype some reader handed out would
    # otherwise change its itemsize for the whole process (bounds checks included).
    def __setstate__(self, state: Any) -> None:
        raise TypeError("NativeDtype objects cannot be changed")

    def __reduce__(self) -> tuple[Any, ...]:
        return _dtype, (self.name,)

    @property
    def is_floating_point(self) -> bool:
        return self.kind == "f"

    @property
    def is_complex(self) -> bool:
        return self.kind == "c"

    @property
    def is_signed(self) -> bool:
        return self.kind in "fci"


DTYPES: dict[str, NativeDtype] = {d.name: d for d in (
    NativeDtype("float64", 8, "f"), NativeDtype("float32", 4, "f"),
    NativeDtype("float16", 2, "f"), NativeDtype("bfloat16", 2, "f"),
    NativeDtype("float8_e4m3fn", 1, "f"), NativeDtype("float8_e5m2", 1, "f"),
    NativeDtype("float8_e4m3fnuz", 1, "f"), NativeDtype("float8_e5m2fnuz", 1, "f"),
    NativeDtype("complex64", 8, "c"), NativeDtype("complex128", 16, "c"),
    NativeDtype("int8", 1, "i"), NativeDtype("int16", 2, "i"), NativeDtype("int32", 4, "i"),
    NativeDtype("int64", 8, "i"), NativeDtype("uint8", 1, "u"), NativeDtype("uint16", 2, "u"),
    NativeDtype("uint32", 4, "u"), NativeDtype("uint64", 8, "u"), NativeDtype("bool", 1, "b"),
)}

def _dtype(name: str) -> NativeDtype:
    return DTYPES[name]


# struct formats of the dtypes Python decodes directly (little-endian, as torch.save writes)
_STRUCT = {"float64": "d", "float32": "f", "float16": "e", "int8": "b", "int16": "h",
           "int32": "i", "int64": "q", "uint8": "B", "uint16": "H", "uint32": "I",
           "uint64": "Q", "bool": "?", "complex64": "ff", "complex128": "dd"}

# numpy's dtype for each; bfloat16 and float8 as their raw codes (numpy has no such type)
NUMPY_DTYPES = {"float64": "float64", "float32": "float32", "float16": "float16",
                "bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8",
                "float8_e4m3fnuz": "uint8", "float8_e5m2fnuz": "uint8",
                "complex64": "complex64", "complex128": "complex128", "int8": "int8",
                "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
                "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool"}


@dataclass(frozen=True)
class NativeDevice:
    """A ``torch.device`` value read from a pickle: prints as torch's (``str``: ``cpu``,
    ``cuda:0``; ``repr``: ``device(type='cuda', index=0)``), equal and hashed by value."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index}"
        return f"device(type={self.type!r}{index})"

    def __setstate__(self, state: Any) -> None:  # immutable for a pickle too (BUILD)
        raise TypeError("NativeDevice objects cannot be changed")

    def __reduce__(self) -> tuple[Any, ...]:
        return NativeDevice, (self.type, self.index)


def _fp8_table(exp_bits: int, bias: int, *, ieee: bool, uz: bool) -> tuple[float, ...]:
    """The value of each of the 256 codes of a float8 format (1 sign bit, ``exp_bits``,
    the rest mantissa). ``ieee``: the top exponent is Inf/NaN (e5m2); otherwise only the
    all-ones code is NaN (e4m3fn); ``uz``: no negative zero, 0x80 is the only NaN."""
    man_bits = 7 - exp_bits
    top = (1 << exp_bits) - 1
    out = []
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & top
        m = code & ((1 << man_bits) - 1)
        if uz and code == 0x80:
            out.append(math.nan)
        elif ieee and not uz and e == top:
            out.append(sign * math.inf if m == 0 else math.nan)
        elif not ieee and not uz and e == top and m == (1 << man_bits) - 1:
            out.append(math.nan)
        elif e == 0:
            out.append(sign * m * 2.0 ** (1 - bias - man_bits))
        else:
            out.append(sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias))
    return tuple(out)


FP8_TABLES: dict[str, tuple[float, ...]] = {
    "float8_e4m3fn": _fp8_table(4, 7, ieee=False, uz=False),
    "float8_e5m2": _fp8_table(5, 15, ieee=True, uz=False),
    "float8_e4m3fnuz": _fp8_table(4, 8, ieee=False, uz=True),
    "float8_e5m2fnuz": _fp8_table(5, 16, ieee=True, uz=True),
}


def decode(dtype: NativeDtype, buffer: Any, byte_offset: int) -> Any:
    """The element of ``dtype`` at ``byte_offset`` of ``buffer`` as a Python number."""
    name = dtype.name
    fmt = _STRUCT.get(name)
    if fmt is not None:
        values = struct.unpack_from("<" + fmt, buffer, byte_offset)
        return complex(*values) if len(values) == 2 else values[0]
    if name == "bfloat16":
        bits = struct.unpack_from("<H", buffer, byte_offset)[0] << 16
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    return FP8_TABLES[name][buffer[byte_offset]]


class _Unchangeable:
    """Read-only descriptors: a copy is the object itself, and a pickle cannot set its
    fields (a BUILD opcode on a tensor some reader handed out could move it outside its
    storage)."""

    __slots__ = ()

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self

    def __setstate__(self, state: Any) -> None:
        raise TypeError(f"{type(self).__name__} objects cannot be changed")


class NativeStorage(_Unchangeable):
    """The bytes of one stored storage: a read-only memoryview (of a memory-mapped file,
    or of bytes), the record it came from, and the file."""

    __slots__ = ("buffer", "key", "file", "info")

    def __init__(self, buffer: Any, key: str = "", file: Path | None = None,
                 info: dict[str, Any] | None = None) -> None:
        mv = memoryview(buffer)
        self.buffer = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        self.key = key
        self.file = file
        self.info = info or {}

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes


    def address(self) -> int:
        """The address of the first byte (for the C kernel), valid while this storage
        lives; 0 for an empty storage."""
        return buffer_address(self.buffer) if self.nbytes else 0

    def __repr__(self) -> str:
        return f"NativeStorage({self.key!r}, {self.nbytes} bytes)"


_address_api: Any = None


def buffer_address(buffer: Any) -> int:
    """The memory address of a buffer object's bytes, read-only buffers included (ctypes'
    ``from_buffer`` takes writable ones only): ``PyObject_GetBuffer``, then release."""
    global _address_api
    import ctypes

    if _address_api is None:
        class PyBuffer(ctypes.Structure):
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                        ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                        ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_void_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        get.restype = ctypes.c_int
        release = ctypes.pythonapi.PyBuffer_Release
        release.argtypes = [ctypes.POINTER(PyBuffer)]
        release.restype = None
        _address_api = (PyBuffer, get, release)
    cls, get, release = _address_api
    view = cls()
    get(buffer, ctypes.byref(view), 0)  # PyBUF_SIMPLE; raises for a non-buffer
    try:
        return int(view.buf or 0)
    finally:
        release(ctypes.byref(view))


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


class NativeTensor(_Unchangeable):
    """A strided CPU tensor described by its storage, dtype, shape, strides and offset (in
    elements). Construction checks that every element it covers lies inside the storage
    (``ValueError`` otherwise), so later reads stay inside the mapped record."""

    __slots__ = ("storage", "dtype", "shape", "_stride", "_offset", "info")

    is_meta = False
    is_quantized = False
    is_sparse = False
    is_sparse_csr = False
    is_nested = False
    layout = "strided"
    device = "cpu"
    requires_grad = False
    grad = None

    def __init__(self, storage: NativeStorage, dtype: NativeDtype, shape: Any,
                 stride: Any = None, offset: int = 0,
                 info: dict[str, Any] | None = None) -> None:
        self.storage = storage
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self._stride = (contiguous_strides(self.shape) if stride is None
                        else tuple(int(s) for s in stride))
        self._offset = int(offset)
        self.info = info or {}
        if len(self._stride) != len(self.shape):
            raise ValueError(f"{len(self.shape)} sizes but {len(self._stride)} strides")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self._stride) \
                or self._offset < 0:
            raise ValueError("negative size, stride or offset")
        start, stop = self.byte_range()
        if stop > storage.nbytes:
            raise ValueError(f"elements up to byte {stop} of a storage of {storage.nbytes} "
                             "bytes")

    # ---- structure, as torch.Tensor answers it
    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return self.dtype.itemsize

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def stride(self, dim: int | None = None) -> Any:
        return self._stride if dim is None else self._stride[dim]

    def storage_offset(self) -> int:
        return self._offset

    def nbytes_covered(self) -> int:
        start, stop = self.byte_range()
        return stop - start

    def is_contiguous(self) -> bool:
        """torch's rule: row-major strides, dimensions of size 1 ignored."""
        if self.numel() == 0:
            return True
        expected = 1
        for size, st in zip(reversed(self.shape), reversed(self._stride), strict=True):
            if size != 1 and st != expected:
                return False
            expected *= size
        return True

    def is_complex(self) -> bool:
        return self.dtype.kind == "c"

    def is_floating_point(self) -> bool:
        return self.dtype.kind == "f"

    def detach(self) -> NativeTensor:
        return self

    def byte_range(self) -> tuple[int, int]:
        """(start, stop): the bytes of the storage its elements lie in."""
        size = self.dtype.itemsize
        start = self._offset * size
        if self.numel() == 0:
            return start, start
        last = self._offset + sum((n - 1) * st for n, st in zip(self.shape, self._stride,
                                                                  strict=True))
        return start, (last + 1) * size

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ---- values
    def _at(self, element: int) -> Any:
        return decode(self.dtype, self.storage.buffer, element * self.dtype.itemsize)

    def item(self) -> Any:
        if self.numel() != 1:
            raise ValueError(f"item() of a tensor of {self.numel()} elements")
        return self._at(self._offset)

    def tolist(self) -> Any:
        def build(dim: int, base: int) -> Any:
            if dim == len(self.shape):
                return self._at(base)
            st = self._stride[dim]
            return [build(dim + 1, base + i * st) for i in range(self.shape[dim])]

        return build(0, self._offset)

    def __getitem__(self, index: Any) -> NativeTensor:
        """Integer indexing only (``t[i]``, ``t[i, j]``): a view of fewer dimensions."""
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > len(self.shape) or not all(isinstance(i, int) for i in idx):
            raise TypeError("NativeTensor supports integer indices only")
        offset = self._offset
        for i, (n, st) in zip(idx, zip(self.shape, self._stride, strict=False), strict=False):
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for size {n}")
            offset += (i % n) * st
        k = len(idx)
        return NativeTensor(self.storage, self.dtype, self.shape[k:], self._stride[k:], offset,
                            self.info)

    def array(self) -> Any:
        """A read-only numpy view of the elements (imports numpy): bfloat16 and float8 as
        their raw uint16 / uint8 codes."""
        import numpy as np

        size = self.dtype.itemsize
        flat = np.frombuffer(self.storage.buffer, dtype=NUMPY_DTYPES[self.dtype.name],
                             count=self.storage.nbytes // size)
        return np.lib.stride_tricks.as_strided(
            flat[self._offset:] if self.numel() else flat[:0],
            shape=self.shape, strides=tuple(s * size for s in self._stride), writeable=False)

    def __repr__(self) -> str:
        return (f"NativeTensor(shape={list(self.shape)}, dtype={self.dtype.name}, "
                f"stride={list(self._stride)}, offset={self._offset}, "
                f"storage={self.storage.key!r})")


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a tensor: a ``NativeTensor``, or a ``torch.Tensor`` when torch is
    imported already (never imports torch: no torch tensor exists before it is)."""
    if isinstance(x, NativeTensor):
        return True
    torch = sys.modules.get("torch")
    cls = getattr(torch, "Tensor", None) if torch is not None else None
    return cls is not None and isinstance(x, cls)


def is_native(x: Any) -> bool:
    return isinstance(x, NativeTensor)


def torch_loaded() -> bool:
    return "torch" in sys.modules


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for ``torch.float32`` and for ``DTYPES["float32"]`` alike."""
    return str(dtype).removeprefix("torch.")


def as_torch(t: Any) -> Any:
    """A real ``torch.Tensor`` with ``t``'s values (imports torch), sharing the mapped bytes
    (read-only: never write to it); a torch tensor (or anything else) is returned as is."""
    if not isinstance(t, NativeTensor):
        return t
    import warnings

    import torch

    dtype = getattr(torch, t.dtype.name)
    if t.storage.nbytes == 0:
        flat = torch.empty(0, dtype=dtype)
    else:
        with warnings.catch_warnings():  # "the given buffer is not writable": we never write
            warnings.simplefilter("ignore")
            flat = torch.frombuffer(t.storage.buffer, dtype=torch.uint8)
        usable = t.storage.nbytes - t.storage.nbytes % t.dtype.itemsize
        flat = flat[:usable].view(dtype)
    return torch.as_strided(flat, t.shape, t.stride(), t.storage_offset())


def map_tree(obj: Any, fn: Any) -> Any:
    """``obj`` with every NativeTensor ``x`` in its plain containers replaced by ``fn(x)``
    (dicts keep their type: OrderedDict stays one)."""
    if isinstance(obj, NativeTensor):
        return fn(obj)
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) is not dict else {}
        for k, v in obj.items():
            out[k] = map_tree(v, fn)
        return out
    if isinstance(obj, list):
        return [map_tree(v, fn) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_tree(v, fn) for v in obj)
    return obj
