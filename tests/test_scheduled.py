"""state.scheduled: the lr a saved LR scheduler computes at its last_epoch, against the lr the
real run reached, every step, for each class it computes, with two groups of different base
lrs; against torch's own class loaded with the same saved state, bit for bit (the formulas
are typed in optstate so that timeline needs no torch); the classes it cannot compute say
why."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import pytest
import torch
from torch.optim import lr_scheduler as L

from optstate.numeric.tolerance import schedule_atol
from optstate.state.scheduled import scheduled_lrs


def _optimizer(kind: str) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    groups = [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.003}]
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def _saved(obj: dict) -> dict:
    """As a checkpoint holds it: through torch.save and a weights_only load."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


CASES = {
    "StepLR": (lambda o: L.StepLR(o, 7, 0.3), 120, "sgd"),
    "MultiStepLR": (lambda o: L.MultiStepLR(o, [5, 50, 70], 0.3), 120, "sgd"),
    "ConstantLR": (lambda o: L.ConstantLR(o, 0.3, 40), 60, "sgd"),
    "LinearLR": (lambda o: L.LinearLR(o, 0.01, 1.0, 100), 120, "adam"),
    "ExponentialLR": (lambda o: L.ExponentialLR(o, 0.99), 300, "sgd"),
    "CosineAnnealingLR": (lambda o: L.CosineAnnealingLR(o, 400, 1e-5), 400, "adam"),
    "PolynomialLR": (lambda o: L.PolynomialLR(o, 100, 2.0), 120, "sgd"),
    "CosineAnnealingWarmRestarts": (
        lambda o: L.CosineAnnealingWarmRestarts(o, 10, 2, 1e-4), 200, "adam"),
    "CyclicLR": (lambda o: L.CyclicLR(o, [0.01, 0.001], [0.1, 0.01], step_size_up=7,
                                      mode="triangular2"), 100, "sgd"),
    "CyclicLR exp_range": (lambda o: L.CyclicLR(o, [0.01, 0.001], [0.1, 0.01], step_size_up=7,
                                                mode="exp_range", gamma=0.99), 100, "adam"),
    "OneCycleLR": (lambda o: L.OneCycleLR(o, [0.1, 0.01], total_steps=100), 99, "adam"),
}
# More shapes of some classes.
CASES |= {
    "MultiStepLR repeated": (lambda o: L.MultiStepLR(o, [3, 9, 9, 30], 0.7), 40, "sgd"),
    "LinearLR up": (lambda o: L.LinearLR(o, 0.3, 0.9, 17), 30, "sgd"),
    "PolynomialLR 0.5": (lambda o: L.PolynomialLR(o, 33, 0.5), 40, "adam"),
    "CyclicLR triangular": (lambda o: L.CyclicLR(o, 0.001, 0.1, step_size_up=5,
                                                 step_size_down=3), 40, "sgd"),
    "OneCycleLR linear three_phase": (
        lambda o: L.OneCycleLR(o, 0.2, total_steps=50, anneal_strategy="linear",
                               three_phase=True, pct_start=0.2), 49, "sgd"),
    "CosineAnnealingWarmRestarts 1": (lambda o: L.CosineAnnealingWarmRestarts(o, 3), 40,
                                      "sgd"),
}
# get_lr does not chain on the group's lr: the same float operations as the run's
EXACT = {"CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "ConstantLR"}


def _torch_class_lrs(kind: str, state: dict, groups: list[dict]) -> list[float]:
    """What torch's own scheduler class computes from the saved state: a bare instance of
    the class, the state loaded with its load_state_dict, on an SGD whose groups hold the
    saved groups' lrs; its _get_closed_form_lr (closed forms) or get_lr."""
    cls = getattr(L, kind)
    params = [torch.nn.Parameter(torch.zeros(0)) for _ in groups]
    opt = torch.optim.SGD([{"params": [p], **{k: v for k, v in g.items() if k != "params"}}
                           for p, g in zip(params, groups, strict=True)])
    sched = cls.__new__(cls)
    sched.optimizer = opt
    state = dict(state)
    if kind == "MultiStepLR":
        state["milestones"] = Counter(state["milestones"])
    if kind == "CyclicLR":
        sched._scale_fn_custom = None
    sched.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_lr outside step() warns
        if hasattr(sched, "_get_closed_form_lr") and kind not in (
                "CyclicLR", "OneCycleLR", "CosineAnnealingWarmRestarts"):
            return list(sched._get_closed_form_lr())
        return list(sched.get_lr())


@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduled_lr_is_torchs_class_and_the_runs_lr_at_every_step(name: str) -> None:
    make, steps, kind = CASES[name]
    opt = _optimizer(kind)
    sched = make(opt)
    cls = name.split()[0]
    for _ in range(steps):
        opt.step()
        sched.step()
        state = _saved(sched.state_dict())
        groups = _saved(opt.state_dict())["param_groups"]
        got, how = scheduled_lrs(state, 2, groups=groups)
        assert got is not None, how
        assert how.startswith(cls) and how.endswith(f"at last_epoch {state['last_epoch']}")
        assert got == _torch_class_lrs(cls, state, groups)  # bit for bit
        for lr, want, base in zip(got, (g["lr"] for g in opt.param_groups),
                                  state["base_lrs"], strict=True):
            if cls in EXACT:
                assert lr == want
            else:  # the run chained a factor per step; the closed form does not
                assert abs(lr - want) <= schedule_atol(state["last_epoch"],
                                                       max(base, abs(lr), abs(want)))


def test_an_lr_changed_by_hand_is_not_the_scheduled_lr() -> None:
    opt = _optimizer("sgd")
    sched = L.StepLR(opt, 10, 0.5)
    for step in range(25):
        if step == 12:
            opt.param_groups[0]["lr"] *= 1000  # StepLR's get_lr carries it on
        opt.step()
        sched.step()
    got, _ = scheduled_lrs(_saved(sched.state_dict()), 2)
    assert got == [0.1 * 0.5 ** 2, 0.003 * 0.5 ** 2]
    want = 0.1 * 0.5 ** 2 * 1000  # the lr the run carries on, within a schedule's rounding
    assert abs(opt.param_groups[0]["lr"] - want) <= schedule_atol(25, want)


def _lambda_scale(epoch: int) -> float:
    return 0.9 ** epoch


@pytest.mark.parametrize(("make", "reason"), [
    (lambda o: L.LambdaLR(o, _lambda_scale), "LambdaLR's (or MultiplicativeLR's) lambdas"),
    (lambda o: L.MultiplicativeLR(o, _lambda_scale), "lambdas are code"),
    (lambda o: L.ReduceLROnPlateau(o), "ReduceLROnPlateau follows a metric"),
    (lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=3),
                                  L.CosineAnnealingLR(o, 10)], [3]),
     "SequentialLR composes"),
    (lambda o: L.ChainedScheduler([L.StepLR(o, 3), L.ExponentialLR(o, 0.9)]),
     "ChainedScheduler composes"),
    (lambda o: L.CosineAnnealingLR(o, 3), "past its T_max"),
])
def test_what_cannot_be_computed_says_why(make, reason: str) -> None:
    opt = _optimizer("sgd")
    sched = make(opt)
    for _ in range(5):
        opt.step()
        sched.step(1.0) if isinstance(sched, L.ReduceLROnPlateau) else sched.step()
    got, why = scheduled_lrs(_saved(sched.state_dict()), 2)
    assert got is None
    assert reason in why


