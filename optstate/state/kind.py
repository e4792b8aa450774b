"""Which optimizer wrote a state, inferred from its keys, with how sure we are.

A state_dict does not name its optimizer. What it does hold: the hyperparameter names of
each param group (optimizers fill in every default, so they are a signature) and the names
of the per-parameter state entries. Each torch.optim class is described below by

- ``core``: hyperparameters every torch version since 1.x writes (all must be present);
- ``full``: every hyperparameter any version writes (nothing else may be present, apart
  from keys LR schedulers and trainers add, see ``_ADDED_BY_OTHERS``);
- ``state``: every state entry it can create (nothing else may be present).

Every other optimizer (timm, pytorch-optimizer, schedulefree, lion-pytorch, heavyball,
bitsandbytes, torchao) is a row of the table in ``state.signatures``, built from state_dicts
the libraries wrote: it fits when its group keys are exactly those and the state entries
are among its own (a packed format, e.g. torchao's, must be there too). Several optimizers
can write identical keys: then all of them are named (confidence ``low``), never one
picked. A wrapper (Lookahead, schedule-free's wrapper, SWALR) is recognised by the keys it
adds around an optimizer that fits. When nothing fits, the kind is ``unknown`` and
``closest``/``differs`` say which optimizer is nearest and how it differs: a hint, never a
name.

Confidence: ``high`` when exactly one optimizer fits both signatures; ``medium`` when the
keys fit but something had to be assumed (Adam vs AdamW in an older torch, foreign group
keys, no state to confirm); ``low`` when several fit equally; ``none`` for ``unknown``.

About 450 lines on purpose: torch's own signatures, the table match, wrappers and the
nearest-optimizer hint share the one set of rules and read best together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

from optstate.state.signatures import (  # noqa: F401 - container_of, stored_formats: API
    STACKED,
    Table,
    TableSignature,
    container_of,
    describe_differs,
    differs,
    distance,
    family,
    leaf,
    stored_formats,
    table,
)

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
    "lr_scale",  # timm's layer decay (create_optimizer_v2(..., layer_decay=...))
})

# Entries a torch optimizer writes only under a setting (never "missing" when absent):
# amsgrad's max, RMSprop's momentum and centered buffers, SGD's momentum, Adafactor's
# factored (2-D and up) or plain (1-D) second moment.
_WRITTEN_ONLY_UNDER = frozenset({"max_exp_avg_sq", "momentum_buffer", "grad_avg", "row_var",
                                 "col_var", "variance"})


# transformers.optimization.AdamW (deprecated; Trainer's default before torch's AdamW).
_TRANSFORMERS_ADAMW = frozenset({"lr", "betas", "eps", "weight_decay", "correct_bias"})


@dataclass(frozen=True)
class KindGuess:
    kind: str  # a torch.optim class name, "<library> <class>", "A or B", or "unknown"
    confidence: str  # "high" | "medium" | "low" | "none"
    reason: str  # one sentence: why this kind, or what was seen
    candidates: tuple[str, ...] = ()  # every optimizer that fits the keys
    hyperparams: tuple[str, ...] = ()  # group keys seen (sorted)
    state_keys: tuple[str, ...] = ()  # state entry names seen (sorted)
    foreign: tuple[str, ...] = field(default=())  # group keys no torch optimizer writes
    library: str | None = None  # "torch.optim", "timm", ... (None: unknown or several)
    import_path: str | None = None
    wrapper: str | None = None  # "Lookahead", "ScheduleFreeWrapper", "SWALR", or built in
    inner: str | None = None  # with a wrapper: the kind of the optimizer it wraps
    closest: str | None = None  # unknown only: the nearest optimizer in the table
    differs: dict[str, list[str]] | None = None  # how the state differs from ``closest``

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("candidates", "hyperparams", "state_keys", "foreign"):
            d[k] = list(d[k])
        return d


def infer_kind(groups: Iterable[dict[str, Any]], state_keys: Iterable[str],
               formats: Iterable[str] = (),
               container: tuple[Any, Iterable[Any]] | None = None) -> KindGuess:
    """Infer the optimizer from group hyperparameters (``{name: value}`` per group, without
    ``params``), the state entry names seen across all parameters, the formats packed
    entries are stored in (``ParamView.stored[...]["format"]``: bitsandbytes', torchao's)
    and, when the state was found inside a dict, ``(its key there, the other keys)``: a
    wrapper that keeps the inner optimizer's state_dict under a key of its own (Magma's
    ``base``) is told by them."""
    groups = list(groups)
    hyper: set[str] = set()
    for g in groups:
        hyper.update(str(k) for k in g if k != "params")
    hyper -= {"param_names"}
    seen_state = {str(k) for k in state_keys}
    guess = _infer(groups, hyper, seen_state, set(formats), wrapped=True)
    if container is None or guess.kind == "unknown":
        return guess
    key, beside = str(container[0]), {str(k) for k in container[1]}
    for c in table().containers:
        if key == c.inner_key and c.beside <= beside:
            inner = guess.inner or guess.kind
            return replace(guess, kind=f"{inner} wrapped by {c.name}", wrapper=c.name,
                           inner=inner, reason=f"{guess.reason}; it sits under {key!r} "
                           f"beside {c.library} {c.name}'s own keys "
                           f"({', '.join(sorted(c.beside))})")
    return guess


def _infer(groups: list[dict[str, Any]], hyper: set[str], seen_state: set[str],
           formats: set[str], wrapped: bool) -> KindGuess:
    own = hyper - _ADDED_BY_OTHERS
    sorted_h, sorted_s = tuple(sorted(hyper)), tuple(sorted(seen_state))
    tab = table()
    packed = formats & tab.formats

    def guess(kind: str, confidence: str, reason: str, candidates: Iterable[str] = (),
              foreign: Iterable[str] = (), **more: Any) -> KindGuess:
        if kind in {s.name for s in SIGNATURES} and "library" not in more:
            more.update(library="torch.optim", import_path=f"torch.optim.{kind}")
        return KindGuess(kind, confidence, reason, tuple(candidates), sorted_h, sorted_s,
                         tuple(sorted(foreign)), **more)

    per_group = [frozenset(str(k) for k in g if k != "params") - _ADDED_BY_OTHERS for g in groups]
    stacked = STACKED in formats
    fits = [s for s in tab.optimizers if s.stacked == stacked and (
            not s.torch and _fits(s, own, seen_state, packed)
            or s.key_sets and _fits_groups(s, per_group, seen_state, packed))]
    # A packed format (torchao's subclasses, bitsandbytes' 8-bit maps) is no torch.optim's.
    exact = [] if packed else [s for s in SIGNATURES
                               if s.core <= own <= s.full and seen_state <= s.state]
    if fits:
        return _from_table(guess, fits, _narrow(exact, own) if exact else [], seen_state,
                           groups, own)
    if not exact:
        if wrapped:
            found = _wrapped(groups, hyper, seen_state, formats, tab)
            if found is not None:
                return found
        # Foreign group keys (a trainer's bookkeeping, a subclass's extra option) do not
        # hide an optimizer whose whole signature is there; keys another library's
        # optimizer writes do: then it is that optimizer's look-alike, not this one.
        known = _third_party_keys_of_table()
        if _TRANSFORMERS_ADAMW <= own and seen_state <= {"step", "exp_avg", "exp_avg_sq"}:
            return guess("AdamW", "medium", "the keys of transformers.optimization.AdamW "
                         "(correct_bias), the AdamW that Hugging Face Trainer used before "
                         "torch's; its state has torch.optim.AdamW's layout", ["AdamW"],
                         sorted(own - _TRANSFORMERS_ADAMW))
        loose = [s for s in SIGNATURES if s.core <= own and seen_state <= s.state
                 and not (own - s.full) & known] if not packed else []
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
        return _unknown(guess, own, seen_state, tab, groups)
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


def _fits(sig: TableSignature, own: set[str], seen: set[str], packed: set[str]) -> bool:
    """Exactly the group keys ``sig`` writes, entries among its own, its packed format."""
    if own != sig.keys:
        return False
    if sig.stored_format is not None and sig.stored_format not in packed:
        return False
    if packed and sig.stored_format is None:
        return False
    return _names(sig, seen) <= set(sig.state)


def _fits_groups(sig: TableSignature, groups: list[frozenset[str]], seen: set[str],
                 packed: set[str]) -> bool:
    """An optimizer that writes different keys per group (Muon with its AdamW groups):
    each group one of its key sets."""
    return bool(groups) and all(g in sig.key_sets for g in groups) and _fits(
        sig, set(sig.keys), seen, packed)


def _names(sig: TableSignature, seen: set[str]) -> set[str]:
    """Nested state (heavyball) is compared by its leaves' own names; an inner group's
    index alone (``0``, the state not yet unpacked) names no entry."""
    if not sig.nested:
        # an object's fields, unpacked (ScalableShampoo's graft.momentum), count as the
        # entry that holds the object (graft)
        return {k if k in sig.state else _family_or_first(sig, k) for k in seen}
    return {leaf(k) for k in seen if any(c.isalpha() or c == "_" for c in k)}


def _family_or_first(sig: TableSignature, name: str) -> str:
    """``pre_cond_2`` is of the family ``pre_cond_#`` when the table has it."""
    f = family(name)
    return f if f is not None and f in sig.state else _first(name)


