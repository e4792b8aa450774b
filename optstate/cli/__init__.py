"""The command line: the only package that imports typer. Each command parses its flags,
calls the core, picks a renderer and prints. Errors from the core become one
``Error: ...`` line on stderr and exit status 2 (``OPTSTATE_DEBUG=1`` shows the traceback).

Commands live in one module each (``cli/simulate.py``, ...) so that every command stays a
short read; they import torch only inside the command body, so ``--help`` stays fast. A
command's module is imported (and its click command built) only when that command is
asked for: ``optstate inspect FILE`` loads ``cli/inspect.py`` alone, and the root help
lists the commands from the table in ``render/root_help.py`` (issue #6).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from optstate.base import interrupt
from optstate.base.debug import debug_enabled
from optstate.base.errors import OptstateError, one_line, speaking
from optstate.base.startup import resume_collector
from optstate.base.testhook import pause_at
from optstate.base.version import __version__
from optstate.cli.stdout_guard import answer, guard
from optstate.io import readguard
from optstate.render.root_help import COMMANDS, DESCRIPTION, VERSION_HELP, root_help

# command name -> its module in this package, when they differ
_MODULE_OF = {"set": "set_cmd", "config": "config_cmd"}


class _Commands(MutableMapping):
    """The root group's commands by name; a command's module is imported and its click
    command built on first access (``get``/``[]``). Iterating gives the names without
    loading anything; ``items()``/``values()`` load all, so code that walks every
    command (tests, completion) sees them all."""

    def __init__(self, built: MutableMapping) -> None:
        self._built = dict(built)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build(name)
        return self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in self._built or name in COMMANDS

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._built]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*COMMANDS, *self._built]))

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]


def _build(name: str) -> Any:
    """Import the module of command ``name`` (it registers on ``app``) and build it."""
    import_module(f"{__name__}.{_MODULE_OF.get(name, name)}")
    info = next(c for c in app.registered_commands
                if (c.name or typer.main.get_command_name(c.callback.__name__)) == name)
    return typer.main.get_command_from_info(
        info, pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode)


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """A flag's help row shows no ``<bool>``: it takes no value (typer 0.29 shows one)."""
    for p in params:
        if getattr(p, "is_bool_flag", False):
            p.metavar = ""  # typer's type column shows the metavar when there is one
    return params


class OptstateCommand(TyperCommand):
    """Every command's class (``@app.command(cls=OptstateCommand)``): the usage line names
    arguments as click does (``CKPT``, ``[CKPT]`` when optional; typer 0.29 writes
    ``{CKPT}``), flags show no value type, and an on/off pair reads ``--trial /
    --no-trial`` in the help."""

    _help_view = False

    def get_params(self, ctx: Any) -> list[Any]:
        params = _flags_take_no_value(super().get_params(ctx))
        if not self._help_view:
            return params
        shown = []
        for p in params:  # copies, for the help only: parsing keeps the real ones
            if getattr(p, "is_bool_flag", False) and p.secondary_opts:
                p = copy.copy(p)
                p.secondary_opts = [f"/ {o}" for o in p.secondary_opts]
            shown.append(p)
        return shown

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._help_view = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._help_view = False

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:].replace("}", "", 1) if p.startswith("{") else p for p in pieces]


