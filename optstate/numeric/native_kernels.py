"""Statistics and comparisons of the native reader's tensors, straight from the mapped bytes.

A ``NativeTensor`` (``io/native_tensor.py``) is a dtype, shape, strides and offset over a
memory-mapped record; no torch. ``kernels.moments``, ``kernels.finite_norm`` and
``pair_kernel.compare`` / ``nonfinite_counts`` hand such tensors here, and they are walked
exactly as torch tensors are there: the same ``CHUNK_ELEMENTS`` blocks, the same runs of
blocks on the same worker threads (``kernels.in_runs``), the same combination of the runs'
parts (``kernels.combine_parts``, ``pair_kernel.combine_pair_parts``). Each block runs

- through the C kernel (``_ckernels.c``, ``kernel_switch.C_KINDS``: every real kind, the
  float8 formats, integers and bool) at the block's mapped address, when
  ``kernel_switch.active_c_kernel()`` gives it and the tensor (both, for a pair) is
  contiguous: one pass over the file's pages, the GIL released;
- else through numpy: the block of ``t.array()`` (a strided view of the same bytes)
  widened into a reused float64 buffer, exactly as torch's ``.double()`` widens it
  (bfloat16 codes shifted into float32 bits, float8 codes through ``FP8_TABLES``), then
  the same float64 operations as the torch code of ``kernels.py``/``pair_kernel.py``.

So the numbers are those of the torch path on the same bytes: counts, min, max, max |a-b|,
max relative difference and the count outside tolerance exactly; the float64 sums within
``tolerance.sum_rtol(n)`` (another summation order). ``tests/test_native_kernels.py``
checks every dtype, layout and path against torch.

numpy is optional. Where a tensor needs it (the C kernel off or not built, a strided
view, complex values, a float64 norm past the float64 range) and it is not installed,
these functions raise ``NativeNumericsUnavailable``: the caller turns that into the torch
path (``io.native_tensor.as_torch`` the tensor and call again, or read the file with
torch). ``unavailable_reason()`` tells beforehand when no native tensor can be summarised
at all (neither the C kernel nor numpy), so a reader can choose torch up front and say why.

About 480 lines on purpose: the one-tensor and the pair paths are each a numpy twin of the
torch code in kernels.py / pair_kernel.py, operation for operation, and share the decoding,
blocks and C-kernel addressing; they read best beside each other.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from optstate.io.native_tensor import FP8_TABLES, NativeStorage, NativeTensor
from optstate.numeric import kernels
from optstate.numeric.kernel_switch import C_KINDS, active_c_kernel
from optstate.numeric.kernels import (
    TINY,
    ByteProgress,
    Moments,
    _add_values,
    _Part,
    combine_parts,
    fsum,
    in_runs,
    index_blocks,
)
from optstate.numeric.pair_kernel import (
    NONFINITE_KINDS,
    PairStats,
    _PairPart,
    add_c_block,
    combine_pair_parts,
)


class NativeNumericsUnavailable(RuntimeError):
    """A native tensor's numbers need numpy, which is not installed, and the C kernel
    cannot take them: the caller runs the torch path instead (``as_torch``)."""


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


def _c_kind(t: NativeTensor, ck: ModuleType | None) -> int | None:
    return C_KINDS.get(t.dtype.name) if ck is not None and t.is_contiguous() else None


def _address(t: NativeTensor) -> int:
    return t.storage.address() + t.storage_offset() * t.element_size()


def _spans(numel: int, limit: int) -> list[tuple[int, int]]:
    return [(i, min(limit, numel - i)) for i in range(0, numel, limit)]


# ---------------------------------------------------------------- numpy decoding

_decoders: dict[str, Callable] = {}


def _decoder(np: ModuleType, name: str) -> Callable:
    """``decode(out, codes)``: writes the float64 values of ``codes`` (a block of
    ``t.array()``) into ``out`` (a float64 array of the same shape), as torch's
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


