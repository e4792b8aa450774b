"""Numeric comparison of two tensors with numpy ``isclose`` semantics.

An element pair (a, b) is within tolerance when ``|a - b| <= atol + rtol * |b|``
(both tolerances at once, as numpy and torch do); NaN against NaN counts as equal
unless ``nan_equal=False``; NaN against a number never does; +Inf equals +Inf.
The pairs with a non-finite value are also counted by kind (NaN in a only, in b only,
±Inf against a finite value on either side, NaN on both: ``nan_a_only`` ...), since
``max_abs`` and ``max_rel``, over the finite pairs, cannot show them.
Metrics are computed in float64 so they agree with a plain torch expression on
``a.double()`` and ``b.double()``: counts and ``max_abs``/``max_rel`` exactly, the norms of
n elements to a relative ``tolerance.sum_rtol(n)`` (only the order of the float64
additions differs; the bound holds for any order, hence on any CPU). Complex tensors are
compared as complex128.

Views that repeat stored elements (a stride 0, overlapping strides: optstate/numeric/views.py)
are compared over their storage when both sides are such views with the same sizes and
strides: each distinct stored pair once (``stored`` of them; counts are of those pairs).
When only one side repeats, the other side's storage holds every element, so comparing
element by element is bounded by bytes stored and done as usual. Two repeating views of
different layouts would need one step per claimed element: ``UncomparableViewsError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.native_tensor import as_torch, is_native
from optstate.numeric.kernels import ByteProgress
from optstate.numeric.pair_kernel import NONFINITE_KINDS, compare, nonfinite_counts
from optstate.numeric.precomputed import intercept
from optstate.numeric.stats import is_strided
from optstate.numeric.views import distinct_elements, repeated_view


@dataclass(frozen=True)
class TensorComparison:
    equal: bool  # every element within tolerance
    n_outside: int  # elements outside tolerance
    max_abs: float | None  # max |a - b| over pairs where both are finite
    max_rel: float | None  # max |a - b| / |b| over finite pairs with b != 0
    norm_a: float | None
    norm_b: float | None
    # Set only when both sides were compared over their storage (see module docstring).
    stored: int | None = None  # distinct stored element pairs compared
    view: str | None = None  # "expanded" / "overlapping"
    # pairs with a non-finite value, by kind (pair_kernel.NONFINITE_KINDS; disjoint)
    nan_a_only: int = 0  # NaN in a, not NaN in b
    nan_b_only: int = 0
    inf_a_only: int = 0  # ±Inf in a, a finite value in b
    inf_b_only: int = 0
    nan_both: int = 0  # NaN on both sides (outside only with nan_equal=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``stored``, ``over: "storage"`` and ``view`` only when compared over
        storage."""
        d = asdict(self)
        del d["stored"], d["view"]
        if self.view is not None:
            d.update(stored=self.stored, over="storage", view=self.view)
        return d


class UncomparableViewsError(CheckpointError):
    """Two views that repeat stored elements in different layouts: comparing them would
    take one step per claimed element, which the file does not store."""


def _describe(t: Any, view: str) -> str:
    n = distinct_elements(t).numel()
    return (f"{n:,} stored element{'s' * (n != 1)} {view} to {t.numel():,} "
            f"(strides {tuple(t.stride())})")


def stored_pair(a: Any, b: Any
                ) -> tuple[Any, Any, str | None]:
    """The tensors to compare element for element for the same-shape ``a`` and ``b``:
    themselves (view None), or their distinct stored elements when both repeat stored
    elements in the same layout (see module docstring); ``UncomparableViewsError`` when
    both repeat in different layouts."""
    va = repeated_view(a) if not a.is_quantized else None
    vb = repeated_view(b) if not b.is_quantized else None
    if va is None or vb is None:
        return a, b, None
    if a.stride() != b.stride():
        raise UncomparableViewsError(
            f"not compared: both are views that repeat stored elements, in different "
            f"layouts ({_describe(a, va)} against {_describe(b, vb)}); comparing them "
            f"would take one step per claimed element",
            hint="compare the two files' storages with torch, or save real tensors "
                 "(t.contiguous()) instead of views")
    return distinct_elements(a), distinct_elements(b), va


