"""What every command shares: usage errors, help that teaches, a light ``--help``.

Usage errors go through ``main()`` (the console script and ``python -m optstate``), which
CliRunner does not call, so they are tested in a real subprocess.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest
import typer

from optstate.cli import app, load_all
from optstate.render.root_help import COMMANDS as TABLE
from tests.conftest import ROOT

COMMANDS = sorted(TABLE)  # tests/test_root_help.py: the table is every registered command
load_all()  # commands load lazily; the tests below read their callbacks
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
    (["frobnicate"], ["Error: unknown command 'frobnicate'",
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
    assert r.stderr.rstrip().splitlines()[-2] == (
        "Error: unknown optimizer 'Adamm'; did you mean 'adam'?")


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


def _callback(command):
    return next(c.callback for c in app.registered_commands
                if (c.name or c.callback.__name__.replace("_", "-")) == command)


def _typer_keeps_line_breaks() -> bool:
    """typer >= 0.2x prints a docstring's single line breaks as they are (older ones
    joined each paragraph into one and wrapped it)."""
    from typer.testing import CliRunner

    probe = typer.Typer()

    @probe.command()
    def one() -> None:
        """First.

        two
        three
        """

    out = CliRunner().invoke(probe, ["--help"], env={"COLUMNS": "80"}).stdout
    return any(ln.strip() == "two" for ln in out.splitlines())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_keeps_its_lines_at_80_columns(cli, command):
    """typer keeps the docstring's line breaks and rich re-wraps what is longer than the
    terminal, which left orphan words ("... gradient ones, 10" / "steps, ..."): every
    line must fit 80 columns and so come out whole, indentation included."""
    doc = inspect.cleandoc(_callback(command).__doc__)
    assert max(len(ln) for ln in doc.splitlines()) <= 76
    if not _typer_keeps_line_breaks():
        pytest.skip("this typer re-flows each paragraph itself")
    r = cli(command, "--help", env={"COLUMNS": "80"})
    assert r.exit_code == 0
    shown = [ln.rstrip() for ln in r.stdout.splitlines()]
    for line in doc.replace("\\[", "[").splitlines():  # rich's escape of a literal [
        if line:
            assert f" {line}" in shown, (command, line)


def _flat(text):
    return "".join(ch for ch in text if not ch.isspace() and ch not in "│")


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_written_in_help_are_shown(cli, command):
    """An option whose default is None (so a config file can override it) says its
    effective default in its help; rich must not swallow it as markup."""
    r = cli(command, "--help", env={"COLUMNS": "80"})
    for param in typer.main.get_command(app).commands[command].params:
        written = re.findall(r"\\?\[default: [^]]*\]", param.help or "")
        for d in written:
            assert _flat(d.lstrip("\\")) in _flat(r.stdout), (command, param.name, d)


@pytest.mark.parametrize(("command", "option", "default"), [
    ("simulate", "--optimizer", "SGD"), ("simulate", "--steps", "10"),
    ("simulate", "--seed", "0"), ("simulate", "--grad", "constant"),
    ("simulate", "--init", "normal"), ("simulate", "--zero-grad", "none"),
    ("simulate", "--grad-value", "1.0"), ("simulate", "--init-value", "0.0"),
    ("simulate", "--lr", "torch's"), ("compare", "--seed", "0"),
    ("compare", "--steps", "100"), ("set", "--group", "every group"),
    ("diff", "--max-diffs", "50 in the tables, all with --json or --verbose"),
])
def test_effective_defaults_are_stated(cli, command, option, default):
    r = cli(command, "--help", env={"COLUMNS": "80"})
    rows: dict[str, str] = {}  # option -> its row's text, continuation lines joined
    name = None
    for ln in r.stdout.splitlines():
        head = ln[1:6].replace("*", " ").lstrip()  # an option row starts at the left edge
        if not ln.startswith("│"):
            name = None
        elif head.startswith("--"):
            name = ln.strip("│ *").split()[0]
        if name:
            rows[name] = rows.get(name, "") + " " + ln.strip("│ ")
    assert _flat(f"[default: {default}]") in _flat(rows[option]), rows[option]


@pytest.mark.parametrize(("command", "usage"), [
    ("inspect", "Usage: optstate inspect [OPTIONS] CKPT"),
    ("diff", "Usage: optstate diff [OPTIONS] A B"),
    ("check", "Usage: optstate check [OPTIONS] CKPT"),
    ("set", "Usage: optstate set [OPTIONS] CKPT"),
    ("convert", "Usage: optstate convert [OPTIONS] SRC DST"),
    ("simulate", "Usage: optstate simulate [OPTIONS]"),
    ("compare", "Usage: optstate compare [OPTIONS]"),
])
def test_usage_names_arguments_in_capitals(cli, command, usage):
    r = cli(command, "--help", env={"COLUMNS": "80"})
    assert [ln.strip() for ln in r.stdout.splitlines() if "Usage:" in ln] == [usage]


def _option_rows(text: str) -> list[str]:
    """The rows of a help's option panels (first lines of each option)."""
    return [ln.strip("│ ") for ln in text.splitlines()
            if ln.startswith("│") and ln[1:6].replace("*", " ").lstrip().startswith("-")]


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_show_no_value_type(cli, command):
    """A flag takes no value: its row names it (an on/off pair both ways), no <bool>."""
    r = cli(command, "--help", env={"COLUMNS": "120"})
    assert "<bool>" not in r.stdout
    group = typer.main.get_command(app)
    flags = [p for p in group.commands[command].params if getattr(p, "is_bool_flag", False)]
    assert flags
    rows = _option_rows(r.stdout)
    for p in flags:
        row = next(row for row in rows if row.split()[0] == p.opts[0])
        words = row.split()
        for negative in p.secondary_opts:  # --trial / --no-trial on one row, in that order
            assert words[words.index(p.opts[0]) + 1: words.index(negative) + 1][-2:] == [
                "/", negative], row