def test_one_cycle_needs_the_groups_and_other_shapes_say_why() -> None:
    opt = _optimizer("adam")
    sched = L.OneCycleLR(opt, [0.1, 0.01], total_steps=20)
    opt.step()
    sched.step()
    state = _saved(sched.state_dict())
    assert scheduled_lrs(state, 2) == (None, "OneCycleLR keeps its max_lr and min_lr in "
                                             "the param groups")
    assert scheduled_lrs(state, 3, groups=[{}, {}, {}])[0] is None
    assert scheduled_lrs({"last_batch_iteration": 5}, 1)[1] == \
        "DeepSpeed's scheduler keeps its settings in the config"
    assert scheduled_lrs({"foo": 1}, 1)[1] == "the scheduler's class is not recognised"


@pytest.mark.parametrize(("state", "want"), [
    # a count anyone can write: the milestones are counted, never listed (0.5**1e12 is 0)
    ({"milestones": {5: 10**12, 7: 0}, "gamma": 0.5, "base_lrs": [0.1], "last_epoch": 9},
     ([0.0], "MultiStepLR closed form at last_epoch 9")),
    # an integer gamma would be an exact integer power of a billion digits
    ({"gamma": 10, "base_lrs": [0.1], "last_epoch": 10**9},
     (None, "ExponentialLR could not compute it from the saved state (OverflowError)")),
    ({"gamma": "0.5", "base_lrs": [0.1], "last_epoch": 3},
     (None, "ExponentialLR could not compute it from the saved state (TypeError)")),
    ({"step_size": 0, "gamma": 0.5, "base_lrs": [0.1], "last_epoch": 3},
     (None, "StepLR could not compute it from the saved state (ZeroDivisionError)")),
])
def test_a_hostile_state_is_answered_at_once(state, want) -> None:
    """What a file could hold but no scheduler writes: an answer, not a hang."""
    assert scheduled_lrs(state, 1) == want


