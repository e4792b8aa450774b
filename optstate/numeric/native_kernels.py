"""Blocks of the native reader's tensors, straight from the mapped bytes: C kernel or numpy.

A ``NativeTensor`` (``io/native_tensor.py``) is a dtype, shape, strides and offset over a
memory-mapped record; no torch. ``kernels.moments``/``finite_norm`` and
``pair_kernel.compare``/``nonfinite_counts`` take such tensors and walk them as they walk
torch tensors: the same ``CHUNK_ELEMENTS`` blocks, the same runs of blocks on the same
worker threads (``kernels.in_runs``), the same combination of the runs' parts. This module
gives them each block's numbers, in the C kernel's own result tuples:

- the C kernel (``_ckernels.c``; ``kernel_switch.C_KINDS``: every real kind, the float8
  formats, integers and bool) at the block's mapped address (``c_spans``), when
  ``kernel_switch.active_c_kernel()`` gives it and the tensor (both, for a pair) is
  contiguous: one pass over the file's pages, the GIL released;
- else numpy (``moments_block``, ``pair_block``): the block of ``t.array()`` (a strided
  view of the same bytes, ``array_blocks``) widened into a reused float64 buffer exactly
  as torch's ``.double()`` widens it (bfloat16 codes shifted into float32 bits, float8
  codes through ``FP8_TABLES``), then the float64 operations of the torch code of
  ``kernels.py`` / ``pair_kernel.py``, operation for operation.

So the numbers are those of the torch path on the same bytes: counts, min, max, max |a-b|,
max relative difference and the count outside tolerance exactly; the float64 sums within
``tolerance.sum_rtol(n)`` (another summation order). ``tests/test_native_kernels.py``
checks every dtype, layout and path against torch.

numpy is optional. Where a tensor needs it (the C kernel off or not built, a strided
view, a float64 norm past the float64 range) and it is not installed, the functions here
raise ``NativeNumericsUnavailable``; the public entry points (``kernels.moments``,
``finite_norm``, ``pair_kernel.compare``, ``nonfinite_counts``, ``views.distinct_elements``)
catch it, record why in ``torch_fallbacks`` (``note_torch_fallback``: a report can say
it, e.g. in ``file.reader_note``) and compute that tensor's numbers on the torch path
(``io.native_tensor.as_torch``: the same numbers; torch is imported). ``unavailable_reason()``
tells beforehand when no native tensor can be summarised at all (neither the C kernel nor
numpy), so a caller can choose the torch reader up front and say why.
This module imports neither torch nor the other kernels (they import it).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from optstate.io.native_tensor import FP8_TABLES, NativeStorage, NativeTensor
from optstate.numeric.kernel_switch import C_KINDS, active_c_kernel


class NativeNumericsUnavailable(RuntimeError):
    """A native tensor's numbers need numpy, which is not installed, and the C kernel
    cannot take them: the caller runs the torch path instead (``as_torch``)."""


# Why natively read tensors' numbers were computed on the torch path in this process (each
# reason once, in order; empty: never).
torch_fallbacks: list[str] = []


def note_torch_fallback(exc: NativeNumericsUnavailable) -> None:
    """Record that a native tensor's numbers go through torch, and why."""
    if str(exc) not in torch_fallbacks:
        torch_fallbacks.append(str(exc))


_np: ModuleType | None = None
_np_missing = False


def numpy_or_none() -> ModuleType | None:
    """numpy, or None where it is not installed (looked up once)."""
    global _np, _np_missing
    if _np is None and not _np_missing:
        try:
            import numpy
        except ImportError:
            _np_missing = True
        else:
            _np = numpy
    return _np


def numpy_or_signal(what: str) -> ModuleType:
    """numpy; ``NativeNumericsUnavailable`` naming ``what`` needed it when not installed."""
    np = numpy_or_none()
    if np is None:
        raise NativeNumericsUnavailable(
            f"{what} of a natively read tensor needs numpy (not installed) where the C "
            f"kernel does not apply")
    return np


def unavailable_reason() -> str | None:
    """Why no native tensor can be summarised in this process (None: they can): neither
    the C kernel nor numpy is there."""
    if active_c_kernel() is not None or numpy_or_none() is not None:
        return None
    return "statistics of natively read tensors need numpy or the C kernel"