class _LazyGroup(TyperGroup):
    """typer's group with lazily loaded commands and a root help drawn without rich
    (``render/root_help.py``: the same text typer's rich formatter prints, tested)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands(self.commands)
        self.suggest_commands = False  # resolve_command suggests, in optstate's words

    def get_params(self, ctx: Any) -> list[Any]:
        params = _flags_take_no_value(super().get_params(ctx))
        for p in params:  # typer's completion flags default to None: pydantic (below)
            if getattr(p, "is_bool_flag", False) and p.default is None:
                p.default = False
        return params

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands \
                and not ctx.resilient_parsing:
            from optstate.base.suggest import unknown

            ctx.fail(unknown("command", args[0], self.commands))
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # TyperGroup's walks items(), which loads them all

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(root_help())

    def get_help_option(self, ctx: Any) -> Any:
        # typer (0.29) leaves --help's default at None, not a bool, so every command line
        # built a pydantic adapter for it (importing pydantic, ~70 ms) to return None;
        # False is what the absent flag means. Now `optstate CMD --help` imports no pydantic.
        option = super().get_help_option(ctx)
        if option is not None and option.default is None:
            option.default = False
        return option


app = typer.Typer(
    name="optstate",
    cls=_LazyGroup,
    help=DESCRIPTION,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
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
                           help=VERSION_HELP)
    ] = False,
) -> None:
    # Only --version; the help is render/root_help.py's DESCRIPTION (help= above).
    return None


def fail(message: str, hint: str | None = None, code: int = 2) -> typer.Exit:
    """Print one ``Error:`` line (and a ``Hint:``) to stderr; return the Exit to raise."""
    print(f"Error: {one_line(message)}", file=sys.stderr)
    if hint:
        print(f"Hint: {one_line(hint)}", file=sys.stderr)
    return typer.Exit(code=code)


def warn(message: str) -> None:
    print(f"Warning: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def errors_to_exit(*, torch: bool = True) -> Iterator[None]:
    """Run a command's body: the core's messages name options as flags (``cli/flags.py``),
    and its errors become one ``Error:`` line (``_errors_to_exit``). ``torch=False``: the
    body imports torch only if it needs it (inspect, diff, timeline: issue #22)."""
    from optstate.cli.flags import flag_words  # here: `CMD --help` loads only CMD's module

    # stdout_guard: while the command works, whatever else writes to stdout (a library's
    # log, fd 1) goes to stderr; print_json and stdout_console write the answer
    with speaking(flag_words), guard(), _errors_to_exit(torch=torch):
        yield


@contextlib.contextmanager
def _errors_to_exit(*, torch: bool = True) -> Iterator[None]:
    """Map core errors (and stray ones) to a clean exit. Entered first thing in every
    command's body: the moment start-up is over (``base.startup.resume_collector``).

    Ctrl-C is ``Interrupted.`` and exit 130, and so is any failure while an interrupt is
    pending: a KeyboardInterrupt raised inside torch can come out as another error (torch
    refusing an optimizer, a half-imported module), which would be a bogus message."""
    try:
        resume_collector(torch=torch)
        pause_at("command")  # test hook: imports done, the command's work starts
        yield
        interrupt.check()  # an interrupt that the work caught and dropped
    except (typer.Exit, SystemExit) as e:
        code = e.exit_code if isinstance(e, typer.Exit) else e.code
        if code in (0, 1, None):  # an answer was given: it holds only if the inputs did
            _fail_if_an_input_changed()
        raise
    except GeneratorExit:
        raise
    except BaseException as e:  # noqa: B036 - torch raises BaseExceptions of its own
        raise _exit_for(e) from None
    _fail_if_an_input_changed()


def _fail_if_an_input_changed() -> None:
    """An input truncated or rewritten while it was read (``readguard.changed``): the
    output printed may mix two versions of it, so the run ends as an error, exit 2."""
    pause_at("inputs_read")  # test hook: the command's reads are done
    error = readguard.changed()
    if error is not None:
        raise fail(error.message, error.hint, error.exit_code) from None


def _exit_for(e: BaseException) -> typer.Exit:
    """The one-line report and exit status for an exception out of a command's body."""
    cause = _wrapped_failure(e)
    if interrupt.pending() or isinstance(e, KeyboardInterrupt) or isinstance(
            cause, KeyboardInterrupt):
        return typer.Exit(code=interrupt.announce())
    if debug_enabled():
        traceback.print_exc()
    truncated = readguard.changed()  # whatever failed, an input shrinking is the cause
    if truncated is not None:
        cause = truncated
    if isinstance(cause, OptstateError):
        return fail(cause.message, cause.hint, cause.exit_code)
    if isinstance(cause, MemoryError):
        return fail("out of memory", "try --no-stats, or a machine with more memory")
    if cause is not e and isinstance(cause, OSError):  # e.g. a full disk under a DCP save
        where = f": {cause.filename}" if cause.filename else ""
        return fail(f"{cause.strerror or cause}{where}")
    # A bug in optstate (or a torch failure nobody translated): still one line, the
    # traceback on request.
    return fail(
        f"internal error: {type(cause).__name__}: {cause}".splitlines()[0],
        "this is a bug in optstate; OPTSTATE_DEBUG=1 shows the traceback",
    )


def _wrapped_failure(e: BaseException) -> BaseException:
    """The exception behind torch.distributed.checkpoint's ``CheckpointException`` (a
    BaseException holding each rank's exception in ``failures``); ``e`` itself otherwise.
    A KeyboardInterrupt among them wins: the save failed because of Ctrl-C."""
    failures = getattr(e, "failures", None)
    if not isinstance(failures, dict):
        return e
    causes = [f[0] for f in failures.values()
              if isinstance(f, tuple) and f and isinstance(f[0], BaseException)]
    interrupts = [c for c in causes if isinstance(c, KeyboardInterrupt)]
    return (interrupts or causes or [e])[0]


UNSAFE_HELP = (
    "Load with full pickle (weights_only=False). DANGEROUS: the file can run any code on "
    "this machine. Only for files you made yourself."
)

# What --model takes, said the same way by every command that has it.
MODEL_FILES_HELP = ("model.safetensors, a torch.save model state_dict, or a Hugging Face "
                    "folder (or its config.json)")


def warn_unsafe() -> None:
    """The loud warning every --unsafe flag prints before loading anything."""
    print(
        "WARNING: --unsafe: loading with full pickle (weights_only=False). A malicious "
        "file can now run arbitrary code on this machine. Use only for files you trust.",
        file=sys.stderr,
    )


def print_json(text: str) -> None:
    out = answer()  # the real stdout, also inside errors_to_exit (cli/stdout_guard.py)
    out.write(text + "\n")
    out.flush()


def stdout_console():  # noqa: ANN201 - rich is imported lazily
    from optstate.render.terminal_safe import safe_console  # text from checkpoints

    return safe_console(file=answer())


def stderr_console():  # noqa: ANN201
    from optstate.render.terminal_safe import safe_console

    return safe_console(stderr=True)


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
        if interrupt.pending():  # a KeyboardInterrupt outside a command's body
            sys.exit(interrupt.announce())
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
    return set(COMMANDS)


def load_all() -> None:
    """Import every command's module (each registers itself on ``app`` when imported),
    for code that wants ``app.registered_commands`` complete."""
    for name in COMMANDS:
        import_module(f"{__name__}.{_MODULE_OF.get(name, name)}")
