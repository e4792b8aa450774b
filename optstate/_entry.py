"""The console-script entry point (``optstate`` and ``python -m optstate``).

``optstate --version`` and the root help (``optstate``, ``optstate --help``, ``-h``)
are answered here, before the command line (typer, rich: about 70 ms of imports) is
loaded: the help is ``render/root_help.py``'s text, the same the typer app prints
(tests/test_root_help.py). Everything else goes to ``optstate.cli.main``.
"""

from __future__ import annotations

import sys


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
    from .cli import main as cli_main

    cli_main(argv)
