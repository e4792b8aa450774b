"""The console-script entry point (``optstate`` and ``python -m optstate``).

``optstate --version`` and the root help (``optstate``, ``optstate --help``, ``-h``)
are answered here, before the command line (typer, rich: about 70 ms of imports) is
loaded: the help is ``render/root_help.py``'s text, the same the typer app prints
(tests/test_root_help.py). Everything else goes to ``optstate.cli.main``.

Ctrl-C at any moment ends as ``Interrupted.`` and exit 130 (``optstate/base/interrupt.py``):
SIGINT is routed to the pending-interrupt flag first thing; start-up's imports (typer,
rich, torch) run with it deferred, so no library can swallow or mangle the interrupt
mid-import, and it is raised as they end. Whatever escapes a command while an interrupt
is pending, and an interrupt that some library caught and dropped, is reported here.
"""

from __future__ import annotations

import os
import sys

from optstate.base import interrupt, startup
from optstate.base.testhook import pause_at

pause_at("entry_import")  # test hook: a SIGINT before main() installs the handler

# Set when a shell asks for completions (the words come in other variables, argv is
# empty): typer answers it, not the root help.
_COMPLETE_VAR = "_OPTSTATE_COMPLETE"

# Commands that read whole checkpoints' tensor data.
_READS_TENSORS = frozenset({"inspect", "diff", "check", "set", "convert"})


def main(argv: list[str] | None = None) -> None:
    interrupt.install()
    rank = _torchrun(argv)
    try:
        code = _run(argv)
        if not interrupt.pending():
            pause_at("finished")  # the command's work is done, its output written
            try:
                sys.stdout.flush()
            except (OSError, ValueError):  # a closed pipe (`| head`): Python's exit says so
                pass
        # typer ends a KeyboardInterrupt as a silent exit 130, and a library may catch one
        # and go on: either way the interrupt is reported here
        interrupt.check()
        interrupt.hold()
    except KeyboardInterrupt:
        code = interrupt.announce()
    except BaseException:
        interrupt.hold()
        if not interrupt.pending():
            raise  # a bug outside the commands' error handling: keep its traceback
        code = interrupt.announce()  # e.g. a module left half-imported by the interrupt
    # CPython notes a KeyboardInterrupt that ends an exec() or eval() of a string (the code
    # namedtuple and dataclass generate) as unhandled, and at exit kills the process with
    # SIGINT instead of exiting with our status; a string exec() that succeeds clears it.
    exec("")  # noqa: S102 - a constant empty string
    if rank is not None:  # a torchrun rank in a gloo group: no C++ teardown (launch.exit_now)
        from optstate.analysis.ranks import finish
        from optstate.io.launch import exit_now

        if isinstance(code, str):
            print(code, file=sys.stderr)
        status = code if isinstance(code, int) else int(code is not None)
        # every rank's error reaches rank 0, which prints it; all leave once it has
        exit_now(finish(status, _stderr_text))
    sys.exit(code)


# Commands whose tensor work torchrun's ranks split (analysis/ranks.py).
_RANKED = frozenset({"inspect", "diff"})


def _torchrun(argv: list[str] | None) -> int | None:
    """Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; 2+ ranks): for
    inspect and diff, join the process group and return this rank (every rank computes
    its share and builds the same report; only rank 0's stdout and stderr stay open, so
    the output is printed once, and each rank exits with the same status). Any other
    command runs on rank 0 alone: the other ranks exit 0 at once, printing nothing
    (one write of a file, one simulation: N copies would race or repeat). None: not
    under torchrun, or a command that is not split."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    from optstate.io.launch import torchrun_rank

    found = torchrun_rank()
    if found is None:
        return None
    rank = found[0]
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in _RANKED or {"--help", "-h"} & set(args):
        if rank != 0:
            os._exit(0)  # nothing started yet: no teardown to skip
        return None
    if rank != 0:  # stdout dropped; stderr kept in a temp file for its Error line (finish)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        import tempfile

        with tempfile.TemporaryFile() as kept:
            os.dup2(kept.fileno(), 2)
    from optstate.analysis.ranks import init_from_env

    try:
        init_from_env()
    except Exception as e:  # noqa: BLE001 - one line, as every known error
        print(f"Error: cannot join torchrun's process group: {e}".splitlines()[0],
              file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    return rank


def _stderr_text() -> str:
    """What a rank other than 0 wrote to its stderr (a temp file: ``_torchrun``), its
    last 64 KiB; rank 0's is the terminal: ''."""
    try:
        sys.stderr.flush()
        size = os.fstat(2).st_size
        return os.pread(2, 65536, max(0, size - 65536)).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _run(argv: list[str] | None) -> object:
    """Run the command line; its exit status (``sys.exit``'s argument)."""
    try:
        with interrupt.deferred():  # start-up: imports only; an interrupt is raised after
            pause_at("startup")
            cli_main = _start(argv)
        try:
            cli_main(argv)
        finally:
            startup.resume_unused_collector()
    except SystemExit as e:
        return e.code
    return 0


def _start(argv: list[str] | None):  # noqa: ANN202 - optstate.cli.main, once imported
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from optstate.base.version import __version__

        print(f"optstate {__version__}")  # what the CLI's own --version prints
        sys.exit(0)
    if args in ([], ["--help"], ["-h"]) and _COMPLETE_VAR not in os.environ:
        from optstate.render.root_help import root_help

        sys.stdout.write(root_help())
        sys.exit(2 if not args else 0)  # bare `optstate`: help, not a success (as click)
    if args and args[0] in _READS_TENSORS and not {"--help", "-h", "--no-stats"} & set(args):
        # the checkpoint's pages load from disk while start-up imports (prefetch.py)
        from optstate.io.prefetch import start

        start(args[1:])
    from optstate.io import readguard

    readguard.enable()  # an input truncated while it is read: an Error line, not SIGBUS
    startup.pause_collector()  # start-up's imports run without it (base/startup.py)
    from optstate.cli import main as cli_main

    return cli_main

