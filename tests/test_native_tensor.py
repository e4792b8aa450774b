"""``optstate.io.native_tensor``: the descriptor the native reader builds instead of a tensor.

Every value it decodes is compared with what torch gives for the same bytes, and the
descriptor must stay inside its storage whatever a pickle asks of it.
"""

from __future__ import annotations

import ctypes
import io
import math
import mmap
import pickle
import struct

import pytest
import torch

from optstate.io.native_tensor import (
    DTYPES,
    NativeStorage,
    NativeTensor,
    as_torch,
    dtype_name,
    is_tensor,
)

DTYPE_NAMES = ["float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
               "int64", "int32", "int8", "uint8", "bool", "complex64"]


def over(t: torch.Tensor) -> NativeTensor:
    """A NativeTensor over a copy of ``t``'s storage bytes, with ``t``'s view of them."""
    raw = bytes(t.untyped_storage())
    return NativeTensor(NativeStorage(raw, "0"), DTYPES[dtype_name(t.dtype)], t.shape,
                        t.stride(), t.storage_offset())


def sample(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, generator=g) * 3
    x[0, 0], x[1, 1], x[2, 2] = math.nan, math.inf, -0.0
    if name == "bool":
        return x > 0
    if name.startswith(("int", "uint")):
        return x.nan_to_num(0, 0, 0).to(getattr(torch, name))
    return x.to(getattr(torch, name))


def same(a: object, b: object) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, complex) and isinstance(b, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                     == math.copysign(1, b))
    return a == b


@pytest.mark.parametrize("name", DTYPE_NAMES)
@pytest.mark.parametrize("view", ["plain", "transposed", "offset", "expanded"])
def test_values_structure_and_as_torch_match_torch(name: str, view: str) -> None:
    t = sample(name)
    t = {"plain": t, "transposed": t.t(), "offset": t[2:, 1:4],
         "expanded": t[1:2].expand(4, 6)}[view]
    n = over(t)
    ref = t.float() if name.startswith(("bfloat", "float8")) else t
    assert same(n.tolist(), ref.tolist())
    assert same(n[1, 2].item(), ref[1, 2].item())
    assert n.shape == tuple(t.shape) and n.stride() == t.stride()
    assert n.storage_offset() == t.storage_offset() and n.numel() == t.numel()
    assert n.is_contiguous() == t.is_contiguous() and n.element_size() == t.element_size()
    assert str(n.dtype) == str(t.dtype)
    back = as_torch(n)
    assert back.dtype == t.dtype and back.stride() == t.stride()
    assert torch.equal(back.contiguous().view(torch.uint8), t.contiguous().view(torch.uint8))
    assert same(back.float().tolist() if name.startswith(("bfloat", "float8")) else
                back.tolist(), ref.tolist())


def test_is_tensor_knows_both_kinds_without_importing_torch() -> None:
    n = over(torch.zeros(3))
    assert is_tensor(n) and is_tensor(torch.zeros(1)) and not is_tensor([1.0])


def test_a_view_outside_its_storage_is_refused() -> None:
    storage = NativeStorage(b"\0" * 16, "0")
    NativeTensor(storage, DTYPES["float32"], (4,))
    with pytest.raises(ValueError):
        NativeTensor(storage, DTYPES["float32"], (5,))
    with pytest.raises(ValueError):
        NativeTensor(storage, DTYPES["float32"], (2, 2), (3, 1))  # last element at 16..20
    with pytest.raises(ValueError):
        NativeTensor(storage, DTYPES["float32"], (1,), offset=4)
    with pytest.raises(ValueError):
        NativeTensor(storage, DTYPES["float32"], (2,), (-1,), 1)


class _Handing(pickle.Unpickler):
    """Hands out a shared dtype and a tensor, as a reader would."""

    def find_class(self, module: str, name: str) -> object:
        if name == "dt":
            return lambda: DTYPES["float64"]
        if name == "t":
            return lambda: NativeTensor(NativeStorage(b"\0" * 8, "0"), DTYPES["float32"], (2,))
        raise pickle.UnpicklingError(name)


@pytest.mark.parametrize("what", [b"dt", b"t"])
@pytest.mark.parametrize("state", [b"}U\x08itemsizeK\x01s", b"N}U\x07_offsetK\x10s\x86"])
def test_a_pickle_cannot_change_a_descriptor(what: bytes, state: bytes) -> None:
    """BUILD (a dict or slot state) on an object a reader handed out: refused, so a file
    cannot shrink float64's itemsize or move a tensor past its storage for the process."""
    data = b"\x80\x02cx\n" + what + b"\n)R" + state + b"b."
    with pytest.raises(TypeError, match="cannot be changed"):
        _Handing(io.BytesIO(data)).load()
    assert DTYPES["float64"].itemsize == 8


def test_copies_and_pickles_keep_the_one_dtype() -> None:
    import copy

    d = DTYPES["bfloat16"]
    assert copy.deepcopy(d) is d and pickle.loads(pickle.dumps(d)) is d
    n = over(torch.ones(2))
    assert copy.deepcopy(n) is n


def test_storage_address_of_read_only_mapped_bytes(tmp_path) -> None:
    p = tmp_path / "f"
    p.write_bytes(struct.pack("<4f", 1.5, 2.5, 3.5, 4.5))
    with open(p, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    storage = NativeStorage(memoryview(m)[4:], "0")
    assert ctypes.c_float.from_address(storage.address()).value == 2.5
    assert NativeStorage(b"", "e").address() == 0
