"""Parameter names for an optimizer state: which model parameter each position is.

``Optimizer.state_dict()`` keys state by position; names come from, in order of trust:

- ``param_names``: the names torch (>= 2.6) writes in each param group when the
  optimizer was built from ``model.named_parameters()``;
- ``dcp``: state keyed by fully qualified name, as ``torch.distributed.checkpoint``
  (DCP folders, ``get_optimizer_state_dict``) writes it;
- ``model_state_dict``: a model state_dict in the same container (the tutorial's
  ``model_state_dict``, ``model``, Lightning's ``state_dict``) or beside the optimizer
  file in a Hugging Face / accelerate folder, aligned with the optimizer's slots by
  order and shape;
- ``model_file``: the same, from a model file the user gives (``--model``);
- ``hf_trainer_rule``: a Hugging Face Trainer folder, whose two groups follow the
  Trainer's decay / no-decay rule.

A name is given only when it is certain under the stated rule (``state.align`` names a
slot only when every consistent assignment gives it the same tensor); otherwise the
param stays unnamed and ``Naming.reason`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.values import format_shape
from optstate.state.model_near import checkpoint_folder, count, model_near, read_given
from optstate.state.view import OptimizerStateView, slot_shape

NAME_SOURCES = ("param_names", "dcp", "deepspeed", "model_state_dict", "model_file",
                "hf_trainer_rule")

Shape = tuple[int, ...]

@dataclass
class Naming:
    """How the params of one optimizer state were named (plain data, JSON-ready)."""

    source: str | None  # one of NAME_SOURCES; None when no param is named
    named: int  # how many positions have a name
    total: int  # how many positions there are
    model: str | None = None  # where the model came from, in words ('model.safetensors')
    reason: str | None = None  # why some or all params are unnamed
    notes: list[str] = field(default_factory=list)
    # how a model's tensors were matched to the slots: "order and shape", "shape" (the
    # model's order unknown, e.g. safetensors); None for names the checkpoint holds
    matched: str | None = None

    def from_words(self) -> str:
        """``10 of 10 from the model state_dict at 'model_state_dict'`` (where the names
        came from, as every view says it; ``matched`` and ``reason`` are said apart)."""
        return from_words(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "named": self.named, "total": self.total,
                "model": self.model, "matched": self.matched, "reason": self.reason,
                "notes": list(self.notes)}


_SOURCE_WORDS = {
    "param_names": "the optimizer's param_names",
    "dcp": "the DCP folder's keys (fully qualified names)",
    "deepspeed": "DeepSpeed's param_shapes (its model states file)",
    "hf_trainer_rule": "{model}, by the Trainer's decay / no-decay groups",
}


def from_words(naming: dict[str, Any]) -> str:
    """``Naming.from_words`` for its plain-data form (``Naming.to_dict()``)."""
    src = _SOURCE_WORDS.get(naming["source"], "{model}").format(
        model=naming["model"] or naming["source"])
    return f"{naming['named']} of {naming['total']} from {src}"


def _finish(view: OptimizerStateView, source: str | None, *, model: str | None = None,
            reason: str | None = None, notes: list[str] | None = None,
            matched: str | None = None) -> Naming:
    named = sum(1 for p in view.params if p.name is not None)
    total = view.n_params
    if named == total:
        reason = None
    elif reason is not None and named:
        reason = f"{total - named} of {count(total, 'param')} unnamed: {reason}"
    if not named:
        source = matched = None
    naming = Naming(source, named, total, model=model, reason=reason, notes=notes or [],
                    matched=matched)
    view.naming = naming
    return naming


# Said with every name matched by order: a group built in another order from same-shaped
# layers (Adam([*m.decoder.parameters(), *m.encoder.parameters()])) would get swapped names,
# and a param that is not the model's (a loss's own) could take a float buffer's name.
ORDER_ASSUMPTION = ("assumes each group holds only this model's params, in model order, as "
                    "model.parameters() gives them")


def name_params(view: OptimizerStateView, source: Any = None, located: Any = None, *,
                model_file: str | Path | None = None) -> Naming:
    """Name the params of ``view`` in place (``ParamView.name``, ``name_source``,
    ``aliases``) and say how. ``source``/``located`` (``io.source.Source``,
    ``state.locate.Located``) let a model state_dict in the same container or folder
    be found; ``model_file`` is a model the user named (``--model``).

    Never raises because params cannot be named (the ``Naming`` says why); raises
    ``CheckpointError`` for a ``model_file`` that is missing or holds no model."""
    given, given_unordered = (read_given(model_file) if model_file is not None
                              else (None, None))
    pre = [p for p in view.params if p.name is not None]
    if pre and getattr(source, "format", None) == "deepspeed":
        for p in pre:  # io.deepspeed wrote them into param_names from DeepSpeed's own record
            if p.name_source == "param_names":
                p.name_source = "deepspeed"
    if pre:  # the checkpoint's own names (param_names, FQN keys) win
        sources = {p.name_source for p in pre if p.name_source}
        notes = []
        if given is not None:
            notes.append(f"the checkpoint's own names ({', '.join(sorted(sources))}) are "
                         f"used; {given.origin} was not needed")
        return _finish(view, sources.pop() if len(sources) == 1 else None, notes=notes,
                       reason="only some param groups carry param_names")
    if given is not None:
        model, why, unordered, others = given, None, given_unordered, []
        src = "model_file"
    else:
        model, why, unordered, others = model_near(source, located)
        src = "model_state_dict"
    note = getattr(model, "reader_note", None)  # its model file needed torch: say so
    if note and getattr(source, "reader", None) == "native" and not source.reader_note:
        source.reader_note = note
    if model is None:
        return _finish(view, None, reason=why)
    return _align(view, model, src, source, unordered, others)


def _align(view: OptimizerStateView, model: Any, src: str, source: Any,
           unordered: str | None, others: list[list[Shape | None]]) -> Naming:
    """Name ``view``'s params from ``model`` (``ModelTensors``) by order and shape."""
    from optstate.io.model_tensors import could_be_parameter
    from optstate.state.align import Candidate, align_by_shape, align_ordered

    notes: list[str] = []
    tensors = [t for t in model.tensors if model.params_only or could_be_parameter(t)]
    by_group = [[p for p in view.params if p.group == g.index] for g in view.groups]
    slots = [[slot_shape(p.state, p.stored) for p in ps] for ps in by_group]
    total = view.n_params
    if len(tensors) < total:
        return _finish(view, None, model=model.origin, notes=notes, reason=(
            f"{model.origin} has {count(len(tensors), 'parameter tensor')}, the optimizer "
            f"{count(total, 'param')}: it is not this optimizer's model"))
    shapes = {tuple(t.shape) for t in tensors}
    foreign = [(p, sh) for ps, ss in zip(by_group, slots, strict=True)
               for p, sh in zip(ps, ss, strict=True) if sh is not None and sh not in shapes]
    if foreign:  # a param the model has no tensor for: another model's optimizer
        p, sh = foreign[0]
        return _finish(view, None, model=model.origin, notes=notes, reason=(
            f"{model.origin} has no tensor of param {p.position}'s shape "
            f"({format_shape(sh)})"
            f"{f' nor of {len(foreign) - 1} more' if len(foreign) > 1 else ''}: it is not "
            "this optimizer's model"))
    candidates: Any = [Candidate(t.name, tuple(t.shape), tuple(t.aliases)) for t in tensors]
    folder = checkpoint_folder(source) if src == "model_state_dict" else None
    if folder is not None and len(by_group) == 2 and _is_trainer(folder):
        from optstate.state.hf_model import (
            saved_transformers_version,
            trainer_groups,
            trainer_rule_is_certain,
        )

        version = saved_transformers_version(folder)
        decay, no_decay = trainer_groups(tensors, transformers_version=version)
        sizes = [len(ps) for ps in by_group]
        unsure = [t.name for t in tensors
                  if not trainer_rule_is_certain(t, transformers_version=version)]
        if unsure:  # a norm module's type decides, and only a skeleton knows it
            normish = [n for n in unsure if "ln" in n.lower() or "norm" in n.lower()]
            notes.append("the Trainer's decay / no-decay rule was not applied: whether a "
                         f"weight such as '{(normish or unsure)[0]}' is in a LayerNorm "
                         "depends on its module's type, which only a model built from "
                         "config.json shows")
        elif sizes == [len(decay), len(no_decay)]:
            candidates = [[Candidate(t.name, tuple(t.shape), tuple(t.aliases)) for t in ts]
                          for ts in (decay, no_decay)]
            src = "hf_trainer_rule"
        else:
            notes.append(f"the Trainer's decay / no-decay rule gives {len(decay)} and "
                         f"{len(no_decay)} params, the optimizer's groups hold {sizes[0]} "
                         f"and {sizes[1]}: the rule was not applied")
    if others and src == "model_state_dict":  # one list: the other optimizers' groups too
        notes.append(f"aligned together with the other optimizer states' {len(others)} "
                     "param group" + "s" * (len(others) != 1) + ", assuming no two "
                     "optimizers hold one param")
    joint = slots + (others if src == "model_state_dict" else [])
    align = align_ordered if model.ordered else align_by_shape
    alignment = align(joint, candidates)
    alignment.slots = alignment.slots[:len(slots)]
    if len(joint) > len(slots) and not any(c for g in alignment.slots for c in g) \
            and any(c for g in align(slots, candidates).slots for c in g):
        # alone it would be named; with the others the model cannot hold every param, so
        # some optimizer holds params that are not the model's, and which is unknown
        alignment.reason = ("the checkpoint's optimizer states hold params this model "
                            "cannot all hold (some are not the model's: a loss's own "
                            "parameters, another model's), so which of them are the "
                            "model's is unknown")
    matched = "order and shape" if alignment.by_order else "shape"
    if alignment.by_order and src != "hf_trainer_rule":
        # Nothing in an optimizer state says in which order its groups list their params;
        # the Trainer's groups are built from named_parameters(), so that case is certain.
        notes.append(ORDER_ASSUMPTION)
    reason = alignment.reason
    if reason is not None and unordered is not None:
        reason = f"{reason} ({unordered})"
    for ps, group_slots in zip(by_group, alignment.slots, strict=True):
        for p, c in zip(ps, group_slots, strict=True):
            if c is not None:
                p.name, p.name_source, p.aliases = c.name, src, tuple(c.aliases)
                p.model_shape = tuple(c.shape)
    return _finish(view, src, model=model.origin, reason=reason, notes=notes, matched=matched)


def _is_trainer(folder: Path) -> bool:
    from optstate.state.hf_model import is_trainer_folder

    return is_trainer_folder(folder)
