"""The root help is drawn without typer or rich from a static table, and commands load
lazily: the table must be the truth about the commands, and the text must be what
typer's rich formatter prints for the real app (optstate/render/root_help.py)."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import subprocess
import sys

import pytest
import typer
from typer.core import TyperGroup

from optstate.cli import _Commands, app, load_all
from optstate.render.root_help import COMMANDS, DESCRIPTION, root_help
from tests.conftest import ROOT


def _registered() -> dict[str, object]:
    load_all()
    return {c.name or typer.main.get_command_name(c.callback.__name__): c.callback
            for c in app.registered_commands}


def test_the_table_is_every_command_with_its_docstring_first_line():
    callbacks = _registered()
    assert list(COMMANDS) == sorted(callbacks)  # the help lists them alphabetically
    for name, summary in COMMANDS.items():
        assert inspect.getdoc(callbacks[name]).splitlines()[0] == summary, name


def _typer_rich_help(width: int, monkeypatch) -> list[str]:
    """The root help as typer's own rich formatter prints it (not a terminal: no colour)."""
    monkeypatch.setenv("COLUMNS", str(width))
    group = typer.main.get_command(app)
    ctx = group.make_context("optstate", ["check"], resilient_parsing=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        TyperGroup.format_help(group, ctx, ctx.make_formatter())  # not our override
    return [ln.rstrip() for ln in out.getvalue().rstrip("\n").splitlines()]


def test_root_help_names_every_option_whole_at_40_columns():
    """At 40 columns rich cuts the long option names (--install-c…), so there the two
    differ on purpose: no name is ever cut, and no line is wider than the terminal."""
    lines = root_help(40, colour=False).splitlines()
    assert max(len(ln) for ln in lines) <= 40
    for name in ("--version", "--install-completion", "--show-completion", "--help"):
        assert any(ln.startswith(f"│ {name}") for ln in lines), name
    words = {w for ln in lines for w in ln.strip("│ ").split()}
    assert {"Install", "completion", "installation."} <= words  # no word split either


@pytest.mark.parametrize("width", [57, 80, 100, 200])
def test_root_help_is_what_typers_rich_formatter_prints(width, monkeypatch):
    expected = _typer_rich_help(width, monkeypatch)
    text = " ".join(ln.strip(" │") for ln in expected)
    assert " ".join(DESCRIPTION.split()) in " ".join(text.split())  # rendered for real
    assert all(f" {name} " in text for name in COMMANDS)
    assert root_help(width, colour=False).rstrip("\n").splitlines() == expected


def test_colour_is_only_styling():
    plain = root_help(80, colour=False)
    coloured = root_help(80, colour=True)
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_the_width_follows_columns(monkeypatch):
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    assert max(len(ln) for ln in root_help(colour=False).splitlines()) == 100


def test_commands_map_loads_only_what_is_asked_for():
    commands = _Commands({})
    assert list(commands) == list(COMMANDS) and len(commands) == len(COMMANDS)
    assert "inspect" in commands and "nope" not in commands
    assert commands.get("nope") is None
    assert commands["inspect"].name == "inspect"
    assert list(commands._built) == ["inspect"]  # nothing else was built


PROBE = (
    "import sys\n"
    "from optstate.cli import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "except SystemExit:\n    pass\n"
    # (cli.stdout_guard is every command's: stdout is the answer's alone while one runs)
    "print('LOADED', ' '.join(sorted(m for m in sys.modules if m.startswith('optstate.cli.')"
    " and m != 'optstate.cli.stdout_guard')), file=sys.stderr)\n"
    "print('PYDANTIC' if 'pydantic' in sys.modules else 'NO-PYDANTIC', file=sys.stderr)\n"
)


@pytest.mark.parametrize(("args", "loaded"), [
    (["inspect", "--help"], "optstate.cli.inspect"),
    (["set", "--help"], "optstate.cli.set_cmd"),
    (["--help"], ""),
])
def test_a_command_loads_only_its_own_module(args, loaded):
    """... and help imports no pydantic (typer 0.29 coerces values through pydantic
    adapters; --help's default None made it build one for every command line)."""
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [ln.rstrip() for ln in r.stderr.splitlines()[-2:]] == [f"LOADED {loaded}".rstrip(),
                                                              "NO-PYDANTIC"]