def _array_blocks(np: ModuleType, tensors: tuple[NativeTensor, ...], limit: int) -> list[tuple]:
    """Corresponding blocks of the tensors' numpy views: flat slices when all are
    contiguous, ``index_blocks`` otherwise (as ``kernels.blocks`` walks torch tensors)."""
    arrays = [t.array() for t in tensors]
    if all(t.is_contiguous() for t in tensors):
        flats = [a.reshape(-1) for a in arrays]
        n = flats[0].size
        return [tuple(f[i:i + limit] for f in flats) for i in range(0, n, limit)]
    return [tuple(a[idx] for a in arrays) for idx in index_blocks(tensors[0].shape, limit)]


def _sumsq(np: ModuleType, b: Any) -> float:
    """sum(b * b) of a flat float64 array, in numpy's own loop: ``np.dot`` would call the
    BLAS, whose threads (one pool per worker thread) measured 100x slower per block on
    shared cores than this single-threaded loop."""
    return float(np.einsum("i,i->", b, b))


def _widen(np: ModuleType, buf: Any, piece: Any, decode: Callable) -> Any:
    """``piece`` decoded into the front of the float64 ``buf``; that flat view."""
    out = buf[:piece.size]
    decode(out if piece.ndim == 1 else out.reshape(piece.shape), piece)
    return out


# ---------------------------------------------------------------- one tensor

def moments(t: NativeTensor, progress: ByteProgress | None = None) -> Moments:
    """``kernels.moments`` of a native tensor (the caller has made the read check)."""
    if t.is_complex():
        raise TypeError("moments() takes real tensors; summarise complex ones through abs()")
    numel, esize = t.numel(), t.element_size()
    limit = kernels.CHUNK_ELEMENTS
    ck = active_c_kernel()
    kind = _c_kind(t, ck)
    if kind is not None:
        base = _address(t)
        pieces: list = [(base + i * esize, k) for i, k in _spans(numel, limit)]

        def run(ps: list) -> _Part:
            return _c_moments_run(ck, ps, kind, progress, esize)
    else:
        np = numpy_or_signal("the statistics")
        pieces = _array_blocks(np, (t,), limit)
        decode = _decoder(np, t.dtype.name)

        def run(ps: list) -> _Part:
            return _np_moments_run(np, ps, decode, progress, esize)
    parts = in_runs(run, pieces, worker_count())
    return combine_parts(parts, numel, lambda peak: _rescaled_norm(t, peak))


def _c_moments_run(ck: ModuleType, pieces: list, kind: int, progress: ByteProgress | None,
                   esize: int) -> _Part:
    part = _Part()
    for address, k in pieces:
        nan, inf, zeros, s, sa, sq, mn, mx = ck.moments_block(address, k, kind)
        part.nan += nan
        part.inf += inf
        part.zeros += zeros
        if mn is not None:
            _add_values(part, s, sa, sq, mn, mx)
        if progress is not None:
            progress(k * esize)
    return part


def _np_moments_run(np: ModuleType, pieces: list, decode: Callable,
                    progress: ByteProgress | None, esize: int) -> _Part:
    part = _Part()
    buf = np.empty(max((p.size for (p,) in pieces), default=1) or 1, dtype=np.float64)
    with np.errstate(all="ignore"):  # NaN codes, overflowing sums: counted, not warned of
        for (piece,) in pieces:
            _np_moments(np, part, _widen(np, buf, piece, decode))
            if progress is not None:
                progress(piece.size * esize)
    return part


