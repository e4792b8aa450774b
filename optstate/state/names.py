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

A name is given only when it is certain under the stated rule; otherwise the param
stays unnamed and ``Naming.reason`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.state.view import OptimizerStateView

NAME_SOURCES = ("param_names", "dcp", "model_state_dict", "model_file", "hf_trainer_rule")


@dataclass
class Naming:
    """How the params of one optimizer state were named (plain data, JSON-ready)."""

    source: str | None  # one of NAME_SOURCES; None when no param is named
    named: int  # how many positions have a name
    total: int  # how many positions there are
    model: str | None = None  # where the model came from, in words ('model.safetensors')
    reason: str | None = None  # why some or all params are unnamed
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "named": self.named, "total": self.total,
                "model": self.model, "reason": self.reason, "notes": list(self.notes)}


def name_params(view: OptimizerStateView, source: Any = None, located: Any = None, *,
                model_file: str | Path | None = None) -> Naming:
    """Name the params of ``view`` in place (``ParamView.name``, ``name_source``,
    ``aliases``) and say how. ``source``/``located`` (``io.source.Source``,
    ``state.locate.Located``) let a model state_dict in the same container or folder
    be found; ``model_file`` is a model the user named (``--model``)."""
    named = sum(1 for p in view.params if p.name is not None)
    sources = {p.name_source for p in view.params if p.name_source}
    src = sources.pop() if len(sources) == 1 else None
    reason = None if named == view.n_params else (
        "the checkpoint holds no param_names and no model state_dict")
    naming = Naming(src, named, view.n_params, reason=reason)
    view.naming = naming
    return naming
