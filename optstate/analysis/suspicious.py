"""Warnings about an optimizer state: things that are legal but usually a sign of trouble.

Each warning is ``{"code", "message", "where"}``: a stable code for scripts, one line for
people (what was seen and the usual cause), and the places it concerns. Checks that need
tensor statistics (NaN, Inf, all-zero buffers, negative second moments) use the entry
reports already computed, so they cover what was read (all params unless filtered, none
under ``--no-stats``); the structural checks always cover the whole state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optstate.base.paths import join
from optstate.state.report import materialize, plain, tensor_like
from optstate.state.view import OptimizerStateView

# Entries that are running averages of squares (or of |grad|): never negative in a real run.
_NON_NEGATIVE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf",
                           "acc_delta", "row_var", "col_var", "variance", "step_size"})
# Entries whose shape legitimately differs from the param's other buffers.
_OWN_SHAPE = frozenset({"row_var", "col_var", "variance"})
# Entries that may legitimately be all zeros.
_MAY_BE_ZERO = frozenset({"ax", "prev"})
_SHOW = 6  # places listed in a message before "and N more"

# Second moments (running averages of grad², or their max) and the entries beside them
# that show the param did get gradients: where those are non-zero and the second moment
# is exactly 0, grad² underflowed; it was not a zero gradient. Adamax's exp_inf is not
# here: it keeps max(beta2·exp_inf, |grad| + eps), |grad| rather than its square, and
# never 0 after a step while eps > 0.
_SECOND_MOMENTS = {"exp_avg_sq": ("exp_avg",), "max_exp_avg_sq": ("exp_avg",),
                   "square_avg": ("grad_avg", "momentum_buffer")}
# Entries that accumulate grad² (weighted by the hyperparameter named, or 1).
_SQUARED = {"exp_avg_sq": "betas", "max_exp_avg_sq": "betas", "square_avg": "alpha",
            "sum": None}


def _at(position: int, entry: str | None = None) -> str:
    """``state[3]`` / ``state[3].exp_avg``: a param's state by position (the key
    load_state_dict matches), in the one path syntax."""
    path = join("state", position)
    return path if entry is None else join(path, entry)


def _places(items: list[str]) -> str:
    if len(items) <= _SHOW:
        return ", ".join(items)
    return ", ".join(items[:_SHOW]) + f" and {len(items) - _SHOW} more"


def _warning(code: str, message: str, where: Iterable[str] = ()) -> dict[str, Any]:
    return {"code": code, "message": message, "where": list(where)}


def state_warnings(view: OptimizerStateView, kind: str, params: list[dict[str, Any]],
                   scheduler: dict[str, Any] | None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(warnings, notes) for a state; notes are facts worth knowing, not problems."""
    warnings: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    if view.legacy_ids:
        notes.append(_warning(
            "legacy_ids", "state is keyed by id(param) (torch < 1.6); parameters are shown by "
            "position, which is how load_state_dict matches them"))
    warnings += _value_warnings(params, view, kind)
    warnings += _empty_state(view, kind, notes)
    warnings += _step_mismatch(view)
    warnings += _shape_mismatch(view, kind)
    if view.orphan_keys:
        keys = [repr(plain(k)) for k in view.orphan_keys]
        paths = [join("state", k) for k in view.orphan_keys]
        warnings.append(_warning(
            "orphan_state", f"state holds entries for {len(keys)} key"
            f"{'s' * (len(keys) != 1)} in no param group ({_places(keys)}): load_state_dict "
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
                    kind: str) -> list[dict[str, Any]]:
    # (place, what was seen there): places go to "where", both to the message.
    nan: list[tuple[str, str]] = []
    inf: list[tuple[str, str]] = []
    zero: list[tuple[str, str]] = []
    negative: list[tuple[str, str]] = []
    never = _never_stepped(view)
    underflows = _underflows([p for p in params if p["position"] not in never], view)
    underflowed = {u.where for u in underflows}
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
            zero.append((where, ""))
        if entry in _NON_NEGATIVE and rep.get("min") is not None and rep["min"] < 0:
            negative.append((where, f"min {rep['min']:.6g}"))

    for p in params:
        stepless = p["position"] in never  # buffers as created: not zero gradients
        for entry, rep in p["state"].items():
            before = len(zero)
            visit(_at(p["position"], entry), entry, rep)
            if len(zero) > before and entry in _SQUARED and not any(
                    f in p["state"] for f in _SECOND_MOMENTS.get(entry, ())):
                unpaired.setdefault(entry, _underflow_below(
                    entry, rep.get("dtype"), view.groups[p["group"]].hyperparams))

    def places(found: list[tuple[str, str]]) -> str:
        return _places([f"{w} ({seen})" if seen else w for w, seen in found])

    def where(found: list[tuple[str, str]]) -> list[str]:
        return [w for w, _ in found]

    out = []
    if nan:
        out.append(_warning("nan", f"NaN in {places(nan)}: the run diverged or a NaN gradient "
                            "got in; resuming from this state spreads it", where(nan)))
    if inf:
        out.append(_warning("inf", f"Inf in {places(inf)}: an overflow (fp16/bf16 state, or "
                            "exploding gradients); resuming from this state spreads it",
                            where(inf)))
    if zero:
        maybe = ""
        if unpaired:
            below = [f"{e}: |grad| below about {t:.2g}" for e, t in unpaired.items()
                     if t is not None]
            maybe = (f"; or so small that their squares underflow to 0 "
                     f"({', '.join(below) or 'in this dtype'}): "
                     f"{'/'.join(unpaired)} keeps no first moment beside it to tell which")
        out.append(_warning(
            "zero_buffer", f"all zeros: {places(zero)}: every gradient these params got was "
            "zero, e.g. zero-filled grads reached step() (zero_grad(set_to_none=False) called "
            f"between backward() and step()){maybe}", where(zero)))
    out += _underflow_warnings(underflows, view, kind)
    if never:
        ps = sorted(never)
        out.append(_warning(
            "param_never_stepped", f"{len(ps)} param{'s' * (len(ps) != 1)} "
            f"({_places([str(x) for x in ps])}) {'have' if len(ps) != 1 else 'has'} state at "
            f"step 0, as {kind if kind != 'unknown' else 'the optimizer'} created it before "
            "any step (Adagrad does so when it is built): "
            f"{'they' if len(ps) != 1 else 'it'} never got a gradient (frozen, not used in "
            "the loss), so all-zero buffers there say nothing about gradient values",
            [_at(x, "step") for x in ps]))
    if negative:
        out.append(_warning(
            "negative_second_moment", f"negative values in {places(negative)}: these running "
            "averages of squares are never negative in a real run; the state was edited or "
            "corrupted", where(negative)))
    return out


def _never_stepped(view: OptimizerStateView) -> set[int]:
    """Positions whose state says step 0: every torch optimizer counts a step before it
    uses it, so this state is as created (Adagrad creates it in its constructor)."""
    out = set()
    for p in view.params:
        if "step" in p.state and any(k != "step" for k in p.state) and (
                _scalar(p.state["step"]) == 0.0):
            out.add(p.position)
    return out


@dataclass
class _Underflow:
    """A second moment that is exactly 0 where its first moment is not."""

    param: dict[str, Any]  # the param's report (position, group, name, state)
    second: str
    first: str
    where: str
    elements: int  # elements with first != 0 and second == 0
    numel: int
    first_max: float  # max |first| over those elements


def _underflows(params: list[dict[str, Any]], view: OptimizerStateView) -> list[_Underflow]:
    """Second moments that underflowed, from the statistics already read; elements are
    counted on the tensors only when the statistics alone cannot tell (some zeros)."""
    found = []
    for p in params:
        st = p["state"]
        for second, firsts in _SECOND_MOMENTS.items():
            rep = st.get(second)
            if not rep or not rep.get("zeros") or not rep.get("numel"):
                continue  # not read (--no-stats), empty, or no zeros at all
            for first in firsts:
                frep = st.get(first)
                if (not frep or frep.get("zeros") is None or frep.get("zeros") == 1.0
                        or frep.get("numel") != rep["numel"]):
                    continue
                n, biggest = rep["numel"], _max_abs(frep)
                if rep["zeros"] != 1.0 or frep["zeros"] != 0.0:
                    n, biggest = _count_underflowed(view, p["position"], first, second)
                if n:
                    found.append(_Underflow(p, second, first,
                                            _at(p["position"], second), n,
                                            rep["numel"], biggest))
                break
    return found


def _count_underflowed(view: OptimizerStateView, position: int, first: str,
                       second: str) -> tuple[int, float]:
    """(elements with first != 0 and second == 0, max |first| over them)."""
    state = view.params[position].state
    n, biggest = 0, 0.0
    try:
        m, v = materialize(tensor_like(state[first])), materialize(tensor_like(state[second]))
        m, v = m.reshape(-1), v.reshape(-1)
        for start in range(0, m.numel(), _CHUNK):  # masks of a bounded size
            a, b = m[start:start + _CHUNK], v[start:start + _CHUNK]
            mask = (a != 0) & (b == 0)
            k = int(mask.sum())
            if k:
                n += k
                biggest = max(biggest, float(a[mask].abs().max()))
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return 0, 0.0  # sparse, meta or mismatched: no element-wise answer
    return n, biggest


_CHUNK = 1 << 20


def _underflow_below(entry: str, dtype: Any, hyper: dict[str, Any]) -> float | None:
    """|grad| under which ``weight·grad²`` rounds to 0 in ``dtype`` (weight: 1 - beta2,
    1 - alpha, or 1 for Adagrad's sum): sqrt(smallest subnormal / weight)."""
    import torch

    dt = getattr(torch, str(dtype or "float32"), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        return None
    info = torch.finfo(dt)
    weight: float | None = 1.0
    name = _SQUARED.get(entry)
    if name == "betas":
        betas = hyper.get("betas")
        beta2 = _scalar(betas[1]) if isinstance(betas, (list, tuple)) and len(betas) > 1 \
            else None
        weight = None if beta2 is None else 1.0 - beta2
    elif name == "alpha":
        alpha = _scalar(hyper.get("alpha"))
        weight = None if alpha is None else 1.0 - alpha
    if weight is None or weight <= 0:
        return None
    return math.sqrt(info.tiny * info.eps / weight)


def _param_labels(found: list[_Underflow]) -> str:
    """Parameters by name where the state has names, else by group and position
    (``group 0: params 0–44, 47``)."""
    if all(u.param.get("name") for u in found):
        return _places([f"{u.param['name']} (group {u.param['group']}, param "
                        f"{u.param['position']})" for u in found])
    by_group: dict[int, list[int]] = {}
    for u in found:
        by_group.setdefault(u.param["group"], []).append(u.param["position"])
    return "; ".join(f"group {g}: param{'s' * (len(ps) != 1)} {_ranges(ps)}"
                     for g, ps in by_group.items())


def _ranges(positions: list[int]) -> str:
    out: list[str] = []
    for x in sorted(set(positions)):
        if out and out[-1][1] == x - 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))  # type: ignore[arg-type]
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in out)  # type: ignore[misc]


