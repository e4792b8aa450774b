"""Worker processes on this machine, joined by a loopback rendezvous: the one launcher of
``simulate --world-size N`` and of ``inspect``/``diff --workers N``.

The parent owns everything that outlives the workers: the rendezvous store (a
``TCPStore`` listening on 127.0.0.1 only, on a port the OS picks, held open by the parent
so no other program can take it; gloo is pinned to the loopback interface), the work
folder (``job.json`` in, results and ``error.RANK.json`` out, ``rankN.log`` for each
worker's output), and the workers themselves: each runs in its own session (a terminal's
Ctrl-C reaches the parent, which stops them), is killed by the kernel if the parent dies
outright (``die_with_parent``), and is stopped on the first error, on a timeout and on
Ctrl-C (``stop``). A worker that failed becomes one ``OptstateError`` (``wait``): its own
report when it wrote one, else its exit status and the last line it printed.

A worker leaves through ``exit_now`` once its work is written (gloo's teardown at
interpreter exit now and then calls std::terminate: see there).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from optstate.base import errors
from optstate.base.errors import OptstateError

LOOPBACK = "127.0.0.1"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process is one rank of a torchrun with 2+ ranks (its
    environment says so); read without importing torch."""
    if not all(os.environ.get(k) for k in TORCHRUN_ENV):
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


@contextlib.contextmanager
def rendezvous(world_size: int) -> Iterator[int]:
    """A ``TCPStore`` on 127.0.0.1 for ``world_size`` workers (and this parent), open while
    the block runs; yields its port."""
    from torch.distributed import TCPStore

    # TCPStore(host, 0, is_master=True) listens on every interface whatever the host; a
    # socket bound here to 127.0.0.1 on a port the OS picks, handed over, keeps it local.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    store = None
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        store = TCPStore(LOOPBACK, port, world_size + 1, is_master=True,
                         timeout=timedelta(seconds=60), wait_for_workers=False,
                         master_listen_fd=listener.fileno())
        listener.detach()  # the store owns (and closes) the socket now
        yield port
    finally:
        listener.close()  # a no-op once detached
        del store  # closes the rendezvous socket


def join_store(port: int, world_size: int) -> Any:
    """A worker's client of the parent's store (``rendezvous``)."""
    import torch.distributed as dist

    return dist.TCPStore(LOOPBACK, port, world_size + 1, is_master=False,
                         timeout=timedelta(seconds=60))


def start_worker(module: str, args: list[str], rank: int, work: Path,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m module *args`` as worker ``rank``: its output to ``work/rankN.log``, in
    its own session, on one OpenMP thread (N workers share this machine's cores)."""
    full = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    full["PYTHONPATH"] = root + (os.pathsep + full["PYTHONPATH"]
                                 if full.get("PYTHONPATH") else "")
    full["OMP_NUM_THREADS"] = "1"
    ifname = loopback_interface()
    if ifname:
        full["GLOO_SOCKET_IFNAME"] = ifname
    full.update(env or {})
    log = open(work / f"rank{rank}.log", "wb")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full,
            start_new_session=True,  # Ctrl-C goes to the parent, which stops the workers
        )
    finally:
        log.close()


def loopback_interface() -> str | None:
    """The loopback interface name (``lo`` on Linux, ``lo0`` on macOS), for gloo."""
    with contextlib.suppress(OSError, AttributeError):
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    return None


def wait(procs: list[subprocess.Popen[bytes]], work: Path, timeout: float,
         what: str = "the sharded run") -> None:
    """Until every worker exited 0; the first failure (or the timeout) as one
    ``OptstateError`` naming ``what`` the workers were doing."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            time.sleep(0.2)  # let the others report their own error first, if any
            raise worker_error(work, failed, [p.poll() for p in procs], what)
        if all(c == 0 for c in codes):
            return
        if time.monotonic() > deadline:
            raise OptstateError(f"{what} did not finish within {timeout:.0f} s; "
                                "its processes were stopped")
        time.sleep(0.05)


def write_error(work: Path, rank: int, e: BaseException) -> None:
    """A worker's report of the error that ends it, for the parent (``worker_error``)."""
    text = str(e).strip()
    report = {"rank": rank, "kind": type(e).__name__,
              "message": text.splitlines()[0] if text else type(e).__name__,
              "hint": getattr(e, "hint", None)}
    with contextlib.suppress(OSError):
        (work / f"error.{rank}.json").write_text(json.dumps(report))


def worker_error(work: Path, failed: list[int], codes: list[int | None],
                 what: str = "the sharded run") -> OptstateError:
    """One error for the failed workers: an optstate error a worker reported (before
    those of ranks that only lost their peers), else the first one's exit and last line."""
    reports = [json.loads(f.read_text()) for f in sorted(work.glob("error.*.json"))]
    reports.sort(key=lambda r: not _is_optstate_error(r["kind"]))
    if reports:
        first = reports[0]
        if _is_optstate_error(first["kind"]):
            return getattr(errors, first["kind"])(first["message"], first.get("hint"))
        return OptstateError(f"rank {first['rank']} of {what} failed: {first['kind']}: "
                             f"{first['message']}")
    rank = failed[0]
    tail = ""
    with contextlib.suppress(OSError):
        text = (work / f"rank{rank}.log").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        tail = lines[-1].strip() if lines else ""
    code = codes[rank]
    how = f"was killed by signal {-code}" if code is not None and code < 0 else \
        f"exited with status {code}"
    return OptstateError(f"rank {rank} of {what} {how}" + (f": {tail}" if tail else ""))


def _is_optstate_error(kind: str) -> bool:
    cls = getattr(errors, kind, None)
    return isinstance(cls, type) and issubclass(cls, OptstateError)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every worker still running: SIGTERM to its session, then SIGKILL."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    for p in alive:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in alive:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def die_with_parent(parent: int | None) -> None:
    """Linux: ask the kernel to SIGKILL this worker when the parent dies, so a parent
    killed outright (no chance to clean up) leaves no worker blocked in a collective."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def worker_main(argv: list[str], run: Any) -> int:
    """A worker's body (``python -m MODULE JOB RANK``): the pdeathsig guard, then
    ``run(job, rank)`` with library notices silenced; an error is printed to the worker's
    log and reported to the parent (``write_error``), exit status 1."""
    import traceback
    import warnings

    job = json.loads(Path(argv[0]).read_text())
    rank = int(argv[1])
    die_with_parent(job.get("parent"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP2 / DCP notices; errors are reported below
            run(job, rank)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit 1
        traceback.print_exc()
        write_error(Path(job["work"]), rank, e)
        return 1
    return 0


def exit_now(code: int) -> None:
    """Leave without the interpreter's and the C++ runtime's teardown. Everything the
    process owes (its output, results, an error report) is written by now; what is left is
    the destructors of torch's static objects, and one of them (a gloo thread still
    joinable at exit) calls std::terminate now and then, killing a process that had
    succeeded with SIGABRT ("terminate called without an active exception"), about once
    in 40 runs on a loaded 2-core machine."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
