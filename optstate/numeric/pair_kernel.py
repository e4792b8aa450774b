"""One chunked pass over a tensor pair: how far apart two same-shape tensors are.

``compare`` gives what ``torch.isclose`` and a few reductions would (elements outside
``atol + rtol * |b|``, max |a - b|, max relative difference, both norms) without their
full-size temporaries: the pair is walked in lockstep through ``kernels.py``'s blocks,
runs and float64 buffers (its docstring states the exactness), each block through the
optional C kernel when ``kernel_switch.active_c_kernel()`` gives it, else through torch.
Counts and maxima are exact; the norms agree with torch's float64 ones to
``tolerance.sum_rtol(n)``. Pairs where only one side is not finite are counted by kind
(``nan_a_only`` ...: ``PairStats``), so a reader learns why they are outside while the
maxima, over finite pairs, say nothing of them.

Two ``NativeTensor``s (the native reader's, no torch) are compared over the same blocks
(``_native_compare``): the C kernel at their mapped addresses, else numpy
(``native_kernels.py``); a native tensor is never compared with a torch tensor (diff
reads both files with one reader). torch is imported only inside the functions that run
torch code.

Example: ``compare(a, b, rtol=1e-5).n_outside``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from optstate.io import readguard
from optstate.io.native_tensor import NativeTensor, as_torch
from optstate.numeric import kernels
from optstate.numeric import native_kernels as nk
from optstate.numeric.kernel_switch import active_c_kernel, torch_c_kind
from optstate.numeric.kernels import (
    TINY,
    ByteProgress,
    blocks,
    finite_norm,
    fsum,
    in_runs,
    index_blocks,
    one_thread,
    widen,
)

if TYPE_CHECKING:
    import torch


@dataclass
class PairStats:
    """One-pass comparison of two same-shape tensors (numpy/torch ``isclose`` rule)."""

    numel: int
    n_outside: int
    max_abs: float | None  # over pairs where both are finite
    max_rel: float | None  # over finite pairs with b != 0
    norm_a: float | None  # over the finite elements of each side
    norm_b: float | None
    # Pairs with a non-finite value, by kind (disjoint; exact counts): NaN on one side and
    # not the other; ±Inf on one side against a finite value; NaN on both sides.
    nan_a_only: int = 0
    nan_b_only: int = 0
    inf_a_only: int = 0
    inf_b_only: int = 0
    nan_both: int = 0


NONFINITE_KINDS = ("nan_a_only", "nan_b_only", "inf_a_only", "inf_b_only", "nan_both")


def nonfinite_counts(a: torch.Tensor, b: torch.Tensor) -> dict[str, int]:
    """The pairs of the same-shape ``a`` and ``b`` (any dtypes, complex too: NaN or Inf in
    either part) with a non-finite value, by kind (``NONFINITE_KINDS``): one definition
    for every path (the C kernel's blocks, the torch blocks, complex tensors; two
    ``NativeTensor``s: ``native_kernels.nonfinite_counts``)."""
    if isinstance(a, NativeTensor) or isinstance(b, NativeTensor):
        try:
            return _native_nonfinite_counts(a, b)
        except nk.NativeNumericsUnavailable as e:  # no numpy: torch's numbers, said
            nk.note_torch_fallback(e)
            a, b = as_torch(a), as_torch(b)
    import torch

    na, nb = torch.isnan(a), torch.isnan(b)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    return {"nan_a_only": int((na & ~nb).sum()), "nan_b_only": int((nb & ~na).sum()),
            "inf_a_only": int((~fa & ~na & fb).sum()), "inf_b_only": int((~fb & ~nb & fa).sum()),
            "nan_both": int((na & nb).sum())}


def compare(a: torch.Tensor, b: torch.Tensor, *, atol: float = 0.0, rtol: float = 0.0,
            nan_equal: bool = True, progress: ByteProgress | None = None) -> PairStats:
    """max |a - b|, elements outside ``atol + rtol * |b|``, max relative difference and
    both norms, in one chunked pass over the pair (float64 throughout). Both torch
    tensors, or both ``NativeTensor``s (``native_kernels.compare``)."""
    readguard.check()  # their files may have been truncated since they were mapped
    if isinstance(a, NativeTensor) or isinstance(b, NativeTensor):
        try:
            return _native_compare(a, b, atol, rtol, nan_equal, progress)
        except nk.NativeNumericsUnavailable as e:  # no numpy: torch's numbers, said
            nk.note_torch_fallback(e)
            a, b = as_torch(a), as_torch(b)
    import torch

    workers = torch.get_num_threads()
    with one_thread():
        return _compare(a, b, atol, rtol, nan_equal, progress, workers)


@dataclass
class _PairPart:
    """Results of one run of blocks; parts combine in any order to the same numbers."""

    n_out: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    sqa: list[float] = field(default_factory=list)
    sqb: list[float] = field(default_factory=list)
    fin_a: int = 0
    fin_b: int = 0
    wide_a: bool = False  # a finite value whose square leaves the float64 range
    wide_b: bool = False
    nonfinite: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NONFINITE_KINDS, 0))

    def count_nonfinite(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add one block's non-finite pairs (called only for blocks that have one)."""
        for k, v in nonfinite_counts(a, b).items():
            self.nonfinite[k] += v


