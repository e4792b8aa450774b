"""``simulate`` (the core loop) against hand-written torch loops, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate.base.errors import ConfigError, OutputExistsError, StateMismatchError
from optstate.io.torch_file import load_torch_file
from optstate.sim.config import GroupSpec, RunSpec, SchedulerSpec
from optstate.sim.simulate import series_path, simulate
from tests.reference_loop import reference_run

OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam",
              "RAdam", "ASGD", "Rprop", "LBFGS", "SparseAdam"]
GRADS = ["constant", "quadratic", "rosenbrock", "normal"]


def assert_identical(a, b, where="state_dict"):
    """Same structure, equal plain values, and tensors equal bit for bit (same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.is_sparse) == (b.dtype, b.shape, b.is_sparse), where
        a, b = (a.to_dense(), b.to_dense()) if a.is_sparse else (a, b)
        assert torch.equal(a, b), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def case(optimizer: str, grad: str = "quadratic", steps: int = 7, **kw):
    """A two-group run (LBFGS: one group, it refuses more) and its reference twin."""
    lr = 0.1 if optimizer == "LBFGS" else 1e-3
    if optimizer == "LBFGS":
        shapes, overrides = [[(2, 2), (3, 2)]], [{}]
    else:
        shapes, overrides = [[(2, 2), (3, 2)], [(4,)]], [{}, {"lr": 1e-4}]
    spec = RunSpec(
        optimizer=optimizer, hyperparams={"lr": lr}, steps=steps, grad=grad, seed=3,
        groups=tuple(GroupSpec(tuple(s), o) for s, o in zip(shapes, overrides, strict=True)),
        **kw,
    )
    ref = dict(defaults={"lr": lr}, overrides=overrides, steps=steps, grad=grad, seed=3, **kw)
    return spec, shapes, ref


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_simulate_equals_hand_written_loop(optimizer, grad):
    spec, shapes, ref_kw = case(optimizer, grad)
    result = simulate(spec)
    ref = reference_run(optimizer, shapes, **ref_kw)
    assert len(result.params) == len(ref.params)
    for p, q in zip(result.params, ref.params, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert_identical(result.optimizer.state_dict(), ref.optimizer.state_dict())
    # and the run did move: no optimizer leaves all of these where they started
    start = reference_run(optimizer, shapes, **{**ref_kw, "steps": 0}).params
    assert any(not torch.equal(p.detach(), s.detach())
               for p, s in zip(result.params, start, strict=True))


@pytest.mark.parametrize("zero_grad", ["none", "zeros", "never"])
@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "LBFGS", "SparseAdam"])
def test_zero_grad_modes_equal_hand_written_loop(optimizer, zero_grad):
    spec, shapes, ref_kw = case(optimizer, "quadratic", zero_grad=zero_grad)
    result = simulate(spec)
    ref = reference_run(optimizer, shapes, **ref_kw)
    for p, q in zip(result.params, ref.params, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert_identical(result.optimizer.state_dict(), ref.optimizer.state_dict())


# --------------------------------------------------------------------------- the tutorial


def test_tutorial_sgd_moves_every_element_by_minus_lr_per_step():
    result = simulate(RunSpec(hyperparams={"lr": 0.1}, steps=1, init="zeros"))
    assert torch.equal(result.params[0].detach(), torch.full((2, 2), -0.1))
    # ten steps from a seeded start: each step subtracts exactly 0.1 (as float32 does)
    result = simulate(RunSpec(hyperparams={"lr": 0.1}, steps=10, seed=5))
    expected = torch.randn((2, 2), generator=torch.Generator().manual_seed(5))
    for _ in range(10):
        expected = expected - torch.tensor(0.1)
    assert torch.equal(result.params[0].detach(), expected)
    assert result.history.step == list(range(11))
    assert result.history.lr == [[0.1]] * 11


def test_tutorial_momentum_buffer_is_the_geometric_sum():
    result = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=10))
    buf = result.optimizer.state_dict()["state"][0]["momentum_buffer"]
    expected = torch.ones(2, 2)  # torch's own recurrence, in float32
    for _ in range(9):
        expected = expected * 0.9 + 1
    assert torch.equal(buf, expected)
    exact = sum(0.9**k for k in range(10))
    assert exact == pytest.approx(6.5132155990)
    # float32 rounding over ten steps: about two ulps (ulp(6.5) = 4.8e-7) from the exact sum
    assert torch.allclose(buf.double(), torch.full((2, 2), exact, dtype=torch.float64),
                          rtol=0, atol=1.5e-6)


