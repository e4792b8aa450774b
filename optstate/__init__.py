"""optstate: inspect, diff, simulate and repair PyTorch optimizer state checkpoints.

The documented Python API (``optstate/api.py``): the command line's commands as
functions that return its ``--json`` reports (or result objects) and print nothing::

    import optstate

    report = optstate.inspect("adam.pt")              # optstate inspect adam.pt --json
    same = optstate.diff("a.pt", "b.pt")["equal"]      # optstate diff a.pt b.pt --json
    loaded = optstate.load_state("run.ckpt")           # .state, .view, .location, ...
    result = optstate.simulate({"optimizer": "AdamW", "steps": 10}, save="adamw.pt")

plus ``check``, ``set_hyperparameters``, ``convert`` and ``timeline``. The building
blocks beneath them (``RunSpec``, ``open_source``, ``locate``, ``diff_states``, ...) are
importable from here too. Importing ``optstate`` imports no torch, typer or rich: each
function and name loads what it needs on first use. Errors are ``OptstateError``
(one-line ``str()``).
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
from typing import Any  # noqa: E402

from optstate.api import (  # noqa: E402 - imports nothing heavy: each function imports its own
    LoadedState,
    check,
    config,
    convert,
    diff,
    inspect,
    load_state,
    set_hyperparameters,
    simulate,
    timeline,
)
from optstate.base.version import __version__  # noqa: E402

# The building blocks, loaded (with torch) on first use: name -> module.
_LAZY = {
    "RunSpec": "optstate.sim.config",
    "GroupSpec": "optstate.sim.config",
    "SchedulerSpec": "optstate.sim.config",
    "spec_from_dict": "optstate.sim.config",
    "read_config_file": "optstate.sim.config",
    "build": "optstate.sim.build",
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
    "open_dcp": "optstate.io.dcp",
    "simulate_sharded": "optstate.sim.distributed",
    "LazyTensor": "optstate.io.lazy",
    "check_checkpoint": "optstate.analysis.check",
    "check_state": "optstate.analysis.check",
    "diff_states": "optstate.analysis.diff",
    "diff_files": "optstate.analysis.diff",
    "DiffOptions": "optstate.analysis.diff",
    "StateDiff": "optstate.analysis.diff",
}

__all__ = [
    "__version__",
    "inspect", "diff", "load_state", "LoadedState", "check", "config",
    "set_hyperparameters", "convert", "simulate", "timeline",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The building blocks of ``_LAZY``: each module is imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'optstate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    """Every public name, those not loaded yet included."""
    return sorted({*globals(), *_LAZY})
