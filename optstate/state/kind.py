"""Which torch.optim optimizer wrote a state, inferred from its keys, with how sure we are.

A state_dict does not name its optimizer. What it does hold: the hyperparameter names of
each param group (torch fills in every default, so they are a signature) and the names of
the per-parameter state entries. Each torch.optim class is described below by

- ``core``: hyperparameters every torch version since 1.x writes (all must be present);
- ``full``: every hyperparameter any version writes (nothing else may be present, apart
  from keys LR schedulers and trainers add, see ``_ADDED_BY_OTHERS``);
- ``state``: every state entry it can create (nothing else may be present).

Confidence: ``high`` when exactly one optimizer fits both signatures; ``medium`` when the
keys fit but something had to be assumed (Adam vs AdamW in an older torch, foreign group
keys, no state to confirm); ``low`` when several fit equally; ``none`` for ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

_COMMON = frozenset({"foreach", "maximize", "capturable", "differentiable", "fused"})


@dataclass(frozen=True)
class Signature:
    name: str
    core: frozenset[str]
    full: frozenset[str]
    state: frozenset[str]


def _sig(name: str, core: str, extra: str, state: str, common: bool = True) -> Signature:
    c = frozenset(core.split())
    full = c | frozenset(extra.split()) | (_COMMON if common else frozenset())
    return Signature(name, c, full, frozenset(state.split()))


SIGNATURES: tuple[Signature, ...] = (
    _sig("SGD", "lr momentum dampening weight_decay nesterov", "", "momentum_buffer"),
    _sig("Adam", "lr betas eps weight_decay amsgrad", "decoupled_weight_decay",
         "step exp_avg exp_avg_sq max_exp_avg_sq"),
    _sig("AdamW", "lr betas eps weight_decay amsgrad", "decoupled_weight_decay",
         "step exp_avg exp_avg_sq max_exp_avg_sq"),
    _sig("RMSprop", "lr alpha eps weight_decay momentum centered", "",
         "step square_avg momentum_buffer grad_avg"),
    _sig("Adagrad", "lr lr_decay weight_decay initial_accumulator_value eps", "", "step sum"),
    _sig("Adadelta", "lr rho eps weight_decay", "", "step square_avg acc_delta"),
    _sig("Adamax", "lr betas eps weight_decay", "", "step exp_avg exp_inf"),
    _sig("NAdam", "lr betas eps weight_decay momentum_decay", "decoupled_weight_decay",
         "step mu_product exp_avg exp_avg_sq"),
    _sig("RAdam", "lr betas eps weight_decay", "decoupled_weight_decay",
         "step exp_avg exp_avg_sq"),
    _sig("ASGD", "lr lambd alpha t0 weight_decay", "", "step eta mu ax"),
    _sig("Rprop", "lr etas step_sizes", "", "step prev step_size"),
    _sig("LBFGS", "lr max_iter max_eval tolerance_grad tolerance_change history_size "
         "line_search_fn", "", "func_evals n_iter d t old_dirs old_stps ro H_diag "
         "prev_flat_grad prev_loss al", common=False),
    _sig("SparseAdam", "lr betas eps", "maximize", "step exp_avg exp_avg_sq", common=False),
    _sig("Adafactor", "lr beta2_decay eps d weight_decay", "", "step row_var col_var variance"),
    _sig("Muon", "lr weight_decay momentum nesterov ns_coefficients eps ns_steps",
         "adjust_lr_fn", "momentum_buffer"),
)

# Group keys written by something other than the optimizer: LR schedulers add
# ``initial_lr`` (and OneCycleLR/CyclicLR their own); ``param_names`` is bookkeeping.
_ADDED_BY_OTHERS = frozenset({
    "initial_lr", "max_lr", "min_lr", "base_lr", "max_momentum", "base_momentum",
    "param_names", "name",
})


# transformers.optimization.AdamW (deprecated; Trainer's default before torch's AdamW).
_TRANSFORMERS_ADAMW = frozenset({"lr", "betas", "eps", "weight_decay", "correct_bias"})


@dataclass(frozen=True)
class KindGuess:
    kind: str  # a torch.optim class name, or "unknown"
    confidence: str  # "high" | "medium" | "low" | "none"
    reason: str  # one sentence: why this kind, or what was seen
    candidates: tuple[str, ...] = ()  # every optimizer that fits the keys
    hyperparams: tuple[str, ...] = ()  # group keys seen (sorted)
    state_keys: tuple[str, ...] = ()  # state entry names seen (sorted)
    foreign: tuple[str, ...] = field(default=())  # group keys no torch optimizer writes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("candidates", "hyperparams", "state_keys", "foreign"):
            d[k] = list(d[k])
        return d


def infer_kind(groups: Iterable[dict[str, Any]], state_keys: Iterable[str]) -> KindGuess:
    """Infer the optimizer from group hyperparameters (``{name: value}`` per group, without
    ``params``) and the state entry names seen across all parameters."""
    groups = list(groups)
    hyper: set[str] = set()
    for g in groups:
        hyper.update(str(k) for k in g if k != "params")
    hyper -= {"param_names"}
    seen_state = {str(k) for k in state_keys}
    own = hyper - _ADDED_BY_OTHERS
    sorted_h, sorted_s = tuple(sorted(hyper)), tuple(sorted(seen_state))

    def guess(kind: str, confidence: str, reason: str, candidates: Iterable[str] = (),
              foreign: Iterable[str] = ()) -> KindGuess:
        return KindGuess(kind, confidence, reason, tuple(candidates), sorted_h, sorted_s,
                         tuple(sorted(foreign)))

    exact = [s for s in SIGNATURES if s.core <= own <= s.full and seen_state <= s.state]
    if not exact:
        # Foreign group keys (a trainer's bookkeeping, a subclass's extra option) do not
        # hide an optimizer whose whole signature is there.
        if _TRANSFORMERS_ADAMW <= own and seen_state <= {"step", "exp_avg", "exp_avg_sq"}:
            return guess("AdamW", "medium", "the keys of transformers.optimization.AdamW "
                         "(correct_bias), the AdamW that Hugging Face Trainer used before "
                         "torch's; its state has torch.optim.AdamW's layout", ["AdamW"],
                         sorted(own - _TRANSFORMERS_ADAMW))
        loose = [s for s in SIGNATURES if s.core <= own and seen_state <= s.state]
        best = _narrow(loose, own)
        if len(best) == 1:
            sig = best[0]
            extra = sorted(own - sig.full)
            # The state entries confirm it only if no other optimizer could write them all.
            unique = bool(seen_state) and not any(
                seen_state <= other.state for other in SIGNATURES if other is not sig)
            return guess(sig.name, "medium" if unique else "low",
                         f"the {sig.name} hyperparameters and state entries are all there, "
                         f"plus group keys torch's {sig.name} does not write: "
                         f"{', '.join(extra)}" + ("" if unique else "; another optimizer "
                                                  "with the same state layout may have "
                                                  "written it"), [sig.name], extra)
        return _unknown(guess, own, seen_state, best)
    exact = _narrow(exact, own)
    names = [s.name for s in exact]
    if names == ["Adam", "AdamW"]:
        return _adam_or_adamw(guess, groups, seen_state)
    if len(exact) == 1:
        sig = exact[0]
        if not seen_state:
            return guess(sig.name, "high", f"the group hyperparameters are exactly those of "
                         f"{sig.name} (no state entries yet to confirm)", names)
        return guess(sig.name, "high", f"group hyperparameters and state entries "
                     f"({', '.join(sorted_s)}) match {sig.name} only", names)
    why = ("no state entries to tell them apart" if not seen_state
           else f"state entries {', '.join(sorted_s)} fit all of them")
    return guess(names[0], "low", f"the keys fit {' and '.join(names)}: {why}", names)


def _narrow(sigs: list[Signature], own: set[str]) -> list[Signature]:
    """Among fitting signatures, keep those whose core explains the most group keys (RAdam's
    keys are a subset of NAdam's: with ``momentum_decay`` present it is NAdam)."""
    if len(sigs) < 2:
        return sigs
    top = max(len(s.core & own) for s in sigs)
    return [s for s in sigs if len(s.core & own) == top]


def _adam_or_adamw(guess: Any, groups: list[dict[str, Any]], state: set[str]) -> KindGuess:
    cands = ("Adam", "AdamW")
    dwd = {g.get("decoupled_weight_decay") for g in groups}
    if dwd == {True}:
        return guess("AdamW", "high", "Adam-family keys with decoupled_weight_decay=True "
                     "(AdamW, or Adam(decoupled_weight_decay=True), which is the same update)",
                     cands)
    if dwd == {False}:
        return guess("Adam", "high", "Adam-family keys with decoupled_weight_decay=False",
                     cands)
    wds = {g.get("weight_decay") for g in groups}
    if wds == {0} or wds == {0.0}:
        return guess("Adam", "medium", "Adam and AdamW write the same keys in this torch "
                     "version; weight_decay=0 (Adam's default), where the two are the same "
                     "update", cands)
    if wds == {0.01}:
        return guess("AdamW", "medium", "Adam and AdamW write the same keys in this torch "
                     "version; weight_decay=0.01 is AdamW's default", cands)
    return guess("Adam", "low", "Adam and AdamW write the same keys in this torch version and "
                 f"weight_decay={sorted(map(str, wds))[0]} is neither's default: it may be "
                 "either", cands)


def _unknown(guess: Any, own: set[str], state: set[str], near: list[Signature]) -> KindGuess:
    """No torch.optim signature fits: say what was seen and what it resembles."""
    scored = sorted(
        SIGNATURES,
        key=lambda s: -(len(s.state & state) * 2 + len(s.core & own) - len(state - s.state)),
    )
    closest = scored[0]
    seen = (f"group keys {', '.join(sorted(own)) or '(none)'}; state entries "
            f"{', '.join(sorted(state)) or '(none)'}")
    if near:
        names = " or ".join(s.name for s in near)
        return guess("unknown", "none", f"not a torch.optim optimizer as saved by torch, but it "
                     f"has the keys of {names} ({seen})", [s.name for s in near])
    hint = ""
    if closest.state & state or len(closest.core & own) >= 2:
        hint = f"; closest torch.optim optimizer: {closest.name}"
    return guess("unknown", "none", f"no torch.optim optimizer writes these keys ({seen}){hint}",
                 [])