def test_tutorial_add_param_group_gives_two_groups():
    spec = RunSpec(hyperparams={"lr": 0.1}, steps=1,
                   groups=(GroupSpec(((2, 2),)), GroupSpec(((2, 2),), {"lr": 1e-4})))
    sd = simulate(spec).optimizer.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 1e-4]


def test_saved_state_dict_round_trips_exactly(tmp_path):
    out = tmp_path / "sgd.pkl"
    result = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=10), save=out)
    assert result.saved == [out]
    loaded = torch.load(out, weights_only=True)
    assert_identical(loaded, result.optimizer.state_dict())
    # the exact object load_state_dict takes
    fresh = torch.optim.SGD([torch.zeros(2, 2, requires_grad=True)], lr=0.5)
    fresh.load_state_dict(loaded)
    assert_identical(fresh.state_dict(), result.optimizer.state_dict())


# --------------------------------------------------------------------------- zero_grad


def test_zero_grad_none_creates_no_state_without_gradients():
    spec = RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=3, grad="none")
    assert simulate(spec).optimizer.state_dict()["state"] == {}


def test_zero_grad_zeros_creates_zero_momentum_buffers_without_gradients():
    spec = RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=3, grad="none",
                   zero_grad="zeros")
    result = simulate(spec)
    assert torch.equal(result.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       torch.zeros(2, 2))


