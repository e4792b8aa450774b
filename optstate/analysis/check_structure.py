"""``check``'s findings about the shape of the state: the optimizer that wrote it, its
param groups and parameter counts, the parameters' names, and the state entries (their
keys, shapes and dtypes) against the optimizer a config builds.
"""

from __future__ import annotations

from typing import Any

import torch

from optstate.analysis.check_result import Finding, guess_kind, n_of, positions
from optstate.base.values import format_shape
from optstate.numeric.stats import dtype_name
from optstate.sim.build import Built
from optstate.sim.config import RunSpec
from optstate.sim.fit import GroupFit
from optstate.sim.trial import reference_state
from optstate.state.kind import SIGNATURES, infer_kind
from optstate.state.names import ORDER_ASSUMPTION
from optstate.state.report import plain
from optstate.state.view import OptimizerStateView


def check_kind(view: OptimizerStateView, built: Built, add: Any) -> None:
    """State of another optimizer (AdamW's exp_avg into SGD): before anything else, as
    nothing else about the pair matters until it is the right checkpoint."""
    cls_name = type(built.optimizer).__name__
    keys = {k for p in view.params for k in p.state}
    own = own_state_keys(cls_name, [])
    if not keys or own is None:
        return
    guess = infer_kind([g.hyperparams for g in view.groups], keys)
    if guess.kind in ("unknown", cls_name) or cls_name in guess.candidates:
        return  # Adam and AdamW: one update, told apart by decoupled_weight_decay
    # Foreign state entries say so on their own; entries the configured optimizer shares
    # (RAdam's and AdamW's exp_avg/exp_avg_sq/step) only with groups that are certain.
    if guess.confidence not in (("high", "medium") if not keys <= own else ("high",)):
        return
    add(Finding(
        "optimizer-kind", "warn",
        f"the checkpoint holds {guess.kind} state ({', '.join(sorted(keys))}), the config "
        f"builds {cls_name}: this checkpoint was not written by the optimizer the config "
        "builds" + (f" (its param groups are {guess.kind}'s; {cls_name} keeps state entries "
                    "of the same names, made by another update)" if keys <= own else ""),
        detail={"checkpoint": guess.kind, "config": cls_name, "state_keys": sorted(keys)},
    ))


# --------------------------------------------------------------------------- structure


def check_structure(view: OptimizerStateView, spec: RunSpec, fit: GroupFit, add: Any) -> bool:
    shapes = _shapes_side_by_side(view, spec)
    if fit.count_differs:
        theirs, ours = len(fit.checkpoint), len(fit.config)
        add(Finding(
            "group-count", "fail",
            f"the checkpoint has {n_of(theirs, 'param group')}, the config builds "
            f"{ours}: load_state_dict raises \"loaded state dict has a different number "
            "of parameter groups\"" + _first_difference_text(shapes),
            detail={"checkpoint": theirs, "config": ours, **shapes},
        ))
        return False
    for gi in fit.sizes_differ:
        theirs, ours = fit.checkpoint[gi], fit.config[gi]
        add(Finding(
            "group-size", "fail",
            f"param group {gi} holds {n_of(theirs, 'parameter')} in the "
            f"checkpoint but {ours} in the config: load_state_dict compares "
            "the groups in order, by parameter count only, and raises \"loaded state "
            "dict contains a parameter group that doesn't match the size of optimizer's "
            "group\"" + _first_difference_text(shapes),
            group=gi,
            detail={"checkpoint": theirs, "config": ours, **shapes},
        ))
    return not fit.sizes_differ


def _shapes_side_by_side(view: OptimizerStateView, spec: RunSpec) -> dict[str, Any]:
    """Both sides' parameter shapes, group by group (the checkpoint's read from its state
    tensors: "?" where a parameter has none or they disagree), and the first position
    where they differ."""
    theirs: list[list[str]] = []
    for g in view.groups:
        row = []
        for key in g.param_keys:
            pv = next((p for p in view.params if p.key == key and p.group == g.index), None)
            found = {tuple(v.shape) for v in (pv.state.values() if pv else [])
                     if isinstance(v, torch.Tensor) and v.dim() > 0}
            row.append(format_shape(found.pop()) if len(found) == 1 else "?")
        theirs.append(row)
    ours = [[format_shape(s) for s in g.shapes] for g in spec.groups]
    first = None
    for gi in range(max(len(theirs), len(ours))):
        a = theirs[gi] if gi < len(theirs) else []
        b = ours[gi] if gi < len(ours) else []
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x != y and not (x == "?" and y is not None):
                first = {"group": gi, "position": i}
                break
        if first:
            break
    return {"shapes": {"checkpoint": theirs, "config": ours}, "first_difference": first}


def _first_difference_text(shapes: dict[str, Any]) -> str:
    first = shapes["first_difference"]
    if first is None:
        return ""
    gi, i = first["group"], first["position"]

    def at(side: str) -> str:
        rows = shapes["shapes"][side]
        return rows[gi][i] if gi < len(rows) and i < len(rows[gi]) else "nothing"

    return (f"; the shapes first differ at group {gi}, position {i}: {at('checkpoint')} in "
            f"the checkpoint, {at('config')} in the config")


