"""The console-script entry point (``optstate`` and ``python -m optstate``).

``optstate --version`` and the root help (``optstate``, ``optstate --help``, ``-h``)
are answered here, before the command line (typer, rich: about 70 ms of imports) is
loaded: the help is ``render/root_help.py``'s text, the same the typer app prints
(tests/test_root_help.py). Everything else goes to ``optstate.cli.main``.
"""

from __future__ import annotations

import sys

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
    from .cli import main as cli_main

    cli_main(argv)
