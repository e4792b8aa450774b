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


# the run's facts (io.deepspeed) worth saying when they differ between two checkpoints
_FACTS = ("zero_stage", "world_size", "dtype", "loss_scale", "dynamic_loss_scale",
          "global_steps", "skipped_steps", "ds_version")


def deepspeed_diff_notes(a: Any, b: Any) -> list[str]:
    """For ``diff`` of two trees that hold DeepSpeed's facts and master weights beside the
    optimizer state: the facts that differ, and how the fp32 master weights compare (by
    param name; reads them). Notes, not changes: they are not optimizer state."""
    from optstate.io.native_tensor import is_tensor
    from optstate.numeric.compare import compare_tensors
    from optstate.numeric.pair_kernel import NONFINITE_KINDS

    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    out = []
    fa, fb = a.get("deepspeed"), b.get("deepspeed")
    if isinstance(fa, dict) and isinstance(fb, dict):
        differ = [f"{k} {_show(fa.get(k))} -> {_show(fb.get(k))}" for k in _FACTS
                  if fa.get(k) != fb.get(k)]
        if differ:
            out.append(f"DeepSpeed: {', '.join(differ)}")
    wa, wb = a.get("fp32_master_weights"), b.get("fp32_master_weights")
    if not isinstance(wa, dict) or not isinstance(wb, dict):
        if isinstance(wa, dict) or isinstance(wb, dict):
            out.append(f"fp32 master weights: only {'a' if isinstance(wa, dict) else 'b'} "
                       "holds them; not compared")
        return out
    both = [n for n in wa if n in wb]
    differ_names: list[str] = []
    largest = 0.0
    for n in both:
        x, y = wa[n], wb[n]
        if not (is_tensor(x) and is_tensor(y)) \
                or x.shape != y.shape:
            differ_names.append(n)
            continue
        r = compare_tensors(x, y, nan_equal=False)  # exact, as diff compares
        if not r.equal:
            differ_names.append(n)
            nonfinite = sum(getattr(r, k) for k in NONFINITE_KINDS)
            largest = max(largest, float("inf") if nonfinite else (r.max_abs or 0.0))
    only = len(set(wa) ^ set(wb))
    tail = f"; {only} params in one side only" if only else ""
    if differ_names:
        out.append(f"fp32 master weights: {len(differ_names)} of {len(both)} params differ "
                   f"(largest |a - b| {largest:.6g}): {places(differ_names)}{tail}")
    else:
        out.append(f"fp32 master weights: all {len(both)} params equal{tail}")
    return out


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