def _first(name: str) -> str:
    found = re.match(r"\W*([A-Za-z_][A-Za-z0-9_]*)", name)
    return found.group(1) if found else name


def _stepped(groups: list[dict[str, Any]]) -> bool:
    """A group's own step count (pytorch-optimizer's ``step``) says steps were taken."""
    return any(isinstance(g.get("step"), (int, float)) and not isinstance(g.get("step"), bool)
               and g["step"] > 0 for g in groups)


def _keeps_state(sig: TableSignature, groups: list[dict[str, Any]]) -> bool:
    """Whether ``sig`` would have written entries after real steps with these groups."""
    if not sig.state:
        return False
    if sig.stateless_while is None:
        return True
    return not all(g.get(k) == 0 for g in groups for k in sig.stateless_while)


def _from_table(guess: Any, fits: list[TableSignature], torch_exact: list[Signature],
                seen: set[str], groups: list[dict[str, Any]],
                own: frozenset[str] | set[str] = frozenset()) -> KindGuess:
    ruled_out: list[str] = []
    if len(fits) > 1 and not seen and not torch_exact and _stepped(groups):
        # No entries after steps: an optimizer that writes some (SCION's d) did not write it.
        quiet = [s for s in fits if not _keeps_state(s, groups)]
        if quiet and len(quiet) < len(fits):
            writers = [s.kind for s in fits if s not in quiet]
            if len(quiet) == 1:
                sig = quiet[0]
                return guess(sig.kind, "medium", f"the keys fit {', '.join([sig.kind] + writers)}"
                             f"; the groups record steps and there are no state entries, which "
                             f"only {sig.kind} leaves so ({', '.join(writers)} would have "
                             "written some)", [sig.kind] + writers, library=sig.library,
                             import_path=sig.import_path, wrapper=_wrapper_of(sig))
            ruled_out, fits = writers, quiet
    if len(fits) > 1 and seen and not torch_exact:
        # Of optimizers with the same keys, one that writes an entry (with its defaults,
        # after real steps) that is not here is less likely: AdaPNM's neg_exp_avg beside
        # AdamC's entries, schedule-free's Reference x and y.
        missing = {s.kind: len(set(s.state) - _names(s, seen)) for s in fits}
        least = min(missing.values())
        ruled_out = [s.kind for s in fits if missing[s.kind] > least]
        fits = [s for s in fits if missing[s.kind] == least]
    kinds = [s.kind for s in fits] + [s.name for s in torch_exact]
    if len(kinds) == 1 and ruled_out:
        sig = fits[0]
        return guess(sig.kind, "medium", f"the keys fit {', '.join([sig.kind] + ruled_out)}; "
                     f"only {sig.kind} writes no entry that is missing here", kinds,
                     library=sig.library, import_path=sig.import_path,
                     wrapper=_wrapper_of(sig))
    if len(kinds) == 1:
        sig = fits[0]
        built = f" ({' and '.join(sig.built_in)} built in)" if sig.built_in else ""
        confirmed = bool(_names(sig, seen))
        why = (f"group keys and state entries ({', '.join(sorted(seen))}) match {sig.kind} "
               "only" if confirmed else f"the group keys are exactly those of {sig.kind} (no "
               "state entries yet to confirm)")
        return guess(sig.kind, "high" if confirmed else "medium", why + built, kinds,
                     library=sig.library, import_path=sig.import_path,
                     wrapper=_wrapper_of(sig))
    libraries = {s.library for s in fits} | ({"torch.optim"} if torch_exact else set())
    lib = libraries.pop() if len(libraries) == 1 else None
    also = (f" ({', '.join(ruled_out)} would also write entries that are not here)"
            if ruled_out else "")
    # A torch.optim twin with only the keys every version writes (timm's RAdamLegacy's
    # four, not today's RAdam's nine): an older torch's.
    shown = [s.kind for s in fits] + [
        f"{s.name} (as an older torch wrote it)" if own == s.core and s.full != s.core
        else s.name for s in torch_exact]
    return guess(" or ".join(shown), "low", f"the keys fit {len(kinds)} optimizers that "
                 f"write identical group keys and state entries: {', '.join(shown)}; the "
                 f"state cannot tell which{also}", kinds, library=lib)


