"""Plain-data descriptions of optimizer state, shared by every command's report.

Everything here returns dicts, lists, strings, numbers and None: JSON-ready as is, and
what the rich renderer draws. Non-finite floats become None (JSON has no NaN); counts
of NaN/Inf travel beside them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .state import OptimizerStateView
from .stats import summarize


def plain(value: Any) -> Any:
    """A hyperparameter or scalar as plain JSON data (tuples -> lists, NaN -> None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        return plain(value.item())
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    return repr(value)


def entry_report(value: Any) -> dict[str, Any]:
    """One state entry: tensor statistics, or ``{"value": ...}`` for scalars."""
    if isinstance(value, torch.Tensor) and (value.dim() > 0 or value.is_meta):
        return {k: plain(v) for k, v in summarize(value).to_dict().items()}
    if isinstance(value, torch.Tensor):
        return {"value": plain(value.item()), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return {"items": [entry_report(v) for v in value]}
    return {"value": plain(value)}


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
            "state": {str(k): entry_report(v) for k, v in p.state.items()},
        }
        for p in view.params
    ]