_STEP = {"step_size": 2, "gamma": 0.5, "base_lrs": [0.1], "last_epoch": 3}


@pytest.mark.parametrize(("state", "groups", "reason"), [
    (_STEP | {"last_epoch": float("nan")}, None, "the scheduler has no last_epoch"),
    (_STEP | {"last_epoch": float("inf")}, None, "the scheduler has no last_epoch"),
    (_STEP | {"last_epoch": 10**400}, None, "the scheduler has no last_epoch"),
    (_STEP | {"base_lrs": [10**400]}, None, "the scheduler's base lrs are not finite numbers"),
    (_STEP | {"base_lrs": 5}, None, "the scheduler's base lrs are not a list"),
    (_STEP, [[1, 2]], "the param groups are not dicts"),
    ({"T_max": 10**400, "eta_min": 0.0, "base_lrs": [0.1], "last_epoch": 3}, None,
     "CosineAnnealingLR's T_max is not a finite number"),
    (_STEP | {"gamma": float("nan")}, None, "StepLR gave no finite lr per group"),
])
def test_a_state_no_scheduler_writes_says_why(state, groups, reason) -> None:
    assert scheduled_lrs(state, 1, groups=groups) == (None, reason)


def test_a_cyclic_scale_fn_of_its_own_is_said_where_the_state_shows_it() -> None:
    opt = _optimizer("sgd")
    sched = L.CyclicLR(opt, 0.01, 0.1, step_size_up=3, scale_fn=_lambda_scale,
                       scale_mode="iterations")
    for _ in range(7):
        opt.step()
        sched.step()
    assert scheduled_lrs(_saved(sched.state_dict()), 2) == (
        None, "CyclicLR was given its own scale_fn, which is code, not saved")


def test_milestones_between_epochs_are_not_computed() -> None:
    """torch's closed form has decayed past a milestone of 2.5 from epoch 3 on; its run,
    which decays only at an epoch equal to a milestone, never does."""
    opt = _optimizer("sgd")
    sched = L.MultiStepLR(opt, [2.5, 6], 0.1)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.1
    assert scheduled_lrs(_saved(sched.state_dict()), 2) == (
        None, "MultiStepLR has milestones that are not whole numbers")


def test_tensor_lrs_are_not_computed_in_float64() -> None:
    """torch computes a tensor lr's schedule in its dtype (float32): not this module's
    float64 arithmetic, so the lr is not claimed."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.1))
    sched = L.ExponentialLR(opt, 0.9)
    for _ in range(5):
        opt.step()
        sched.step()
    groups = _saved(opt.state_dict())["param_groups"]
    assert scheduled_lrs(_saved(sched.state_dict()), 1, groups=groups) == (
        None, "the lrs are tensors, which torch computes in their own dtype")


@pytest.mark.parametrize(("extra", "reason"), [
    ({"mode": ["triangular"]}, "CyclicLR has a mode this reader does not know"),
    ({"mode": "sawtooth"}, "CyclicLR has a mode this reader does not know"),
    ({"_scale_fn_custom": {"a": 1}}, "CyclicLR's scale_fn is code, not saved"),
])
def test_a_cyclic_state_of_another_shape_says_why(extra, reason) -> None:
    opt = _optimizer("sgd")
    sched = L.CyclicLR(opt, 0.01, 0.1, step_size_up=3)
    opt.step()
    sched.step()
    assert scheduled_lrs(_saved(sched.state_dict()) | extra, 2) == (None, reason)