def _np_moments(np: ModuleType, part: _Part, b: Any) -> None:
    """One widened block: ``kernels._torch_moments`` in numpy, operation for operation."""
    k = b.size
    s = float(b.sum())
    if not math.isfinite(s):
        mask = np.isfinite(b)
        n_fin = int(np.count_nonzero(mask))
        part.zeros += k - int(np.count_nonzero(b))  # NaN and Inf are non-zero
        if n_fin != k:
            n_nan = int(np.count_nonzero(np.isnan(b)))
            part.nan += n_nan
            part.inf += k - n_fin - n_nan
            b = b[mask]
            if n_fin == 0:
                return
            s = float(b.sum())
        _add_values(part, s, float(np.abs(b).sum()), _sumsq(np, b), float(b.min()),
                    float(b.max()))
        return
    sq = _sumsq(np, b)
    mn, mx = float(b.min()), float(b.max())
    if mn >= 0.0:  # all the same sign: sum |x| is the sum itself, exactly
        sa = s
        if mn == 0.0:
            part.zeros += k - int(np.count_nonzero(b))
    elif mx <= 0.0:
        sa = -s
        if mx == 0.0:
            part.zeros += k - int(np.count_nonzero(b))
    else:
        part.zeros += k - int(np.count_nonzero(b))
        sa = float(np.abs(b, out=b).sum())
    _add_values(part, s, sa, sq, mn, mx)


def _rescaled_norm(t: NativeTensor, peak: float) -> float:
    """peak * ||t / peak|| over the finite elements (float64 values past 1e154 or below
    1e-154: rare), in numpy."""
    np = numpy_or_signal("the norm of values whose squares leave the float64 range")
    decode = _decoder(np, t.dtype.name)
    pieces = _array_blocks(np, (t,), kernels.CHUNK_ELEMENTS)
    buf = np.empty(max((p.size for (p,) in pieces), default=1) or 1, dtype=np.float64)
    parts = []
    with np.errstate(all="ignore"):
        for (piece,) in pieces:
            b = _widen(np, buf, piece, decode)
            b = b[np.isfinite(b)] / peak
            parts.append(_sumsq(np, b))
    return peak * math.sqrt(fsum(parts))


# ---------------------------------------------------------------- a pair

def _check_pair(a: Any, b: Any) -> None:
    if not (isinstance(a, NativeTensor) and isinstance(b, NativeTensor)):
        raise TypeError("a natively read tensor is compared with another one only (diff "
                        "reads both files with one reader)")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")


def compare(a: NativeTensor, b: NativeTensor, *, atol: float = 0.0, rtol: float = 0.0,
            nan_equal: bool = True, progress: ByteProgress | None = None) -> PairStats:
    """``pair_kernel.compare`` of two native tensors (the caller made the read check)."""
    _check_pair(a, b)
    if a.is_complex() or b.is_complex():
        raise TypeError("compare() takes real tensors; compare complex ones as complex128")
    numel = a.numel()
    ea, eb = a.element_size(), b.element_size()
    limit = kernels.CHUNK_ELEMENTS
    ck = active_c_kernel()
    ka, kb = _c_kind(a, ck), _c_kind(b, ck)
    if ka is not None and kb is not None:
        base_a, base_b = _address(a), _address(b)
        pieces: list = [(base_a + i * ea, base_b + i * eb, k) for i, k in _spans(numel, limit)]

        def run(ps: list) -> _PairPart:
            return _c_pair_run(ck, ps, (ka, kb), atol, rtol, nan_equal, progress, ea + eb)
    else:
        np = numpy_or_signal("the comparison")
        pieces = _array_blocks(np, (a, b), limit)
        decoders = (_decoder(np, a.dtype.name), _decoder(np, b.dtype.name))

        def run(ps: list) -> _PairPart:
            return _np_pair_run(np, ps, decoders, atol, rtol, nan_equal, progress, ea + eb)
    parts = in_runs(run, pieces, worker_count())
    return combine_pair_parts(parts, a, b)


