"""Building real torch.optim optimizers and schedulers from specs."""

from __future__ import annotations

import pytest
import torch

from optstate.base.errors import ConfigError
from optstate.sim.build import build, optimizer_class, optimizer_classes, scheduler_classes
from optstate.sim.config import GroupSpec, RunSpec, SchedulerSpec
from optstate.sim.spec_text import parse_assignment

ISSUE_OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
                    "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "SparseAdam"]


@pytest.mark.parametrize("name", ISSUE_OPTIMIZERS)
def test_every_issue_optimizer_by_name_any_case(name):
    assert optimizer_class(name.lower()) is getattr(torch.optim, name)
    assert optimizer_class(name.upper()) is getattr(torch.optim, name)
    built = build(RunSpec(optimizer=name, hyperparams={"lr": 0.01}))
    assert type(built.optimizer) is getattr(torch.optim, name)
    assert built.optimizer.param_groups[0]["lr"] == 0.01


def test_optimizer_classes_is_what_torch_optim_exports():
    expected = {n.lower() for n in dir(torch.optim)
                if isinstance(getattr(torch.optim, n), type)
                and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                and n != "Optimizer"}
    assert set(optimizer_classes()) == expected
    assert set(n.lower() for n in ISSUE_OPTIMIZERS) <= expected


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        build(RunSpec(optimizer="Adamm"))
    assert e.value.message == "unknown optimizer 'Adamm'; did you mean 'adam'?"
    names = e.value.hint.removeprefix("choose one of ").split(", ")
    assert names == sorted(c.__name__ for c in optimizer_classes().values())
    assert set(ISSUE_OPTIMIZERS) <= set(names)


def test_unknown_hyperparameter_lists_the_valid_names():
    with pytest.raises(ConfigError) as e:
        build(RunSpec(optimizer="Adam", hyperparams={"momentum": 0.9}))
    assert e.value.message == "Adam has no hyperparameter 'momentum'"
    assert e.value.hint.startswith("valid names: lr, betas, eps, weight_decay, amsgrad,")


def test_unknown_hyperparameter_in_a_group_says_which():
    spec = RunSpec(groups=(GroupSpec(((2,),)), GroupSpec(((2,),), {"beta": 1})))
    with pytest.raises(ConfigError, match=r"^SGD has no hyperparameter 'beta' \(in param "
                       r"group 1\)$"):
        build(spec)


@pytest.mark.parametrize(("optimizer", "key", "value", "message"), [
    ("SGD", "lr", "fast", "SGD lr must be a number, got 'fast'"),
    ("SGD", "lr", float("nan"), "SGD lr must be a finite number, got nan"),
    ("SGD", "nesterov", 1, "SGD nesterov must be true or false, got 1"),
    ("Adam", "betas", 0.9, "Adam betas must be 2 comma-separated values like 0.9,0.999, "
                           "got 0.9"),
    ("Adam", "betas", (0.9, "x"), "Adam betas must be 2 numbers, got (0.9, 'x')"),
    ("Adam", "amsgrad", "yes", "Adam amsgrad must be true or false, got 'yes'"),
])
def test_ill_typed_hyperparameters(optimizer, key, value, message):
    with pytest.raises(ConfigError) as e:
        build(RunSpec(optimizer=optimizer, hyperparams={key: value}))
    assert e.value.message == message


def test_torch_refusals_become_config_errors():
    with pytest.raises(ConfigError, match=r"^torch refused to build SGD: Invalid learning "
                       r"rate: -1"):
        build(RunSpec(hyperparams={"lr": -1}))
    with pytest.raises(ConfigError, match="torch refused to build LBFGS: LBFGS doesn't "
                       "support per-parameter options"):
        build(RunSpec(optimizer="LBFGS", groups=(GroupSpec(((2,),)), GroupSpec(((2,),)))))


def test_betas_from_the_command_line():
    key, value = parse_assignment("betas=0.8,0.99")
    built = build(RunSpec(optimizer="AdamW", hyperparams={key: value}))
    assert built.optimizer.param_groups[0]["betas"] == (0.8, 0.99)


def test_groups_with_overrides_and_names():
    spec = RunSpec(
        optimizer="Adam", hyperparams={"lr": 0.01, "weight_decay": 0.1},
        groups=(GroupSpec(((2, 2), (3,)), {}, ("w", "b")),
                GroupSpec(((4,),), {"lr": 1e-4}, ("head",))),
    )
    built = build(spec)
    groups = built.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.01, 1e-4]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1]
    assert [len(g["params"]) for g in groups] == [2, 1]
    assert built.names == ["w", "b", "head"]
    assert built.group_of == [0, 0, 1]
    assert built.optimizer.state_dict()["param_groups"][0]["param_names"] == ["w", "b"]
    assert [tuple(p.shape) for p in built.params] == [(2, 2), (3,), (4,)]
    assert all(p.requires_grad and p.is_leaf for p in built.params)


def test_unnamed_params_get_positional_names_and_no_param_names():
    built = build(RunSpec(groups=(GroupSpec(((2,),)), GroupSpec(((2,), (1,))))))
    assert built.names == ["group0.param0", "group1.param0", "group1.param1"]
    assert "param_names" not in built.optimizer.state_dict()["param_groups"][0]


def test_init_modes():
    seeded = build(RunSpec(seed=7, groups=(GroupSpec(((2, 2), (3,))),))).params
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(seeded[0].detach(), torch.randn((2, 2), generator=gen))
    assert torch.equal(seeded[1].detach(), torch.randn((3,), generator=gen))
    assert torch.equal(build(RunSpec(init="zeros")).params[0].detach(), torch.zeros(2, 2))
    assert torch.equal(build(RunSpec(init="ones")).params[0].detach(), torch.ones(2, 2))
    const = build(RunSpec(init="constant", init_value=-2.5)).params[0].detach()
    assert torch.equal(const, torch.full((2, 2), -2.5))


def test_scheduler_built_with_its_arguments():
    spec = RunSpec(scheduler=SchedulerSpec("steplr", {"step_size": 3, "gamma": 0.1}))
    sched = build(spec).scheduler
    assert type(sched) is torch.optim.lr_scheduler.StepLR
    assert (sched.step_size, sched.gamma) == (3, 0.1)


def test_scheduler_errors():
    with pytest.raises(ConfigError) as e:
        build(RunSpec(scheduler=SchedulerSpec("StepLR")))
    assert e.value.message == "StepLR needs step_size"
    assert e.value.hint == "for example scheduler_args={'step_size': 10}"
    with pytest.raises(ConfigError) as e:
        build(RunSpec(scheduler=SchedulerSpec("LambdaLR", {})))
    assert e.value.message == "unknown or unsupported LR scheduler 'LambdaLR'"
    assert "StepLR" in e.value.hint and "LambdaLR" not in e.value.hint
    with pytest.raises(ConfigError, match="StepLR has no hyperparameter 'size'"):
        build(RunSpec(scheduler=SchedulerSpec("StepLR", {"size": 2})))


def test_scheduler_classes_cover_plateau_and_cosine():
    names = scheduler_classes()
    assert names["reducelronplateau"] is torch.optim.lr_scheduler.ReduceLROnPlateau
    assert names["cosineannealinglr"] is torch.optim.lr_scheduler.CosineAnnealingLR


def test_parameters_too_big_for_memory_are_a_config_error():
    with pytest.raises(ConfigError) as e:
        build(RunSpec(groups=(GroupSpec(((10_000_000, 10_000_000),)),)))
    assert e.value.message == ("cannot allocate a 10000000x10000000 parameter "
                               "(400,000,000,000,000 bytes as float32): out of memory")
