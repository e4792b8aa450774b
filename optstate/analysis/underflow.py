"""Second moments that underflowed: where ``exp_avg_sq`` (or another running average of
grad²) is exactly 0 beside a first moment that is not, grad² rounded to 0 in the state's
dtype; it was not a zero gradient. Found from the entry reports and the state's tensors,
said as one inspect warning with what the step does there."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optstate.analysis.findings import as_number, at, finding, places
from optstate.io.native_tensor import as_torch, dtype_name, is_native, is_tensor
from optstate.numeric.views import repeated_view
from optstate.state.view import OptimizerStateView

# The smallest positive (subnormal) number of each floating dtype, torch.finfo's
# tiny * eps, by name: known without importing torch (tests/test_no_torch.py checks
# them against torch.finfo).
SUBNORMAL = {"float64": 2.0 ** -1074, "float32": 2.0 ** -149, "float16": 2.0 ** -24,
             "bfloat16": 2.0 ** -133, "float8_e4m3fn": 2.0 ** -9, "float8_e5m2": 2.0 ** -16,
             "float8_e4m3fnuz": 2.0 ** -10, "float8_e5m2fnuz": 2.0 ** -18}

# Second moments (running averages of grad², or their max) and the entries beside them
# that show the param did get gradients: where those are non-zero and the second moment
# is exactly 0, grad² underflowed; it was not a zero gradient. Adamax's exp_inf is not
# here: it keeps max(beta2·exp_inf, |grad| + eps), |grad| rather than its square, and
# never 0 after a step while eps > 0.
SECOND_MOMENTS = {"exp_avg_sq": ("exp_avg",), "max_exp_avg_sq": ("exp_avg",),
                  "square_avg": ("grad_avg", "momentum_buffer")}
# Entries that accumulate grad² (weighted by the hyperparameter named, or 1).
SQUARED = {"exp_avg_sq": "betas", "max_exp_avg_sq": "betas", "square_avg": "alpha",
           "sum": None}


@dataclass
class Underflow:
    """A second moment that is exactly 0 where its first moment is not."""

    param: dict[str, Any]  # the param's report (position, group, name, state)
    second: str
    first: str
    where: str
    elements: int  # elements with first != 0 and second == 0
    numel: int
    first_max: float  # max |first| over those elements


def find_underflows(params: list[dict[str, Any]], view: OptimizerStateView) -> list[Underflow]:
    """Second moments that underflowed, from the statistics already read; elements are
    counted on the tensors only when the statistics alone cannot tell (some zeros)."""
    found = []
    for p in params:
        st = p["state"]
        for second, firsts in SECOND_MOMENTS.items():
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
                    found.append(Underflow(p, second, first,
                                            at(p["position"], second), n,
                                            rep["numel"], biggest))
                break
    return found


def _count_underflowed(view: OptimizerStateView, position: int, first: str,
                       second: str) -> tuple[int, float]:
    """(elements with first != 0 and second == 0, max |first| over them)."""
    state = view.params[position].state
    m, v = state[first], state[second]
    if any(is_tensor(t) and repeated_view(t) for t in (m, v)):
        # a view repeating stored elements (expand, overlapping strides) claims far more
        # elements than its file stores: not counted element by element, by either reader
        return 0, 0.0
    if is_native(m) and is_native(v) and m.shape == v.shape:  # numpy counts them
        try:
            return _count_native(m, v)
        except ImportError:  # numpy is optional: torch counts them, as below
            m, v = as_torch(m), as_torch(v)
    n, biggest = 0, 0.0
    try:
        m, v = as_torch(m).reshape(-1), as_torch(v).reshape(-1)
        for start in range(0, m.numel(), _CHUNK):  # masks of a bounded size
            a, b = m[start:start + _CHUNK], v[start:start + _CHUNK]
            mask = (a != 0) & (b == 0)
            k = int(mask.sum())
            if k:
                n += k
                # in float64: exact, and torch has no max of float8
                biggest = max(biggest, float(a[mask].double().abs().max()))
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return 0, 0.0  # sparse, meta or mismatched: no element-wise answer
    return n, biggest


def _count_native(m: Any, v: Any) -> tuple[int, float]:
    """``_count_underflowed`` over two same-shape NativeTensors, in numpy: the kernels' blocks and
    their decoding (bfloat16 and float8 exactly as torch converts them)."""
    import numpy as np

    from optstate.numeric import native_kernels as nk
    from optstate.numeric.kernels import index_blocks

    n, biggest = 0, 0.0
    dm, dv = nk.decoder(np, m.dtype.name), nk.decoder(np, v.dtype.name)
    for bm, bv in nk.array_blocks((m, v), _CHUNK, index_blocks):  # masks of a bounded size
        a, b = np.empty(bm.shape), np.empty(bv.shape)
        dm(a, bm)
        dv(b, bv)
        mask = (a != 0) & (b == 0)
        k = int(np.count_nonzero(mask))
        if k:
            n += k
            biggest = max(biggest, float(np.abs(a[mask]).max()))
    return n, biggest


_CHUNK = 1 << 20


def underflow_below(entry: str, dtype: Any, hyper: dict[str, Any]) -> float | None:
    """|grad| under which ``weight·grad²`` rounds to 0 in ``dtype`` (weight: 1 - beta2,
    1 - alpha, or 1 for Adagrad's sum): sqrt(smallest subnormal / weight)."""
    smallest = SUBNORMAL.get(dtype_name(dtype or "float32"))
    if smallest is None:  # not a floating dtype
        return None
    weight: float | None = 1.0
    name = SQUARED.get(entry)
    if name == "betas":
        betas = hyper.get("betas")
        beta2 = as_number(betas[1]) if isinstance(betas, (list, tuple)) and len(betas) > 1 \
            else None
        weight = None if beta2 is None else 1.0 - beta2
    elif name == "alpha":
        alpha = as_number(hyper.get("alpha"))
        weight = None if alpha is None else 1.0 - alpha
    if weight is None or weight <= 0:
        return None
    return math.sqrt(smallest / weight)


def _param_labels(found: list[Underflow]) -> str:
    """Parameters by name where the state has names, else by group and position
    (``group 0: params 0–44, 47``)."""
    if all(u.param.get("name") for u in found):
        return places([f"{u.param['name']} (group {u.param['group']}, param "
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


def underflow_warnings(found: list[Underflow], view: OptimizerStateView,
                        kind: str) -> list[dict[str, Any]]:
    out = []
    pairs: dict[tuple[str, str], list[Underflow]] = {}
    for u in found:
        pairs.setdefault((u.second, u.first), []).append(u)
    for (second, first), us in pairs.items():
        n = len(us)
        partial = [u for u in us if u.elements < u.numel]
        counts = ""
        if partial:
            counts = "; " + places([f"{_one_label(u)}: {u.elements:,} of {u.numel:,} elements"
                                     for u in partial])
        first_group = view.groups[us[0].param["group"]].hyperparams
        dtype = us[0].param["state"][second].get("dtype") or "float32"
        below = underflow_below(second, dtype, first_group)
        biggest = max(u.first_max for u in us)
        cause = (f"the squared gradients underflowed: {dtype} holds nothing below "
                 f"{_subnormal(dtype):.2g}"
                 + (f", so the grad² term is 0 for |grad| below about {below:.2g}"
                    if below is not None else "")
                 + f". These params got gradients, tiny ones (max |{first}| {biggest:.3g} "
                 "there), not zero ones")
        out.append(finding(
            "second_moment_underflow",
            f"{second} is exactly 0 where {first} is not, in {n} param{'s' * (n != 1)} "
            f"({_param_labels(us)}{counts}): {cause}. {_step_effect(second, us, view, kind)}",
            [u.where for u in us], [u.param.get("name") for u in us]))
    return out


def _one_label(u: Underflow) -> str:
    p = u.param
    if p.get("name"):
        return f"{p['name']} (group {p['group']}, param {p['position']})"
    return f"param {p['position']}"


def _subnormal(dtype: str) -> float:
    return SUBNORMAL.get(dtype_name(dtype), SUBNORMAL["float32"])


def _max_abs(rep: dict[str, Any]) -> float:
    return max(abs(rep.get("max") or 0.0), abs(rep.get("min") or 0.0))


def _step_effect(second: str, us: list[Underflow], view: OptimizerStateView,
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
    eps = [as_number(view.groups[u.param["group"]].hyperparams.get("eps")) for u in us]
    below = underflow_below(second, us[0].param["state"][second].get("dtype"),
                             view.groups[us[0].param["group"]].hyperparams)
    if below is not None and all(e is not None and e > below for e in eps):
        text += (f" (√v̂ would be below about {below:.2g} without the underflow, far under "
                 "eps, so the step is much the same: the gradients are what vanished)")
    decays = []
    for g in {u.param["group"] for u in us}:
        hyper = view.groups[g].hyperparams
        wd = as_number(hyper.get("weight_decay"))
        if wd and (kind == "AdamW" or hyper.get("decoupled_weight_decay") is True):
            decays.append(g)
    if decays:
        text += ("; the decoupled weight decay still applies (p ← p·(1 - lr·weight_decay) "
                 "each step), so these weights shrink while the gradient barely moves them")
    return text


def _adam_step_bound(us: list[Underflow], view: OptimizerStateView) -> float | None:
    """max over ``us`` of lr·max|exp_avg|/(1 - beta1^step)/eps, or None if unknown."""
    bounds = []
    for u in us:
        hyper = view.groups[u.param["group"]].hyperparams
        lr, eps = as_number(hyper.get("lr")), as_number(hyper.get("eps"))
        betas = hyper.get("betas")
        beta1 = as_number(betas[0]) if isinstance(betas, (list, tuple)) and betas else None
        step = as_number(view.params[u.param["position"]].state.get("step"))
        if None in (lr, eps, beta1, step) or not eps or not step or beta1 >= 1:  # type: ignore[operator]
            return None
        correction = 1.0 - beta1 ** step  # type: ignore[operator]
        if correction <= 0:
            return None
        bounds.append(lr * u.first_max / correction / eps)  # type: ignore[operator]
    return max(bounds) if bounds else None
