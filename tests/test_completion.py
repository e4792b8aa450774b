"""Shell completion: --show-completion prints a real script for bash, zsh and fish,
--install-completion installs it, and the program answers the shell's completion calls
(commands, options, choices) through the console script's own entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# typer's switch for naming the shell instead of detecting it from the process tree
# (only bash is installed here; the script of each shell is what it would print there)
NAMED_SHELL = "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"


def _optstate(*args, env=None, shell=None, cwd=None):
    """The console-script entry point (optstate._entry.main), as `optstate ...` runs it."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("_OPTSTATE")}
    e.update(PYTHONPATH=str(ROOT), NO_COLOR="1", **(env or {}))
    cmd = [sys.executable, "-c", "from optstate._entry import main; main()", *args]
    if shell:  # run from inside that shell, as a user does; `; exit $?` keeps bash from
        # exec-ing Python in its place (it then is Python's parent, wherever pytest runs)
        cmd = [shell, "-c", " ".join(f"'{c}'" for c in cmd) + "; exit $?"]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=120)


def test_show_completion_detects_bash():
    r = _optstate("--show-completion", shell="bash")
    assert r.returncode == 0, r.stderr
    assert "_OPTSTATE_COMPLETE=complete_bash" in r.stdout
    assert "complete -o default -F _optstate_completion optstate" in r.stdout


@pytest.mark.parametrize(("shell", "marks"), [
    ("bash", ["complete -o default -F _optstate_completion optstate",
              "_OPTSTATE_COMPLETE=complete_bash"]),
    ("zsh", ["#compdef optstate", "_OPTSTATE_COMPLETE=complete_zsh",
             "compdef _optstate_completion optstate"]),
    ("fish", ["complete --command optstate", "_OPTSTATE_COMPLETE=complete_fish"]),
])
def test_show_completion_prints_each_shells_script(shell, marks):
    r = _optstate("--show-completion", shell, env={NAMED_SHELL: "1"})
    assert r.returncode == 0, r.stderr
    for mark in marks:
        assert mark in r.stdout, (shell, mark, r.stdout)


def test_install_completion_for_bash(tmp_path):
    r = _optstate("--install-completion", shell="bash", env={"HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    script = tmp_path / ".bash_completions" / "optstate.sh"
    assert "_OPTSTATE_COMPLETE=complete_bash" in script.read_text()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()


def _complete(shell, words, cword=None):
    env = {"_OPTSTATE_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        env.update(COMP_WORDS=words, COMP_CWORD=str(cword))
    else:
        env.update(_TYPER_COMPLETE_ARGS=words, _TYPER_COMPLETE_FISH_ACTION="get-args")
    r = _optstate(env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bash_completes_commands():
    assert _complete("bash", "optstate insp", 1).split() == ["inspect"]
    assert _complete("bash", "optstate s", 1).split() == ["set", "simulate"]


def test_bash_completes_a_commands_options():
    assert _complete("bash", "optstate inspect --no", 2).split() == ["--no-stats"]
    assert _complete("bash", "optstate diff --ma", 2).split() == ["--match", "--max-diffs"]


def test_zsh_and_fish_complete_commands():
    assert "inspect" in _complete("zsh", "optstate insp")
    assert "simulate" not in _complete("zsh", "optstate insp")
    assert _complete("fish", "optstate insp").split("\t")[0] == "inspect"