def _compare(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, nan_equal: bool,
             progress: ByteProgress | None, workers: int) -> PairStats:
    a, b = a.detach(), b.detach()
    pairs = list(blocks(a, b))
    esize = a.element_size() + b.element_size()
    parts = in_runs(lambda run: _compare_run(run, atol, rtol, nan_equal, progress, esize),
                     pairs, workers)
    return combine_pair_parts(parts, a, b)


def combine_pair_parts(parts: list[_PairPart], a: Any, b: Any) -> PairStats:
    """The comparison of ``a`` and ``b`` from its runs' parts (the norms rescaled by a
    second pass over ``a`` or ``b`` where their squares left the float64 range)."""
    maxes_abs = [p.max_abs for p in parts if p.max_abs is not None]
    maxes_rel = [p.max_rel for p in parts if p.max_rel is not None]
    norm_a = _norm_from(a, [q for p in parts for q in p.sqa], sum(p.fin_a for p in parts),
                        any(p.wide_a for p in parts))
    norm_b = _norm_from(b, [q for p in parts for q in p.sqb], sum(p.fin_b for p in parts),
                        any(p.wide_b for p in parts))
    return PairStats(a.numel(), sum(p.n_out for p in parts),
                     max(maxes_abs) if maxes_abs else None,
                     max(maxes_rel) if maxes_rel else None, norm_a, norm_b,
                     **{k: sum(p.nonfinite[k] for p in parts) for k in NONFINITE_KINDS})


def _compare_run(pairs: list[tuple], atol: float, rtol: float, nan_equal: bool,
                 progress: ByteProgress | None, esize: int) -> _PairPart:
    part = _PairPart()
    kinds = None
    ck = active_c_kernel()
    if ck is not None and pairs:
        pa, pb = pairs[0]
        kinds = (torch_c_kind(pa.dtype), torch_c_kind(pb.dtype))
        if None in kinds:
            kinds = None
    bufs = None
    for pa, pb in pairs:
        k = pa.numel()
        if kinds is not None and pa.is_contiguous() and pb.is_contiguous():
            _c_pair(ck, part, pa, pb, kinds, atol, rtol, nan_equal)
        else:
            if bufs is None:
                import torch

                size = max((x.numel() for x, _ in pairs), default=1) or 1
                bufs = (*(torch.empty(size, dtype=torch.float64) for _ in range(3)),
                        torch.empty(size, dtype=torch.bool))
            _torch_pair(part, pa, pb, bufs, atol, rtol, nan_equal)
        if progress is not None:
            progress(k * esize)
    return part


def _c_pair(ck: ModuleType, part: _PairPart, pa: torch.Tensor, pb: torch.Tensor,
            kinds: tuple[int, int], atol: float, rtol: float, nan_equal: bool) -> None:
    """One block through the C kernel ``ck``: the same numbers as ``_torch_pair``."""
    res = ck.pair_block(
        pa.data_ptr(), pb.data_ptr(), pa.numel(), kinds[0], kinds[1], atol, rtol, nan_equal)
    if add_c_block(part, res, pa.numel()):  # rare: count the non-finite pairs in torch
        part.count_nonfinite(pa, pb)