def _wrapper_of(sig: TableSignature) -> str | None:
    """The wrappers built into ``sig`` (Ranger's Lookahead); schedule-free's iterate is
    built in but no wrapper."""
    tab = table()
    names = {w.name for w in tab.wrappers} | {c.name for c in tab.containers}
    return " and ".join(b for b in sig.built_in if b in names) or None


# LR schedulers recorded among the wrappers: they add group keys around an optimizer but
# wrap nothing (its state_dict is the optimizer's own).
_SCHEDULERS = frozenset({"SWALR"})


def _wrapped(groups: list[dict[str, Any]], hyper: set[str], seen: set[str],
             formats: set[str], tab: Table) -> KindGuess | None:
    """A wrapper's keys around an optimizer that fits once they are set aside."""
    for w in tab.wrappers:
        # Its state entries may not be written yet (timm Lookahead's slow weights before
        # its k-th step): its group keys alone tell it; without keys, its entries must be.
        if not (w.keys or w.state) or not w.keys <= hyper or not (w.keys or w.state <= seen):
            continue
        inner = _infer(groups, hyper - w.keys, seen - w.state, formats, wrapped=False)
        if inner.kind == "unknown" or inner.confidence == "none":
            continue
        adds = ", ".join(sorted(w.keys | w.state))
        if w.name in _SCHEDULERS:
            # the optimizer is the inner one (a config rebuilds it); the reason says why
            # its groups hold more
            return replace(inner, hyperparams=tuple(sorted(hyper)), state_keys=tuple(sorted(seen)),
                           reason=f"{inner.reason}; its groups also hold {w.library} "
                           f"{w.name}'s {adds} ({w.name} is an LR scheduler, not a wrapper)")
        return replace(inner, kind=f"{inner.kind} wrapped by {w.name}", wrapper=w.name,
                       inner=inner.kind,
                       hyperparams=tuple(sorted(hyper)), state_keys=tuple(sorted(seen)),
                       reason=f"{inner.reason}; around it {w.library} {w.name}'s own keys "
                       f"({adds})")
    return None