def count_unequal(a: Any, b: Any) -> int:
    """Element pairs with a != b (exact, in the tensors' own dtypes): over the distinct
    stored pairs when both repeat stored elements in one layout (``stored_pair``)."""
    a, b, _ = stored_pair(a, b)
    if is_native(a) and is_native(b) and _numpy_codes(a) and _numpy_codes(b):
        return int((a.array() != b.array()).sum())
    # a NativeTensor numpy cannot compare as a number (bfloat16, float8: raw codes), or
    # no numpy: through torch (diff calls this for integer and bool tensors only)
    return int((as_torch(a) != as_torch(b)).sum())


def _numpy_codes(t: Any) -> bool:
    """Whether numpy holds ``t``'s values as numbers (not bfloat16/float8 raw codes), and
    numpy is installed."""
    if t.dtype.name == "bfloat16" or t.dtype.name.startswith("float8"):
        return False
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def compare_tensors(a: Any, b: Any, *, atol: float = 0.0, rtol: float = 0.0,
                    nan_equal: bool = True, progress: ByteProgress | None = None
                    ) -> TensorComparison:
    """Compare two tensors of the same shape (dtype may differ), in one chunked pass over
    both (``pair_kernel.compare``); ``progress`` is called with bytes as they are processed.
    (Or the comparison another rank made: ``precomputed.py``.)"""
    return intercept(
        "compare", (a, b), {"atol": atol, "rtol": rtol, "nan_equal": nan_equal},
        lambda: _compare_tensors(a, b, atol=atol, rtol=rtol, nan_equal=nan_equal,
                                 progress=progress),
        lambda: TensorComparison(True, 0, None, None, None, None))


def _compare_tensors(a: Any, b: Any, *, atol: float, rtol: float,
                     nan_equal: bool, progress: ByteProgress | None) -> TensorComparison:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return TensorComparison(True, 0, None, None, 0.0, 0.0)
    if is_native(a) != is_native(b):  # one file read natively, the other with torch
        a, b = as_torch(a), as_torch(b)  # (which is loaded already): both torch's
    # quantized and sparse tensors: compare the values they stand for (walk.py bounds
    # the dense size of sparse ones)
    a, b, view = stored_pair(a.detach(), b.detach())
    over = {} if view is None else {"stored": a.numel(), "view": view}
    a, b = _plain(a), _plain(b)
    if a.is_complex() or b.is_complex():
        return replace(_compare_whole(a, b, atol=atol, rtol=rtol, nan_equal=nan_equal),
                       **over)
    r = compare(a, b, atol=atol, rtol=rtol, nan_equal=nan_equal, progress=progress)
    return TensorComparison(
        equal=r.n_outside == 0, n_outside=r.n_outside, max_abs=r.max_abs, max_rel=r.max_rel,
        norm_a=r.norm_a, norm_b=r.norm_b, **over,
        **{k: getattr(r, k) for k in NONFINITE_KINDS},
    )


def _plain(t: Any) -> Any:
    t = t.dequantize() if t.is_quantized else t
    return t.to_dense() if not is_strided(t) else t


def _compare_whole(a: Any, b: Any, *, atol: float, rtol: float,
                   nan_equal: bool) -> TensorComparison:
    """The reference definition on whole tensors (complex values take this path: torch's
    own complex arithmetic defines it, so a NativeTensor is read through torch here)."""
    import torch

    x = as_torch(a).detach().to(torch.complex128)
    y = as_torch(b).detach().to(torch.complex128)
    close = torch.isclose(x, y, rtol=rtol, atol=atol, equal_nan=nan_equal)
    n_outside = int((~close).sum())
    fin = torch.isfinite(x) & torch.isfinite(y)
    diff = (x - y).abs()[fin]
    max_abs = float(diff.max()) if diff.numel() else None
    yb = y.abs()[fin]
    nz = yb != 0
    max_rel = float((diff[nz] / yb[nz]).max()) if bool(nz.any()) else None
    return TensorComparison(
        equal=n_outside == 0, n_outside=n_outside, max_abs=max_abs, max_rel=max_rel,
        norm_a=_finite_norm(x), norm_b=_finite_norm(y), **nonfinite_counts(x, y),
    )


def _finite_norm(x: Any) -> float | None:
    import torch

    f = x[torch.isfinite(x)]
    return float(f.norm()) if f.numel() else None
