"""Low-bit optimizer states back to float32, with the libraries' published formulas.

Pure torch (imported only when a low-bit state is met; the native reader's tensors
are converted with ``as_torch`` here); the libraries are never imported. Each function
checks that the stored pieces fit together (dtypes, counts, block size) and raises
``DequantError`` naming what does not, never guessing a layout:

- bitsandbytes' 8-bit optimizers (``bitsandbytes.functional.dequantize_blockwise``, its
  CPU kernel and its ``default`` torch kernel ``_dequantize_blockwise_compute``):
  ``out[i] = qmap[codes[i]] * absmax[i // blocksize]``, the last block possibly short.
  The block size is not stored: the optimizers use 256 (``optim/optimizer.py``,
  ``optim/ademamix.py``), older versions 2048; it is derived from the element count and
  ``absmax``'s length among the sizes ``dequantize_blockwise`` accepts
  (``BNB_BLOCKSIZES``). At most one of them gives that many blocks when there are two or
  more (two powers of two b < 2b give ceil(n/b) = ceil(n/2b) = k only for k = 1); with
  one block every size gives the same values and the size stays unknown (None).
- torchao ``OptimState8bit.dequantize()`` (``quant_utils.dequant_with_qmap``):
  ``qmap[codes].view(n_blocks, -1) * scale.view(-1, 1)``.
- torchao ``OptimState4bit.dequantize()``: codes are two 4-bit values per byte, the high
  nibble first (``stack([codes >> 4, codes & 15], -1)``), then as the 8-bit one, viewed
  as ``_shape``.
- torchao ``OptimStateFp8.dequantize()``: ``codes.float().view(-1, block_size) *
  scale.view(-1, 1)`` (codes float8_e4m3fn).

Each ``*_plan`` function checks the pieces (reading no more than the small tables and
scales) and returns a ``Plan``: the result's shape, the block size, and ``compute()``,
which does the work; ``state.lowbit`` hands that to a lazy tensor, so a moment is
dequantized only when something reads its values, one at a time. The plain functions
(``bnb_8bit``, ``torchao_8bit``, ...) are plan + compute.

Every value is one table look-up (exact) and one float32 product, the same operation the
libraries' CPU code does, so the results are equal bit for bit (tests/test_lowbit.py
holds them to the values the libraries computed, tests/fixtures/lowbit/*/expected.pt).
Work goes in chunks of ``CHUNK`` elements (index tensors stay small; see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optstate.io.native_tensor import as_torch

# The block sizes bitsandbytes.functional.dequantize_blockwise documents as valid.
BNB_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
# Elements dequantized per step (a multiple of every block size above). 32 Ki: the index
# and output of a step stay in L2 cache, and each step stays under torch's grain size for
# splitting work over threads (32,768), whose cost measured larger than its gain on 2
# shared cores: 10M elements in 34 ms this way, 47 ms (1 thread) / 91 ms (2 threads) in
# 4 Mi steps (bench/dequant_bench.py times it against the libraries).
CHUNK = 1 << 15


class DequantError(ValueError):
    """The stored pieces do not make one quantized tensor (the message says why)."""


def bnb_blocksize(numel: int, blocks: int) -> int | None:
    """The bitsandbytes block size that splits ``numel`` elements into ``blocks`` blocks;
    None when there is one block (every size gives the same values); DequantError when
    no size bitsandbytes uses does."""
    if blocks == 1 and numel <= max(BNB_BLOCKSIZES):
        return None
    fits = [b for b in BNB_BLOCKSIZES if -(-numel // b) == blocks]
    if len(fits) != 1:
        raise DequantError(
            f"{blocks} absmax value{'s' * (blocks != 1)} for {numel:,} elements: no block size "
            f"bitsandbytes uses ({', '.join(map(str, BNB_BLOCKSIZES))}) gives that many blocks")
    return fits[0]


@dataclass(frozen=True)
class Plan:
    """A checked dequantization: the float32 result's ``shape``, the ``block_size`` (None:
    one block of unknown size), and ``compute()`` giving the result."""

    shape: tuple[int, ...]
    block_size: int | None
    compute: Callable[[], Any]


def _check_table(qmap: Any, size: int, name: str) -> Any:
    import torch

    qmap = as_torch(qmap)
    if not isinstance(qmap, torch.Tensor) or qmap.dtype != torch.float32 or qmap.numel() != size:
        what = (f"{qmap.dtype} with {qmap.numel()} values" if isinstance(qmap, torch.Tensor)
                else type(qmap).__name__)
        raise DequantError(f"{name} should be {size} float32 values, is {what}")
    return qmap.reshape(-1).contiguous()


def _check_scale(scale: Any, name: str) -> Any:
    import torch

    scale = as_torch(scale)
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise DequantError(f"{name} is not a float tensor")
    return scale.reshape(-1).float().contiguous()


def _check_codes(codes: Any, dtype: str) -> Any:
    import torch

    codes = as_torch(codes)
    if not isinstance(codes, torch.Tensor) or codes.dtype != getattr(torch, dtype):
        raise DequantError(f"the codes are not a {dtype} tensor")
    return codes


def _steps(n: int, block: int) -> range:
    return range(0, n, max(CHUNK // block, 1) * block)


def _lookup_scaled(codes: Any, qmap: Any, scale: Any,
                   block: int) -> Any:
    """``qmap[codes[i]] * scale[i // block]`` for flat uint8 ``codes`` (last block may be
    short), float32, in chunks."""
    import torch

    n = codes.numel()
    out = torch.empty(n, dtype=torch.float32)
    step = max(CHUNK // block, 1) * block
    for start in _steps(n, block):
        piece = out[start:start + step]
        torch.index_select(qmap, 0, codes[start:start + step].int(), out=piece)
        _scale_blocks(piece, scale[start // block:], block)
    return out


def _scale_blocks(piece: Any, scale: Any, block: int) -> None:
    """``piece[i] *= scale[i // block]`` in place (``piece`` starts at a block boundary)."""
    m = piece.numel()
    full = m - m % block
    if full:
        piece[:full].view(-1, block).mul_(scale[:full // block].view(-1, 1))
    if full < m:
        piece[full:].mul_(scale[full // block])


def bnb_8bit_plan(codes: Any, qmap: Any, absmax: Any) -> Plan:
    """bitsandbytes blockwise 8-bit, float32 of ``codes``' shape. ``codes`` (k, ...) with
    ``absmax`` (k, blocks) is k stacked moments (AdEMAMix8bit's state1), each dequantized
    on its own as bitsandbytes does."""
    import torch

    codes = _check_codes(codes, "uint8")
    table = _check_table(qmap, 256, "the qmap")
    absmax = as_torch(absmax)
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32:
        raise DequantError("absmax is not a float32 tensor")
    k = 1
    if absmax.dim() == 2 and codes.dim() >= 1 and codes.shape[0] == absmax.shape[0]:
        k = int(absmax.shape[0])  # stacked moments
    elif absmax.dim() > 1:
        raise DequantError(f"absmax has shape {list(absmax.shape)}, which does not fit codes "
                           f"of shape {list(codes.shape)}")
    per = codes.numel() // max(k, 1)
    blocks = absmax.numel() // max(k, 1)
    block = bnb_blocksize(per, blocks)
    shape = tuple(int(d) for d in codes.shape)

    def compute() -> Any:
        flat, scales = codes.reshape(-1).contiguous(), absmax.reshape(-1).contiguous()
        if k == 1:
            return _lookup_scaled(flat, table, scales, block or max(per, 1)).view(shape)
        return torch.cat([
            _lookup_scaled(flat[i * per:(i + 1) * per], table,
                           scales[i * blocks:(i + 1) * blocks], block or max(per, 1))
            for i in range(k)]).view(shape)

    return Plan(shape, block, compute)


def bnb_8bit(codes: Any, qmap: Any, absmax: Any) -> tuple[Any, int | None]:
    """``bnb_8bit_plan`` computed: (float32 tensor, block size)."""
    plan = bnb_8bit_plan(codes, qmap, absmax)
    return plan.compute(), plan.block_size


def _block_size(n: int, scale: Any, stored: Any) -> int:
    """torchao's block size, elements // ``scale.numel()``: must divide the elements
    exactly and equal the stored ``block_size`` when there is one."""
    blocks = scale.numel()
    if blocks == 0 or n % blocks:
        raise DequantError(f"{blocks} scale value{'s' * (blocks != 1)} do not split "
                           f"{n:,} elements into equal blocks")
    size = n // blocks
    if stored is not None and stored != size:
        raise DequantError(f"block_size says {stored}, but {n:,} elements over {blocks} "
                           f"scale values make blocks of {size}")
    return size


def torchao_8bit_plan(codes: Any, scale: Any, qmap: Any, block_size: Any = None) -> Plan:
    """torchao ``OptimState8bit.dequantize()``: float32 of ``codes``' shape."""
    codes = _check_codes(codes, "uint8")
    table = _check_table(qmap, 256, "the qmap")
    s = _check_scale(scale, "the scale")
    block = _block_size(codes.numel(), s, block_size)
    shape = tuple(int(d) for d in codes.shape)
    return Plan(shape, block, lambda: _lookup_scaled(
        codes.reshape(-1).contiguous(), table, s, block).view(shape))


def torchao_4bit_plan(codes: Any, scale: Any, qmap: Any, shape: Any,
                      block_size: Any = None) -> Plan:
    """torchao ``OptimState4bit.dequantize()``: float32 of ``shape`` (``_shape``)."""
    import torch

    codes = _check_codes(codes, "uint8")
    table = _check_table(qmap, 16, "the qmap")
    s = _check_scale(scale, "the scale")
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise DequantError(f"_shape is {type(shape).__name__}, not a shape") from None
    n = math.prod(dims)
    if codes.numel() * 2 != n:
        raise DequantError(f"{codes.numel():,} bytes of codes hold {codes.numel() * 2:,} "
                           f"4-bit values, not the {n:,} of shape {list(dims)}")
    block = _block_size(n, s, block_size)

    def compute() -> Any:
        flat = codes.reshape(-1).contiguous()
        out = torch.empty(n, dtype=torch.float32)
        step = max(CHUNK // block, 1) * block
        for start in _steps(n, block):
            packed = flat[start // 2:(start + step) // 2]  # high nibble first
            nibbles = torch.stack([packed >> 4, packed & 0b1111], dim=-1).reshape(-1)
            piece = out[start:start + step]
            torch.index_select(table, 0, nibbles.int(), out=piece)
            _scale_blocks(piece, s[start // block:], block)
        return out.view(dims)

    return Plan(dims, block, compute)


def torchao_fp8_plan(codes: Any, scale: Any, block_size: Any = None) -> Plan:
    """torchao ``OptimStateFp8.dequantize()``: float32 of ``codes``' shape."""
    import torch

    codes = _check_codes(codes, "float8_e4m3fn")
    s = _check_scale(scale, "the scale")
    n = codes.numel()
    block = _block_size(n, s, block_size)
    shape = tuple(int(d) for d in codes.shape)

    def compute() -> Any:
        flat = codes.reshape(-1).contiguous()
        out = torch.empty(n, dtype=torch.float32)
        step = max(CHUNK // block, 1) * block
        for start in _steps(n, block):
            piece = out[start:start + step]
            piece.copy_(flat[start:start + step])
            _scale_blocks(piece, s[start // block:], block)
        return out.view(shape)

    return Plan(shape, block, compute)


def torchao_8bit(codes: Any, scale: Any, qmap: Any, block_size: Any = None) -> Any:
    return torchao_8bit_plan(codes, scale, qmap, block_size).compute()


def torchao_4bit(codes: Any, scale: Any, qmap: Any, shape: Any,
                 block_size: Any = None) -> Any:
    return torchao_4bit_plan(codes, scale, qmap, shape, block_size).compute()


def torchao_fp8(codes: Any, scale: Any, block_size: Any = None) -> Any:
    return torchao_fp8_plan(codes, scale, block_size).compute()