def add_c_block(part: _PairPart, res: tuple, k: int) -> bool:
    """One block's ``pair_block`` result ``res`` (over ``k`` pairs) into its run's part;
    True when the block had a non-finite value (its pairs are then counted by kind:
    ``res[9]`` has them, in ``NONFINITE_KINDS`` order)."""
    n_out, m, r, qa, qb, fa, fb, nza, nzb, _ = res
    part.n_out += n_out
    if m is not None:
        part.max_abs = m if part.max_abs is None else max(part.max_abs, m)
    if r is not None:
        part.max_rel = r if part.max_rel is None else max(part.max_rel, r)
    part.wide_a = part.wide_a or math.isinf(qa) or (qa < TINY and bool(nza))
    part.wide_b = part.wide_b or math.isinf(qb) or (qb < TINY and bool(nzb))
    part.fin_a += fa
    part.fin_b += fb
    part.sqa.append(qa)
    part.sqb.append(qb)
    return fa != k or fb != k


def _torch_pair(part: _PairPart, pa: torch.Tensor, pb: torch.Tensor, bufs: tuple,
                atol: float, rtol: float, nan_equal: bool) -> None:
    """One block in torch: widened into reused float64 buffers, reduced there."""
    import torch

    bufa, bufb, bufd, flags = bufs
    xa, xb = widen(bufa, pa), widen(bufb, pb)
    k = xa.numel()
    d = bufd[:k]
    qa, qb = float(torch.dot(xa, xa)), float(torch.dot(xb, xb))
    # A finite sum of squares means every element is finite (NaN and Inf propagate).
    if math.isfinite(qa) and math.isfinite(qb):
        part.wide_a = part.wide_a or (qa < TINY and bool(xa.any()))
        part.wide_b = part.wide_b or (qb < TINY and bool(xb.any()))
        part.fin_a += k
        part.fin_b += k
        torch.sub(xa, xb, out=d).abs_()
        m = float(d.max())
        part.max_abs = m if part.max_abs is None else max(part.max_abs, m)
        if m == 0.0:
            if qb > 0.0 or bool(xb.any()):
                part.max_rel = 0.0 if part.max_rel is None else part.max_rel
        else:
            xb.abs_()
            if atol == 0.0 and rtol == 0.0:
                part.n_out += int(torch.count_nonzero(d))
            else:
                # torch.isclose's rule, same float64 operations: d > atol + rtol*|b|
                allowed = torch.mul(xb, rtol, out=xa).add_(atol)  # xa is free now
                n_out = int(torch.count_nonzero(torch.gt(d, allowed, out=flags[:k])))
                if math.isinf(m):  # isclose: an infinite |a - b| is never close
                    n_out += int(torch.count_nonzero(torch.isinf(d) & ~torch.gt(d, allowed)))
                part.n_out += n_out
            nonzero_b = int(torch.count_nonzero(xb))
            if nonzero_b:
                r = d.div_(xb)
                if nonzero_b != k:  # x/0 is inf or NaN: not a relative difference
                    r = r.masked_fill_(xb == 0, 0.0)
                r = float(r.max())
                part.max_rel = r if part.max_rel is None else max(part.max_rel, r)
    else:
        close = torch.isclose(xa, xb, rtol=rtol, atol=atol, equal_nan=nan_equal)
        part.n_out += k - int(close.sum())
        fa, fb = torch.isfinite(xa), torch.isfinite(xb)
        both = fa & fb
        dd = (xa - xb).abs()[both]
        if dd.numel():
            m = float(dd.max())
            part.max_abs = m if part.max_abs is None else max(part.max_abs, m)
            yb = xb.abs()[both]
            nz = yb != 0
            if bool(nz.any()):
                r = float((dd[nz] / yb[nz]).max())
                part.max_rel = r if part.max_rel is None else max(part.max_rel, r)
        va, vb = xa[fa], xb[fb]
        qa, qb = float(torch.dot(va, va)), float(torch.dot(vb, vb))
        part.wide_a = part.wide_a or math.isinf(qa) or (qa < TINY and bool(va.any()))
        part.wide_b = part.wide_b or math.isinf(qb) or (qb < TINY and bool(vb.any()))
        part.fin_a += va.numel()
        part.fin_b += vb.numel()
        if va.numel() != k or vb.numel() != k:  # (an overflowing sum of squares lands here too)
            part.count_nonfinite(xa, xb)
    part.sqa.append(qa)
    part.sqb.append(qb)


def _norm_from(t: torch.Tensor, parts: list[float], finite: int, wide: bool) -> float | None:
    """The finite-element norm from per-block sums of squares (None: no finite element)."""
    if finite == 0:
        return None
    ss = fsum(parts)
    norm = math.sqrt(ss)
    if wide and (math.isinf(ss) or ss < TINY):
        return finite_norm(t)  # rare: a rescaled second pass
    return norm