def _underflow_warnings(found: list[_Underflow], view: OptimizerStateView,
                        kind: str) -> list[dict[str, Any]]:
    out = []
    pairs: dict[tuple[str, str], list[_Underflow]] = {}
    for u in found:
        pairs.setdefault((u.second, u.first), []).append(u)
    for (second, first), us in pairs.items():
        n = len(us)
        partial = [u for u in us if u.elements < u.numel]
        counts = ""
        if partial:
            counts = "; " + _places([f"{_one_label(u)}: {u.elements:,} of {u.numel:,} elements"
                                     for u in partial])
        first_group = view.groups[us[0].param["group"]].hyperparams
        dtype = us[0].param["state"][second].get("dtype") or "float32"
        below = _underflow_below(second, dtype, first_group)
        biggest = max(u.first_max for u in us)
        cause = (f"the squared gradients underflowed: {dtype} holds nothing below "
                 f"{_subnormal(dtype):.2g}"
                 + (f", so the grad² term is 0 for |grad| below about {below:.2g}"
                    if below is not None else "")
                 + f". These params got gradients, tiny ones (max |{first}| {biggest:.3g} "
                 "there), not zero ones")
        out.append(_warning(
            "second_moment_underflow",
            f"{second} is exactly 0 where {first} is not, in {n} param{'s' * (n != 1)} "
            f"({_param_labels(us)}{counts}): {cause}. {_step_effect(second, us, view, kind)}",
            [u.where for u in us]))
    return out


