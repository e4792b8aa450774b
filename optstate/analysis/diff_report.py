"""The plain-data report of a diff (schema ``optstate.diff/1``): the JSON the CLI prints
and what the rich view draws, with the per-entry overview and the hint about keys that only
torch versions differ in."""

from __future__ import annotations

from typing import Any

from optstate.analysis.diff import DiffSide, StateDiff
from optstate.analysis.diff_walk import STRUCTURAL, keys_of
from optstate.base.errors import option
from optstate.numeric.pair_kernel import NONFINITE_KINDS

SCHEMA = "optstate.diff/1"


def diff_report(result: StateDiff, side_a: DiffSide | None = None,
                side_b: DiffSide | None = None, *, verbose: bool = False,
                max_diffs: int | None = None) -> dict[str, Any]:
    """The plain-data report (schema ``optstate.diff/1``) both views render."""
    shown = result.changes if max_diffs is None else result.changes[:max_diffs]
    structural = sum(c.kind in STRUCTURAL for c in result.changes)
    opts = result.options
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "equal": result.equal,
        "complete": result.complete,
        "a": side_a.to_dict() if side_a else None,
        "b": side_b.to_dict() if side_b else None,
        "options": {"atol": opts.atol, "rtol": opts.rtol, "nan_equal": opts.nan_equal,
                    "ignore": list(opts.ignore), "match": result.matched_by,
                    "params": list(opts.params)},
        "optimizer": list(result.optimizers),
        "groups": list(result.groups),
        "params": list(result.params),
        "naming": {side: n.to_dict() if n is not None else None
                   for side, n in zip("ab", result.naming, strict=True)},
        "counts": {"differences": len(result.changes),
                   "structural": structural, "numeric": len(result.changes) - structural,
                   "equal": len(result.same), "ignored": result.ignored},
        "changes": [c.to_dict() for c in shown],
        "omitted": len(result.changes) - len(shown),
        "by_entry": by_entry(result),
        "notes": list(result.notes),
    }
    if verbose:
        report["same"] = [c.to_dict() for c in result.same]
    hint = ignore_hint(result)
    if hint:
        report["hint"] = hint
    return report


def by_entry(result: StateDiff) -> list[dict[str, Any]]:
    """Per state entry name (``exp_avg``, ``step``, ...): over how many params it was
    compared, in how many it differs, elements outside tolerance / compared, max |a-b|,
    and the pairs with a NaN or Inf by kind (``pair_kernel.NONFINITE_KINDS``).
    The overview for large models, where every parameter changes after a step."""
    rows: dict[str, dict[str, Any]] = {}
    for differs, items in ((True, result.changes), (False, result.same)):
        for c in items:
            keys = keys_of(c.path)
            if len(keys) != 3 or keys[0] != "state" or not isinstance(keys[2], str):
                continue
            row = rows.setdefault(keys[2], {"entry": keys[2], "compared": 0,
                                               "differ": 0, "outside": 0, "numel": 0,
                                               "max_abs": None,
                                               **dict.fromkeys(NONFINITE_KINDS, 0)})
            row["compared"] += 1
            row["differ"] += differs
            if c.metrics is not None:
                row["outside"] += c.metrics["outside"]
                # elements compared: a view's stored pairs when compared over its storage
                row["numel"] += c.metrics.get("stored", c.metrics["numel"])
                for k in NONFINITE_KINDS:  # pairs outside for a NaN or Inf, by kind
                    row[k] += c.metrics.get(k, 0)
                if differs and c.metrics["max_abs"] is not None:
                    row["max_abs"] = max(row["max_abs"] or 0.0, c.metrics["max_abs"])
    return list(rows.values())


# Group keys torch versions add or drop; differences here are rarely interesting.
VERSION_KEYS = ("foreach", "fused", "differentiable", "capturable", "maximize",
                "decoupled_weight_decay")


def ignore_hint(result: StateDiff) -> str | None:
    """Suggest ignoring the keys when some differences are only torch-version bookkeeping keys
    (not when the two states come from different optimizers: then they are expected)."""
    if result.optimizers[0] != result.optimizers[1]:
        return None
    keys = sorted({keys_of(c.path)[-1] for c in result.changes
                   if c.path.startswith("param_groups[") and c.kind in ("added", "removed")
                   and keys_of(c.path)[-1] in VERSION_KEYS})
    if not keys:
        return None
    return f"keys that differ between torch versions: {option('ignore', tuple(keys))}"