def test_zero_grad_never_accumulates_gradients():
    # step k sees gradient k (1 + 1 + ...): the parameter falls by 0.1 * (1 + 2 + 3)
    result = simulate(RunSpec(hyperparams={"lr": 0.1}, steps=3, init="zeros",
                              zero_grad="never"))
    expected = torch.zeros(2, 2)
    for k in (1, 2, 3):
        expected = expected - 0.1 * torch.full((2, 2), float(k))
    assert torch.equal(result.params[0].detach(), expected)
    assert torch.equal(result.params[0].grad, torch.full((2, 2), 3.0))


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_k_steps_save_resume_equals_uninterrupted(optimizer, tmp_path):
    spec, _, _ = case(optimizer, "quadratic", steps=9)
    whole = simulate(spec)
    first = simulate(RunSpec(**{**spec.__dict__, "steps": 4}), save=tmp_path / "k.pkl",
                     with_params=True)
    assert first.final_step == 4
    resumed = simulate(RunSpec(**{**spec.__dict__, "steps": 5}),
                       resume=load_torch_file(tmp_path / "k.pkl").obj)
    assert (resumed.start_step, resumed.final_step) == (4, 9)
    assert resumed.warnings == []
    for p, q in zip(resumed.params, whole.params, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert_identical(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    assert resumed.history.step == list(range(4, 10))
    assert resumed.history.loss == whole.history.loss[4:]


def test_resume_with_scheduler_equals_uninterrupted(tmp_path):
    spec = RunSpec(optimizer="AdamW", hyperparams={"lr": 0.01}, steps=8, grad="quadratic",
                   scheduler=SchedulerSpec("StepLR", {"step_size": 3, "gamma": 0.5}))
    whole = simulate(spec)
    simulate(RunSpec(**{**spec.__dict__, "steps": 5}), save=tmp_path / "k.pkl",
             with_params=True)
    resumed = simulate(RunSpec(**{**spec.__dict__, "steps": 3}),
                       resume=load_torch_file(tmp_path / "k.pkl").obj)
    for p, q in zip(resumed.params, whole.params, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert_identical(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    assert_identical(resumed.scheduler.state_dict(), whole.scheduler.state_dict())
    assert whole.history.lr[-1] == [0.01 * 0.5 * 0.5]


def test_resume_of_a_factored_state_equals_uninterrupted(tmp_path):
    """Adafactor keeps row/column statistics (row_var 3x1, col_var 1x4 for a 3x4 weight):
    --resume compares each entry with the shape the configured optimizer gives it, not
    with the parameter's (it refused every Adafactor state)."""
    spec = RunSpec(optimizer="Adafactor", hyperparams={"lr": 0.01}, steps=6,
                   groups=[GroupSpec(shapes=[(3, 4), (5,)])], grad="quadratic")
    whole = simulate(spec)
    simulate(RunSpec(**{**spec.__dict__, "steps": 4}), save=tmp_path / "k.pt",
             with_params=True)
    resumed = simulate(RunSpec(**{**spec.__dict__, "steps": 2}),
                       resume=load_torch_file(tmp_path / "k.pt").obj)
    for p, q in zip(resumed.params, whole.params, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert_identical(resumed.optimizer.state_dict(), whole.optimizer.state_dict())


def test_resume_of_a_factored_state_for_other_shapes_is_refused(tmp_path):
    simulate(RunSpec(optimizer="Adafactor", groups=[GroupSpec(shapes=[(3, 4)])], steps=1),
             save=tmp_path / "k.pt")
    sd = load_torch_file(tmp_path / "k.pt").obj
    with pytest.raises(StateMismatchError, match=r"row_var has shape 3x1, the configured "
                                                 r"Adafactor makes it 4x1"):
        simulate(RunSpec(optimizer="Adafactor", groups=[GroupSpec(shapes=[(4, 3)])],
                         steps=1), resume=sd)


def test_resume_from_bare_state_dict_warns_and_restarts_params(tmp_path):
    spec = RunSpec(optimizer="Adam", hyperparams={"lr": 0.01}, steps=3, grad="quadratic")
    simulate(spec, save=tmp_path / "bare.pkl")
    resumed = simulate(spec, resume=load_torch_file(tmp_path / "bare.pkl").obj)
    assert resumed.start_step == 3  # from Adam's per-param step counters
    assert resumed.final_step == 6
    assert resumed.warnings == [
        "the resume file holds no parameter values; parameters start from their initial "
        "values (save with with_params=True to keep them)"]
    assert float(resumed.optimizer.state_dict()["state"][0]["step"]) == 6.0


def _saved(tmp_path, spec, name="a.pkl"):
    simulate(spec, save=tmp_path / name)
    return load_torch_file(tmp_path / name).obj


def test_resume_wrong_optimizer_kind_is_one_line(tmp_path):
    obj = _saved(tmp_path, RunSpec(optimizer="Adam", steps=1))
    with pytest.raises(StateMismatchError) as e:
        simulate(RunSpec(optimizer="SGD", steps=1), resume=obj)
    assert e.value.message == ("the resume state is not SGD state: its groups have amsgrad, "
                               "betas, eps, which SGD does not use")
    assert e.value.hint == "set optimizer to the optimizer that wrote the checkpoint"


def test_resume_wrong_group_count(tmp_path):
    obj = _saved(tmp_path, RunSpec(steps=1))
    two = (GroupSpec(((2, 2),)), GroupSpec(((2, 2),)))
    with pytest.raises(StateMismatchError, match=r"^the resume state has 1 param group\(s\), "
                       r"the config builds 2$"):
        simulate(RunSpec(steps=1, groups=two), resume=obj)


def test_resume_wrong_param_count(tmp_path):
    obj = _saved(tmp_path, RunSpec(steps=1))
    with pytest.raises(StateMismatchError, match=r"^param group 0 has 1 param\(s\) in the "
                       r"resume state but 2 in the config$"):
        simulate(RunSpec(steps=1, groups=(GroupSpec(((2, 2), (3,))),)), resume=obj)


def test_resume_wrong_shape(tmp_path):
    obj = _saved(tmp_path, RunSpec(optimizer="Adam", steps=1))
    with pytest.raises(StateMismatchError) as e:
        simulate(RunSpec(optimizer="Adam", steps=1, groups=(GroupSpec(((3, 3),)),)),
                 resume=obj)
    assert e.value.message == ("param 0 (group0.param0): the resume state's exp_avg has "
                               "shape 2x2, the config's parameter is 3x3")


def test_resume_file_without_optimizer_state(tmp_path):
    with pytest.raises(StateMismatchError, match="holds no optimizer state"):
        simulate(RunSpec(steps=1), resume={"weights": torch.zeros(2)})


# --------------------------------------------------------------------------- saving


def test_save_every_writes_a_numbered_series(tmp_path):
    out = tmp_path / "run.pkl"
    result = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=7),
                      save=out, save_every=3)
    names = [p.name for p in result.saved]
    assert names == ["run.step000003.pkl", "run.step000006.pkl", "run.pkl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    # the step-3 file is what 3 steps give
    three = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}, steps=3))
    assert_identical(torch.load(tmp_path / "run.step000003.pkl", weights_only=True),
                     three.optimizer.state_dict())
    assert series_path(out, 12).name == "run.step000012.pkl"


def test_existing_output_refused_before_any_step(tmp_path):
    out = tmp_path / "run.pkl"
    out.write_bytes(b"precious")
    steps_taken = []
    with pytest.raises(OutputExistsError, match="already exists"):
        simulate(RunSpec(steps=3), save=out, on_step=steps_taken.append)
    assert steps_taken == []
    assert out.read_bytes() == b"precious"
    # --force replaces a checkpoint, never another file
    with pytest.raises(OutputExistsError, match="is not a torch.save checkpoint"):
        simulate(RunSpec(steps=3), save=out, force=True, on_step=steps_taken.append)
    assert steps_taken == [] and out.read_bytes() == b"precious"
    torch.save({"old": 1}, out)
    simulate(RunSpec(steps=3), save=out, force=True)
    assert torch.load(out, weights_only=True)["param_groups"][0]["lr"] == 0.001


def test_container_layout_with_scheduler_and_params(tmp_path):
    spec = RunSpec(optimizer="AdamW", steps=4,
                   groups=(GroupSpec(((2, 2),), names=("w",)),
                           GroupSpec(((3,),), {"lr": 1e-4}, names=("b",))),
                   scheduler=SchedulerSpec("StepLR", {"step_size": 2}))
    result = simulate(spec, save=tmp_path / "c.pkl", with_params=True)
    obj = torch.load(tmp_path / "c.pkl", weights_only=True)
    assert list(obj) == ["optimizer_state_dict", "scheduler_state_dict", "model_state_dict",
                         "step", "optstate"]
    assert obj["step"] == 4
    assert list(obj["model_state_dict"]) == ["w", "b"]
    assert torch.equal(obj["model_state_dict"]["b"], result.params[1].detach())
    assert obj["scheduler_state_dict"]["last_epoch"] == 4
    assert obj["optstate"]["config"] == spec.to_dict()
    assert obj["optimizer_state_dict"]["param_groups"][1]["param_names"] == ["b"]


def test_save_every_requires_save_and_positive():
    with pytest.raises(ConfigError, match="^save_every needs save=PATH"):
        simulate(RunSpec(steps=1), save_every=2)
    with pytest.raises(ConfigError, match="positive"):
        simulate(RunSpec(steps=1), save="x.pkl", save_every=0)


# --------------------------------------------------------------------------- history


def test_history_loss_is_the_objective_per_step():
    result = simulate(RunSpec(optimizer="SGD", hyperparams={"lr": 0.5}, steps=2,
                              grad="quadratic", init="constant", init_value=3.0,
                              grad_value=1.0))
    # w: 3 -> 2 -> 1.5 on each of 4 elements; loss = 0.5 * 4 * (w - 1)^2
    assert result.history.loss == [8.0, 2.0, 0.5]
    norms = [math.sqrt(4 * w * w) for w in (3.0, 2.0, 1.5)]
    assert result.history.param_norm == norms


def test_rosenbrock_run_goes_downhill():
    result = simulate(RunSpec(optimizer="Adam", hyperparams={"lr": 0.02}, steps=300,
                              grad="rosenbrock", init="zeros", groups=(GroupSpec(((2,),)),)))
    assert result.history.loss[0] == 1.0  # (1 - 0)^2 at the origin
    assert result.history.loss[-1] < 0.05


def test_reduce_lr_on_plateau_steps_on_the_loss():
    spec = RunSpec(hyperparams={"lr": 0.1}, steps=6, grad="none", zero_grad="zeros",
                   scheduler=SchedulerSpec("ReduceLROnPlateau", {"patience": 1}))
    result = simulate(spec)
    # no objective: the loss fed to the scheduler is 0.0 every step, a plateau
    assert result.history.lr[-1][0] < 0.1


def test_resume_lbfgs_with_other_parameter_sizes(tmp_path):
    lbfgs = dict(optimizer="LBFGS", hyperparams={"lr": 0.1}, grad="quadratic", steps=1)
    obj = _saved(tmp_path, RunSpec(**lbfgs))
    with pytest.raises(StateMismatchError) as e:
        simulate(RunSpec(**lbfgs, groups=(GroupSpec(((3, 3),)),)), resume=obj)
    assert e.value.message == ("the resume state's LBFGS d has 4 elements, the config's "
                               "parameters have 9 in all")


def test_saved_file_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        simulate(RunSpec(steps=1), save=tmp_path / "a.pkl")
        assert stat.S_IMODE((tmp_path / "a.pkl").stat().st_mode) == 0o644
        os.chmod(tmp_path / "a.pkl", 0o600)  # a replaced file keeps its mode
        simulate(RunSpec(steps=1), save=tmp_path / "a.pkl", force=True)
        assert stat.S_IMODE((tmp_path / "a.pkl").stat().st_mode) == 0o600
    finally:
        os.umask(umask)


def test_a_diverging_run_says_where():
    spec = RunSpec(hyperparams={"lr": 10.0}, grad="rosenbrock", steps=20,
                   groups=(GroupSpec(((2,),)),))
    result = simulate(spec)
    first_bad = next(k for k in range(1, 21) if not torch.isfinite(
        reference_run("SGD", [[(2,)]], defaults={"lr": 10.0}, grad="rosenbrock",
                      steps=k).params[0]).all())
    assert result.warnings == [f"the run diverged: parameters hold NaN or Inf from step "
                               f"{first_bad} on (try a smaller lr)"]
    assert simulate(RunSpec(steps=3)).warnings == []


def test_public_api_names_the_functions_whatever_the_import_order():
    import sys

    import optstate.sim.simulate  # noqa: F401
    import optstate.state.locate  # noqa: F401 - the submodules, imported first
    from optstate import locate
    from optstate import simulate as public

    assert public is sys.modules["optstate.api"].simulate  # the documented API's function
    assert locate is sys.modules["optstate.state.locate"].locate
    assert public(RunSpec(steps=1)).final_step == 1


def test_resume_with_another_scheduler_is_refused(tmp_path):
    step_lr = SchedulerSpec("StepLR", {"step_size": 2})
    simulate(RunSpec(steps=2, scheduler=step_lr), save=tmp_path / "s.pkl")
    obj = load_torch_file(tmp_path / "s.pkl").obj
    cosine = SchedulerSpec("CosineAnnealingLR", {"T_max": 10})
    with pytest.raises(StateMismatchError) as e:
        simulate(RunSpec(steps=1, scheduler=cosine), resume=obj)
    assert e.value.message == ("the resume scheduler state is not CosineAnnealingLR state: "
                               "it has gamma, step_size, which CosineAnnealingLR does not use")
    resumed = simulate(RunSpec(steps=1, scheduler=step_lr), resume=obj)
    assert resumed.scheduler.last_epoch == 3


@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "SparseAdam"])
def test_zero_grad_zeros_without_gradients_equals_hand_written_loop(optimizer):
    spec, shapes, ref_kw = case(optimizer, "none", steps=3, zero_grad="zeros")
    result = simulate(spec)
    ref = reference_run(optimizer, shapes, **ref_kw)
    assert_identical(result.optimizer.state_dict(), ref.optimizer.state_dict())
    if optimizer != "SGD":  # plain SGD keeps no state; Adam's run on the zero gradients
        assert float(result.optimizer.state_dict()["state"][0]["step"]) == 3.0