def _one_label(u: _Underflow) -> str:
    p = u.param
    if p.get("name"):
        return f"{p['name']} (group {p['group']}, param {p['position']})"
    return f"param {p['position']}"


def _subnormal(dtype: str) -> float:
    import torch

    info = torch.finfo(getattr(torch, dtype, torch.float32))
    return info.tiny * info.eps


def _max_abs(rep: dict[str, Any]) -> float:
    return max(abs(rep.get("max") or 0.0), abs(rep.get("min") or 0.0))


def _step_effect(second: str, us: list[_Underflow], view: OptimizerStateView,
                 kind: str) -> str:
    """What a 0 second moment does to the step, in torch's own formula for ``kind``."""
    if second == "square_avg":
        return ("With square_avg 0, RMSprop's denominator √square_avg + eps (centered: "
                "√(square_avg - grad_avg²) + eps) is eps alone: the update is lr·grad/eps "
                "(with momentum, a momentum buffer of grad/eps), a plain gradient step "
                "scaled by 1/eps")
    if kind == "NAdam":
        return ("With the second moment 0, NAdam's denominator √v̂ + eps is eps alone: its "
                "Nesterov momentum step (a mix of grad and exp_avg) is scaled by 1/eps")
    if kind == "RAdam":
        return ("With the second moment 0, once RAdam's rectification is on (from step 6 "
                "with beta2 = 0.999) its update lr·r·m̂·√(1 - beta2^step)/(√v + eps) is "
                "lr·r·m̂·√(1 - beta2^step)/eps, m̂ = exp_avg/(1 - beta1^step): a momentum "
                "step scaled by 1/eps; before that it is a plain momentum step")
    if kind not in ("Adam", "AdamW"):
        return ("With the second moment 0, a denominator √v + eps is eps alone: the step "
                "is the momentum scaled by 1/eps")
    text = ("With the second moment 0, the Adam update lr·m̂/(√v̂ + eps) is lr·m̂/eps "
            "(m̂ = exp_avg/(1 - beta1^step)): a momentum step scaled by 1/eps")
    bound = _adam_step_bound(us, view)
    if bound is not None:
        text += f", at most {bound:.4g} per element here, so these params barely move"
    eps = [_scalar(view.groups[u.param["group"]].hyperparams.get("eps")) for u in us]
    below = _underflow_below(second, us[0].param["state"][second].get("dtype"),
                             view.groups[us[0].param["group"]].hyperparams)
    if below is not None and all(e is not None and e > below for e in eps):
        text += (f" (√v̂ would be below about {below:.2g} without the underflow, far under "
                 "eps, so the step is much the same: the gradients are what vanished)")
    decays = []
    for g in {u.param["group"] for u in us}:
        hyper = view.groups[g].hyperparams
        wd = _scalar(hyper.get("weight_decay"))
        if wd and (kind == "AdamW" or hyper.get("decoupled_weight_decay") is True):
            decays.append(g)
    if decays:
        text += ("; the decoupled weight decay still applies (p ← p·(1 - lr·weight_decay) "
                 "each step), so these weights shrink while the gradient barely moves them")
    return text


