"""Views that repeat stored elements: what they cover in their storage, found cheaply.

A torch.save file stores storages and, for each tensor, sizes and strides into one. A view
with a stride of 0 (``torch.zeros(1).expand(2**40)``) or with overlapping strides (16 KB
viewed with strides (1, 1, 1, 1) as 2**40 elements) claims far more elements than its file
holds; reading it element by element takes time and memory that follow the claim. optstate
summarises and compares such views over their *storage*: the distinct stored elements the
view covers, each once, so the work follows the bytes actually stored (issue #16).

Detection uses sizes and strides only (no data): a dimension of size > 1 with stride 0, or
a span (1 + sum over dimensions of (size-1)*stride) smaller than the number of elements
(then two indices must share an element). A view that overlaps without either sign still
has numel <= span <= its storage's size (torch refuses views that leave their storage), so
reading it element by element is bounded by the bytes stored anyway.

Both functions take torch tensors and the native reader's ``NativeTensor``s (no torch
import here; a native tensor's distinct elements are a ``NativeTensor`` too: a strided
view of the same storage, or the gathered elements' bytes, found with numpy; without
numpy, an overlapping native view's are found by torch, as ``native_kernels`` says).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from optstate.io.native_tensor import NativeTensor, as_torch
from optstate.io.walk import covered_elements

if TYPE_CHECKING:
    import torch

EXPANDED = "expanded"  # a dimension of size > 1 with stride 0
OVERLAPPING = "overlapping"  # fewer storage elements in its span than elements


def repeated_view(t: torch.Tensor) -> str | None:
    """``EXPANDED`` or ``OVERLAPPING`` when ``t`` (a strided, non-meta tensor) must repeat
    stored elements, from its sizes and strides alone; None otherwise."""
    if str(t.layout).removeprefix("torch.") != "strided" or t.is_meta:
        return None
    shape, stride = tuple(t.shape), t.stride()
    numel = math.prod(shape)
    if numel <= 1:
        return None
    if any(n > 1 and s == 0 for n, s in zip(shape, stride, strict=True)):
        return EXPANDED
    return OVERLAPPING if covered_elements(shape, stride) < numel else None


def distinct_elements(t: Any) -> Any:
    """The distinct storage elements ``t`` covers, each once, as a tensor: a strided view of
    the same storage when the view minus its stride-0 dimensions no longer overlaps (each
    stride beyond the extent of the smaller ones), else the covered elements of its span,
    found with a mask over the span (a view when they are all covered, a gathered copy
    otherwise). Time and memory follow the span, never ``t.numel()``; element order is
    storage order, which is what any order-free statistic needs. Two tensors of the same
    sizes and strides give corresponding elements at the same positions."""
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n > 1 and s != 0)
    offset = t.storage_offset()
    extent = 0  # the largest offset the dimensions so far reach
    disjoint = True
    for s, n in dims:
        disjoint = disjoint and s > extent
        extent += (n - 1) * s
    native = isinstance(t, NativeTensor)
    if disjoint:
        shape, stride = [n for _, n in dims], [s for s, _ in dims]
        if native:
            return _native_view(t, shape, stride, offset)
        return t.as_strided(shape, stride, offset)
    span = extent + 1
    if native:
        from optstate.numeric import native_kernels as nk

        try:
            np = nk.numpy_or_signal("the distinct elements of an overlapping view")
        except nk.NativeNumericsUnavailable as e:  # no numpy: torch's, said
            nk.note_torch_fallback(e)
            return distinct_elements(as_torch(t))
        covered = np.zeros(span, dtype=bool)
    else:
        import torch

        covered = torch.zeros(span, dtype=torch.bool)
    covered[0] = True
    for s, n in dims:
        # offsets so far, plus i*s for i < n: doubling the copies made (have) each time,
        # the last step shorter, so log2(n) shifted ORs over the span per dimension
        have = 1
        while have < n:
            shift = min(have, n - have) * s
            covered[shift:] |= covered[:span - shift].copy() if native else \
                covered[:span - shift].clone()
            have += min(have, n - have)
    if native:
        base = _native_view(t, [span], [1], offset)
        if bool(covered.all()):
            return base
        from optstate.numeric.native_kernels import gathered

        return gathered(base, covered)
    base = t.as_strided((span,), (1,), offset)
    return base if bool(covered.all()) else base[covered]


def _native_view(t: NativeTensor, shape: list[int], stride: list[int],
                 offset: int) -> NativeTensor:
    return NativeTensor(t.storage, t.dtype, tuple(shape), tuple(stride), offset)