@pytest.mark.parametrize(("spec", "message"), [
    (RunSpec(optimizer="Adam", hyperparams={"capturable": True}),
     "torch refused step 1 of Adam: If capturable=True, params and state_steps must be on "
     "supported devices: ['cuda', 'xpu', 'hpu', 'privateuseone', 'xla']."),
    (RunSpec(optimizer="LBFGS", hyperparams={"line_search_fn": "bogus"}),
     "torch refused step 1 of LBFGS: only 'strong_wolfe' is supported"),
    (RunSpec(steps=7, scheduler=SchedulerSpec("OneCycleLR", {"max_lr": 0.1,
                                                               "total_steps": 5})),
     "torch refused step 6 of OneCycleLR: Tried to step 6 times. The specified number of "
     "total steps is 5"),
])
def test_settings_torch_refuses_at_step_time_are_config_errors(spec, message):
    with pytest.raises(ConfigError) as e:
        simulate(spec)
    assert e.value.message == message


@settings(max_examples=15, deadline=None)
@given(optimizer=st.sampled_from(OPTIMIZERS),
       shapes=st.lists(st.lists(st.integers(1, 4), max_size=2).map(tuple), min_size=1,
                       max_size=3),
       steps=st.integers(0, 3), with_params=st.booleans(),
       grad=st.sampled_from(["constant", "quadratic", "normal"]))
def test_saved_state_reads_back_identical(tmp_path_factory, optimizer, shapes, steps,
                                          with_params, grad):
    out = tmp_path_factory.mktemp("save") / "s.pt"
    spec = RunSpec(optimizer=optimizer, steps=steps, grad=grad,
                   groups=(GroupSpec(tuple(shapes)),))
    result = simulate(spec, save=out, with_params=with_params)
    loaded = torch.load(out, weights_only=True)
    sd = loaded["optimizer_state_dict"] if with_params else loaded
    assert_identical(sd, result.optimizer.state_dict())
    if with_params:
        assert_identical(list(loaded["model_state_dict"].values()),
                         [p.detach() for p in result.params])