def test_root_help_flags_show_no_value_type(run_cli):
    assert "<bool>" not in run_cli("--help", env={"COLUMNS": "100"}).stdout


def test_every_command_follows_the_conventions():
    from optstate.cli import OptstateCommand

    group = typer.main.get_command(app)
    for name in COMMANDS:
        assert isinstance(group.commands[name], OptstateCommand), name


@pytest.mark.parametrize(("args", "error"), [
    (["simulate", "-O", "adamm"], "Error: unknown optimizer 'adamm'; did you mean 'adam'?"),
    (["simulate", "--optimizer", "SDG"], "Error: unknown optimizer 'SDG'; did you mean 'sgd'?"),
    (["simulate", "--scheduler", "StepLRR"],
     "Error: unknown or unsupported LR scheduler 'StepLRR'; did you mean 'StepLR'?"),
    (["simulate", "--grad", "norml"],
     "Error: unknown gradient source 'norml'; did you mean 'normal'?"),
    (["simulate", "--config", ROOT / "sample_checkpoints" / "adam_two_groups.json",
      "--zero-grad", "zero"], "Error: unknown zero_grad mode 'zero'; did you mean 'zeros'?"),
    (["simulate", "-O", "adam", "--set", "betass=0.9,0.99"],
     "Error: Adam has no hyperparameter 'betass'; did you mean 'betas'?"),
    (["simulate", "--group", "3 lrr=0.1"],
     "Error: SGD has no hyperparameter 'lrr' (in param group 1); did you mean 'lr'?"),
    (["simulate", "--scheduler", "StepLR", "--scheduler-arg", "step_sise=3"],
     "Error: StepLR has no hyperparameter 'step_sise' (scheduler); did you mean "
     "'step_size'?"),
])
def test_unknown_names_suggest_the_closest(cli, args, error):
    r = cli(*args)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == error


def test_unknown_names_in_a_checkpoint_suggest_the_closest(cli, tmp_path):
    sample = ROOT / "sample_checkpoints" / "adamw_scheduler.pt"
    r = cli("set", sample, "-o", tmp_path / "x.pt", "--set", "weight_decai=0")
    assert r.stderr.splitlines()[0] == (
        "Error: param group 0 has no hyperparameter 'weight_decai'; did you mean "
        "'weight_decay'?")
    r = cli("set", sample, "-o", tmp_path / "x.pt", "--scheduler-set", "gama=0.1")
    assert r.stderr.splitlines()[0] == (
        "Error: the scheduler state has no 'gama'; did you mean 'gamma'?")
    r = cli("inspect", sample, "--key", "optimizer_state_dic")
    assert r.stderr.splitlines()[0].endswith("; did you mean 'optimizer_state_dict'?")
    r = cli("inspect", ROOT / "sample_checkpoints" / "adam_two_groups.pt", "--param", "w")
    assert r.stderr.splitlines()[0] == (
        "Error: --param 'w': no parameter has that name; did you mean 'w1' or 'w2'?")


def test_unknown_command_suggests_the_closest(run_cli):
    assert _error_lines(run_cli("insp")) == [
        "Error: unknown command 'insp'; did you mean 'inspect'?",
        "Hint: run 'optstate --help' to see the options"]


def test_one_suggestion_rule():
    from optstate.base.suggest import close_matches, did_you_mean, unknown

    assert unknown("optimizer", "adamm", ["adam", "adamw", "radam", "sgd"]) == (
        "unknown optimizer 'adamm'; did you mean 'adam'?")
    assert close_matches("ADAMW", ["AdamW", "Adam"]) == ["AdamW"]  # case-insensitive
    assert close_matches("frobnicate", ["inspect", "diff"]) == []
    assert did_you_mean("w", ["w1", "w2", "b1"]) == "; did you mean 'w1' or 'w2'?"
    assert did_you_mean("zz", ["w1"]) == ""


def test_simulate_help_lists_every_torch_optimizer(cli):
    """The --optimizer help names every optimizer class of the installed torch (it listed
    13 of torch 2.13's 15: no Adafactor, no Muon)."""
    from optstate.sim.build import optimizer_classes

    r = cli("simulate", "--help", env={"COLUMNS": "250"})
    row = next(ln for ln in r.stdout.splitlines() if "--optimizer" in ln)
    listed = row.split("case-insensitive:", 1)[1].split("[default")[0]
    names = {n.strip(" .") for n in listed.split(",")}
    assert {c.__name__ for c in optimizer_classes().values()} <= names


@pytest.mark.parametrize("command", COMMANDS)
def test_no_python_type_names_as_metavars(cli, command):
    """--shape read "<list[str]>": repeatable options name what one value is."""
    r = cli(command, "--help", env={"COLUMNS": "120"})
    assert "<list[" not in r.stdout


def test_root_help_says_loading_is_safe(cli):
    r = cli("--help", env={"COLUMNS": "80"})
    lines = [ln.strip() for ln in r.stdout.splitlines()]
    assert lines[3:8] == [
        "Inspect, diff, simulate and repair PyTorch optimizer state checkpoints.", "",
        "Every file is loaded safely (optstate's own unpickler, or torch.load with",
        "weights_only=True): opening a checkpoint never runs code from it. Each",
        "command's --help has examples."]
