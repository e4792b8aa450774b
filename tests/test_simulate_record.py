"""The history at evenly spaced steps (``record_every``, ``--record-every``): which steps
are recorded, and that recording less changes nothing else, bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optstate.base.errors import ConfigError
from optstate.sim.config import GroupSpec, RunSpec
from optstate.sim.loop import MAX_NORM_ELEMENTS, MAX_RECORDS, record_interval
from optstate.sim.report import simulate_report
from optstate.sim.simulate import simulate
from tests.reference_loop import reference_run
from tests.test_simulate import assert_identical

POINT = (GroupSpec(((2,),)),)


def fits(steps: int, numel: int, k: int) -> bool:
    """The rule as the product decision states it."""
    records = math.ceil(steps / k)
    return records <= MAX_RECORDS and records * numel <= MAX_NORM_ELEMENTS


@pytest.mark.parametrize("steps, numel, every", [
    (10_000, 4, 10),             # the benchmark's SGD 2x2
    (50, 10_000_000, 10),        # the benchmark's Adam: 5 norms of 1e7 elements after the start
    (1000, 50_000, 1),           # small runs: every step, as before
    (10, 4, 1),
    (1001, 4, 2),
    (0, 4, 1),
    (7, 100_000_000, 7),         # more than 5e7 elements: only the start and the end
])
def test_auto_interval_examples(steps, numel, every):
    assert record_interval(steps, numel) == every


@given(st.integers(0, 10**7), st.integers(1, 10**8))
def test_auto_interval_is_the_smallest_that_fits(steps, numel):
    k = record_interval(steps, numel)
    assert k >= 1
    if numel <= MAX_NORM_ELEMENTS:
        assert fits(steps, numel, k)
        assert k == 1 or not fits(steps, numel, k - 1)
    else:  # nothing fits: the start and the end only
        assert k == max(steps, 1)


def test_recorded_steps_are_start_multiples_and_end():
    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.01}, grad="quadratic", steps=23)
    h = simulate(spec, record_every=5).history
    assert h.step == [0, 5, 10, 15, 20, 23]
    assert h.record_every == 5
    assert len(h.loss) == len(h.param_norm) == len(h.lr) == 6
    assert simulate(spec, record_every=23).history.step == [0, 23]
    assert simulate(spec, record_every=100).history.step == [0, 23]


def test_auto_is_the_default_and_records_every_step_of_small_runs():
    assert simulate(RunSpec(steps=12)).history.step == list(range(13))
    long = simulate(RunSpec(steps=2500)).history  # a 2x2: ceil(2500 / 1000) = 3
    assert long.record_every == 3
    assert long.step == [*range(0, 2500, 3), 2500]


@pytest.mark.parametrize("optimizer, grad", [("SGD", "constant"), ("Adam", "quadratic"),
                                             ("RMSprop", "rosenbrock"), ("Adam", "normal"),
                                             ("LBFGS", "quadratic")])
def test_recording_less_changes_nothing_else(optimizer, grad):
    """Parameters and optimizer state bit for bit those of every-step recording and of
    the hand-written loop; losses and norms at the recorded steps the same values."""
    hyper = {"lr": 0.1 if optimizer == "LBFGS" else 1e-3}
    spec = RunSpec(optimizer=optimizer, hyperparams=hyper, grad=grad, steps=17, seed=2,
                   groups=(GroupSpec(((2, 2), (4,))),))
    every = simulate(spec, record_every=1)
    sparse = simulate(spec, record_every=4)
    assert sparse.history.step == [0, 4, 8, 12, 16, 17]
    assert_identical(sparse.optimizer.state_dict(), every.optimizer.state_dict())
    assert_identical(sparse.params, every.params, "params")
    at = sparse.history.step
    assert sparse.history.loss == [every.history.loss[s] for s in at]
    assert sparse.history.param_norm == [every.history.param_norm[s] for s in at]
    assert sparse.history.lr == [every.history.lr[s] for s in at]
    ref = reference_run(optimizer, [[(2, 2), (4,)]], defaults=hyper, grad=grad, steps=17,
                        seed=2)
    assert_identical(sparse.params, ref.params, "params")
    assert_identical(sparse.optimizer.state_dict(), ref.optimizer.state_dict())
    if grad != "normal" and optimizer != "LBFGS":
        # the hand loop's loss before step s+1 is the loss after s steps
        longer = reference_run(optimizer, [[(2, 2), (4,)]], defaults=hyper, grad=grad,
                               steps=18, seed=2)
        assert sparse.history.loss == [longer.losses[s] for s in at]


def test_resumed_run_records_the_multiples_of_the_whole_runs_steps(tmp_path):
    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.01}, grad="quadratic", steps=4)
    simulate(spec, save=tmp_path / "a.pt", with_params=True)
    rest = simulate(RunSpec(optimizer="Adam", hyperparams={"lr": 0.01}, grad="quadratic",
                            steps=9), resume=torch.load(tmp_path / "a.pt", weights_only=True),
                    record_every=3)
    whole = simulate(RunSpec(optimizer="Adam", hyperparams={"lr": 0.01}, grad="quadratic",
                             steps=13), record_every=3)
    assert rest.history.step == [4, 6, 9, 12, 13]
    assert rest.history.loss[1:] == whole.history.loss[2:]  # the same steps, same values


def test_two_element_runs_record_the_point_at_the_recorded_steps():
    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.05}, grad="rosenbrock", steps=30,
                   groups=POINT)
    every = simulate(spec, record_every=1).history
    sparse = simulate(spec, record_every=7).history
    assert sparse.point == [every.point[s] for s in sparse.step]


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "often"])
def test_bad_record_every_is_a_config_error(value):
    with pytest.raises(ConfigError, match="^record_every must be a positive number"):
        simulate(RunSpec(steps=2), record_every=value)


def test_divergence_between_records_is_said_honestly():
    spec = RunSpec(hyperparams={"lr": 10.0}, grad="rosenbrock", steps=20, groups=POINT)
    first_bad = next(k for k in range(1, 21) if not torch.isfinite(
        reference_run("SGD", [[(2,)]], defaults={"lr": 10.0}, grad="rosenbrock",
                      steps=k).params[0]).all())
    every = 6 if first_bad % 6 else 7  # records apart around the first bad step
    result = simulate(spec, record_every=every)
    steps = result.history.step
    seen = next(s for s in steps if s >= first_bad)
    before = steps[steps.index(seen) - 1]
    assert before < first_bad < seen
    assert result.warnings == [
        f"the run diverged: parameters hold NaN or Inf from recorded step {seen} on, first "
        f"after step {before} (the history records every {every} steps; record_every=1 "
        "finds the step; try a smaller lr)"]


def _sim(cli, *args):
    r = cli("simulate", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_record_every(cli):
    rep = _sim(cli, "-O", "adam", "--grad", "quadratic", "--steps", "10", "--record-every", "4")
    assert rep["history"]["record_every"] == 4
    assert rep["history"]["step"] == [0, 4, 8, 10]
    full = _sim(cli, "-O", "adam", "--grad", "quadratic", "--steps", "10", "--record-every", "1")
    assert rep["params"] == full["params"]
    assert rep["history"]["loss"] == [full["history"]["loss"][s] for s in (0, 4, 8, 10)]
    assert _sim(cli, "--steps", "3", "--record-every", "auto")["history"]["record_every"] == 1
    assert _sim(cli, "--steps", "3")["history"]["record_every"] == 1


@pytest.mark.parametrize("value", ["0", "-2", "often", "1.5"])
def test_cli_bad_record_every_is_one_error_line(cli, value):
    r = cli("simulate", "--record-every", value)
    assert (r.exit_code, r.stderr) == (2, "Error: --record-every must be a positive number "
                                          f"of steps or auto, got {value!r}\n")


def test_compare_records_as_simulate_does(cli):
    args = ["--grad", "rosenbrock", "--shape", "2", "--steps", "20", "--record-every", "6"]
    r = cli("compare", "-O", "sgd,adam", "--set", "lr=0.001", *args, "--json")
    assert r.exit_code == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    for run in runs:
        sim = _sim(cli, "-O", run["label"], "--lr", "0.001", *args)
        assert run["history"]["record_every"] == 6
        for key in ("step", "loss", "param_norm", "point"):
            assert run["history"][key] == sim["history"][key]
        assert run["best_loss"] == min(sim["history"]["loss"])


def test_plot_draws_the_recorded_steps(tmp_path):
    pytest.importorskip("matplotlib")
    from optstate.render.plot import run_figure

    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.05}, grad="rosenbrock", steps=40,
                   groups=POINT)
    report = simulate_report(simulate(spec, record_every=9))
    fig = run_figure(report)
    loss = fig.axes[1].get_lines()[0]  # panels: trajectory, loss, lr, norm
    assert list(loss.get_xdata()) == [0, 9, 18, 27, 36, 40]
    assert list(loss.get_ydata()) == report["history"]["loss"]


@pytest.mark.slow
def test_world_size_records_the_steps_simulate_records(cli):
    args = ["-O", "adam", "--grad", "quadratic", "--steps", "9", "--record-every", "4"]
    sharded = _sim(cli, *args, "--world-size", "1")
    single = _sim(cli, *args)
    assert sharded["history"] == single["history"]
    assert sharded["history"]["step"] == [0, 4, 8, 9]
