"""Progress (issue #15 item 9): shown for any operation that runs longer than about a
second on a terminal, decided by elapsed time; never on a pipe or with --json.

The decision is tested with a fake clock and a recorder in place of the bar; the
commands run in a real pseudo-terminal with ``OPTSTATE_PROGRESS_AFTER=0`` (the same
code path as a slow run, without having to be slow).
"""

from __future__ import annotations

import io
import os
import time

import pytest
import torch

from optstate.render.progress import Progress, delay_from_env, progress_wanted
from optstate.sim.config import RunSpec
from optstate.sim.simulate import simulate

from .test_width import run_in_pty


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for rich's Progress: records what would be drawn."""

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.tasks: list[dict] = []
        self.updates: list[dict] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def add_task(self, label, total=None, completed=0):
        self.tasks.append({"label": label, "total": total, "completed": completed})
        return 0

    def update(self, task, completed=None, total=None, description=None):
        self.updates.append({"completed": completed, "total": total})
        self.tasks[task].update(completed=completed, total=total)


def _progress(clock, after=1.0, enabled=True):
    bars: list[Recorder] = []

    def make():
        bars.append(Recorder())
        return bars[-1]

    p = Progress("reading", enabled=enabled, after=after, clock=clock, make_bar=make,
                 watch=False)
    return p, bars


def test_nothing_shows_before_one_second_however_many_items():
    clock = FakeClock()
    p, bars = _progress(clock)
    with p:
        for i in range(1, 10_001):  # many items, all quick: no bar
            clock.now += 0.00009
            p(i, 10_000)
    assert bars == []


def test_a_few_slow_items_show_progress_once_a_second_has_passed():
    clock = FakeClock()
    p, bars = _progress(clock)
    with p:
        clock.now += 0.6
        p(1, 3)
        assert bars == []  # 0.6 s: not yet
        clock.now += 0.6
        p(2, 3)  # 1.2 s: shown, by time alone (3 items)
        assert len(bars) == 1 and bars[0].started
        assert bars[0].tasks[0]["label"] == "reading"
        assert bars[0].tasks[0]["completed"] == 2 and bars[0].tasks[0]["total"] == 3
        clock.now += 0.6
        p(3, 3)
    assert bars[0].tasks[0]["completed"] == 3 and bars[0].stopped


def test_redraws_at_most_ten_times_a_second():
    clock = FakeClock()
    p, bars = _progress(clock, after=0.0)
    with p:
        for i in range(1, 301):  # 1 ms per step: 0.3 s
            clock.now += 0.001
            p(i, 300)
    assert 3 <= len(bars[0].updates) <= 5  # ~3 redraws and the final count
    assert bars[0].updates[-1] == {"completed": 300, "total": 300}


def test_disabled_never_draws():
    clock = FakeClock()
    p, bars = _progress(clock, enabled=False)
    with p:
        clock.now += 5
        p(1, 2)
    assert bars == []


def test_steps_count_from_the_first_step_of_a_resumed_run():
    clock = FakeClock()
    p, bars = _progress(clock, after=0.0)
    with p:
        on_step = p.steps(40)
        simulate(RunSpec(steps=40), on_step=on_step)  # steps 1..40
    assert bars[0].tasks[0] == {"label": "reading", "total": 40, "completed": 40}
    clock2 = FakeClock()
    p2, bars2 = _progress(clock2, after=0.0)
    with p2:
        on_step = p2.steps(5)
        for step in range(11, 16):  # --resume from step 10, 5 more
            on_step(step)
    assert bars2[0].tasks[0]["completed"] == 5


def test_a_silent_operation_gets_a_spinner_from_the_timer():
    """A load that calls nothing: the timer shows an indeterminate bar after ``after``."""
    bars: list[Recorder] = []

    def make():
        bars.append(Recorder())
        return bars[-1]

    with Progress("loading", enabled=True, after=0.05, make_bar=make):
        deadline = time.monotonic() + 5
        while not bars and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bars and bars[0].tasks[0]["total"] is None
    assert bars[0].stopped
    quick: list[Recorder] = []
    with Progress("loading", enabled=True, after=5, make_bar=lambda: quick.append(1)):
        pass  # finished before the timer: nothing drawn, the timer cancelled
    assert quick == []


def test_wanted_only_on_a_terminal_without_json_or_quiet():
    master, slave = os.openpty()
    tty = open(slave, "w")  # noqa: SIM115
    try:
        assert progress_wanted(stream=tty)
        assert not progress_wanted(json=True, stream=tty)
        assert not progress_wanted(quiet=True, stream=tty)
        assert not progress_wanted(stream=io.StringIO())
    finally:
        tty.close()
        os.close(master)


def test_delay_from_env(monkeypatch):
    monkeypatch.delenv("OPTSTATE_PROGRESS_AFTER", raising=False)
    assert delay_from_env() == 1.0
    monkeypatch.setenv("OPTSTATE_PROGRESS_AFTER", "0")
    assert delay_from_env() == 0.0
    monkeypatch.setenv("OPTSTATE_PROGRESS_AFTER", "soon")
    assert delay_from_env() == 1.0


# -- the commands, in a pseudo-terminal ----------------------------------------------------

NOW = {"OPTSTATE_PROGRESS_AFTER": "0"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    params = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(4)]
    opt = torch.optim.Adam(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.save(opt.state_dict(), d / "a.pt")
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.save(opt.state_dict(), d / "b.pt")
    (d / "run.toml").write_text('optimizer = "Adam"\n[[groups]]\n'
                                'shapes = ["64x64", "64x64", "64x64", "64x64"]\n')
    return d


COMMANDS = {
    "inspect": (["inspect", "a.pt"], "reading", (0,)),
    "diff": (["diff", "a.pt", "b.pt"], "comparing", (1,)),
    "simulate": (["simulate", "--steps", "50"], "stepping", (0,)),
    "convert": (["convert", "a.pt", "a_dcp", "--force"], "converting", (0,)),
    "check": (["check", "a.pt", "--config", "run.toml"], "checking", (0,)),
    "compare": (["compare", "--optimizers", "sgd,adam", "--steps", "20"], "running sgd",
                (0,)),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_progress_on_a_terminal_never_on_a_pipe_or_with_json(files, name):
    args, label, codes = COMMANDS[name]
    code, text = run_in_pty(args, 100, files, env=NOW, stderr="pty")
    assert code in codes, text
    assert label in text  # drawn on the terminal (then removed: transient)
    code, text, err = run_in_pty(args, 100, files, env=NOW, stderr="pipe")
    assert code in codes
    assert label not in err and label not in text and "\x1b" not in err
    code, text = run_in_pty([*args, "--json"], 100, files, env=NOW, stderr="pty")
    assert code in codes
    assert label not in text


def test_inspect_reports_each_parameter_read(files):
    from optstate.analysis.inspect import inspect_path

    seen = []
    inspect_path(files / "a.pt", on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    inspect_path(files / "a.pt", params=["2"], on_progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 1)]