# ---------------------------------------------------------------- the native reader's tensors

def _native_pair(a: Any, b: Any) -> None:
    if not (isinstance(a, NativeTensor) and isinstance(b, NativeTensor)):
        raise TypeError("a natively read tensor is compared with another one only (diff "
                        "reads both files with one reader)")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")


def _add_native_block(part: _PairPart, res: tuple, k: int) -> None:
    """A ``pair_block`` result (the C kernel's or ``native_kernels.pair_block``'s, both
    with the non-finite pairs counted) into its run's part."""
    if add_c_block(part, res, k):
        for key, v in zip(NONFINITE_KINDS, res[9], strict=True):
            part.nonfinite[key] += v


def _native_compare(a: NativeTensor, b: NativeTensor, atol: float, rtol: float,
                    nan_equal: bool, progress: ByteProgress | None) -> PairStats:
    """``compare`` of two native reader's tensors: the same blocks, runs and combination,
    each block pair through the C kernel at their mapped addresses (both contiguous) or
    numpy (``native_kernels``); ``NativeNumericsUnavailable`` where neither can."""
    _native_pair(a, b)
    if a.is_complex() or b.is_complex():
        raise TypeError("compare() takes real tensors; compare complex ones as complex128")
    esize = a.element_size() + b.element_size()
    limit = kernels.CHUNK_ELEMENTS
    ck = active_c_kernel()
    ka, kb = nk.c_kind(a, ck), nk.c_kind(b, ck)
    if ka is not None and kb is not None:
        pieces = nk.c_spans((a, b), limit)

        def run(ps: list) -> _PairPart:
            part = _PairPart()
            for address_a, address_b, k in ps:
                _add_native_block(part, ck.pair_block(address_a, address_b, k, ka, kb, atol,
                                                      rtol, nan_equal), k)
                if progress is not None:
                    progress(k * esize)
            return part
    else:
        np = nk.numpy_or_signal("the comparison")
        pieces = nk.array_blocks((a, b), limit, index_blocks)
        da, db = nk.decoder(np, a.dtype.name), nk.decoder(np, b.dtype.name)

        def run(ps: list) -> _PairPart:
            part = _PairPart()
            bufa, bufb, bufd = nk.float64_buffers(np, ps, 3)
            with np.errstate(all="ignore"):  # inf - inf, x / 0: handled as torch's code
                for pa, pb in ps:
                    xa, xb = nk.widen(bufa, pa, da), nk.widen(bufb, pb, db)
                    _add_native_block(part, nk.pair_block(np, xa, xb, bufd, atol, rtol,
                                                          nan_equal), pa.size)
                    if progress is not None:
                        progress(pa.size * esize)
            return part
    return combine_pair_parts(in_runs(run, pieces, nk.worker_count()), a, b)


def _native_nonfinite_counts(a: NativeTensor, b: NativeTensor) -> dict[str, int]:
    """``nonfinite_counts`` of two native tensors (any dtypes, complex too), block by
    block: the C kernel's counts where it takes the pair, else numpy."""
    _native_pair(a, b)
    counts = dict.fromkeys(NONFINITE_KINDS, 0)

    def add(values: tuple) -> None:
        for key, v in zip(NONFINITE_KINDS, values, strict=True):
            counts[key] += v

    limit = kernels.CHUNK_ELEMENTS
    ck = active_c_kernel()
    ka, kb = nk.c_kind(a, ck), nk.c_kind(b, ck)
    if ka is not None and kb is not None:
        for address_a, address_b, k in nk.c_spans((a, b), limit):
            add(ck.pair_block(address_a, address_b, k, ka, kb, 0.0, 0.0, True)[9])
        return counts
    np = nk.numpy_or_signal("counting non-finite values")
    pieces = nk.array_blocks((a, b), limit, index_blocks)
    with np.errstate(all="ignore"):
        if a.is_complex() or b.is_complex():  # NaN or Inf in either part
            for pa, pb in pieces:
                add(nk.nonfinite_pairs(np, pa, pb))
            return counts
        da, db = nk.decoder(np, a.dtype.name), nk.decoder(np, b.dtype.name)
        bufa, bufb = nk.float64_buffers(np, pieces, 2)
        for pa, pb in pieces:
            add(nk.nonfinite_pairs(np, nk.widen(bufa, pa, da), nk.widen(bufb, pb, db)))
    return counts
