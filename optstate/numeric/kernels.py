"""Fused, chunked reductions: every statistic of a tensor in one pass, and the norm of many.

A plain torch script makes one full pass per statistic and materialises full-size
temporaries (``isnan(t)`` alone is a bool tensor the size of ``t``; ``t.double()`` is
twice its size). Here a tensor is walked once, in blocks of ``CHUNK_ELEMENTS`` elements
that fit in the CPU's L2 cache: each block is widened into a reused float64 buffer and
all reductions run on that warm buffer. Peak extra memory is a few buffers of
``CHUNK_ELEMENTS`` float64 values per worker, whatever the tensor size, so a
memory-mapped checkpoint is summarised without ever being held in anonymous memory.
Big tensors are split into contiguous runs of blocks, one per worker thread (up to
``torch.get_num_threads()``), each running torch on one thread (see ``one_thread``);
block results combine order-independently, so the numbers do not depend on it.
The same blocks, runs and buffers serve the pair comparison (``pair_kernel.py``).

Exactness (what the tests check against plain torch on the whole tensor):

- min, max, counts (NaN, Inf, zeros, elements outside tolerance), max |a - b|: exact.
  Widening to float64 is exact for every floating dtype, bool, and integers below
  2**53, and min/max/abs/subtraction-then-max commute with it.
- sums (``sum``, ``sumsq``, ``sumabs``) are float64, as ``t.double().sum()`` etc.: each
  block is reduced in float64 and the block results are added exactly (``math.fsum``).
  Only the order of the additions differs from a whole-tensor reduction (and torch's
  own order differs between CPUs), so results agree with torch's float64 reduction of
  n elements to a relative ``tolerance.sum_rtol(n)`` (for ``sumsq``/``sumabs``, whose
  terms are non-negative), and to ``sum_rtol(n) * sumabs`` for the signed ``sum``.
- float64 tensors whose sum of squares overflows or underflows float64 (|x| > ~1e154,
  or all |x| < ~1e-154) get their norm from a second, rescaled pass: the true norm,
  where torch's own ``vector_norm`` may return inf.

Each block runs through the optional C kernel when ``kernel_switch.active_c_kernel()``
gives it (the same numbers from one pass over the source memory, no float64 buffer),
else through the torch code here; the tests run every case on every path.

The native reader's tensors (``io/native_tensor.NativeTensor``: no torch) take the same
blocks, runs and combination (``_native_moments``), each block through the C kernel at its
mapped address, else numpy (``native_kernels.py``). This module imports torch only inside
the functions that run torch code.

About 480 lines on purpose: the blocks, runs, threads and exact combination here are the
one machinery that the pair comparison and both kinds of tensor reuse; split, the
exactness argument above would be spread over files.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from optstate.io import readguard
from optstate.io.native_tensor import NativeTensor, as_torch
from optstate.numeric import native_kernels as nk
from optstate.numeric.kernel_switch import active_c_kernel, torch_c_kind

if TYPE_CHECKING:
    import torch

# 256 Ki elements: a 2 MiB float64 buffer, inside a 4 MiB L2 cache with room for the
# source block; measured fastest on this project's reference machine (128 Ki-256 Ki).
CHUNK_ELEMENTS = 1 << 18

# The smallest normal float64: a sum of squares below it lost digits (or all of them) to
# underflow, and the norm is taken again from values rescaled by the largest |x|.
TINY = 2.2250738585072014e-308

# (How closely the float64 sums agree with torch's: numeric/tolerance.py, stated there once.)

ByteProgress = Callable[[int], None]  # called with the number of source bytes just processed

@dataclass
class Moments:
    """One-pass statistics of a real (or bool/integer) tensor, NaN/Inf excluded from the
    value statistics."""

    numel: int
    finite: int
    nan: int
    inf: int
    zeros: int
    sum: float  # float64 sum of the finite elements
    sumabs: float  # float64 sum of |x| over the finite elements
    sumsq: float  # float64 sum of x*x over the finite elements (may be inf: see norm)
    min: float | None  # over the finite elements
    max: float | None
    norm: float | None  # sqrt(sumsq), rescaled when sumsq over/underflows


def fsum(parts: list[float]) -> float:
    """Exact sum of float64 partial sums; inf or NaN where the float64 range ends."""
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):  # the exact sum leaves the float64 range
        return sum(parts)


def index_blocks(shape: tuple[int, ...], limit: int) -> Iterator[tuple]:
    """Index tuples selecting consecutive blocks of at most ``limit`` elements (a single
    row of the last dimension may be split). They depend on the shape only, so two
    tensors of one shape but different strides are walked in lockstep."""
    if len(shape) == 0:
        yield ()
        return
    n0 = shape[0]
    inner = math.prod(shape[1:])
    if inner == 0 or n0 == 0:
        return
    if inner <= limit:
        rows = max(1, limit // inner)
        for i in range(0, n0, rows):
            yield (slice(i, min(i + rows, n0)),)
    else:
        for i in range(n0):
            for sub in index_blocks(shape[1:], limit):
                yield (i, *sub)


def blocks(*tensors: torch.Tensor, limit: int | None = None) -> Iterator[tuple]:
    """Corresponding blocks of same-shape tensors: flat slices when all are contiguous
    (the usual case for optimizer state), shape-based blocks otherwise."""
    limit = limit or CHUNK_ELEMENTS
    if all(t.is_contiguous() for t in tensors):  # (flat views: torch tensors only)
        flats = [t.reshape(-1) for t in tensors]
        n = flats[0].numel()
        for i in range(0, n, limit):
            yield tuple(f[i:i + limit] for f in flats)
        return
    for idx in index_blocks(tuple(tensors[0].shape), limit):
        yield tuple(t[idx] for t in tensors)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread. Each block operation is too short (tens of
    microseconds) to repay an OpenMP fork/join; when the cores are shared with other
    processes each join waits for a scheduler slice, and the same pass measured 4-7x
    slower on two threads than on one."""
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def widen(buf: torch.Tensor, piece: torch.Tensor) -> torch.Tensor:
    """Copy ``piece`` into the front of the float64 ``buf``; return that flat view."""
    k = piece.numel()  # (buf and piece: torch tensors)
    out = buf[:k]
    (out if piece.dim() == 1 else out.view(piece.shape)).copy_(piece)
    return out


