"""Shared fixtures: real optimizers, real torch.save files, the CLI in and out of process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The tests press Ctrl-C (SIGINT) on real processes, as a terminal does. A suite started in
# the background by a script (`cmd &`, nohup) inherits SIGINT *ignored*, every process it
# starts would too, and optstate rightly keeps an ignored SIGINT ignored: those tests would
# then fail for the way the suite was started. Python's own handler here means every child
# starts with SIGINT at its default, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_home(tmp_path_factory):
    """timeline's cache key (``$XDG_CACHE_HOME/optstate/cache-key``) made in a temporary
    folder, never in the real home, for the suite and the processes it starts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def cli():
    """Run the CLI in-process through typer's CliRunner; returns the Result
    (``.exit_code``, ``.stdout``, ``.stderr``)."""
    from typer.testing import CliRunner

    from optstate.cli import app

    runner = CliRunner()

    def run(*args: str, **kw):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)

    return run


@pytest.fixture
def run_cli():
    """Run ``python -m optstate`` in a fresh process (for exit codes, tracebacks, isolation)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
        e = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
        e.pop("OPTSTATE_DEBUG", None) if not (env and "OPTSTATE_DEBUG" in env) else None
        return subprocess.run(
            [sys.executable, "-m", "optstate", *map(str, args)],
            capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout,
        )

    return run
