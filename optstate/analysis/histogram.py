"""Histograms of a tensor's values, as plain data (``inspect --hist``).

Definitions (tests compare each with plain torch):

- the bins split ``[min, max]`` of the *finite* elements into ``bins`` equal parts;
  ``edges`` and ``counts`` are exactly ``torch.histogram(finite.double(), bins,
  range=(min, max))``: every bin is half-open ``[a, b)`` except the last, ``[a, b]``;
- when every finite element has one value v the range is ``[v - 0.5, v + 0.5]`` (what
  torch and numpy do without a range; ``v (1 -+ 2**-20)`` where 0.5 is lost in v's
  rounding), so v falls in the middle bin;
- NaN, +Inf and -Inf are counted beside the bins, never in them; ``zeros`` counts the
  elements equal to zero (a buffer that collapsed shows ``zeros == numel``);
- bool and integer tensors are binned through float64; complex tensors by ``abs()``
  (``"of": "abs"``); sparse tensors by their dense values (implicit zeros included).

A tensor the native reader gave (``io.native_tensor``) is binned by torch too
(``as_torch``, over the same mapped bytes): ``--hist`` imports torch, so that the bins are
torch's to the last edge.
"""

from __future__ import annotations

import math
from typing import Any

from optstate.io.native_tensor import as_torch, is_tensor
from optstate.numeric.views import distinct_elements, repeated_view

BINS = 16


def histogram(t: Any, bins: int = BINS) -> dict[str, Any]:
    """The histogram of ``t`` (see module docstring); ``edges``/``counts`` are None when
    there is no finite element to bin (empty tensor, all NaN/Inf, meta tensor)."""
    import torch

    t = as_torch(t)  # a NativeTensor: the same values, binned by torch
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    numel = t.numel()
    out: dict[str, Any] = {
        "of": "abs" if t.is_complex() else "values", "bins": bins, "numel": numel,
        "edges": None, "counts": None, "min": None, "max": None,
        "nan": 0, "posinf": 0, "neginf": 0, "zeros": 0,
    }
    if t.is_meta or numel == 0:
        return out
    if t.is_sparse:
        t = t.coalesce().to_dense()
    t = t.detach()
    view = repeated_view(t) if not t.is_quantized else None
    if view is not None:  # over its storage, as its statistics (optstate/numeric/stats.py)
        t = distinct_elements(t)
        out.update(stored=t.numel(), over="storage", view=view)
    out["zeros"] = int(torch.count_nonzero(t == 0))  # (bool).sum() is 4x slower
    x = (t.abs() if t.is_complex() else t).reshape(-1)
    if not x.is_floating_point():
        x = x.double()  # bool and integers: exact up to 2**53
    # Counts, min and max in the tensor's own dtype (exact, and no float64 copy of a
    # huge buffer until the binning itself).
    out["nan"] = int(torch.count_nonzero(torch.isnan(x)))
    out["posinf"] = int(torch.count_nonzero(x == math.inf))
    out["neginf"] = int(torch.count_nonzero(x == -math.inf))
    finite = x if out["nan"] + out["posinf"] + out["neginf"] == 0 else x[torch.isfinite(x)]
    if finite.numel() == 0:
        return out
    lo_t, hi_t = torch.aminmax(finite)
    lo, hi = float(lo_t), float(hi_t)
    out["min"], out["max"] = lo, hi
    if lo == hi:
        # torch's and numpy's +-0.5, unless 0.5 vanishes next to a huge value
        half = 0.5 if (lo - 0.5 != lo and hi + 0.5 != hi) else abs(lo) * 2.0**-20
        lo, hi = lo - half, hi + half
    # torch bins (x - lo) * bins / (hi - lo): near float64's max that overflows, so bin
    # values scaled by a power of two (exact) instead.
    scale = 1.0 if max(abs(lo), abs(hi)) * bins * 4 < 1e300 else 2.0**64
    values = finite.double() if scale == 1.0 else finite.double() / scale
    counts, edges = torch.histogram(values, bins=bins, range=(lo / scale, hi / scale))
    out["edges"] = [float(e) * scale for e in edges]
    out["counts"] = [int(c) for c in counts]
    return out


def add_histograms(entries: dict[str, Any], state: dict[Any, Any], bins: int = BINS) -> None:
    """Put ``"histogram"`` beside the statistics of every tensor entry of one parameter's
    report (``entries``, from ``state.report.entry_report``), reading ``state``'s tensors."""
    for key, value in state.items():
        _add(entries.get(str(key)), value, bins)


def _add(rep: Any, value: Any, bins: int) -> None:
    if not isinstance(rep, dict):
        return
    if is_tensor(value):
        if len(value.shape) > 0 and not value.is_meta:
            rep["histogram"] = histogram(value, bins)
    elif isinstance(value, (list, tuple)) and isinstance(rep.get("items"), list):
        for item_rep, item in zip(rep["items"], value, strict=False):
            _add(item_rep, item, bins)
