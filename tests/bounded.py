"""Run the CLI in a child process under a time and memory bound (the hostile suite's harness).

A hostile input must cost time and memory that follow the bytes it really stores; a test
proves that by running the real command in a fresh process whose data segment (heap and
anonymous mappings: RLIMIT_DATA covers both on Linux >= 4.7) is capped and whose wall time
is bounded. Torch's import fits comfortably in the default cap; a command that tries to
materialise a tensor a file only claims to hold fails inside the cap instead of swapping.

    from tests.bounded import run_bounded
    r = run_bounded("inspect", path)              # 60 s, 1 GiB of data by default
    assert r.returncode == 2 and r.stderr.startswith("Error: ")
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY = 1 << 30  # bytes of data segment (heap + anonymous maps)


@dataclass
class BoundedResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def _limits(memory: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_bounded(*args: object, timeout: float = DEFAULT_TIMEOUT, memory: int = DEFAULT_MEMORY,
                env: dict[str, str] | None = None, cwd: Path | None = None,
                module: str = "optstate") -> BoundedResult:
    """``python -m optstate ARGS`` in a child process capped at ``memory`` bytes of data and
    ``timeout`` seconds of wall time. A timeout kills the child and is reported, not raised,
    so the test can assert on it with a clear message."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    if not (env and "OPTSTATE_DEBUG" in env):
        e.pop("OPTSTATE_DEBUG", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=e, preexec_fn=_limits(memory))
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    return BoundedResult(proc.returncode, out, err, time.monotonic() - start, timed_out)