def _c_pair_run(ck: ModuleType, pieces: list, kinds: tuple[int, int], atol: float,
                rtol: float, nan_equal: bool, progress: ByteProgress | None,
                esize: int) -> _PairPart:
    part = _PairPart()
    for address_a, address_b, k in pieces:
        res = ck.pair_block(address_a, address_b, k, kinds[0], kinds[1], atol, rtol, nan_equal)
        if add_c_block(part, res, k):  # the C kernel counted the non-finite pairs
            for key, v in zip(NONFINITE_KINDS, res[9], strict=True):
                part.nonfinite[key] += v
        if progress is not None:
            progress(k * esize)
    return part


def _np_pair_run(np: ModuleType, pieces: list, decoders: tuple, atol: float, rtol: float,
                 nan_equal: bool, progress: ByteProgress | None, esize: int) -> _PairPart:
    part = _PairPart()
    size = max((pa.size for pa, _ in pieces), default=1) or 1
    bufs = tuple(np.empty(size, dtype=np.float64) for _ in range(3))
    with np.errstate(all="ignore"):  # inf - inf, x / 0: handled as the torch code does
        for pa, pb in pieces:
            xa = _widen(np, bufs[0], pa, decoders[0])
            xb = _widen(np, bufs[1], pb, decoders[1])
            _np_pair(np, part, xa, xb, bufs[2], atol, rtol, nan_equal)
            if progress is not None:
                progress(pa.size * esize)
    return part


def _np_pair(np: ModuleType, part: _PairPart, xa: Any, xb: Any, bufd: Any, atol: float,
             rtol: float, nan_equal: bool) -> None:
    """One widened block pair: ``pair_kernel._torch_pair`` in numpy, operation for
    operation (``torch.isclose``'s rule written out where a value is not finite)."""
    k = xa.size
    d = bufd[:k]
    qa, qb = _sumsq(np, xa), _sumsq(np, xb)
    if math.isfinite(qa) and math.isfinite(qb):
        part.wide_a = part.wide_a or (qa < TINY and bool(xa.any()))
        part.wide_b = part.wide_b or (qb < TINY and bool(xb.any()))
        part.fin_a += k
        part.fin_b += k
        np.abs(np.subtract(xa, xb, out=d), out=d)
        m = float(d.max())
        part.max_abs = m if part.max_abs is None else max(part.max_abs, m)
        if m == 0.0:
            if qb > 0.0 or bool(xb.any()):
                part.max_rel = 0.0 if part.max_rel is None else part.max_rel
        else:
            np.abs(xb, out=xb)
            if atol == 0.0 and rtol == 0.0:
                part.n_out += int(np.count_nonzero(d))
            else:
                allowed = np.multiply(xb, rtol, out=xa)  # xa is free now
                allowed += atol
                outside = d > allowed
                n_out = int(np.count_nonzero(outside))
                if math.isinf(m):  # isclose: an infinite |a - b| is never close
                    n_out += int(np.count_nonzero(np.isinf(d) & ~outside))
                part.n_out += n_out
            nonzero_b = int(np.count_nonzero(xb))
            if nonzero_b:
                r = np.divide(d, xb, out=d)
                if nonzero_b != k:  # x/0 is inf or NaN: not a relative difference
                    r[xb == 0] = 0.0
                r = float(r.max())
                part.max_rel = r if part.max_rel is None else max(part.max_rel, r)
    else:
        # torch.isclose: a == b, or NaN == NaN (nan_equal), or (with a tolerance) a finite
        # |a - b| <= atol + |rtol * b|
        close = xa == xb
        if nan_equal:
            close |= np.isnan(xa) & np.isnan(xb)
        diff = np.abs(xa - xb)
        if atol != 0.0 or rtol != 0.0:
            close |= np.isfinite(diff) & (diff <= atol + np.abs(rtol * xb))
        part.n_out += k - int(np.count_nonzero(close))
        fa, fb = np.isfinite(xa), np.isfinite(xb)
        both = fa & fb
        dd = diff[both]
        if dd.size:
            m = float(dd.max())
            part.max_abs = m if part.max_abs is None else max(part.max_abs, m)
            yb = np.abs(xb)[both]
            nz = yb != 0
            if bool(nz.any()):
                r = float((dd[nz] / yb[nz]).max())
                part.max_rel = r if part.max_rel is None else max(part.max_rel, r)
        va, vb = xa[fa], xb[fb]
        qa, qb = _sumsq(np, va), _sumsq(np, vb)
        part.wide_a = part.wide_a or math.isinf(qa) or (qa < TINY and bool(va.any()))
        part.wide_b = part.wide_b or math.isinf(qb) or (qb < TINY and bool(vb.any()))
        part.fin_a += va.size
        part.fin_b += vb.size
        if va.size != k or vb.size != k:
            for key, v in _np_nonfinite(np, xa, xb).items():
                part.nonfinite[key] += v
    part.sqa.append(qa)
    part.sqb.append(qb)