def _buffer(t: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.empty(min(max(t.numel(), 1), CHUNK_ELEMENTS), dtype=torch.float64)


def moments(t: torch.Tensor, *, progress: ByteProgress | None = None) -> Moments:
    """All value statistics of a real, bool or integer tensor in one chunked pass (a
    torch tensor, or a ``NativeTensor``: ``native_kernels.moments``)."""
    readguard.check()  # its file may have been truncated since it was mapped
    if isinstance(t, NativeTensor):
        try:
            return _native_moments(t, progress)
        except nk.NativeNumericsUnavailable as e:  # no numpy: torch's numbers, said
            nk.note_torch_fallback(e)
            t = as_torch(t)
    import torch

    workers = torch.get_num_threads()
    with one_thread():
        return _moments(t, progress, workers)


@dataclass
class _Part:
    """Results of one run of blocks; parts combine in any order to the same numbers."""

    sums: list[float] = field(default_factory=list)
    sumabs: list[float] = field(default_factory=list)
    sumsq: list[float] = field(default_factory=list)
    lo: float | None = None
    hi: float | None = None
    nan: int = 0
    inf: int = 0
    zeros: int = 0


_pool = None  # worker threads, made once per process (a pool per tensor cost ~2 ms)
_pool_size = 0


def _workers(n: int):
    global _pool, _pool_size
    if _pool is None or _pool_size < n:
        from concurrent.futures import ThreadPoolExecutor

        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="optstate-kernel"), n
    return _pool


