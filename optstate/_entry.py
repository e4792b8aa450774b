"""The console-script entry point (``optstate`` and ``python -m optstate``).

``optstate --version`` is answered here, before the command line (typer, rich: about
70 ms of imports) is loaded; everything else goes to ``optstate.cli.main``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if list(args) == ["--version"]:
        from . import __version__

        print(f"optstate {__version__}")  # what the CLI's own --version prints
        sys.exit(0)
    from .cli import main as cli_main

    cli_main(argv)
