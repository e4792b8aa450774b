"""The console-script entry point (``optstate`` and ``python -m optstate``).

``optstate --version`` and the root help (``optstate``, ``optstate --help``, ``-h``)
are answered here, before the command line (typer, rich: about 70 ms of imports) is
loaded: the help is ``render/root_help.py``'s text, the same the typer app prints
(tests/test_root_help.py). Everything else goes to ``optstate.cli.main``.
"""

from __future__ import annotations

import gc
import sys

# Start-up is mostly imports (typer, rich, then torch's ~1.4 s), which make long-lived
# objects only; with the cyclic collector on, each full collection during them rescans
# everything imported so far (~0.15 s of `import torch` here). The console script
# imports with the collector off; ``resume_collector()`` (called as a command body
# starts) imports torch, freezes what start-up made and turns the collector back on.
_collector_paused = False


def resume_collector() -> None:
    """Import torch if start-up paused the collector, then freeze and resume it."""
    global _collector_paused
    if _collector_paused:
        import torch  # noqa: F401 - the import every command makes first

        gc.freeze()  # start-up objects: never rescanned
        gc.enable()
        _collector_paused = False


# Commands that read whole checkpoints' tensor data.
_READS_TENSORS = frozenset({"inspect", "diff", "check", "set", "convert"})


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from . import __version__

        print(f"optstate {__version__}")  # what the CLI's own --version prints
        sys.exit(0)
    if args in ([], ["--help"], ["-h"]):
        from .render.root_help import root_help

        sys.stdout.write(root_help())
        sys.exit(2 if not args else 0)  # bare `optstate`: help, not a success (as click)
    if args and args[0] in _READS_TENSORS and not {"--help", "-h", "--no-stats"} & set(args):
        # the checkpoint's pages load from disk while torch is imported (prefetch.py)
        from .prefetch import start

        start(args[1:])
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True
    try:
        from .cli import main as cli_main

        cli_main(argv)
    finally:
        if _collector_paused:  # help, a usage error: no command ran
            gc.enable()
            _collector_paused = False