def check_names(view: OptimizerStateView, spec: RunSpec, add: Any) -> None:
    """torch matches parameters by position only (pytorch#1489); names show when the
    positions no longer mean the same parameters: a reordering names both sides of each
    move, and a count mismatch names what the config lacks or adds. Only names that are
    certain on both sides are compared (the checkpoint's from ``state.names``)."""
    theirs = [p.name for p in view.params]
    ours = [n for g in spec.groups for n in (g.names or [None] * len(g.shapes))]
    if not any(n is not None for n in theirs) or not any(n is not None for n in ours):
        return
    if theirs == ours:
        return
    # Names a model gave by order assume the optimizer listed its params in model order;
    # a difference seen through them is what would happen if so, not a certainty.
    level, lead, cond = "warn", "", _order_assumed(view)
    if cond is not None:
        level, lead = "info", (f"if the optimizer listed its params in model order (names "
                               f"from {cond}), ")
    full = None not in theirs and None not in ours
    moved = [(i, t, o) for i, (t, o) in enumerate(zip(theirs, ours, strict=False))
             if t is not None and o is not None and t != o] if len(theirs) == len(ours) \
        else []
    if full and sorted(theirs) == sorted(ours):
        where = {n: i for i, n in enumerate(ours)}
        add(Finding(
            "names-reordered", level,
            lead + "the same parameter names in a different order: torch matches by position, "
            f"not by name, so {_moves_text(moved)}" + _unsure(cond),
            detail={"moves": [{"position": i, "checkpoint": t, "config": o,
                               "config_position_of_checkpoint_name": where[t]}
                              for i, t, o in moved], **_conditional(cond)},
        ))
        return
    if full:
        in_ours, in_theirs = set(ours), set(theirs)
        missing = [n for n in theirs if n not in in_ours]
        extra = [n for n in ours if n not in in_theirs]
        counts = ""
        if len(theirs) != len(ours):
            counts = (f"the checkpoint has state for {n_of(len(theirs), 'parameter')}, the "
                      f"config builds {len(ours)}; ")
        add(Finding(
            "names-differ", level,
            f"{lead}parameter names differ: {counts}missing from the config: "
            f"{_names_text(missing)}; only in the config: {_names_text(extra)}"
            + (f"; torch matches by position, so {_moves_text(moved)}" if moved else
               " (torch ignores names and matches by position)") + _unsure(cond),
            detail={"only_checkpoint": missing, "only_config": extra,
                    "moves": [{"position": i, "checkpoint": t, "config": o}
                              for i, t, o in moved], **_conditional(cond)},
        ))
        return
    if moved:  # some params unnamed on one side: compare the positions named on both
        unnamed = sum(n is None for n in theirs)
        add(Finding(
            "names-differ", level,
            f"{lead}parameter names differ where both sides name them: torch matches by "
            f"position, so {_moves_text(moved)}"
            + (f" ({n_of(unnamed, 'checkpoint param')} unnamed, not compared)"
               if unnamed else "") + _unsure(cond),
            detail={"only_checkpoint": [], "only_config": [],
                    "moves": [{"position": i, "checkpoint": t, "config": o}
                              for i, t, o in moved], **_conditional(cond)},
        ))


# Sources whose names a model gives (matched to the slots), not the checkpoint itself.
_FROM_A_MODEL = ("model_state_dict", "model_file", "hf_trainer_rule")


def _order_assumed(view: OptimizerStateView) -> str | None:
    """Where the checkpoint's names came from (in words) when they rest on the order
    assumption (``state.names.ORDER_ASSUMPTION``); None when they are the checkpoint's
    own (param_names, DCP keys) or certain without it."""
    naming = getattr(view, "naming", None)
    if naming is None or naming.source not in _FROM_A_MODEL or \
            ORDER_ASSUMPTION not in naming.notes:
        return None
    return naming.model or naming.source


def _conditional(cond: str | None) -> dict[str, Any]:
    return {"conditional": True, "names_from": cond} if cond is not None else {}


def _unsure(cond: str | None) -> str:
    if cond is None:
        return ""
    return ("; nothing in the checkpoint records that order, so this is not certain (a "
            "config in another order may be the right one)")


def _names_text(names: list[str]) -> str:
    if not names:
        return "-"
    return ", ".join(f"`{n}`" for n in names[:8]) + (f" and {len(names) - 8} more"
                                                      if len(names) > 8 else "")


def _moves_text(moved: list[tuple[int, str, str]]) -> str:
    text = "; ".join(f"`{o}` gets the state of `{t}` (position {i})" for i, t, o in moved[:4])
    return text + (f"; and {len(moved) - 4} more" if len(moved) > 4 else "")