def _np_nonfinite(np: ModuleType, x: Any, y: Any) -> dict[str, int]:
    """``pair_kernel.nonfinite_counts``'s definition on numpy values (complex too)."""
    na, nb = np.isnan(x), np.isnan(y)
    fa, fb = np.isfinite(x), np.isfinite(y)
    return {"nan_a_only": int(np.count_nonzero(na & ~nb)),
            "nan_b_only": int(np.count_nonzero(nb & ~na)),
            "inf_a_only": int(np.count_nonzero(~fa & ~na & fb)),
            "inf_b_only": int(np.count_nonzero(~fb & ~nb & fa)),
            "nan_both": int(np.count_nonzero(na & nb))}


def nonfinite_counts(a: NativeTensor, b: NativeTensor) -> dict[str, int]:
    """``pair_kernel.nonfinite_counts`` of two native tensors (any dtypes, complex too),
    block by block: the C kernel's counts where it takes the pair, else numpy."""
    _check_pair(a, b)
    ck = active_c_kernel()
    ka, kb = _c_kind(a, ck), _c_kind(b, ck)
    if ka is not None and kb is not None:
        counts = dict.fromkeys(NONFINITE_KINDS, 0)
        ea, eb = a.element_size(), b.element_size()
        base_a, base_b = _address(a), _address(b)
        for i, k in _spans(a.numel(), kernels.CHUNK_ELEMENTS):
            res = ck.pair_block(base_a + i * ea, base_b + i * eb, k, ka, kb, 0.0, 0.0, True)
            for key, v in zip(NONFINITE_KINDS, res[9], strict=True):
                counts[key] += v
        return counts
    np = numpy_or_signal("counting non-finite values")
    counts = dict.fromkeys(NONFINITE_KINDS, 0)
    if a.is_complex() or b.is_complex():  # NaN or Inf in either part
        for pa, pb in _array_blocks(np, (a, b), kernels.CHUNK_ELEMENTS):
            for key, v in _np_nonfinite(np, pa, pb).items():
                counts[key] += v
        return counts
    decoders = (_decoder(np, a.dtype.name), _decoder(np, b.dtype.name))
    pieces = _array_blocks(np, (a, b), kernels.CHUNK_ELEMENTS)
    size = max((pa.size for pa, _ in pieces), default=1) or 1
    bufa, bufb = np.empty(size, dtype=np.float64), np.empty(size, dtype=np.float64)
    with np.errstate(all="ignore"):
        for pa, pb in pieces:
            xa, xb = _widen(np, bufa, pa, decoders[0]), _widen(np, bufb, pb, decoders[1])
            for key, v in _np_nonfinite(np, xa, xb).items():
                counts[key] += v
    return counts


# ---------------------------------------------------------------- views

def gathered(base: NativeTensor, covered: Any) -> NativeTensor:
    """The elements of the flat ``base`` where the numpy bool mask ``covered`` is set,
    copied (raw codes: exact for every dtype) into a new 1-d tensor (``views.py``)."""
    codes = base.array()[covered]
    return NativeTensor(NativeStorage(codes.tobytes(), key=base.storage.key), base.dtype,
                        (codes.shape[0],))