@lru_cache(maxsize=1)
def _third_party_keys_of_table() -> frozenset[str]:
    """Group keys some other library's optimizer writes and no torch.optim one does."""
    tab = table()
    torch_keys = frozenset().union(*(s.full for s in SIGNATURES))
    out: set[str] = set()
    for s in tab.optimizers:
        if not s.torch:
            out |= s.keys
    for w in tab.wrappers:
        out |= w.keys
    return frozenset(out - torch_keys)


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


def _unknown(guess: Any, own: set[str], state: set[str], tab: Table,
             groups: list[dict[str, Any]] | None = None) -> KindGuess:
    """Nothing fits: say what was seen and which optimizer is nearest, and how it differs."""
    seen = (f"group keys {', '.join(sorted(own)) or '(none)'}; state entries "
            f"{', '.join(sorted(state)) or '(none)'}")
    scored = []
    for sig in SIGNATURES:
        d = differs(own, state, sig.core, sig.full, sig.state, _WRITTEN_ONLY_UNDER)
        scored.append((distance(d, state, sig.core, own), sig.name, d))
    for t in tab.optimizers:
        if t.torch:
            continue
        d = differs(own, _names(t, state), t.keys, t.keys, set(t.state))
        scored.append((distance(d, state), t.kind, d))
    # decoupled_weight_decay tells Adam from AdamW: the other is not as close.
    dwd = {g.get("decoupled_weight_decay") for g in groups or ()}
    other = {frozenset({True}): "Adam", frozenset({False}): "AdamW"}.get(frozenset(dwd))
    scored = [x for x in scored if x[1] != other]
    scored.sort(key=lambda x: x[0])
    best, name, how = scored[0]
    shared = len(own) + len(state) - len(how["group_keys_added"]) - len(how["state_added"])
    if shared < 2 or best > len(own) + len(state):
        return guess("unknown", "none", f"no optimizer optstate knows writes these keys "
                     f"({seen}), and none is close", [])
    ties = [n for b, n, _ in scored[1:] if b == best]
    text = name + (f" (as close: {', '.join(ties[:3])})" if ties else "")
    return guess("unknown", "none", f"no optimizer optstate knows writes these keys ({seen}); "
                 f"closest: {text}, which differs in {describe_differs(how)}", [],
                 closest=name, differs=how)
