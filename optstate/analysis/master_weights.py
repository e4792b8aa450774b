"""Warnings about fp32 master weights saved beside an optimizer state (DeepSpeed's, under
``fp32_master_weights``: the weights a resumed run continues from; ``io.deepspeed``)."""

from __future__ import annotations

from typing import Any

from optstate.analysis.findings import finding, places
from optstate.base.paths import join
from optstate.state.report import entry_report


def master_weight_warnings(weights: Any, selected: set[str] | None) -> list[dict[str, Any]]:
    """NaN / Inf in the master weights, named by param; ``selected`` limits the params
    looked at (None: all). Reads the tensors (inspect calls it only with statistics)."""
    if not isinstance(weights, dict):
        return []
    found: dict[str, list[tuple[str, str]]] = {"NaN": [], "Inf": []}
    for name, t in weights.items():
        if selected is not None and name not in selected:
            continue
        rep = entry_report(t, stats=True)
        for what, key in (("NaN", "nan"), ("Inf", "inf")):
            if rep.get(key):
                found[what].append((str(name), f"{rep[key]} {what}"))
    out = []
    for what, hits in found.items():
        if hits:
            out.append(finding(
                f"master_weight_{what.lower()}", f"{what} in the fp32 master weights: "
                f"{places([f'{n} ({s})' for n, s in hits])}: the weights the run resumes "
                "from are broken; resuming from this checkpoint spreads it",
                [join("fp32_master_weights", n) for n, _ in hits], [n for n, _ in hits]))
    return out
