"""The table of third-party optimizers' signatures (``optimizer_signatures.json``), as data.

The table is built by ``scripts/build_signature_table.py`` from state_dicts the libraries
themselves wrote (``tests/fixtures/optimizer_signatures.json``, ``tests/fixtures/lowbit/``):
per optimizer class its display name (``kind``: "timm Lamb", torch.optim's bare class name
"AdamW"), library, import path, the group keys it writes with its defaults, each state
entry with the relations its shapes had to the param (same / scalar / row / col /
gram_rows / gram_cols / transposed / flat / other, ``value`` for a non-tensor; entries
numbered by the param's dimension, Shampoo's ``pre_cond_0``/``_1``, read as one family
``pre_cond_#`` that a 3-D or 4-D param extends, its extra entries related as ``gram_dim``
/ ``axis``), the stored
format that marks a packed state (bitsandbytes, torchao), the entries that are all zeros
by design and the group values that were 0 when they were (``zero_by_design``), whether it
keeps no per-param state and while which values are 0 (``stateless_while_zero``), keys of
``state`` that are the optimizer's own, not a param's (``global_state_keys``: MADGRAD's
``k``); and the
wrappers (Lookahead, schedule-free's wrapper, SWALR) with the group keys and entries each
adds to the optimizer it wraps, and those that keep the inner state_dict under a key of
their own (``containers``: Magma, Lookahead) with the keys beside it.

``state.kind`` matches a state against it; ``analysis.suspicious`` reads the relations
(factored second moments are not shape mismatches) and the zeros by design.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from optstate.base.errors import OptstateError
from optstate.base.paths import parse_path, step_into

TABLE_FILE = "optimizer_signatures.json"
STACKED = "stacked"  # in stored_formats: some entry holds several moments stacked


@dataclass(frozen=True)
class TableSignature:
    kind: str  # what KindGuess.kind says: "timm Lamb", or torch.optim's "AdamW"
    library: str
    class_name: str
    import_path: str
    keys: frozenset[str]  # group keys, without those schedulers and trainers add
    state: dict[str, tuple[str, ...]]  # entry -> relations to the param seen
    torch: bool = False  # torch.optim: state.kind's own signatures match it
    nested: bool = False  # entries are nested per inner group (heavyball): match by leaf
    stored_format: str | None = None  # "bitsandbytes-8bit", "torchao-4bit", ...
    stacked: bool = False  # moments stacked in one entry (bitsandbytes' AdEMAMix state1)
    zero_entries: frozenset[str] = frozenset()  # all zeros in every param
    zero_some: frozenset[str] = frozenset()  # all zeros in some params (SaRA's mask)
    zero_while: frozenset[str] = frozenset()  # group keys that were 0 when they were zeros
    # No per-param state after real steps while these group keys are 0 (None: it keeps state).
    stateless_while: frozenset[str] | None = None
    global_keys: frozenset[str] = frozenset()  # keys of ``state`` that are no param's
    built_in: tuple[str, ...] = ()  # wrappers built in ("Lookahead" for Ranger)
    # Optimizers that write different keys per group (Muon's use_muon groups): each set.
    key_sets: tuple[frozenset[str], ...] = ()


@dataclass(frozen=True)
class Wrapper:
    name: str
    library: str
    import_path: str
    keys: frozenset[str]  # group keys it adds
    state: frozenset[str]  # state entries it adds


@dataclass(frozen=True)
class Container:
    """A wrapper whose state_dict holds the inner optimizer's under ``inner_key``, with
    its own keys ``beside`` it (pytorch-optimizer's Magma, Lookahead)."""

    name: str
    library: str
    import_path: str
    inner_key: str
    beside: frozenset[str]


@dataclass(frozen=True)
class Table:
    optimizers: tuple[TableSignature, ...]
    wrappers: tuple[Wrapper, ...]
    param_copies: frozenset[str]  # entries that copy the param (zero when it is)
    versions: dict[str, str]
    containers: tuple[Container, ...] = ()

    @property
    def formats(self) -> frozenset[str]:
        return frozenset(s.stored_format for s in self.optimizers if s.stored_format)

    def by_kind(self, kind: str) -> TableSignature | None:
        # "SGD (with SWALR's swa_lr in its groups)", "RAdam (as an older torch wrote it)"
        kind = kind.split(" (")[0]
        for s in self.optimizers:
            if s.kind == kind:
                return s
        return None


@lru_cache(maxsize=1)
def table() -> Table:
    """The table shipped with optstate (read once)."""
    text = resources.files("optstate.state").joinpath(TABLE_FILE).read_text(encoding="utf-8")
    return parse(json.loads(text))


_NUMBERED = re.compile(r"^(.*_)(\d+)$")


def family(name: str) -> str | None:
    """``pre_cond_#`` for ``pre_cond_2``: entries numbered by the param's dimension
    (Shampoo's preconditioners, SM3's accumulators) are one family in the table."""
    m = _NUMBERED.match(str(name))
    return f"{m.group(1)}#" if m else None


def _families(state: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The table recorded ``X_0``, ``X_1`` on 2-D params: a param of N dims writes ``X_0`` to
    ``X_{N-1}``. Entries numbered from 0 with at least two members become ``X_#`` with
    the relations of all of them."""
    groups: dict[str, list[str]] = {}
    for k in state:
        f = family(k)
        if f is not None:
            groups.setdefault(f, []).append(k)
    out = dict(state)
    for f, members in groups.items():
        nums = sorted(int(_NUMBERED.match(k).group(2)) for k in members)  # type: ignore[union-attr]
        if len(nums) >= 2 and nums == list(range(len(nums))):
            rels: list[str] = []
            for k in members:
                rels += [r for r in out.pop(k) if r not in rels]
            out[f] = tuple(rels)
    return out


def parse(doc: dict[str, Any]) -> Table:
    sigs = []
    for r in doc["optimizers"]:
        zero = r.get("zero_by_design") or {}
        sigs.append(TableSignature(
            kind=r["kind"], library=r["library"], class_name=r["class"],
            import_path=r["import_path"], keys=frozenset(r["group_keys"]),
            state=_families({k: tuple(v) for k, v in r["state"].items()}),
            torch=bool(r.get("torch")),
            nested=bool(r.get("nested")), stored_format=r.get("stored_format"),
            stacked=bool(r.get("stacked")),
            zero_entries=frozenset(zero.get("entries", ())),
            zero_some=frozenset(zero.get("some_params", ())),
            zero_while=frozenset(zero.get("while_zero", ())),
            stateless_while=(frozenset(r["stateless_while_zero"])
                             if "stateless_while_zero" in r else None),
            global_keys=frozenset(r.get("global_state_keys", ())),
            built_in=tuple(r.get("built_in", ())),
            key_sets=tuple(frozenset(k) for k in r.get("group_key_sets", ()))))
    wrappers = tuple(Wrapper(w["name"], w["library"], w["import_path"],
                             frozenset(w["group_keys"]), frozenset(w["state"]))
                     for w in doc.get("wrappers", ()))
    containers = tuple(Container(c["name"], c["library"], c["import_path"], c["inner_key"],
                                 frozenset(c["beside"])) for c in doc.get("containers", ()))
    return Table(tuple(sigs), wrappers, frozenset(doc.get("param_copies", ())),
                 dict(doc.get("versions", {})), containers)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def leaf(name: str) -> str:
    """A nested entry's own name, whatever path it is shown under (``0/exp_avg_6``,
    ``[0].exp_avg_6``, ``exp_avg_6[1]``): its last identifier."""
    found = _IDENT.findall(str(name))
    return found[-1] if found else str(name)


def relation(shape: tuple[int, ...], p: tuple[int, ...]) -> str:
    """How an entry's shape relates to its param's (the generator's rule, same words)."""
    if shape == p:
        return "same"
    n = 1
    for d in shape:
        n *= d
    if len(shape) == 0 or n == 1:
        return "scalar"
    if len(p) >= 2:
        if shape in (p[:-1], p[:-1] + (1,)):
            return "row"
        if shape in (p[:-2] + p[-1:], p[:-2] + (1,) + p[-1:]):
            return "col"
        if shape == (p[-2], p[-2]):
            return "gram_rows"
        if shape == (p[-1], p[-1]):
            return "gram_cols"
        if shape == tuple(reversed(p)):
            return "transposed"
        numel = 1
        for d in p:
            numel *= d
        if shape == (numel,):
            return "flat"
        if len(p) > 2 and len(shape) == 2 and shape[0] == shape[1] and shape[0] in p:
            return "gram_dim"  # Shampoo's preconditioner of one dim of a 3-D+ param
        if len(shape) == len(p) and sum(a != 1 for a in shape) == 1 and all(
                a in (1, b) for a, b in zip(shape, p, strict=True)):
            return "axis"  # SM3's accumulator of one dim, 1 elsewhere
    return "other"


# Relations that factor or precondition the param rather than follow its shape.
FACTORED = frozenset({"row", "col", "gram_rows", "gram_cols", "transposed", "flat",
                      "gram_dim", "axis"})


# What a reader passes to state.kind.infer_kind beside the keys.

def container_of(obj: Any, location: str) -> tuple[Any, list[Any]] | None:
    """(the state's key in the dict that holds it, the other keys there): the fourth
    argument of ``infer_kind``; None for a state at the top level or not in a dict."""
    if not location:
        return None
    try:
        steps = parse_path(location)
        parent = obj
        for step in steps[:-1]:
            parent = step_into(parent, step)
    except (KeyError, TypeError, OptstateError):
        return None
    if not isinstance(parent, dict):
        return None
    key = steps[-1].key
    return key, [k for k in parent if str(k) != str(key)]


def stored_formats(view: Any) -> set[str]:
    """The formats a view's packed entries are stored in (``ParamView.stored``), the third
    argument of ``infer_kind``: torchao's state has torch Adam's keys, only its format
    tells them apart."""
    out = {str(d["format"]) for p in view.params for d in p.stored.values()
           if isinstance(d, dict) and d.get("format")}
    if any(isinstance(d, dict) and (d.get("stacked") or "stacked_in" in d) for p in view.params
           for d in p.stored.values()):
        out.add(STACKED)  # bitsandbytes' AdEMAMix: two moments in one entry
    return out


# How a state differs from the nearest signature (state.kind, for "unknown").

def differs(own: set[str], state: set[str], core: frozenset[str], full: frozenset[str],
             sig_state: set[str] | frozenset[str],
             optional: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Every difference: group keys here it never writes (+), keys it writes (today's
    version: ``full``) that are not here (-), entries likewise; an entry it writes only
    under a setting (``optional``: Adam's max_exp_avg_sq with amsgrad) is never missing."""
    return {"group_keys_added": sorted(own - full), "group_keys_missing": sorted(full - own),
            "state_added": sorted(state - set(sig_state)),
            "state_missing": sorted(set(sig_state) - state - optional) if state else []}


def distance(d: dict[str, list[str]], state: set[str],
             core: frozenset[str] | None = None, own: set[str] | None = None) -> int:
    # A state entry the optimizer never writes counts double: entries are the better sign.
    # Missing keys count only those every version writes (``core``), when given.
    missing = (len(d["group_keys_missing"]) if core is None or own is None
               else len(core - own))
    return (len(d["group_keys_added"]) + missing
            + 2 * len(d["state_added"]) + len(d["state_missing"]))


def describe_differs(d: dict[str, list[str]]) -> str:
    """``group keys +a -b; state +c`` (+ here and not in it, - in it and not here)."""
    parts = []
    keys = [f"+{k}" for k in d["group_keys_added"]] + [f"-{k}" for k in d["group_keys_missing"]]
    if keys:
        parts.append("group keys " + " ".join(keys))
    st = [f"+{k}" for k in d["state_added"]] + [f"-{k}" for k in d["state_missing"]]
    if st:
        parts.append("state " + " ".join(st))
    return "; ".join(parts) or "nothing it records"