def in_runs(run: Callable[[list[tuple]], object], pieces: list[tuple],
            workers: int) -> list:
    """``run`` over contiguous runs of blocks, on up to ``workers`` threads (each on one
    torch thread: no per-operation fork/join, and a free second core is used); the
    first run on the calling thread. Results come back in block order."""
    runs = max(1, min(workers, len(pieces) // 4))
    if runs == 1:
        return [run(pieces)]
    step = -(-len(pieces) // runs)
    pool = _workers(runs - 1)
    rest = [pool.submit(run, pieces[i:i + step]) for i in range(step, len(pieces), step)]
    return [run(pieces[:step]), *(f.result() for f in rest)]


def _moments(t: torch.Tensor, progress: ByteProgress | None, workers: int = 1) -> Moments:
    if t.is_complex():
        raise TypeError("moments() takes real tensors; summarise complex ones through abs()")
    t = t.detach()
    numel = t.numel()
    esize = t.element_size()
    parts = in_runs(lambda pieces: _moments_run(pieces, progress, esize),
                     list(blocks(t)), workers)
    return combine_parts(parts, numel, lambda peak: _rescaled_norm(t, peak, _buffer(t)))


def combine_parts(parts: list[_Part], numel: int,
                  rescaled_norm: Callable[[float], float]) -> Moments:
    """The moments of a tensor from its runs' parts; ``rescaled_norm(peak)`` is called
    (rarely) for the norm when the sum of squares left the float64 range."""
    nan = sum(p.nan for p in parts)
    inf = sum(p.inf for p in parts)
    zeros = sum(p.zeros for p in parts)
    finite = numel - nan - inf
    if finite == 0:
        return Moments(numel, 0, nan, inf, zeros, 0.0, 0.0, 0.0, None, None, None)
    lo = min(p.lo for p in parts if p.lo is not None)
    hi = max(p.hi for p in parts if p.hi is not None)
    ss = fsum([q for p in parts for q in p.sumsq])
    norm = math.sqrt(ss)
    peak = max(abs(lo), abs(hi))
    if math.isinf(ss) or (ss < TINY and peak > 0.0):
        norm = rescaled_norm(peak)
    return Moments(numel, finite, nan, inf, zeros, fsum([q for p in parts for q in p.sums]),
                   fsum([q for p in parts for q in p.sumabs]), ss, lo, hi, norm)


def merge_moments(parts: list[Moments]) -> Moments:
    """The moments of a tensor from those of its disjoint pieces (other ranks' chunks),
    merged as ``moments`` merges its blocks: counts, min and max exactly, the float64 sums
    by ``fsum`` of the pieces' sums (so they differ from one pass over the whole only by
    where the block boundaries fall: ``tolerance.sum_rtol(n)``); the norm from the sum of
    squares, or, where that over/underflows float64, rescaled by the largest |x| from the
    pieces' own (rescaled) norms."""
    numel = sum(p.numel for p in parts)
    nan = sum(p.nan for p in parts)
    inf = sum(p.inf for p in parts)
    zeros = sum(p.zeros for p in parts)
    finite = sum(p.finite for p in parts)
    valued = [p for p in parts if p.finite > 0]
    if not valued:
        return Moments(numel, 0, nan, inf, zeros, 0.0, 0.0, 0.0, None, None, None)
    lo = min(p.min for p in valued)  # type: ignore[type-var]
    hi = max(p.max for p in valued)  # type: ignore[type-var]
    ss = fsum([p.sumsq for p in valued])
    norm = math.sqrt(ss)
    peak = max(abs(lo), abs(hi))
    if math.isinf(ss) or (ss < TINY and peak > 0.0):
        norm = peak * math.sqrt(fsum([(p.norm / peak) ** 2 for p in valued
                                      if p.norm is not None]))
    return Moments(numel, finite, nan, inf, zeros, fsum([p.sum for p in valued]),
                   fsum([p.sumabs for p in valued]), ss, lo, hi, norm)


def _moments_run(pieces: list[tuple], progress: ByteProgress | None, esize: int) -> _Part:
    part = _Part()
    ck = active_c_kernel()
    kind = torch_c_kind(pieces[0][0].dtype) if ck is not None and pieces else None
    buf = None
    for (piece,) in pieces:
        if kind is not None and piece.is_contiguous():
            _c_moments(ck, part, piece, kind)
        else:
            if buf is None:
                import torch

                size = max((p.numel() for (p,) in pieces), default=1) or 1
                buf = torch.empty(size, dtype=torch.float64)
            _torch_moments(part, piece, buf)
        if progress is not None:
            progress(piece.numel() * esize)
    return part


def _add_values(part: _Part, s: float, sa: float, sq: float, mn: float, mx: float) -> None:
    """One block's value statistics (it had a finite element) into its run's part."""
    part.sums.append(s)
    part.sumabs.append(sa)
    part.sumsq.append(sq)
    part.lo = mn if part.lo is None else min(part.lo, mn)
    part.hi = mx if part.hi is None else max(part.hi, mx)


def _c_moments(ck: ModuleType, part: _Part, piece: torch.Tensor, kind: int) -> None:
    """One block through the C kernel ``ck``: the same numbers as ``_torch_moments``."""
    _add_block(part, ck.moments_block(piece.data_ptr(), piece.numel(), kind))


def _add_block(part: _Part, res: tuple) -> None:
    """One block's ``moments_block`` result (the C kernel's, or numpy's for a native
    tensor: ``native_kernels.moments_block``) into its run's part."""
    nan, inf, zeros, s, sa, sq, mn, mx = res
    part.nan += nan
    part.inf += inf
    part.zeros += zeros
    if mn is not None:
        _add_values(part, s, sa, sq, mn, mx)


def _native_moments(t: NativeTensor, progress: ByteProgress | None) -> Moments:
    """``moments`` of a native reader's tensor: the same blocks, runs and combination, each
    block through the C kernel at its mapped address (contiguous tensors) or numpy
    (``native_kernels``); ``NativeNumericsUnavailable`` where neither can."""
    if t.is_complex():
        raise TypeError("moments() takes real tensors; summarise complex ones through abs()")
    esize = t.element_size()
    ck = active_c_kernel()
    kind = nk.c_kind(t, ck)
    if kind is not None:
        pieces = nk.c_spans((t,), CHUNK_ELEMENTS)

        def run(ps: list) -> _Part:
            part = _Part()
            for address, k in ps:
                _add_block(part, ck.moments_block(address, k, kind))
                if progress is not None:
                    progress(k * esize)
            return part
    else:
        np = nk.numpy_or_signal("the statistics")
        pieces = nk.array_blocks((t,), CHUNK_ELEMENTS, index_blocks)
        decode = nk.decoder(np, t.dtype.name)

        def run(ps: list) -> _Part:
            part = _Part()
            (buf,) = nk.float64_buffers(np, ps, 1)
            with np.errstate(all="ignore"):  # NaN codes, overflowing sums: counted
                for (piece,) in ps:
                    _add_block(part, nk.moments_block(np, nk.widen(buf, piece, decode)))
                    if progress is not None:
                        progress(piece.size * esize)
            return part
    parts = in_runs(run, pieces, nk.worker_count())
    return combine_parts(parts, t.numel(), lambda peak: peak * math.sqrt(
        fsum(nk.rescaled_sumsq(t, peak, CHUNK_ELEMENTS, index_blocks))))


def _torch_moments(part: _Part, piece: torch.Tensor, buf: torch.Tensor) -> None:
    """One block in torch: widened into the reused float64 ``buf``, reduced there."""
    import torch

    b = widen(buf, piece)
    k = b.numel()
    s = float(b.sum())
    if not math.isfinite(s):
        # Rare: NaN/Inf in this block (or a float64 sum that overflows). Count them,
        # then reduce over the finite elements only.
        mask = torch.isfinite(b)
        n_fin = int(mask.sum())
        # NaN and Inf are non-zero, so count_nonzero over the block counts them.
        part.zeros += k - int(torch.count_nonzero(b))
        if n_fin != k:
            n_nan = int(torch.isnan(b).sum())
            part.nan += n_nan
            part.inf += k - n_fin - n_nan
            b = b[mask]
            if n_fin == 0:
                return
            s = float(b.sum())
        mn, mx = (float(v) for v in torch.aminmax(b))
        _add_values(part, s, float(b.abs().sum()), float(torch.dot(b, b)), mn, mx)
        return
    sq = float(torch.dot(b, b))
    mn, mx = (float(v) for v in torch.aminmax(b))
    if mn >= 0.0:  # all the same sign: sum |x| is the sum itself, exactly
        sa = s
        if mn == 0.0:
            part.zeros += k - int(torch.count_nonzero(b))
    elif mx <= 0.0:
        sa = -s
        if mx == 0.0:
            part.zeros += k - int(torch.count_nonzero(b))
    else:
        part.zeros += k - int(torch.count_nonzero(b))
        sa = float(b.abs_().sum())
    _add_values(part, s, sa, sq, mn, mx)


def finite_norm(t: torch.Tensor) -> float | None:
    """The norm of ``t``'s finite elements (None: none), rescaled where their squares leave
    the float64 range: the rare second pass of ``pair_kernel.compare``, which has made
    the read check already."""
    if isinstance(t, NativeTensor):
        try:
            return _native_moments(t, None).norm
        except nk.NativeNumericsUnavailable as e:
            nk.note_torch_fallback(e)
            t = as_torch(t)
    return _moments(t, None).norm


def _rescaled_norm(t: torch.Tensor, peak: float, buf: torch.Tensor) -> float:
    """peak * ||t / peak||: the norm of values whose squares leave the float64 range."""
    import torch

    parts: list[float] = []
    for (piece,) in blocks(t):
        b = widen(buf, piece)
        b = b[torch.isfinite(b)].div_(peak)
        parts.append(float(torch.dot(b, b)))
    return peak * math.sqrt(fsum(parts))


def norm_of(tensors: list[torch.Tensor]) -> float:
    """sqrt(sum of x*x) over all elements of ``tensors``, in float64, chunked: what
    ``sqrt(sum(t.double().pow(2).sum()))`` computes, without the two float64 temporaries
    of each tensor's size. NaN or Inf anywhere makes it NaN or Inf, as there."""
    return norm_fn(tensors)()


def norm_fn(tensors: list[torch.Tensor]) -> Callable[[], float]:
    """``norm_of(tensors)`` as a function to call again after in-place updates (simulate
    records it every step): the flat views and block slices are made once. Blocks of
    big tensors run on up to ``torch.get_num_threads()`` worker threads (each block's
    float64 dot is the same on any thread and the parts are summed exactly, so the
    value does not depend on the thread count)."""
    import torch

    small: list[tuple[torch.Tensor, bool]] = []
    pieces: list[tuple] = []
    for t in tensors:
        t = t.detach()
        if t.numel() > CHUNK_ELEMENTS:
            pieces += list(blocks(t))  # views (slices): they see later in-place updates
        elif t.is_contiguous():  # one block: no buffer, no thread switch
            small.append((t.reshape(-1), False))  # a view, as above
        else:
            small.append((t, True))
    workers = torch.get_num_threads()

    def norm() -> float:
        parts: list[float] = []  # (torch is imported: the tensors exist)
        for x, flatten in small:
            x = (x.reshape(-1) if flatten else x).double()
            parts.append(float(torch.dot(x, x)))
        if pieces:
            with one_thread():
                for run_parts in in_runs(_sumsq_run, pieces, workers):
                    parts += run_parts
        return math.sqrt(fsum(parts))

    return norm


def _sumsq_run(pieces: list[tuple]) -> list[float]:
    import torch

    size = max(p.numel() for (p,) in pieces)
    buf = torch.empty(size, dtype=torch.float64)
    out = []
    for (piece,) in pieces:
        b = widen(buf, piece)
        out.append(float(torch.dot(b, b)))
    return out
