"""What an optimizer does on purpose that would otherwise look like a finding.

- Factored and preconditioner state: Adafactor's row and column second moments, CAME's,
  SM3's accumulators, Shampoo's and Kron's Gram matrices do not follow the param's shape.
  ``split_by_shape`` sets them apart from the buffers that must, by the relation of each
  entry's shape to the param's (``state.signatures.relation``) that the signature table
  recorded for that optimizer's entry; for an optimizer outside torch.optim (or not known)
  any factoring relation (row, col, gram_rows, gram_cols, transposed, flat) counts.
- Zeros by design: entries the signature table saw all zeros after real steps with the
  optimizer's defaults (SM3's ``momentum_buffer`` while ``momentum=0``), and copies of the
  param (Lookahead's slow weights, schedule-free's iterates), zero where the param is.
"""

from __future__ import annotations

from typing import Any

from optstate.analysis.findings import as_number
from optstate.state.report import tensor_like
from optstate.state.signatures import FACTORED, TableSignature, family, leaf, relation, table
from optstate.state.view import OptimizerStateView, ParamView, slot_shape

# torch.optim's Adafactor entries whose shape legitimately differs (also in older torch).
_OWN_SHAPE = frozenset({"row_var", "col_var", "variance"})


def signatures_of(kind: str) -> list[TableSignature]:
    """The table rows a kind names: "A or B" names both; "X wrapped by W" is X's."""
    tab = table()
    inner = kind.split(" wrapped by ")[0]
    return [sig for k in inner.split(" or ") if (sig := tab.by_kind(k)) is not None]


def zero_by_design(view: OptimizerStateView, kind: str) -> dict[tuple[int, str], str]:
    """(group, entry) -> why its zeros are expected: the optimizer keeps it at zero with
    these settings (SM3's momentum_buffer while momentum=0: the signature table saw it all
    zeros after real steps, with the group values that were 0 then), or it is a copy of
    the param (Lookahead's slow weights, schedule-free's iterates), zero where the param is."""
    sigs = signatures_of(kind)
    copies = table().param_copies
    out: dict[tuple[int, str], str] = {}
    for g in view.groups:
        for sig in sigs:
            if all(as_number(g.hyperparams.get(k)) == 0.0 for k in sig.zero_while):
                held = ", ".join(f"{k}=0" for k in sorted(sig.zero_while))
                for e in sig.zero_entries:
                    out.setdefault((g.index, e), f"{sig.kind} keeps it at zero"
                                   + (f" while {held}" if held else " in its first steps"))
                for e in sig.zero_some:
                    out.setdefault((g.index, e), f"{sig.kind} leaves it all zeros for some "
                                   "params (seen after real steps with its defaults"
                                   + (f", {held})" if held else ")"))
        for e in copies:
            out.setdefault((g.index, e), "a copy of the param, zero where the param is")
    return out


def stateless_by_design(hyper: dict[str, Any], kind: str) -> bool:
    """The optimizer keeps no per-param state with these group values (the table saw none
    after real steps while the values it names were 0)."""
    return any(sig.stateless_while is not None and not sig.torch
               and all(as_number(hyper.get(k)) == 0.0 for k in sig.stateless_while)
               for sig in signatures_of(kind))


def global_state_keys(kind: str) -> frozenset[str]:
    """Keys of ``state`` the optimizer keeps for itself (MADGRAD's ``k``)."""
    return frozenset().union(*(sig.global_keys for sig in signatures_of(kind)))


def recorded_relations(kind: str) -> dict[str, Any]:
    """Entry -> the relations the table recorded for it; ``None`` under key ``""`` when the
    kind is torch.optim's (only recorded relations count there)."""
    sigs = signatures_of(kind)
    out: dict[str, Any] = {"": bool(sigs) and all(s.torch for s in sigs)}
    for sig in sigs:
        for e, rels in sig.state.items():
            out.setdefault(e, set()).update(rels)
    return out


def split_by_shape(p: ParamView, relations: dict[str, Any]
                   ) -> tuple[dict[str, tuple[int, ...]], list[str], tuple[int, ...] | None]:
    """(shapes of the entries that must follow the param's shape, descriptions of those
    that relate to it otherwise, the param's shape or None).

    An entry the table recorded only as ``same`` must follow the param; one it recorded
    with another relation (row, col, gram_rows, flat, scalar, other: Shampoo's
    preconditioner of a 1-D param, heavyball's merged dims) is the optimizer's own shape.
    An entry the table does not know follows the param, unless the optimizer is not
    torch.optim's and the entry factors the param (row, col, gram, transposed, flat)."""
    torch_kind = relations.get("", False)
    tensors: dict[str, tuple[tuple[int, ...], set[str]]] = {}
    for k, v in p.state.items():
        t = tensor_like(v)
        if t is None or len(t.shape) == 0:
            continue
        # k moments stacked on dim 0, each of the param's shape (AdEMAMix8bit's
        # state1: state.lowbit) count with one moment's shape
        stacked = p.stored.get(str(k), {}).get("stacked")
        allowed = (relations.get(str(k)) or relations.get(leaf(str(k)))
                   or relations.get(family(str(k))) or set())  # pre_cond_2: pre_cond_#
        tensors[str(k)] = (tuple(t.shape)[1 if stacked else 0:], set(allowed))
    pshape = p.model_shape or slot_shape(p.state, p.stored) or next(
        (shape for shape, allowed in tensors.values() if allowed == {"same"}), None)
    shapes: dict[str, tuple[int, ...]] = {}
    own: list[str] = []
    for k, (shape, allowed) in tensors.items():
        rel = relation(shape, tuple(pshape)) if pshape is not None else None
        shown = ", ".join(map(str, shape))
        others = allowed - {"same", "value"}
        if others:  # recorded in a shape of its own
            if rel not in ("same", "scalar"):
                word = rel if rel is not None and rel != "other" else "/".join(sorted(others))
                if word != "scalar":
                    own.append(f"{k} {word} ({shown})")
            continue
        if not allowed and not torch_kind and rel in FACTORED or k in _OWN_SHAPE:
            if rel in FACTORED:
                own.append(f"{k} {rel} ({shown})")
            continue
        shapes[k] = shape
    return shapes, own, pshape
