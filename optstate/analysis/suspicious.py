"""Warnings about an optimizer state: things that are legal but usually a sign of trouble.

Each warning is ``{"code", "message", "where"}`` (``findings.py``): a stable code for
scripts, one line for people (what was seen and the usual cause), and the places it
concerns; where those are params' state, ``names`` beside ``where`` gives each one's param
name (None when not known). Checks that need tensor statistics (NaN, Inf, all-zero
buffers, negative second moments) use the entry reports already computed, so they cover
what was read (all params unless filtered, none without statistics); the structural checks
always cover the whole state. Underflowed second moments are ``underflow.py``.
"""

from __future__ import annotations

import math
from typing import Any

from optstate.analysis.by_design import (
    global_state_keys,
    recorded_relations,
    split_by_shape,
    stateless_by_design,
    zero_by_design,
)
from optstate.analysis.findings import as_number, at, finding, places
from optstate.analysis.underflow import (
    SECOND_MOMENTS,
    SQUARED,
    Underflow,
    find_underflows,
    underflow_below,
    underflow_warnings,
)
from optstate.base.paths import join
from optstate.state.report import plain
from optstate.state.signatures import leaf
from optstate.state.view import OptimizerStateView

# Entries that are running averages of squares (or of |grad|): never negative in a real run.
_NON_NEGATIVE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf",
                           "acc_delta", "row_var", "col_var", "variance", "step_size"})
# Entries that may legitimately be all zeros.
_MAY_BE_ZERO = frozenset({"ax", "prev"})