def _adam_step_bound(us: list[_Underflow], view: OptimizerStateView) -> float | None:
    """max over ``us`` of lr·max|exp_avg|/(1 - beta1^step)/eps, or None if unknown."""
    bounds = []
    for u in us:
        hyper = view.groups[u.param["group"]].hyperparams
        lr, eps = _scalar(hyper.get("lr")), _scalar(hyper.get("eps"))
        betas = hyper.get("betas")
        beta1 = _scalar(betas[0]) if isinstance(betas, (list, tuple)) and betas else None
        step = _scalar(view.params[u.param["position"]].state.get("step"))
        if None in (lr, eps, beta1, step) or not eps or not step or beta1 >= 1:  # type: ignore[operator]
            return None
        correction = 1.0 - beta1 ** step  # type: ignore[operator]
        if correction <= 0:
            return None
        bounds.append(lr * u.first_max / correction / eps)  # type: ignore[operator]
    return max(bounds) if bounds else None


def _stateless_by_design(view: OptimizerStateView, kind: str, group: int) -> bool:
    """SGD without momentum keeps no state; LBFGS keeps it on its first param only."""
    hyper = view.groups[group].hyperparams
    if kind == "SGD" and not hyper.get("momentum"):
        return True
    return kind == "LBFGS"


def _empty_state(view: OptimizerStateView, kind: str,
                 notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not view.params:
        return [_warning("no_params", "the param groups hold no parameters")]
    with_state = [p for p in view.params if p.state]
    if not with_state:
        if all(_stateless_by_design(view, kind, g.index) for g in view.groups):
            notes.append(_warning("stateless", "SGD without momentum keeps no per-parameter "
                                  "state: an empty state is expected"))
            return []
        return [_warning(
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
        out.append(_warning(
            "group_without_state", f"param group {g} ({n} param{'s' * (n != 1)}) has no state "
            "while other groups do: its params never got a gradient (frozen, not in the loss) "
            "or the group was added after the last step", [join("param_groups", g)]))
    rest = [p for p in missing if p.group not in whole_groups]
    if rest:
        where = [_at(p.position) for p in rest]
        out.append(_warning(
            "param_without_state", f"{len(rest)} param{'s' * (len(rest) != 1)} "
            f"({_places([str(p.position) for p in rest])}) have no state while others do: they "
            "never got a gradient (frozen, not used in the loss)", where))
    return out


def _scalar(value: Any) -> float | None:
    t = tensor_like(value)
    if t is not None:
        if len(t.shape) != 0 or getattr(t, "is_meta", False):
            return None
        value = materialize(t).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _step_mismatch(view: OptimizerStateView) -> list[dict[str, Any]]:
    steps: dict[float, list[int]] = {}
    for p in view.params:
        if "step" in p.state:
            s = _scalar(p.state["step"])
            if s is not None and math.isfinite(s):
                steps.setdefault(s, []).append(p.position)
    if len(steps) < 2:
        return []
    parts = [f"step {s:g}: param{'s' * (len(ps) != 1)} {_places([str(x) for x in ps])}"
             for s, ps in sorted(steps.items())]
    return [_warning(
        "step_mismatch", f"step counts differ between params ({'; '.join(parts)}): some params "
        "got no gradient at some steps, were added later, or states were merged; bias "
        "correction (Adam-family) uses each param's own step",
        [_at(x, "step") for ps in steps.values() for x in ps])]


def _shape_mismatch(view: OptimizerStateView, kind: str) -> list[dict[str, Any]]:
    if kind == "LBFGS":
        return []
    out = []
    for p in view.params:
        shapes: dict[str, tuple[int, ...]] = {}
        for k, v in p.state.items():
            t = tensor_like(v)
            if t is not None and len(t.shape) > 0 and str(k) not in _OWN_SHAPE:
                shapes[str(k)] = tuple(t.shape)
        if len(set(shapes.values())) > 1:
            text = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())
            out.append(_warning(
                "shape_mismatch", f"state[{p.position}] buffers differ in shape ({text}): "
                "they all follow the param's shape in torch.optim; the state was edited, or "
                "merged from different models", [_at(p.position)]))
    return out


def _hyperparam_warnings(view: OptimizerStateView) -> list[dict[str, Any]]:
    out = []
    for g in view.groups:
        lr = g.hyperparams.get("lr")
        lr_value = _scalar(lr) if lr is not None else None
        if lr_value is not None and (not math.isfinite(lr_value) or lr_value < 0):
            out.append(_warning(
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
            out.append(_warning(
                "scheduler_groups", f"the scheduler's {field} has {len(lrs)} value"
                f"{'s' * (len(lrs) != 1)} but the optimizer has {n} param group"
                f"{'s' * (n != 1)}: they do not belong together", [f"scheduler.{field}"]))
            return out
    last = sched.get("last_lr")
    if isinstance(last, list):
        differ = []
        for g, v in zip(view.groups, last, strict=False):
            lr = _scalar(g.hyperparams.get("lr"))
            if lr is not None and isinstance(v, (int, float)) and not math.isclose(
                    lr, v, rel_tol=1e-12, abs_tol=0.0):
                differ.append(f"group {g.index}: lr {lr:g} vs scheduler {v:g}")
        if differ:
            out.append(_warning(
                "scheduler_lr_mismatch", f"the scheduler's last lr differs from the group lr "
                f"({_places(differ)}): the lr was edited after the scheduler stepped, or the "
                "scheduler is from another run; the next scheduler.step() recomputes the lr",
                ["scheduler.last_lr"]))
    return out


def _scheduler_elsewhere(view: OptimizerStateView) -> list[dict[str, Any]]:
    """``initial_lr`` in the groups means an LR scheduler drove this optimizer."""
    changed = []
    for g in view.groups:
        start, now = _scalar(g.hyperparams.get("initial_lr")), _scalar(g.hyperparams.get("lr"))
        if start is not None and now is not None and start != now:
            changed.append(f"group {g.index}: {start:g} → {now:g}")
    if not changed:
        return []
    return [_warning(
        "scheduler_elsewhere", f"an LR scheduler changed the lr ({_places(changed)}) but this "
        "checkpoint holds no scheduler state: restore the scheduler's own state_dict too when "
        "resuming, or the schedule restarts from initial_lr",
        [join(join("param_groups", g.index), "initial_lr") for g in view.groups])]


def _zero_lr(view: OptimizerStateView) -> list[dict[str, Any]]:
    zero = [g.index for g in view.groups if _scalar(g.hyperparams.get("lr")) == 0.0]
    if not zero:
        return []
    return [_warning(
        "zero_lr", f"lr is 0 in param group{'s' * (len(zero) != 1)} "
        f"{_places([str(i) for i in zero])}: those params do not move (frozen on purpose, or a "
        "scheduler decayed the lr to 0)", [join(join("param_groups", i), "lr") for i in zero])]
