"""What every command shares: usage errors, help that teaches, a light ``--help``.

Usage errors go through ``main()`` (the console script and ``python -m optstate``), which
CliRunner does not call, so they are tested in a real subprocess.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from optstate.cli import app
from tests.conftest import ROOT

COMMANDS = sorted(c.name or c.callback.__name__.replace("_", "-")
                  for c in app.registered_commands)
HINT_SIMULATE = "Hint: run 'optstate simulate --help' to see the options"


def _error_lines(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert not any(ch in r.stderr for ch in "╭│╰"), r.stderr  # no rich box
    return r.stderr.splitlines()


@pytest.mark.parametrize(("args", "lines"), [
    (["simulate", "--bogus"], ["Error: No such option: --bogus", HINT_SIMULATE]),
    (["simulate", "--shape"], ["Error: Option '--shape' requires an argument.", HINT_SIMULATE]),
    (["frobnicate"], ["Error: No such command 'frobnicate'.",
                      "Hint: run 'optstate --help' to see the options"]),
])
def test_usage_errors_are_one_error_line(run_cli, args, lines):
    assert _error_lines(run_cli(*args)) == lines


def test_bad_value_is_one_error_line(run_cli):
    lines = _error_lines(run_cli("simulate", "--steps", "abc"))
    # the wording after the option name is typer's and changes between its versions
    assert lines[0].startswith("Error: Invalid value for '--steps': ")
    assert lines[1:] == [HINT_SIMULATE]


def test_missing_argument_is_one_error_line(run_cli):
    # a command with a required argument, whichever the others registered
    lines = _error_lines(run_cli("diff", "only-one.pkl"))
    assert lines[0].startswith("Error: Missing argument ")
    assert lines[1:] == ["Hint: run 'optstate diff --help' to see the options"]


def test_debug_shows_the_traceback(run_cli):
    r = run_cli("simulate", "--optimizer", "Adamm", env={"OPTSTATE_DEBUG": "1"})
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().splitlines()[-2] == "Error: unknown optimizer 'Adamm'"


def test_success_exit_code_and_version(run_cli):
    r = run_cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "optstate 0.1.0\n", "")


def test_bare_optstate_shows_help(run_cli):
    r = run_cli()
    assert r.returncode == 2  # as click does: help, but not a successful run
    assert "Usage: optstate [OPTIONS] COMMAND [ARGS]..." in r.stdout
    assert "simulate" in r.stdout
    assert r.stderr.strip() == ""


def test_the_usual_commands_are_registered():
    assert "simulate" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_teaches(cli, command):
    r = cli(command, "--help", env={"COLUMNS": "200"})
    assert r.exit_code == 0
    callback = next(c.callback for c in app.registered_commands
                    if (c.name or c.callback.__name__.replace("_", "-")) == command)
    first_line = callback.__doc__.strip().splitlines()[0]
    assert first_line in r.stdout
    examples = [ln for ln in r.stdout.splitlines() if "Example" in ln]
    assert examples, f"optstate {command} --help has no example"
    assert f"optstate {command}" in r.stdout.split("Example", 1)[1]


NO_TORCH = (
    "import sys\n"
    "from optstate.cli import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
    "assert not heavy, f'{sys.argv[1:]} imported {heavy}'\n"
)


@pytest.mark.parametrize("args", [["--help"], ["--version"]] + [[c, "--help"]
                                                              for c in COMMANDS])
def test_help_and_version_do_not_import_torch(args):
    r = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
