"""Low-bit optimizer states back to float32, with the libraries' published formulas.

Pure torch; the libraries are never imported. Each function checks that the stored
pieces fit together (dtypes, counts, block size) and raises ``DequantError`` naming what
does not, never guessing a layout:

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

Every value is one table look-up (exact) and one float32 product, the same operation the
libraries' CPU code does, so the results are equal bit for bit (tests/test_lowbit.py
holds them to the values the libraries computed, tests/fixtures/lowbit/*/expected.pt).
Work goes in chunks of ``CHUNK`` elements (index tensors stay small; see there).
"""

from __future__ import annotations

import math
from typing import Any

import torch

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


def _check_table(qmap: Any, size: int, name: str) -> torch.Tensor:
    if not isinstance(qmap, torch.Tensor) or qmap.dtype != torch.float32 or qmap.numel() != size:
        what = (f"{qmap.dtype} with {qmap.numel()} values" if isinstance(qmap, torch.Tensor)
                else type(qmap).__name__)
        raise DequantError(f"{name} should be {size} float32 values, is {what}")
    return qmap.reshape(-1).contiguous()


def _check_scale(scale: Any, name: str) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise DequantError(f"{name} is not a float tensor")
    return scale.reshape(-1).float().contiguous()


def _lookup_scaled(codes: torch.Tensor, qmap: torch.Tensor, scale: torch.Tensor,
                   block: int) -> torch.Tensor:
    """``qmap[codes[i]] * scale[i // block]`` for flat uint8 ``codes`` (last block may be
    short), float32, in chunks."""
    n = codes.numel()
    out = torch.empty(n, dtype=torch.float32)
    step = max(CHUNK // block, 1) * block
    for start in range(0, n, step):
        end = min(start + step, n)
        piece = out[start:end]
        torch.index_select(qmap, 0, codes[start:end].int(), out=piece)
        _scale_blocks(piece, scale[start // block:], block)
    return out


def _scale_blocks(piece: torch.Tensor, scale: torch.Tensor, block: int) -> None:
    """``piece[i] *= scale[i // block]`` in place (``piece`` starts at a block boundary)."""
    m = piece.numel()
    full = m - m % block
    if full:
        piece[:full].view(-1, block).mul_(scale[:full // block].view(-1, 1))
    if full < m:
        piece[full:].mul_(scale[full // block])


def bnb_8bit(codes: Any, qmap: Any, absmax: Any) -> tuple[torch.Tensor, int | None]:
    """bitsandbytes blockwise 8-bit: (float32 tensor of ``codes``' shape, block size).
    ``codes`` (k, ...) with ``absmax`` (k, blocks) is k stacked moments (AdEMAMix8bit's
    state1), each dequantized on its own as bitsandbytes does."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise DequantError("the codes are not a uint8 tensor")
    table = _check_table(qmap, 256, "the qmap")
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32:
        raise DequantError("absmax is not a float32 tensor")
    if absmax.dim() == 2 and codes.dim() >= 1 and codes.shape[0] == absmax.shape[0]:
        slices = [(codes[i], absmax[i]) for i in range(codes.shape[0])]  # stacked moments
    elif absmax.dim() <= 1:
        slices = [(codes, absmax)]
    else:
        raise DequantError(f"absmax has shape {list(absmax.shape)}, which does not fit codes "
                           f"of shape {list(codes.shape)}")
    per = codes.numel() // len(slices)
    block = bnb_blocksize(per, slices[0][1].numel())
    outs = []
    for c, a in slices:
        if a.numel() != slices[0][1].numel():
            raise DequantError("the stacked moments have different absmax counts")
        flat = c.reshape(-1).contiguous()
        outs.append(_lookup_scaled(flat, table, a.reshape(-1).contiguous(),
                                   block if block is not None else max(per, 1)))
    if len(outs) == 1:
        return outs[0].view(codes.shape), block
    return torch.cat(outs).view(codes.shape), block


def _block_size(n: int, scale: torch.Tensor, stored: Any, per_byte: int = 1) -> int:
    """torchao's block size, ``codes.numel() * per_byte // scale.numel()``: must divide
    the elements exactly and equal the stored ``block_size`` when there is one."""
    blocks = scale.numel()
    if blocks == 0 or n % blocks:
        raise DequantError(f"{blocks} scale value{'s' * (blocks != 1)} do not split "
                           f"{n:,} elements into equal blocks")
    size = n // blocks
    if stored is not None and stored != size:
        raise DequantError(f"block_size says {stored}, but {n:,} elements over {blocks} "
                           f"scale values make blocks of {size}")
    return size


def torchao_8bit(codes: Any, scale: Any, qmap: Any, block_size: Any = None) -> torch.Tensor:
    """torchao ``OptimState8bit.dequantize()``: float32 of ``codes``' shape."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise DequantError("the codes are not a uint8 tensor")
    table = _check_table(qmap, 256, "the qmap")
    s = _check_scale(scale, "the scale")
    block = _block_size(codes.numel(), s, block_size)
    return _lookup_scaled(codes.reshape(-1).contiguous(), table, s, block).view(codes.shape)


def torchao_4bit(codes: Any, scale: Any, qmap: Any, shape: Any,
                 block_size: Any = None) -> torch.Tensor:
    """torchao ``OptimState4bit.dequantize()``: float32 of ``shape`` (``_shape``)."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise DequantError("the codes are not a uint8 tensor")
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
    flat = codes.reshape(-1)
    out = torch.empty(n, dtype=torch.float32)
    step = max(CHUNK // block, 1) * block
    for start in range(0, n, step):
        end = min(start + step, n)
        packed = flat[start // 2:end // 2]
        nibbles = torch.stack([packed >> 4, packed & 0b1111], dim=-1).reshape(-1)
        piece = out[start:end]
        torch.index_select(table, 0, nibbles.int(), out=piece)
        _scale_blocks(piece, s[start // block:], block)
    return out.view(dims)


def torchao_fp8(codes: Any, scale: Any, block_size: Any = None) -> torch.Tensor:
    """torchao ``OptimStateFp8.dequantize()``: float32 of ``codes``' shape."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.float8_e4m3fn:
        raise DequantError("the codes are not a float8_e4m3fn tensor")
    s = _check_scale(scale, "the scale")
    block = _block_size(codes.numel(), s, block_size)
    flat = codes.reshape(-1)
    out = torch.empty(codes.numel(), dtype=torch.float32)
    step = max(CHUNK // block, 1) * block
    for start in range(0, codes.numel(), step):
        end = min(start + step, codes.numel())
        piece = out[start:end]
        piece.copy_(flat[start:end])
        _scale_blocks(piece, s[start // block:], block)
    return out.view(codes.shape)
