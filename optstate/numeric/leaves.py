"""When two leaves of a checkpoint are the same value: one answer for diff, set and convert.

A leaf is what a checkpoint holds that is not a dict, list or tuple: tensors, numbers,
strings, and the other objects ``torch.load(weights_only=True)`` can return —
``torch.dtype`` and ``torch.device`` (timm's AdafactorBigVision and pytorch-optimizer's
Kron keep a list of dtypes in their groups), ``torch.Size``, layouts, and under
``--unsafe`` arbitrary objects. Two leaves are the same when they are equal *as saved*:

- tensors: same dtype, shape, layout (and strides, unless ``strides=False``) and the same
  bits, so NaN equals NaN with the same payload and -0.0 differs from 0.0;
- floats and complex numbers: the same bits up to NaN payload (NaN equals NaN);
- torch's singletons and small value types (dtype, device, layout, memory format,
  qscheme, finfo-like objects): by type and their printed form (``torch.float32``,
  ``cuda:0``), not by identity;
- lists, tuples, dicts and sets: the same type, and the same items in the same order;
- other objects: the same type, and ``==`` says so or their fields (``__dict__`` /
  ``__slots__``) are the same leaves.

``diff`` compares numbers and tensors within tolerances of its own; every other leaf it
meets goes through ``same_leaf`` too, so ``diff X X`` finds nothing for any readable X.
"""

from __future__ import annotations

import math
from typing import Any

from optstate.io.native_tensor import NativeDtype, as_torch, is_native, is_tensor

# Leaves compared by ``==`` after their types matched.
_PLAIN = (type(None), bool, int, str, bytes, bytearray, range, slice)


def _torch_value_type(v: Any) -> bool:
    """dtype, device, layout, memory_format, qscheme...: torch's small C types, which
    compare (and pickle) by what they name."""
    return type(v).__module__ == "torch" and not is_tensor(v)


def _dtype_like(v: Any) -> bool:
    """A torch.dtype or the native reader's ``NativeDtype``: the same value when they name
    the same dtype, whichever reader read each side."""
    return isinstance(v, NativeDtype) or (type(v).__module__ == "torch"
                                          and type(v).__name__ == "dtype")


def same_tensor(a: Any, b: Any, *, strides: bool = True) -> bool:
    """Same dtype, shape, layout (and strides) and the same bits: NaN payloads and -0.0
    count. Lazy tensors (``lazy.LazyTensor``) are read first. Two ``NativeTensor``s are
    compared on their mapped bytes, without torch; one beside a torch tensor goes
    through torch (``as_torch``: torch is loaded already)."""
    if is_native(a) and is_native(b):
        return _same_native(a, b, strides=strides)
    a, b = as_torch(a), as_torch(b)
    import torch

    from optstate.io.lazy import LazyTensor

    if isinstance(a, LazyTensor):
        a = a.load()
    if isinstance(b, LazyTensor):
        b = b.load()
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout:
        return False
    if a.is_meta or b.is_meta:
        return a.is_meta and b.is_meta
    if a.layout != torch.strided:
        return _same_sparse(a, b)
    if a.is_quantized:
        return bool(torch.equal(a, b))
    if strides and a.stride() != b.stride():
        return False
    if a.numel() == 0:
        return True
    x = a.detach().contiguous().reshape(-1)
    y = b.detach().contiguous().reshape(-1)
    if x.dtype == torch.bool:
        return bool(torch.equal(x, y))
    return bool(torch.equal(x.view(torch.uint8), y.view(torch.uint8)))


def _same_native(a: Any, b: Any, *, strides: bool) -> bool:
    """``same_tensor`` of two ``NativeTensor``s: their bits, compared on the mapped bytes
    (both contiguous) or through numpy; torch (``as_torch``) only without numpy."""
    if a.dtype.name != b.dtype.name or a.shape != b.shape:
        return False
    if strides and a.stride() != b.stride():
        return False
    if a.numel() == 0:
        return True
    if a.is_contiguous() and b.is_contiguous() and a.dtype.name != "bool":
        (i, j), (k, m) = a.byte_range(), b.byte_range()
        return a.storage.buffer[i:j] == b.storage.buffer[k:m]
    try:
        import numpy as np
    except ImportError:
        return same_tensor(as_torch(a), as_torch(b), strides=strides)
    x = np.ascontiguousarray(a.array()).view(np.uint8)
    y = np.ascontiguousarray(b.array()).view(np.uint8)
    if a.dtype.name == "bool":  # by value, as torch.equal compares bools
        x, y = x != 0, y != 0
    return bool(np.array_equal(x, y))


def _same_sparse(a: Any, b: Any) -> bool:
    """Sparse tensors (torch.equal has no sparse kernel): the same stored components, bit
    for bit: indices and values, and for COO whether it is coalesced."""
    import torch

    if a.layout == torch.sparse_coo:
        if a.is_coalesced() != b.is_coalesced():
            return False
        parts = [(a._indices(), b._indices()), (a._values(), b._values())]
    elif a.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = [(a.crow_indices(), b.crow_indices()), (a.col_indices(), b.col_indices()),
                 (a.values(), b.values())]
    elif a.layout in (torch.sparse_csc, torch.sparse_bsc):
        parts = [(a.ccol_indices(), b.ccol_indices()), (a.row_indices(), b.row_indices()),
                 (a.values(), b.values())]
    else:
        return bool(torch.equal(a, b))
    return all(same_tensor(x, y, strides=False) for x, y in parts)


def _same_float(x: float, y: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


def _fields(v: Any) -> dict[str, Any] | None:
    """An object's fields (``__dict__`` and ``__slots__``), or None if it has none."""
    fields: dict[str, Any] = {}
    found = False
    for cls in type(v).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if isinstance(name, str) and hasattr(v, name) and name not in fields:
                fields[name] = getattr(v, name)
                found = True
    d = getattr(v, "__dict__", None)
    if isinstance(d, dict):
        fields.update(d)
        found = True
    return fields if found else None


def same_leaf(a: Any, b: Any, *, strides: bool = True) -> bool:
    """True when ``a`` and ``b`` are the same value as saved (see the module docstring).
    Works on containers too, comparing item by item."""
    if is_tensor(a) or is_tensor(b):
        return is_tensor(a) and is_tensor(b) and same_tensor(a, b, strides=strides)
    if _dtype_like(a) and _dtype_like(b):
        return str(a) == str(b)
    if type(a) is not type(b):
        return False
    if a is b and not isinstance(a, (float, complex, list, tuple, dict, set, frozenset)):
        return True
    if isinstance(a, float):
        return _same_float(a, b)
    if isinstance(a, complex):
        return _same_float(a.real, b.real) and _same_float(a.imag, b.imag)
    if isinstance(a, _PLAIN):
        return bool(a == b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(
            same_leaf(x, y, strides=strides) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_leaf(a[k], b[k], strides=strides) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b
    if _torch_value_type(a):
        return str(a) == str(b)
    try:
        if (a == b) is True:
            return True
    except Exception:  # a foreign __eq__ that raises: fall back to the fields
        pass
    fa, fb = _fields(a), _fields(b)
    return fa is not None and fb is not None and same_leaf(fa, fb, strides=strides)
