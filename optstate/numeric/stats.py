"""Exact statistics of one tensor, as torch itself computes them.

Definitions (tests compare each with a plain torch expression):

- ``norm``, ``mean``, ``mean_abs``: over the finite elements, accumulated in float64
  (``t[isfinite(t)].double().norm()`` etc.), so one NaN does not hide the rest. Over n
  finite elements they agree with those torch expressions to a relative
  ``tolerance.sum_rtol(n)`` (the signed mean to ``sum_rtol(n) * mean_abs``): only the
  order of the float64 additions differs, and the bound holds for any order. A float64
  norm whose squares overflow is rescaled (torch returns inf);
- ``min``, ``max``: over the finite elements, exact in the tensor's own dtype;
- ``nan``, ``inf``: counts; ``zeros``: the fraction of elements equal to zero;
- bool and integer tensors are summarised through float64; complex through ``abs()``
  for the norm (min/max/mean are None). Values that do not exist (an empty tensor, no
  finite element) are None.
- a view that must repeat stored elements (a stride 0: ``expand``; or overlapping
  strides, see optstate/numeric/views.py) is summarised over its storage: the distinct stored
  elements it covers, each once (``stored`` of them; ``view`` says which kind), so the
  work follows the bytes a file stores, not the shape it claims. ``numel`` stays the
  logical count; counts and the zero fraction are over the stored elements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from optstate.io.native_tensor import as_torch
from optstate.numeric.kernels import ByteProgress, Moments, moments
from optstate.numeric.precomputed import intercept
from optstate.numeric.views import distinct_elements, repeated_view


@dataclass(frozen=True)
class TensorSummary:
    shape: tuple[int, ...]
    dtype: str
    numel: int
    bytes: int
    norm: float | None
    min: float | None
    max: float | None
    mean: float | None
    mean_abs: float | None
    nan: int
    inf: int
    zeros: float | None  # fraction of elements equal to zero
    # Set only for views that repeat stored elements: the statistics are over the
    # ``stored`` distinct elements the view covers; ``view`` is "expanded"/"overlapping".
    stored: int | None = None
    view: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``stored``, ``over: "storage"`` and ``view`` only for repeating
        views (every other summary keeps the keys it always had)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        del d["stored"], d["view"]
        if self.view is not None:
            d.update(stored=self.stored, over="storage", view=self.view)
        return d


def dtype_name(dtype: Any) -> str:
    """``float32`` for ``torch.float32`` and for the native reader's ``NativeDtype``."""
    return str(dtype).removeprefix("torch.")


def is_strided(t: Any) -> bool:
    """A dense tensor (``torch.strided``; a ``NativeTensor``'s layout is ``"strided"``),
    not a sparse COO or compressed one: by name, so no torch is needed to ask."""
    return str(t.layout).removeprefix("torch.") == "strided"


def _per_tensor(t: Any) -> bool:
    """A quantized tensor with one scale (a quantized tensor is a torch one: the native
    reader never gives one, so torch is already imported here)."""
    import torch

    return t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def structure_summary(t: Any) -> dict[str, Any]:
    """Shape, dtype, numel, bytes: no tensor data is read."""
    return {
        "shape": list(t.shape),
        "dtype": dtype_name(t.dtype),
        "numel": t.numel(),
        "bytes": t.numel() * t.element_size(),
    }


def summarize(t: Any, *, progress: ByteProgress | None = None) -> TensorSummary:
    """All statistics of ``t`` (see module docstring), in one chunked pass over its data
    (``kernels.moments``); ``progress`` is called with bytes as they are processed. (Or
    the summary another rank computed: ``precomputed.py``.)"""
    return intercept("summary", (t,), {}, lambda: _summarize(t, progress),
                     lambda: _no_stats(t))


def _base(t: Any) -> dict[str, Any]:
    return dict(shape=tuple(t.shape), dtype=dtype_name(t.dtype), numel=t.numel(),
                bytes=t.numel() * t.element_size())


def _no_stats(t: Any) -> TensorSummary:
    return TensorSummary(**_base(t), norm=None, min=None, max=None, mean=None, mean_abs=None,
                         nan=0, inf=0, zeros=None)


def splits_into_moments(t: Any) -> bool:
    """Whether ``summarize(t)`` is ``from_moments`` of ``t``'s moments: a plain dense real
    tensor, so the moments of its pieces (``kernels.merge_moments``) summarise it too."""
    return (not t.is_meta and t.numel() > 0 and not t.is_quantized and not t.is_complex()
            and is_strided(t) and not getattr(t, "is_sparse", False))


def from_moments(t: Any, m: Moments) -> TensorSummary:
    """The summary of the plain tensor ``t`` (``splits_into_moments``) from its moments
    ``m``: the one place summaries are made from moments, for one process and for the
    merged moments of several ranks."""
    fin = m.finite > 0
    return TensorSummary(
        **_base(t), norm=m.norm, min=m.min, max=m.max,
        mean=m.sum / m.finite if fin else None,
        mean_abs=m.sumabs / m.finite if fin else None,
        nan=m.nan, inf=m.inf, zeros=m.zeros / m.numel)


def _summarize(t: Any, progress: ByteProgress | None) -> TensorSummary:
    numel = t.numel()
    base = _base(t)
    if t.is_meta or numel == 0:
        return _no_stats(t)
    t = base_t = t.detach()
    # before dequantize(), which would write out every repeated element (per-channel
    # quantized views are left as they are: their scales follow the logical index)
    view = None if t.is_quantized and not _per_tensor(t) else repeated_view(t)
    over: dict[str, Any] = {}
    if view is not None:  # statistics of the distinct stored elements (module docstring)
        t = distinct_elements(t)
        numel = t.numel()
        over = dict(stored=numel, view=view)
    if t.is_quantized:  # statistics of the values it stands for
        t = t.dequantize()
    if not is_strided(t):  # COO and compressed layouts; walk.py bounds their size
        t = (t.coalesce() if t.is_sparse else t).to_dense()
    if t.is_complex():
        # torch's own complex abs (its float32 rounding) defines these: a complex tensor
        # of the native reader is read through torch (the one case it imports torch)
        import torch

        t = as_torch(t)
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        fin = t[torch.isfinite(t)]
        norm = float(fin.abs().double().norm()) if fin.numel() else None
        zeros = float((t == 0).sum()) / numel
        return TensorSummary(**base, norm=norm, min=None, max=None, mean=None,
                             mean_abs=float(fin.abs().double().mean()) if fin.numel() else None,
                             nan=nan, inf=inf, zeros=zeros, **over)
    m = moments(t, progress=progress)
    return replace(from_moments(base_t, m), **over)