def name_findings(findings: list[Finding], view: OptimizerStateView) -> None:
    """Findings about params carry the checkpoint's names in their detail (for --json):
    ``name`` for one param, ``names`` for a list of positions; only names that are known."""
    names = {p.position: p.name for p in view.params}
    if not any(n is not None for n in names.values()):
        return
    for f in findings:
        if f.param is not None and names.get(f.param) is not None:
            f.detail.setdefault("name", names[f.param])
        ps = f.detail.get("params")
        if isinstance(ps, list) and all(isinstance(p, int) for p in ps):
            f.detail.setdefault("names", [names.get(p) for p in ps])


# --------------------------------------------------------------------------- state entries


def own_state_keys(cls_name: str, reference: list[dict[str, Any]]) -> set[str] | None:
    for sig in SIGNATURES:
        if sig.name == cls_name:
            return set(sig.state)
    seen = {k for st in reference for k in st}
    return seen or None


def check_state_entries(view: OptimizerStateView, spec: RunSpec, built: Built,
                        add: Any) -> None:
    cls_name = type(built.optimizer).__name__
    reference = reference_state(spec)
    own = own_state_keys(cls_name, reference)
    foreign: dict[str, int] = {}
    casts: dict[tuple[str, str], list[str]] = {}
    fresh: list[int] = []
    lacking: dict[str, list[int]] = {}
    for pv in view.params:
        param = built.params[pv.position]
        name = pv.name if pv.name is not None else built.names[pv.position]
        ref = reference[pv.position] if pv.position < len(reference) else {}
        if not pv.state and ref:
            fresh.append(pv.position)
        elif ref and (own is None or set(pv.state) <= own):  # foreign state: reported below
            for k in sorted(set(ref) - set(pv.state)):
                lacking.setdefault(k, []).append(pv.position)
        for k, v in pv.state.items():
            if own is not None and k not in own:
                foreign[k] = foreign.get(k, 0) + 1
                continue
            if not isinstance(v, torch.Tensor):
                continue
            expected = _expected_shape(k, ref, param, cls_name)
            if expected is not None and v.dim() > 0 and tuple(v.shape) != expected:
                add(Finding(
                    "state-shape", "fail",
                    f"param {pv.position} ({name}): the checkpoint's {k} has shape "
                    f"{format_shape(tuple(v.shape))} but the configured parameter needs "
                    f"{format_shape(expected)}: load_state_dict accepts this silently and the "
                    "first step() fails",
                    param=pv.position,
                    detail={"key": k, "checkpoint": list(v.shape), "config": list(expected)},
                ))
            if v.is_floating_point() and k != "step" and v.dtype != param.dtype:
                pair = (dtype_name(v.dtype), dtype_name(param.dtype))
                casts.setdefault(pair, []).append(f"{pv.position}.{k}")
    if foreign:
        keys = ", ".join(f"{k} ({n_of(n, 'param')})" for k, n in sorted(foreign.items()))
        add(Finding(
            "state-foreign", "warn",
            f"state entries {keys} are not {cls_name} state{guess_kind(view)}: "
            f"load_state_dict keeps them, {cls_name} never reads them, and its own state "
            "starts from zero",
            detail={"keys": sorted(foreign)},
        ))
    for (src, dst), where in casts.items():
        lossy = torch.finfo(getattr(torch, src)).bits > torch.finfo(getattr(torch, dst)).bits
        add(Finding(
            "dtype-cast", "warn",
            f"{n_of(len(where), 'state tensor')} {'are' if len(where) > 1 else 'is'} {src} but "
            f"the parameters are {dst}: load_state_dict casts them to {dst}"
            + (" (precision is lost)" if lossy else ""),
            detail={"from": src, "to": dst, "entries": where},
        ))
    for k, where in lacking.items():
        add(Finding(
            "state-incomplete", "warn",
            f"{n_of(len(where), 'parameter')} ({positions(where)}) "
            f"{'have' if len(where) > 1 else 'has'} saved state without "
            f"{k!r}, which the configured {cls_name} creates at its first step: torch may "
            "fail on it when loading or stepping (see the trial)",
            detail={"key": k, "params": where},
        ))
    if fresh:
        add(Finding(
            "state-missing", "info",
            f"{n_of(len(fresh), 'parameter')} ({positions(fresh)}) "
            f"{'have' if len(fresh) > 1 else 'has'} no saved state: "
            f"{'their' if len(fresh) > 1 else 'its'} "
            f"{cls_name} state starts fresh at the first step",
            detail={"params": fresh},
        ))
    if view.orphan_keys:
        add(Finding(
            "state-orphans", "warn",
            f"the checkpoint has state for {n_of(len(view.orphan_keys), 'key')} in no param "
            "group; load_state_dict keeps it but no parameter uses it",
            detail={"keys": [plain(k) for k in view.orphan_keys]},
        ))


def _expected_shape(key: str, ref: dict[str, Any], param: torch.Tensor,
                    cls_name: str) -> tuple[int, ...] | None:
    r = ref.get(key)
    if isinstance(r, torch.Tensor):
        return tuple(r.shape) if r.dim() > 0 else None
    if cls_name in ("LBFGS", "Adafactor") or key == "step":
        return None  # flat or factored state: only the reference step knows the shapes
    return tuple(param.shape)
