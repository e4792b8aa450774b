"""The command line: the only package that imports typer. Each command parses its flags,
calls the core, picks a renderer and prints. Errors from the core become one
``Error: ...`` line on stderr and exit status 2 (``OPTSTATE_DEBUG=1`` shows the traceback).

Commands live in one module each (``cli/simulate.py``, ...) so that every command stays a
short read; they import torch only inside the command body, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Annotated

import typer

from .. import __version__
from ..errors import OptstateError, one_line

app = typer.Typer(
    name="optstate",  # help: _root's docstring
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optstate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Show the version and exit.")
    ] = False,
) -> None:
    """Inspect, diff, simulate and repair PyTorch optimizer state checkpoints.

    Every file is loaded with torch.load(weights_only=True): opening a
    checkpoint never runs code from it. Each command's --help has examples.
    """


def debug_enabled() -> bool:
    return os.environ.get("OPTSTATE_DEBUG", "") not in ("", "0")


def fail(message: str, hint: str | None = None, code: int = 2) -> typer.Exit:
    """Print one ``Error:`` line (and a ``Hint:``) to stderr; return the Exit to raise."""
    print(f"Error: {one_line(message)}", file=sys.stderr)
    if hint:
        print(f"Hint: {one_line(hint)}", file=sys.stderr)
    return typer.Exit(code=code)


def warn(message: str) -> None:
    print(f"Warning: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Map core errors (and stray ones) to a clean exit."""
    try:
        yield
    except typer.Exit:
        raise
    except OptstateError as e:
        if debug_enabled():
            traceback.print_exc()
        raise fail(e.message, e.hint, e.exit_code) from None
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        raise typer.Exit(code=130) from None
    except MemoryError:
        raise fail("out of memory", "try --no-stats, or a machine with more memory") from None
    except Exception as e:  # a bug in optstate: still one line, traceback on request
        if debug_enabled():
            traceback.print_exc()
        raise fail(
            f"internal error: {type(e).__name__}: {e}".splitlines()[0],
            "this is a bug in optstate; OPTSTATE_DEBUG=1 shows the traceback",
        ) from None


UNSAFE_HELP = (
    "Load with full pickle (weights_only=False). DANGEROUS: the file can run any code on "
    "this machine. Only for files you made yourself."
)


def warn_unsafe() -> None:
    """The loud warning every --unsafe flag prints before loading anything."""
    print(
        "WARNING: --unsafe: loading with full pickle (weights_only=False). A malicious "
        "file can now run arbitrary code on this machine. Use only for files you trust.",
        file=sys.stderr,
    )


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")


def stdout_console():  # noqa: ANN201 - rich is imported lazily
    from rich.console import Console

    from ..render.terminal_safe import protect  # text from checkpoints: no escapes

    return protect(Console(highlight=False, soft_wrap=False))


def stderr_console():  # noqa: ANN201
    from rich.console import Console

    from ..render.terminal_safe import protect

    return protect(Console(stderr=True, highlight=False))


_USAGE_ERROR_BASE: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Runs the app with ``standalone_mode=False`` so that usage errors (a bad value, an
    unknown option, a missing argument) reach us instead of typer's rich error box: they
    become one ``Error: ...`` line and a ``Hint:`` on stderr, exit status 2, like every
    other error. Only names typer itself exports are used: the base of its usage errors
    is found through ``typer.BadParameter`` (click's ``ClickException`` in typer < 0.2x,
    typer's vendored copy after).
    """
    try:
        code = app(args=argv, prog_name="optstate", standalone_mode=False)
    except _USAGE_ERROR_BASE as e:
        sys.exit(_usage_error(e, argv))
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(e: Exception, argv: list[str] | None) -> int:
    """Print a usage error as ``Error:``/``Hint:`` lines; return its exit status."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":  # typer has printed the help already
        return 2
    message = " ".join(line.strip() for line in e.format_message().splitlines() if line.strip())
    if ctx is not None:
        command = ctx.command_path
    else:  # errors raised while parsing, before a context exists
        words = [a for a in (argv if argv is not None else sys.argv[1:]) if not
                 a.startswith("-")]
        command = f"optstate {words[0]}" if words and words[0] in _command_names() else "optstate"
    fail(message, f"run '{command} --help' to see the options")
    code = getattr(e, "exit_code", 2)
    return code if isinstance(code, int) and code else 2


def _command_names() -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}


# Each command module registers itself on ``app`` when imported.
from . import check as _check  # noqa: E402,F401
from . import compare as _compare  # noqa: E402,F401
from . import convert as _convert  # noqa: E402,F401
from . import diff as _diff  # noqa: E402,F401
from . import inspect as _inspect  # noqa: E402,F401
from . import set_cmd as _set_cmd  # noqa: E402,F401
from . import simulate as _simulate  # noqa: E402,F401
