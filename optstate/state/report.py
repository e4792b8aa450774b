"""Plain-data descriptions of optimizer state, shared by every command's report.

Everything here returns dicts, lists, strings, numbers and None: JSON-ready as is, and
what the rich renderer draws. Non-finite floats become None (JSON has no NaN); counts
of NaN/Inf travel beside them.
"""

from __future__ import annotations

import math
from typing import Any

from optstate.io.native_tensor import is_native, is_tensor
from optstate.numeric.stats import structure_summary, summarize
from optstate.state.view import OptimizerStateView


def plain(value: Any, *, finite: bool = True) -> Any:
    """A hyperparameter or scalar as plain JSON data (tuples -> lists, NaN -> None; with
    ``finite=False`` a non-finite float is kept, for a caller that says it otherwise)."""
    if isinstance(value, float):
        return value if math.isfinite(value) or not finite else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, finite=finite) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, finite=finite) for k, v in value.items()}
    if is_tensor(value) and value.numel() == 1 and not value.is_meta:
        return plain(value.item(), finite=finite)
    if is_tensor(value):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    return repr(value)


# --values: tensors up to this many elements in full, bigger ones by their ends.
VALUES_FULL_UP_TO = 64
VALUES_EDGE = 8


def tensor_like(value: Any) -> Any:
    """``value`` if it is a tensor, else None. A tensor read lazily (``io.lazy.LazyTensor``,
    DCP folders and large files) is one: it reads its data when an operation needs it; so
    is the native reader's ``NativeTensor``."""
    return value if is_tensor(value) else None


def entry_report(value: Any, *, stats: bool = True, values: bool = False) -> dict[str, Any]:
    """One state entry: tensor statistics (only shape/dtype/numel/bytes when ``stats`` is
    False: no tensor data is read), ``{"value": ...}`` for scalars (0-d tensors included),
    ``{"items": [...]}`` for lists of entries (LBFGS history)."""
    t = tensor_like(value)
    if t is not None and (len(t.shape) > 0 or getattr(t, "is_meta", False)):
        if stats:
            rep = {k: plain(v) for k, v in summarize(t).to_dict().items()}
        else:
            rep = structure_summary(t)
        if values and not getattr(t, "is_meta", False):
            rep.update(tensor_values(t))
        return rep
    if t is not None:
        return {"value": plain(t.item()),
                "dtype": str(t.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return {"items": [entry_report(v, stats=stats, values=values) for v in value]}
    return {"value": plain(value)}


def tensor_values(t: Any) -> dict[str, Any]:
    """The values of ``t`` for --values: all of them when small, else the first and last
    few (flattened), with ``values_truncated`` saying so. A ``NativeTensor`` decodes them
    from its bytes (``tolist``, integer indexing): no torch."""
    if t.is_sparse:
        t = t.to_dense()
    if t.numel() <= VALUES_FULL_UP_TO:
        return {"values": plain(t.detach().tolist() if is_native(t)
                                else t.detach().cpu().tolist())}
    t = t.detach()
    n = t.numel()
    # element by element, not t.reshape(-1): that copies a view repeating stored elements
    # (expand, overlapping strides) out to every element it claims
    first = [t[_unravel(i, t.shape)].item() for i in range(VALUES_EDGE)]
    last = [t[_unravel(i, t.shape)].item() for i in range(n - VALUES_EDGE, n)]
    return {
        "values_first": plain(first),
        "values_last": plain(last),
        "values_truncated": True,
    }


def _unravel(i: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of the ``i``-th element in row-major (flattened) order."""
    idx = []
    for size in reversed(shape):
        i, r = divmod(i, size)
        idx.append(r)
    return tuple(reversed(idx))


def groups_report(view: OptimizerStateView) -> list[dict[str, Any]]:
    return [
        {
            "index": g.index,
            "params": [plain(k) for k in g.param_keys],
            "hyperparams": {k: plain(v) for k, v in g.hyperparams.items()},
        }
        for g in view.groups
    ]


def params_report(view: OptimizerStateView) -> list[dict[str, Any]]:
    return [
        {
            "id": plain(p.key),
            "position": p.position,
            "group": p.group,
            "name": p.name,
            "state": {str(k): as_stored(entry_report(v), p.stored.get(str(k)))
                      for k, v in p.state.items()},
            # how an entry is stored when it is not stored as itself (state.packed)
            "stored": {k: plain(d) for k, d in p.stored.items()},
        }
        for p in view.params
    ]


def as_stored(rep: dict[str, Any], d: dict[str, Any] | None) -> dict[str, Any]:
    """An entry stored low-bit (``state.lowbit``) adds what it takes in the file:
    ``bytes_stored`` (codes, scales, tables) and ``dtype_stored`` (its codes' dtype)
    beside ``bytes``/``dtype`` of the moment as shown (dequantized)."""
    if d and d.get("bytes_stored") is not None and "shape" in rep:
        rep["bytes_stored"] = int(d["bytes_stored"])
        rep["dtype_stored"] = str(d.get("dtype"))
    return rep


# LR scheduler state_dicts do not name their class; these keys do.
_SCHEDULER_MARKS: tuple[tuple[str, frozenset[str]], ...] = (
    ("ReduceLROnPlateau", frozenset({"patience", "num_bad_epochs"})),
    ("OneCycleLR", frozenset({"total_steps", "_schedule_phases"})),
    ("CyclicLR", frozenset({"max_lrs", "total_size"})),
    ("CosineAnnealingWarmRestarts", frozenset({"T_0", "T_mult"})),
    ("CosineAnnealingLR", frozenset({"T_max", "eta_min"})),
    ("SequentialLR", frozenset({"_schedulers", "_milestones"})),
    ("ChainedScheduler", frozenset({"_schedulers"})),
    ("MultiStepLR", frozenset({"milestones", "gamma"})),
    ("StepLR", frozenset({"step_size", "gamma"})),
    ("LinearLR", frozenset({"start_factor", "end_factor", "total_iters"})),
    ("ConstantLR", frozenset({"factor", "total_iters"})),
    ("PolynomialLR", frozenset({"power", "total_iters"})),
    ("LambdaLR", frozenset({"lr_lambdas"})),
    ("ExponentialLR", frozenset({"gamma"})),
    # DeepSpeed's own schedulers save only this (state.locate.is_deepspeed_scheduler)
    ("DeepSpeed scheduler", frozenset({"last_batch_iteration"})),
)

# Bookkeeping keys every LRScheduler writes; the rest are the scheduler's own settings.
_SCHEDULER_META = frozenset({
    "base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step",
    "_last_lr", "verbose", "lr_lambdas", "_schedulers", "_schedule_phases",
})


def scheduler_report(sd: dict[str, Any], location: str) -> dict[str, Any]:
    """What an LR scheduler's state_dict says: its likely class (from its keys),
    ``last_epoch``, the last lr per group, base lrs, and its own settings."""
    keys = set(sd)
    kind = next((name for name, marks in _SCHEDULER_MARKS if marks <= keys), "unknown")
    settings = {
        str(k): plain(v) for k, v in sd.items()
        if k not in _SCHEDULER_META and isinstance(v, (bool, int, float, str, list, tuple))
        and not str(k).startswith("_")
    }
    return {
        "location": location,
        "kind": kind,
        "last_epoch": plain(sd.get("last_epoch")),
        "step_count": plain(sd.get("_step_count")),
        "last_lr": plain(sd.get("_last_lr")),
        "base_lrs": plain(sd.get("base_lrs")),
        "settings": settings,
    }
