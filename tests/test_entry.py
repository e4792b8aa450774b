"""The entry point (``optstate``, ``python -m optstate``): ``--version`` and the root
help are answered before typer and rich are imported; everything else reaches the typer
app."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import optstate
from optstate import _entry
from optstate.base import startup
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _process_state_restored():
    """``_entry.main`` is the console script: it routes SIGINT for the rest of the process,
    holds it as it exits and turns the read guard on. Called in-process here, that must
    not outlive the test (later in-process tests of ``deferred()`` and ``errors_to_exit``
    saw SIGINT held and ``Interrupted.`` already announced)."""
    import signal

    from optstate.base import interrupt
    from optstate.io import readguard

    handler = signal.getsignal(signal.SIGINT)
    saved = {k: getattr(interrupt, k) for k in ("_pending", "_announced", "_depth", "_installed")}
    guard = (readguard._enabled, list(readguard._watched))
    yield
    signal.signal(signal.SIGINT, handler)
    for k, v in saved.items():
        setattr(interrupt, k, v)
    for fd, *_ in readguard._watched[len(guard[1]):]:
        os.close(fd)
    readguard._enabled, readguard._watched[:] = guard[0], guard[1]


PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['optstate', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('optstate', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\n"
    "loaded = sorted(m for m in ('typer', 'rich', 'torch') if m in sys.modules)\n"
    "print('LOADED', code, ' '.join(loaded), file=sys.stderr)\n"
)


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_version_without_typer_or_rich():
    r = _probe("--version")
    assert r.stdout == f"optstate {optstate.__version__}\n"
    assert r.stderr.splitlines()[-1] == "LOADED 0 "  # neither typer, rich nor torch


def test_version_is_what_the_typer_app_prints(cli):
    r = subprocess.run([sys.executable, "-m", "optstate", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"optstate {optstate.__version__}\n", "")
    assert cli("--version").stdout == r.stdout


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_root_help_without_typer_or_rich(cli, args, code):
    r = _probe(*args)
    assert r.stderr.splitlines()[-1] == f"LOADED {code} "  # neither typer, rich nor torch
    assert r.stdout.splitlines()[1].strip() == "Usage: optstate [OPTIONS] COMMAND [ARGS]..."
    # the same text as the typer app's own root help (CliRunner: not a terminal, 80 columns)
    env = {"COLUMNS": "80", "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "optstate", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, **env})
    assert (r.returncode, r.stderr) == (code, "")
    assert r.stdout == cli("--help", env=env).stdout


@pytest.mark.parametrize(("args", "first"), [
    (["inspect", "--help"], "Usage: optstate inspect [OPTIONS]"),
    (["--help", "inspect"], "Usage: optstate [OPTIONS] COMMAND [ARGS]..."),  # typer: root help
    (["--version", "--help"], f"optstate {optstate.__version__}"),  # typer's eager --version
])
def test_other_arguments_reach_the_typer_app(args, first):
    r = _probe(*args)
    assert next(line.strip() for line in r.stdout.splitlines() if line.strip()).startswith(first)
    loaded = r.stderr.splitlines()[-1].split()
    assert loaded[:2] == ["LOADED", "0"] and "typer" in loaded


def test_main_with_argv_and_the_console_script(capsys):
    with pytest.raises(SystemExit) as e:
        _entry.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"optstate {optstate.__version__}\n"
    with pytest.raises(SystemExit) as e:  # an argv list goes to the CLI as it is
        _entry.main(["no-such-command"])
    assert e.value.code == 2
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n")[1]
    assert scripts.split("\n\n")[0] == 'optstate = "optstate._entry:main"'


GC_PROBE = (
    "import gc, io, contextlib, sys\n"
    "from optstate import _entry\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n        _entry.main(sys.argv[1:])\n"
    "    except SystemExit as e:\n        code = e.code\n"
    "print('GC', code, gc.isenabled(), gc.get_freeze_count() > 0, 'torch' in sys.modules)\n"
)


@pytest.mark.parametrize(("args", "after"), [
    # inspect, diff, timeline read a torch.save zip file without torch (issue #22)
    (["inspect", "sample_checkpoints/sgd_momentum.pt", "--no-stats"], "GC 0 True True False"),
    (["inspect", "no-such-file.pt"], "GC 2 True True False"),  # the command body ran
    (["config", "no-such-file.pt"], "GC 2 True True True"),  # a command that needs torch
    (["inspect", "no-such-file.pt", "--hist"], "GC 2 True True True"),  # an option that does
    (["inspect", "--bogus"], "GC 2 True False False"),  # a usage error: no command ran
    (["inspect", "--help"], "GC 0 True False False"),
])
def test_start_up_runs_without_the_collector_then_resumes_it(args, after):
    """The console script imports with the cyclic collector off; as a command's body
    starts, torch is imported (not by inspect, diff, timeline: only if they need it),
    start-up's objects frozen and the collector back on."""
    r = subprocess.run([sys.executable, "-c", GC_PROBE, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.splitlines()[-1] == after, r.stderr


def test_in_process_the_collector_is_left_as_it_was():
    import gc

    assert gc.isenabled()
    with pytest.raises(SystemExit):
        _entry.main(["inspect", "--bogus"])
    assert gc.isenabled() and not startup._collector_paused


@pytest.mark.slow
@pytest.mark.parametrize("how", ["console-script", "-m"])
def test_sigint_while_the_entry_point_is_imported_is_the_interrupt(how):
    """A Ctrl-C after ``optstate/__init__.py`` starts and before ``_entry.main`` installs
    the handler (the console script had no ``try`` around its import: Python's own
    traceback) ends as ``Interrupted.`` and 130."""
    import signal
    import time

    exe = ROOT / ".venv" / "bin"
    argv = ([".venv/bin/optstate"] if how == "console-script"  # relative, as typed
            else [str(exe / "python"), "-m", "optstate"])
    p = subprocess.Popen([*argv, "inspect", "no-such-file.pt"], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "OPTSTATE_TEST_PAUSE_AT": "entry_import"})
    assert p.stderr.readline() == "optstate-test-pause: entry_import\n"
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    p.wait(timeout=120)
    assert (p.returncode, rest) == (130, "Interrupted.\n")


def test_importing_optstate_leaves_sigint_alone():
    """Only the command line's own import records SIGINT early; a library user's
    ``import optstate`` (here from ``python -c``) keeps Python's handler."""
    code = ("import signal, sys, optstate\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
            " sorted(m for m in ('torch', 'typer', 'rich') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == "True []\n", r.stderr
