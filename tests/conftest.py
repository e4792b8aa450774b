"""Shared fixtures: real optimizers, real torch.save files, the CLI in and out of process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# Property tests draw the same examples on every run: a suite must not pass or fail by the
# draw (CI once failed on a no-break space one random draw found, now an @example of its
# test). HYPOTHESIS_PROFILE=explore draws new examples, to look for more.
settings.register_profile("optstate", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "optstate"))

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


# -- S3 (issue #21): a moto server on loopback; tests/s3server.py, tests/faultproxy.py -------
@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 (``tests.s3server.S3Server``: ``.endpoint``, ``.client``,
    ``.put(src, url)``, ``.put_dir(dir, url)``, ``.keys(bucket)``), started once; for the rest
    of the session the environment (this process and its subprocesses) holds dummy
    credentials and ``AWS_ENDPOINT_URL_S3`` = its endpoint. Skips, saying why, only when
    moto/boto3/s3fs are not importable (the dev extra brings them)."""
    from tests.s3server import S3Server, patched_env, s3_available

    reason = s3_available()
    if reason:
        pytest.skip(reason)
    server = S3Server()
    try:
        with patched_env(server.env()):
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3):
    """A fresh, empty bucket's name; emptied and deleted afterwards. s3fs's filesystem cache
    is cleared before and after, so no test reuses another's endpoint."""
    from tests.s3server import clear_fs_cache

    clear_fs_cache()
    name = s3.new_bucket()
    yield name
    clear_fs_cache()
    s3.drop_bucket(name)


@pytest.fixture
def fault_proxy(s3):
    """``tests.faultproxy.FaultProxy`` in front of the server; for the test,
    ``AWS_ENDPOINT_URL_S3`` points at the proxy (so the CLI, in process or not, goes through
    it). Rules: ``.slow_down(n)``, ``.deny()``, ``.fail_puts()``; log: ``.entries()``,
    ``.get_bytes(key)``, ``.requests()``."""
    from tests.faultproxy import FaultProxy
    from tests.s3server import patched_env

    proxy = FaultProxy(s3.endpoint)
    try:
        with patched_env({"AWS_ENDPOINT_URL_S3": proxy.endpoint}):
            yield proxy
    finally:
        proxy.stop()