def worker_count() -> int:
    """Worker threads for big tensors: torch's count where torch is loaded anyway (the
    same as its own path), else OMP_NUM_THREADS or the CPUs this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return torch.get_num_threads()
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    if n <= 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    return max(1, n)


# ---------------------------------------------------------------- C kernel addressing

def c_kind(t: NativeTensor, ck: ModuleType | None) -> int | None:
    """The C kernel's kind for ``t`` when ``ck`` (the active C kernel) takes it: a
    contiguous tensor of a kind it knows; None: numpy."""
    return C_KINDS.get(t.dtype.name) if ck is not None and t.is_contiguous() else None


def c_spans(tensors: tuple[NativeTensor, ...], limit: int) -> list[tuple]:
    """(address of each tensor's block, number of elements) for the blocks of at most
    ``limit`` elements of same-shape contiguous tensors; the storages must stay alive
    while the addresses are used (the tensors hold them)."""
    numel = tensors[0].numel()
    bases = [(t.storage.address() + t.storage_offset() * t.element_size(), t.element_size())
             for t in tensors]
    return [(*(b + i * e for b, e in bases), min(limit, numel - i))
            for i in range(0, numel, limit)]


# ---------------------------------------------------------------- numpy blocks

_decoders: dict[str, Callable] = {}


def decoder(np: ModuleType, name: str) -> Callable:
    """``decode(out, codes)`` for dtype ``name``: writes the float64 values of ``codes`` (a
    block of ``t.array()``) into ``out`` (a float64 array of the same shape), as torch's
    ``.double()`` gives them."""
    if name in _decoders:
        return _decoders[name]
    if name == "bfloat16":  # the top half of a float32: exact
        def decode(out: Any, codes: Any) -> None:
            np.copyto(out, (codes.astype(np.uint32) << 16).view(np.float32))
    elif name in FP8_TABLES:
        table = np.array(FP8_TABLES[name], dtype=np.float64)

        def decode(out: Any, codes: Any) -> None:
            np.take(table, codes, out=out, mode="clip")  # (codes < 256: never clipped)
    else:  # IEEE floats widen exactly; integers as torch converts them; bool 0/1
        def decode(out: Any, codes: Any) -> None:
            np.copyto(out, codes, casting="unsafe")
    _decoders[name] = decode
    return decode


def array_blocks(tensors: tuple[NativeTensor, ...], limit: int,
                 index_blocks: Callable[[tuple, int], Iterator[tuple]]) -> list[tuple]:
    """Corresponding blocks of the tensors' numpy views: flat slices when all are
    contiguous, ``index_blocks(shape, limit)`` otherwise (as ``kernels.blocks`` walks
    torch tensors)."""
    arrays = [t.array() for t in tensors]
    if all(t.is_contiguous() for t in tensors):
        flats = [a.reshape(-1) for a in arrays]
        n = flats[0].size
        return [tuple(f[i:i + limit] for f in flats) for i in range(0, n, limit)]
    return [tuple(a[idx] for a in arrays) for idx in index_blocks(tensors[0].shape, limit)]


def float64_buffers(np: ModuleType, blocks: list[tuple], count: int) -> tuple:
    """``count`` float64 buffers that hold the largest of ``blocks``' first pieces."""
    size = max((b[0].size for b in blocks), default=1) or 1
    return tuple(np.empty(size, dtype=np.float64) for _ in range(count))


def widen(buf: Any, piece: Any, decode: Callable) -> Any:
    """``piece`` decoded into the front of the float64 ``buf``; that flat view."""
    out = buf[:piece.size]
    decode(out if piece.ndim == 1 else out.reshape(piece.shape), piece)
    return out


def _sumsq(np: ModuleType, b: Any) -> float:
    """sum(b * b) of a flat float64 array, in numpy's own loop: ``np.dot`` would call the
    BLAS, whose threads (a pool per worker thread) measured 100x slower per block on
    shared cores than this single-threaded loop."""
    return float(np.einsum("i,i->", b, b))


def moments_block(np: ModuleType, b: Any) -> tuple:
    """One widened block ``b`` (reused: overwritten) as the C kernel's ``moments_block``
    returns it: (nan, inf, zeros, sum, sumabs, sumsq, min, max), min and max None when no
    element is finite. ``kernels._torch_moments`` in numpy, operation for operation;
    call inside ``np.errstate(all="ignore")`` (NaN codes, overflowing sums)."""
    k = b.size
    s = float(b.sum())
    nan = inf = zeros = 0
    if not math.isfinite(s):
        mask = np.isfinite(b)
        n_fin = int(np.count_nonzero(mask))
        zeros = k - int(np.count_nonzero(b))  # NaN and Inf are non-zero
        if n_fin != k:
            nan = int(np.count_nonzero(np.isnan(b)))
            inf = k - n_fin - nan
            b = b[mask]
            if n_fin == 0:
                return nan, inf, zeros, 0.0, 0.0, 0.0, None, None
            s = float(b.sum())
        return (nan, inf, zeros, s, float(np.abs(b).sum()), _sumsq(np, b), float(b.min()),
                float(b.max()))
    sq = _sumsq(np, b)
    mn, mx = float(b.min()), float(b.max())
    if mn >= 0.0:  # all the same sign: sum |x| is the sum itself, exactly
        sa = s
        if mn == 0.0:
            zeros = k - int(np.count_nonzero(b))
    elif mx <= 0.0:
        sa = -s
        if mx == 0.0:
            zeros = k - int(np.count_nonzero(b))
    else:
        zeros = k - int(np.count_nonzero(b))
        sa = float(np.abs(b, out=b).sum())
    return nan, inf, zeros, s, sa, sq, mn, mx


def rescaled_sumsq(t: NativeTensor, peak: float, limit: int,
                   index_blocks: Callable[[tuple, int], Iterator[tuple]]) -> list[float]:
    """Per block, sum((x / peak)**2) over the finite elements: the rare second pass for a
    float64 norm whose squares leave the float64 range (``kernels`` combines them)."""
    np = numpy_or_signal("the norm of values whose squares leave the float64 range")
    decode = decoder(np, t.dtype.name)
    pieces = array_blocks((t,), limit, index_blocks)
    (buf,) = float64_buffers(np, pieces, 1)
    parts = []
    with np.errstate(all="ignore"):
        for (piece,) in pieces:
            b = widen(buf, piece, decode)
            b = b[np.isfinite(b)] / peak
            parts.append(_sumsq(np, b))
    return parts


def pair_block(np: ModuleType, xa: Any, xb: Any, bufd: Any, atol: float, rtol: float,
               nan_equal: bool) -> tuple:
    """One widened block pair (``xa``, ``xb``: reused, overwritten) as the C kernel's
    ``pair_block`` returns it: (n_outside, max_abs, max_rel, sumsq_a, sumsq_b, finite_a,
    finite_b, nonzero_a, nonzero_b, non-finite pairs by kind). ``pair_kernel._torch_pair``
    in numpy, operation for operation (``torch.isclose``'s rule written out where a value
    is not finite); call inside ``np.errstate(all="ignore")``."""
    k = xa.size
    d = bufd[:k]
    qa, qb = _sumsq(np, xa), _sumsq(np, xb)
    no_pairs = (0, 0, 0, 0, 0)
    if math.isfinite(qa) and math.isfinite(qb):  # every value finite (NaN/Inf propagate)
        nza, nzb = bool(xa.any()), bool(xb.any())
        np.abs(np.subtract(xa, xb, out=d), out=d)
        m = float(d.max())
        if m == 0.0:
            return 0, m, 0.0 if (qb > 0.0 or nzb) else None, qa, qb, k, k, nza, nzb, no_pairs
        np.abs(xb, out=xb)
        if atol == 0.0 and rtol == 0.0:
            n_out = int(np.count_nonzero(d))
        else:
            allowed = np.multiply(xb, rtol, out=xa)  # xa is free now
            allowed += atol
            outside = d > allowed
            n_out = int(np.count_nonzero(outside))
            if math.isinf(m):  # isclose: an infinite |a - b| is never close
                n_out += int(np.count_nonzero(np.isinf(d) & ~outside))
        r = None
        nonzero_b = int(np.count_nonzero(xb))
        if nonzero_b:
            q = np.divide(d, xb, out=d)
            if nonzero_b != k:  # x/0 is inf or NaN: not a relative difference
                q[xb == 0] = 0.0
            r = float(q.max())
        return n_out, m, r, qa, qb, k, k, nza, nzb, no_pairs
    # torch.isclose: a == b, or NaN == NaN (nan_equal), or (with a tolerance) a finite
    # |a - b| <= atol + |rtol * b|
    close = xa == xb
    if nan_equal:
        close |= np.isnan(xa) & np.isnan(xb)
    diff = np.abs(xa - xb)
    if atol != 0.0 or rtol != 0.0:
        close |= np.isfinite(diff) & (diff <= atol + np.abs(rtol * xb))
    n_out = k - int(np.count_nonzero(close))
    fa, fb = np.isfinite(xa), np.isfinite(xb)
    both = fa & fb
    dd = diff[both]
    m = r = None
    if dd.size:
        m = float(dd.max())
        yb = np.abs(xb)[both]
        nz = yb != 0
        if bool(nz.any()):
            r = float((dd[nz] / yb[nz]).max())
    va, vb = xa[fa], xb[fb]
    return (n_out, m, r, _sumsq(np, va), _sumsq(np, vb), va.size, vb.size, bool(va.any()),
            bool(vb.any()), nonfinite_pairs(np, xa, xb))


def nonfinite_pairs(np: ModuleType, x: Any, y: Any) -> tuple[int, ...]:
    """``pair_kernel.nonfinite_counts``'s definition on numpy values (complex too), in
    ``NONFINITE_KINDS`` order: NaN in x only, in y only, ±Inf in x against a finite y, the
    reverse, NaN in both."""
    na, nb = np.isnan(x), np.isnan(y)
    fa, fb = np.isfinite(x), np.isfinite(y)
    return (int(np.count_nonzero(na & ~nb)), int(np.count_nonzero(nb & ~na)),
            int(np.count_nonzero(~fa & ~na & fb)), int(np.count_nonzero(~fb & ~nb & fa)),
            int(np.count_nonzero(na & nb)))


# ---------------------------------------------------------------- views

def gathered(base: NativeTensor, covered: Any) -> NativeTensor:
    """The elements of the flat ``base`` where the numpy bool mask ``covered`` is set,
    copied (raw codes: exact for every dtype) into a new 1-d tensor (``views.py``)."""
    codes = base.array()[covered]
    return NativeTensor(NativeStorage(codes.tobytes(), key=base.storage.key), base.dtype,
                        (codes.shape[0],))