def state_warnings(view: OptimizerStateView, kind: str, params: list[dict[str, Any]],
                   scheduler: dict[str, Any] | None, underflows: list[Underflow] | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(warnings, notes) for a state; notes are facts worth knowing, not problems.
    ``underflows``: ``find_underflows`` of ``params`` if already counted (inspect counts
    each param's right after its statistics, while a remote file's storages are held)."""
    warnings: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    if view.legacy_ids:
        notes.append(finding(
            "legacy_ids", "state is keyed by id(param) (torch < 1.6); parameters are shown by "
            "position, which is how load_state_dict matches them"))
    warnings += _value_warnings(params, view, kind, notes, underflows)
    warnings += _empty_state(view, kind, notes)
    warnings += _step_mismatch(view)
    warnings += _shape_mismatch(view, kind, notes)
    own_keys = global_state_keys(kind)
    globals_ = [k for k in view.orphan_keys if str(k) in own_keys]
    if globals_:
        notes.append(finding(
            "optimizer_global_state", f"state holds {kind}'s own entries beside the params' "
            f"({places([repr(plain(k)) for k in globals_])}): the optimizer keeps them there "
            "itself, not for a param", [join("state", k) for k in globals_]))
    orphans = [k for k in view.orphan_keys if str(k) not in own_keys]
    if orphans:
        keys = [repr(plain(k)) for k in orphans]
        paths = [join("state", k) for k in orphans]
        warnings.append(finding(
            "orphan_state", f"state holds entries for {len(keys)} key"
            f"{'s' * (len(keys) != 1)} in no param group ({places(keys)}): load_state_dict "
            "ignores them (a param group was removed, or the state was edited)",
            paths))
    warnings += _hyperparam_warnings(view)
    if scheduler is not None:
        warnings += _scheduler_warnings(view, scheduler)
    else:
        notes += _scheduler_elsewhere(view)
    notes += _zero_lr(view)
    return warnings, notes


def _value_warnings(params: list[dict[str, Any]], view: OptimizerStateView,
                    kind: str, notes: list[dict[str, Any]] | None = None,
                    counted: list[Underflow] | None = None) -> list[dict[str, Any]]:
    # (place, what was seen there): places go to "where", both to the message.
    nan: list[tuple[str, str]] = []
    inf: list[tuple[str, str]] = []
    zero: list[tuple[str, str]] = []
    negative: list[tuple[str, str]] = []
    never = _never_stepped(view)
    underflows = find_underflows([p for p in params if p["position"] not in never], view) \
        if counted is None else [u for u in counted if u.param["position"] not in never]
    underflowed = {u.where for u in underflows}
    by_design = zero_by_design(view, kind)
    expected_zero: list[tuple[str, str]] = []  # (place, why)
    unpaired: dict[str, float | None] = {}  # all-zero grad² sums with no first moment

    def visit(where: str, entry: str, rep: dict[str, Any]) -> None:
        if "items" in rep:
            for i, item in enumerate(rep["items"]):
                visit(join(where, i), entry, item)
            return
        if "value" in rep:
            if rep["value"] is None and rep.get("dtype"):  # a 0-d tensor holding NaN or Inf
                nan.append((where, "a NaN or Inf scalar"))
            return
        if rep.get("nan"):
            nan.append((where, f"{rep['nan']} NaN"))
        if rep.get("inf"):
            inf.append((where, f"{rep['inf']} Inf"))
        if rep.get("zeros") == 1.0 and rep.get("numel") and entry not in _MAY_BE_ZERO \
                and where not in underflowed and not stepless:
            why = by_design.get((group, entry)) or by_design.get((group, leaf(entry)))
            if why is not None:
                expected_zero.append((where, why))
            else:
                zero.append((where, ""))
        if entry in _NON_NEGATIVE and rep.get("min") is not None and rep["min"] < 0:
            negative.append((where, f"min {rep['min']:.6g}"))

    for p in params:
        stepless = p["position"] in never  # buffers as created: not zero gradients
        group = p["group"]
        for entry, rep in p["state"].items():
            before = len(zero)
            visit(at(p["position"], entry), entry, rep)
            if len(zero) > before and entry in SQUARED and not any(
                    f in p["state"] for f in SECOND_MOMENTS.get(entry, ())):
                unpaired.setdefault(entry, underflow_below(
                    entry, rep.get("dtype"), view.groups[p["group"]].hyperparams))

    named = {at(p["position"]): p["name"] for p in params if p.get("name")}

    def seen_at(found: list[tuple[str, str]]) -> str:
        # the param's name beside its place, where known: state[3].exp_avg (fc.weight, 2 NaN)
        out = []
        for w, seen in found:
            said = ", ".join(x for x in (named.get(w[:w.find("]") + 1]), seen) if x)
            out.append(f"{w} ({said})" if said else w)
        return places(out)

    def where(found: list[tuple[str, str]]) -> list[str]:
        return [w for w, _ in found]

    def names(found: list[tuple[str, str]]) -> list[str | None]:
        return [named.get(w[:w.find("]") + 1]) for w, _ in found]

    out = []
    if expected_zero and notes is not None:
        whys = sorted({why for _, why in expected_zero})
        bare = [(w, "") for w, _ in expected_zero]
        notes.append(finding(
            "zero_by_design", f"all zeros by design, not a finding: {seen_at(bare)}: "
            f"{'; '.join(whys)}", where(bare), names(bare)))
    if nan:
        out.append(finding("nan", f"NaN in {seen_at(nan)}: the run diverged or a NaN gradient "
                            "got in; resuming from this state spreads it", where(nan), names(nan)))
    if inf:
        out.append(finding("inf", f"Inf in {seen_at(inf)}: an overflow (fp16/bf16 state, or "
                            "exploding gradients); resuming from this state spreads it",
                            where(inf), names(inf)))
    if zero:
        maybe = ""
        if unpaired:
            below = [f"{e}: |grad| below about {t:.2g}" for e, t in unpaired.items()
                     if t is not None]
            maybe = (f"; or so small that their squares underflow to 0 "
                     f"({', '.join(below) or 'in this dtype'}): "
                     f"{'/'.join(unpaired)} keeps no first moment beside it to tell which")
        out.append(finding(
            "zero_buffer", f"all zeros: {seen_at(zero)}: every gradient these params got was "
            "zero, e.g. zero-filled grads reached step() (zero_grad(set_to_none=False) called "
            f"between backward() and step()){maybe}", where(zero), names(zero)))
    out += underflow_warnings(underflows, view, kind)
    if never:
        ps = sorted(never)
        out.append(finding(
            "param_never_stepped", f"{len(ps)} param{'s' * (len(ps) != 1)} "
            f"({places([_label(view, x) for x in ps])}) "
            f"{'have' if len(ps) != 1 else 'has'} state at step 0, as "
            f"{kind if kind != 'unknown' else 'the optimizer'} created it before any step "
            "(Adagrad does so when it is built): "
            f"{'they' if len(ps) != 1 else 'it'} never got a gradient (frozen, not used in "
            "the loss), so all-zero buffers there say nothing about gradient values",
            [at(x, "step") for x in ps], [view.params[x].name for x in ps]))
    if negative:
        out.append(finding(
            "negative_second_moment", f"negative values in {seen_at(negative)}: these running "
            "averages of squares are never negative in a real run; the state was edited or "
            "corrupted", where(negative), names(negative)))
    return out


def _label(view: OptimizerStateView, position: int) -> str:
    """``3``, or ``3 (fc.weight)`` where the param's name is known."""
    name = view.params[position].name
    return f"{position} ({name})" if name else str(position)


def _never_stepped(view: OptimizerStateView) -> set[int]:
    """Positions whose state says step 0: every torch optimizer counts a step before it
    uses it, so this state is as created (Adagrad creates it in its constructor)."""
    out = set()
    for p in view.params:
        if "step" in p.state and any(k != "step" for k in p.state) and (
                as_number(p.state["step"]) == 0.0):
            out.add(p.position)
    return out


def _stateless_by_design(view: OptimizerStateView, kind: str, group: int) -> bool:
    """SGD without momentum keeps no state; LBFGS keeps it on its first param only."""
    hyper = view.groups[group].hyperparams
    if kind == "SGD" and not hyper.get("momentum"):
        return True
    return kind == "LBFGS" or stateless_by_design(hyper, kind)


def _empty_state(view: OptimizerStateView, kind: str,
                 notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not view.params:
        return [finding("no_params", "the param groups hold no parameters")]
    with_state = [p for p in view.params if p.state]
    if not with_state:
        if all(_stateless_by_design(view, kind, g.index) for g in view.groups):
            notes.append(finding("stateless", "SGD without momentum keeps no per-parameter "
                                  "state: an empty state is expected" if kind == "SGD" else
                                  f"{kind} keeps no per-parameter state with these settings "
                                  "(none after real steps with its defaults): an empty state "
                                  "is expected"))
            return []
        return [finding(
            "empty_state", "no parameter has state: the optimizer was never stepped, or every "
            "gradient was None at every step. The zero_grad trap: optimizer.zero_grad() "
            "between loss.backward() and optimizer.step() sets the grads to None (the default "
            "since torch 2.0), so step() skips every parameter")]
    out = []
    missing = [p for p in view.params if not p.state
               and not _stateless_by_design(view, kind, p.group)]
    whole_groups = [g.index for g in view.groups if g.param_keys
                    and not any(p.state for p in view.params if p.group == g.index)
                    and not _stateless_by_design(view, kind, g.index)]
    for g in whole_groups:
        n = len(view.groups[g].param_keys)
        out.append(finding(
            "group_without_state", f"param group {g} ({n} param{'s' * (n != 1)}) has no state "
            "while other groups do: its params never got a gradient (frozen, not in the loss) "
            "or the group was added after the last step", [join("param_groups", g)]))
    rest = [p for p in missing if p.group not in whole_groups]
    if rest:
        where = [at(p.position) for p in rest]
        out.append(finding(
            "param_without_state", f"{len(rest)} param{'s' * (len(rest) != 1)} "
            f"({places([_label(view, p.position) for p in rest])}) have no state while "
            "others do: they never got a gradient (frozen, not used in the loss)", where,
            [p.name for p in rest]))
    return out


def _step_mismatch(view: OptimizerStateView) -> list[dict[str, Any]]:
    steps: dict[float, list[int]] = {}
    for p in view.params:
        if "step" in p.state:
            s = as_number(p.state["step"])
            if s is not None and math.isfinite(s):
                steps.setdefault(s, []).append(p.position)
    if len(steps) < 2:
        return []
    parts = [f"step {s:g}: param{'s' * (len(ps) != 1)} {places([_label(view, x) for x in ps])}"
             for s, ps in sorted(steps.items())]
    return [finding(
        "step_mismatch", f"step counts differ between params ({'; '.join(parts)}): some params "
        "got no gradient at some steps, were added later, or states were merged; bias "
        "correction (Adam-family) uses each param's own step",
        [at(x, "step") for ps in steps.values() for x in ps],
        [view.params[x].name for ps in steps.values() for x in ps])]


def _shape_mismatch(view: OptimizerStateView, kind: str,
                    notes: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Buffers that should follow the param's shape and do not; entries the optimizer
    keeps factored or as preconditioners (``by_design.split_by_shape``) go to a note."""
    if kind == "LBFGS":
        return []
    relations = recorded_relations(kind)
    out = []
    factored: list[str] = []
    for p in view.params:
        shapes, own, pshape = split_by_shape(p, relations)
        if own:
            of = f" of ({', '.join(map(str, pshape))})" if pshape is not None else ""
            factored.append(f"state[{_label(view, p.position)}]: {' x '.join(own)}{of}")
        if len(set(shapes.values())) > 1:
            text = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())
            out.append(finding(
                "shape_mismatch", f"state[{p.position}] buffers differ in shape ({text}): "
                "they all follow the param's shape in torch.optim; the state was edited, or "
                "merged from different models", [at(p.position)], [p.name]))
    if factored and notes is not None:
        notes.append(finding(
            "factored_state", f"{kind} keeps state factored or as preconditioners, not in "
            f"the param's shape (not a mismatch): {places(factored)}"))
    return out


def _hyperparam_warnings(view: OptimizerStateView) -> list[dict[str, Any]]:
    out = []
    for g in view.groups:
        lr = g.hyperparams.get("lr")
        lr_value = as_number(lr) if lr is not None else None
        if lr_value is not None and (not math.isfinite(lr_value) or lr_value < 0):
            out.append(finding(
                "bad_lr", f"param group {g.index} has lr={lr_value}: torch.optim refuses "
                "negative or non-finite learning rates when building an optimizer",
                [join(join("param_groups", g.index), "lr")]))
    return out


def _scheduler_warnings(view: OptimizerStateView,
                        sched: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    n = len(view.groups)
    for field in ("base_lrs", "last_lr"):
        lrs = sched.get(field)
        if isinstance(lrs, list) and len(lrs) != n:
            out.append(finding(
                "scheduler_groups", f"the scheduler's {field} has {len(lrs)} value"
                f"{'s' * (len(lrs) != 1)} but the optimizer has {n} param group"
                f"{'s' * (n != 1)}: they do not belong together", [f"scheduler.{field}"]))
            return out
    last = sched.get("last_lr")
    if isinstance(last, list):
        differ = []
        for g, v in zip(view.groups, last, strict=False):
            lr = as_number(g.hyperparams.get("lr"))
            if lr is not None and isinstance(v, (int, float)) and not math.isclose(
                    lr, v, rel_tol=1e-12, abs_tol=0.0):
                differ.append(f"group {g.index}: lr {lr:g} vs scheduler {v:g}")
        if differ:
            out.append(finding(
                "scheduler_lr_mismatch", f"the scheduler's last lr differs from the group lr "
                f"({places(differ)}): the lr was edited after the scheduler stepped, or the "
                "scheduler is from another run; the next scheduler.step() recomputes the lr",
                ["scheduler.last_lr"]))
    return out


def _scheduler_elsewhere(view: OptimizerStateView) -> list[dict[str, Any]]:
    """``initial_lr`` in the groups means an LR scheduler drove this optimizer."""
    changed = []
    for g in view.groups:
        start, now = as_number(g.hyperparams.get("initial_lr")), as_number(g.hyperparams.get("lr"))
        if start is not None and now is not None and start != now:
            changed.append(f"group {g.index}: {start:g} → {now:g}")
    if not changed:
        return []
    return [finding(
        "scheduler_elsewhere", f"an LR scheduler changed the lr ({places(changed)}) but this "
        "checkpoint holds no scheduler state: restore the scheduler's own state_dict too when "
        "resuming, or the schedule restarts from initial_lr",
        [join(join("param_groups", g.index), "initial_lr") for g in view.groups])]


def _zero_lr(view: OptimizerStateView) -> list[dict[str, Any]]:
    zero = [g.index for g in view.groups if as_number(g.hyperparams.get("lr")) == 0.0]
    if not zero:
        return []
    return [finding(
        "zero_lr", f"lr is 0 in param group{'s' * (len(zero) != 1)} "
        f"{places([str(i) for i in zero])}: those params do not move (frozen on purpose, or a "
        "scheduler decayed the lr to 0)", [join(join("param_groups", i), "lr") for i in zero])]
