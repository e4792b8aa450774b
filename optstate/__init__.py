"""optstate: inspect, diff, simulate and repair PyTorch optimizer state checkpoints.

The core is importable without typer or rich. Importing ``optstate`` does not import
torch; the names below load their modules (and torch) on first use::

    from optstate import RunSpec, simulate, open_source, locate
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RunSpec": "optstate.config",
    "GroupSpec": "optstate.config",
    "SchedulerSpec": "optstate.config",
    "spec_from_dict": "optstate.config",
    "read_config_file": "optstate.config",
    "build": "optstate.build",
    "simulate": "optstate.simulate",
    "SimulationResult": "optstate.simulate",
    "load_torch_file": "optstate.checkpoint",
    "save_checkpoint": "optstate.checkpoint",
    "open_source": "optstate.source",
    "locate": "optstate.locate",
    "inspect_path": "optstate.inspect",
    "inspect_source": "optstate.inspect",
    "infer_kind": "optstate.kind",
    "OptimizerStateView": "optstate.state",
    "summarize": "optstate.stats",
    "TensorSummary": "optstate.stats",
    "OptstateError": "optstate.errors",
    "convert": "optstate.convert",
    "open_dcp": "optstate.dcp",
    "simulate_sharded": "optstate.distributed",
    "LazyTensor": "optstate.lazy",
    "set_hyperparameters": "optstate.edit",
    "check_checkpoint": "optstate.check",
    "check_state": "optstate.check",
    "diff_states": "optstate.diff",
    "diff_files": "optstate.diff",
    "DiffOptions": "optstate.diff",
    "StateDiff": "optstate.diff",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'optstate' has no attribute {name!r}")
    return getattr(import_module(module), name)


class _Package(ModuleType):
    """``simulate`` and ``locate`` are functions and also submodules: importing the
    submodule makes Python set ``optstate.simulate`` to the module, so ``from optstate
    import simulate`` would give a module or a function depending on import order. The
    function wins (``from optstate.simulate import ...`` still reaches the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, ModuleType) and value.__name__ == _LAZY[name]:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
