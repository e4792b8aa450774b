"""optstate: inspect, diff, simulate and repair PyTorch optimizer state checkpoints.

The core is importable without typer or rich. Importing ``optstate`` does not import
torch; the names below load their modules (and torch) on first use::

    from optstate import RunSpec, simulate, open_source, locate
"""

from __future__ import annotations

import sys


def _as_command_line() -> bool:
    """This import is the command line's own: the console script (``bin/optstate`` beside
    the interpreter running it) or ``python -m optstate``. Never for a library user."""
    import os  # already imported by Python's start-up

    argv = getattr(sys, "orig_argv", [])
    if sys.argv[:1] == ["-m"]:  # runpy is importing the package `python -m` names
        return argv[argv.index("-m") + 1:][:1] == ["optstate"] if "-m" in argv else False
    main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    name = os.path.basename(main).removesuffix("-script.py").removesuffix(".exe")
    where = os.path.dirname
    return (name == "optstate" and sys.argv[:1] != []
            and os.path.abspath(sys.argv[0]) == os.path.abspath(main)  # it is running now
            and where(os.path.abspath(main)) == where(os.path.abspath(sys.executable)))


def _sigint_before_entry(signum: int, frame: object) -> None:
    """SIGINT while the command line's modules load, before ``interrupt.install()``:
    recorded in ``arrived`` (``interrupt.install`` finds this handler and takes it over),
    so it ends as ``Interrupted.``."""
    _sigint_before_entry.arrived = True  # type: ignore[attr-defined]


_sigint_before_entry.arrived = False  # type: ignore[attr-defined]
if _as_command_line():
    import _signal  # signal's enums cost milliseconds; this is the bare C module

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _sigint_before_entry)

# after the handler, so that a Ctrl-C while they load is the interrupt too
from importlib import import_module  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

from optstate.base.version import __version__  # noqa: E402

_LAZY = {
    "RunSpec": "optstate.sim.config",
    "GroupSpec": "optstate.sim.config",
    "SchedulerSpec": "optstate.sim.config",
    "spec_from_dict": "optstate.sim.config",
    "read_config_file": "optstate.sim.config",
    "build": "optstate.sim.build",
    "simulate": "optstate.sim.simulate",
    "SimulationResult": "optstate.sim.simulate",
    "load_torch_file": "optstate.io.torch_file",
    "save_checkpoint": "optstate.io.torch_file",
    "open_source": "optstate.io.source",
    "locate": "optstate.state.locate",
    "inspect_path": "optstate.analysis.inspect",
    "inspect_source": "optstate.analysis.inspect",
    "infer_kind": "optstate.state.kind",
    "OptimizerStateView": "optstate.state.view",
    "summarize": "optstate.numeric.stats",
    "TensorSummary": "optstate.numeric.stats",
    "OptstateError": "optstate.base.errors",
    "convert": "optstate.edit.convert",
    "open_dcp": "optstate.io.dcp",
    "simulate_sharded": "optstate.sim.distributed",
    "LazyTensor": "optstate.io.lazy",
    "set_hyperparameters": "optstate.edit.hyperparameters",
    "check_checkpoint": "optstate.analysis.check",
    "check_state": "optstate.analysis.check",
    "diff_states": "optstate.analysis.diff",
    "diff_files": "optstate.analysis.diff",
    "DiffOptions": "optstate.analysis.diff",
    "StateDiff": "optstate.analysis.diff",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'optstate' has no attribute {name!r}")
    return getattr(import_module(module), name)


class _Package(ModuleType):
    """``simulate`` and ``locate`` are functions and also submodules: importing the
    submodule makes Python set ``optstate.sim.simulate`` to the module, so ``from optstate
    import simulate`` would give a module or a function depending on import order. The
    function wins (``from optstate.sim.simulate import ...`` still reaches the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, ModuleType) and value.__name__ == _LAZY[name]:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
