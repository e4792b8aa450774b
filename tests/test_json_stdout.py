"""stdout holds the answer only (issue #19 item 6): a library that writes to stdout while
optstate loads (DeepSpeed logs there; a C extension writes to descriptor 1) must not
corrupt ``--json``. Here real code runs while loading: a checkpoint loaded with
``--unsafe`` (full pickle) whose objects call ``print`` and ``os.write(1, ...)`` as they
are unpickled, in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


class Loud:
    """Unpickled by calling ``fn(*args)``: what a library's class does at load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def loud_checkpoint(path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    torch.save({"optimizer": opt.state_dict(),
                "chatter": [Loud(print, "hello from print while loading"),
                            Loud(os.write, 1, b"hello from fd 1 while loading\n")]}, path)
    return path


@pytest.mark.parametrize("command", [["inspect"], ["config"], ["diff"]])
def test_json_on_stdout_and_the_librarys_writes_on_stderr(tmp_path, run_cli, command):
    ckpt = loud_checkpoint(tmp_path / "loud.pt")
    args = {"inspect": [ckpt], "config": [ckpt], "diff": [ckpt, ckpt]}[command[0]]
    r = run_cli(*command, *args, "--unsafe", "--json")
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)  # nothing else on stdout
    assert isinstance(doc, dict)
    assert "hello from print while loading" in r.stderr
    assert "hello from fd 1 while loading" in r.stderr
    assert "hello" not in r.stdout


def test_the_human_view_stays_on_stdout_and_the_chatter_goes_to_stderr(tmp_path, run_cli):
    ckpt = loud_checkpoint(tmp_path / "loud.pt")
    r = run_cli("inspect", ckpt, "--unsafe")
    assert r.returncode == 0, r.stderr
    assert "optimizer Adam" in r.stdout and "hello" not in r.stdout
    assert r.stderr.count("hello from") == 2


GUARDED = """
import os, sys
from optstate.cli.stdout_guard import answer, guard
real = sys.stdout
print("before", flush=True)
with guard():
    assert sys.stdout is sys.stderr
    print("to stderr by print")
    sys.__stdout__.write("to stderr through the old stdout's buffer\\n")
    os.write(1, b"to stderr by fd 1\\n")
    answer().write("the answer\\n")
assert sys.stdout is real
print("after", flush=True)
os.write(1, b"fd 1 after\\n")
"""


def test_guard_moves_stdout_and_fd_1_and_puts_them_back():
    r = subprocess.run([sys.executable, "-c", GUARDED], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "before\nthe answer\nafter\nfd 1 after\n"
    assert sorted(r.stderr.splitlines()) == [
        "to stderr by fd 1", "to stderr by print",
        "to stderr through the old stdout's buffer"]


def test_under_a_test_runners_stdout_only_sys_stdout_is_swapped(cli, tmp_path):
    # CliRunner's stdout is a buffer, not descriptor 1: the answer still reaches it
    ckpt = loud_checkpoint(tmp_path / "loud.pt")
    r = cli("inspect", ckpt, "--unsafe", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["optimizer"]["kind"] == "Adam"
    assert "hello from print while loading" in r.stderr
