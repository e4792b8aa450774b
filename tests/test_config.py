"""Run specs: values from the command line, config files, overrides, validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate.base.errors import ConfigError
from optstate.sim.config import (
    GroupSpec,
    RunSpec,
    SchedulerSpec,
    format_shape,
    parse_shape,
    read_config_file,
    spec_from_dict,
    validate,
)
from optstate.sim.spec_text import apply_overrides, parse_assignment, parse_group, parse_value


@pytest.mark.parametrize(("text", "value"), [
    ("0.1", 0.1), ("1e-4", 1e-4), ("3", 3), ("-2", -2), ("true", True), ("False", False),
    ("none", None), ("adam", "adam"), ("0.9,0.999", (0.9, 0.999)), ("1,2,", (1, 2)),
    (" 0.5 ", 0.5),
])
def test_parse_value(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_parse_value_empty_list_item():
    with pytest.raises(ConfigError, match="empty item"):
        parse_value("0.9,,0.99")


def test_parse_assignment():
    assert parse_assignment("betas=0.9,0.95") == ("betas", (0.9, 0.95))
    assert parse_assignment(" amsgrad = true") == ("amsgrad", True)
    with pytest.raises(ConfigError) as e:
        parse_assignment("lr")
    assert e.value.message == "expected key=value, got 'lr'"
    assert e.value.hint == "for example assignments=['betas=0.9,0.95']"
    with pytest.raises(ConfigError, match="is not a hyperparameter name"):
        parse_assignment("1x=2")


@pytest.mark.parametrize(("text", "shape"), [
    ("2x2", (2, 2)), ("3", (3,)), ("3X4x5", (3, 4, 5)), ("2×3", (2, 3)), ("scalar", ()),
    ([2, 2], (2, 2)), (7, (7,)), ("10", (10,)),
])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("bad", ["2x0", "-1", "2xa", "x", "1.5", [2, 0], True, 2.5, [1.5]])
def test_parse_shape_rejects(bad):
    with pytest.raises(ConfigError, match="bad shape"):
        parse_shape(bad)


@given(st.lists(st.integers(1, 50), min_size=0, max_size=4))
def test_shape_round_trip(dims):
    assert parse_shape(format_shape(tuple(dims))) == tuple(dims)


def test_parse_group():
    g = parse_group("3x3 4 lr=1e-4 betas=0.9,0.95")
    assert g == GroupSpec(shapes=((3, 3), (4,)), hyperparams={"lr": 1e-4, "betas": (0.9, 0.95)})
    with pytest.raises(ConfigError, match="names no parameter shape"):
        parse_group("lr=0.1")


TOML = """
optimizer = "AdamW"
steps = 5
seed = 2
grad = "quadratic"
zero_grad = "zeros"

[hyperparams]
lr = 1e-3
betas = [0.9, 0.95]

[[groups]]
shapes = ["2x2", "3"]
names = ["w", "b"]

[[groups]]
shapes = ["3x3"]
lr = 1e-4

[scheduler]
name = "StepLR"
step_size = 5
gamma = 0.5
"""

EXPECTED = RunSpec(
    optimizer="AdamW", steps=5, seed=2, grad="quadratic", zero_grad="zeros",
    hyperparams={"lr": 1e-3, "betas": (0.9, 0.95)},
    groups=(GroupSpec(((2, 2), (3,)), {}, ("w", "b")), GroupSpec(((3, 3),), {"lr": 1e-4})),
    scheduler=SchedulerSpec("StepLR", {"step_size": 5, "gamma": 0.5}),
)


def test_toml_config(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text(TOML)
    assert spec_from_dict(read_config_file(p)) == EXPECTED


def test_json_config_is_the_same_spec(tmp_path):
    p = tmp_path / "run.json"
    p.write_text(json.dumps(EXPECTED.to_dict()))
    assert spec_from_dict(read_config_file(p)) == EXPECTED


def test_to_dict_round_trips():
    assert spec_from_dict(EXPECTED.to_dict()) == EXPECTED
    assert spec_from_dict(RunSpec().to_dict()) == RunSpec()


@pytest.mark.parametrize(("content", "suffix", "message"), [
    ("optimizer = ", ".toml", "is not valid TOML"),
    ("{", ".json", "is not valid JSON"),
    ("[1, 2]", ".json", "must hold a table/object at the top level"),
])
def test_unreadable_config(tmp_path, content, suffix, message):
    p = tmp_path / f"bad{suffix}"
    p.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_config_file(p)


def test_missing_and_binary_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_config_file(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_config_file(tmp_path / "bin.toml")


@pytest.mark.parametrize(("data", "message"), [
    ({"lr": 0.1}, "config: unknown key(s) lr"),
    ({"steps": "ten"}, "config: steps must be a whole number, got 'ten'"),
    ({"steps": True}, "config: steps must be a whole number, got True"),
    ({"steps": -1}, "steps must be 0 or more, got -1"),
    ({"grad": "sine"}, "unknown gradient source 'sine'"),
    ({"zero_grad": "maybe"}, "unknown zero_grad mode 'maybe'"),
    ({"init": "xavier"}, "unknown init 'xavier'"),
    ({"groups": []}, "at least one param group is needed"),
    ({"groups": [{"lr": 1}]}, "config: groups[0] needs shapes = [\"2x2\", ...]"),
    ({"groups": ["2x2"]}, "config: groups[0] must be a table with shapes = [...]"),
    ({"groups": [{"shapes": ["2"], "names": ["a", "b"]}]},
     "config: groups[0] has 1 shapes but 2 names"),
    ({"groups": [{"shapes": ["2", "2"], "names": ["conv1.bias", "conv1.bias"]}]},
     "config: groups[0].names lists 'conv1.bias' twice (each parameter has one name)"),
    ({"groups": [{"shapes": ["2"], "names": ["conv1.bias"]},
                 {"shapes": ["2"], "names": ["conv1.bias"]}]},
     "config: groups[1].names lists 'conv1.bias', which groups[0] lists too (each "
     "parameter is in one group)"),
    ({"groups": [{"shapes": ["2", "2"], "names": ["w", " "]}]},
     "config: groups[0].names has an empty name at position 1"),
    ({"scheduler": {"step_size": 2}}, "config: [scheduler] needs a name, e.g. name = \"StepLR\""),
    ({"grad_value": "x"}, "config: grad_value must be a number, got 'x'"),
    ({"grad": "rosenbrock", "groups": [{"shapes": ["3"]}]},
     "the Rosenbrock objective pairs up coordinates, but the parameters have 3 elements in "
     "all"),
])
def test_bad_config_values(data, message):
    with pytest.raises(ConfigError) as e:
        spec_from_dict(data)
    assert e.value.message == message


def test_unknown_key_hint_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        spec_from_dict({"optimiser": "Adam"})
    assert e.value.hint.startswith("valid keys: grad, grad_value, groups, hyperparams, init,")


def test_choice_errors_list_the_choices():
    with pytest.raises(ConfigError) as e:
        validate(RunSpec(grad="sine"))
    assert e.value.hint == "choose one of constant, normal, quadratic, rosenbrock, none"


def test_flags_override_config():
    spec = apply_overrides(
        EXPECTED, optimizer="Adam", hyperparams={"lr": 0.5}, steps=1, seed=None,
        shapes=[(5,), (6,)],
    )
    assert spec.optimizer == "Adam"
    assert spec.hyperparams == {"lr": 0.5, "betas": (0.9, 0.95)}
    assert (spec.steps, spec.seed) == (1, 2)  # None means "flag not given"
    assert spec.groups[0] == GroupSpec(((5,), (6,)), {}, ("w", "b"))
    assert spec.groups[1] == EXPECTED.groups[1]


def test_group_flags_replace_later_groups():
    spec = apply_overrides(EXPECTED, groups=[parse_group("4 lr=0.01")])
    assert spec.groups == (EXPECTED.groups[0], GroupSpec(((4,),), {"lr": 0.01}))


def test_default_is_the_tutorial():
    spec = RunSpec()
    assert (spec.optimizer, spec.groups, spec.grad, spec.grad_value) == (
        "SGD", (GroupSpec(((2, 2),)),), "constant", 1.0)


_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_values = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.integers(-100, 100),
                    st.booleans(), st.tuples(st.floats(0, 1), st.floats(0, 1)))
_shapes = st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple),
                   min_size=1, max_size=3).map(tuple)


@st.composite
def run_specs(draw):
    groups = tuple(
        GroupSpec(shapes, draw(st.dictionaries(_names, _values, max_size=3)))
        for shapes in draw(st.lists(_shapes, min_size=1, max_size=3)))
    sched = draw(st.none() | st.builds(SchedulerSpec, st.sampled_from(["StepLR", "ExponentialLR"]),
                                       st.dictionaries(_names, _values, max_size=2)))
    return RunSpec(
        optimizer=draw(st.sampled_from(["SGD", "adam", "AdamW", "LBFGS"])),
        hyperparams=draw(st.dictionaries(_names, _values, max_size=4)),
        groups=groups, steps=draw(st.integers(0, 10**6)), seed=draw(st.integers(0, 2**32)),
        grad=draw(st.sampled_from(["constant", "normal", "quadratic", "none"])),
        grad_value=draw(st.floats(-10, 10)), zero_grad=draw(st.sampled_from(
            ["none", "zeros", "never"])), init=draw(st.sampled_from(["normal", "zeros",
                                                                      "constant"])),
        init_value=draw(st.floats(-10, 10)), scheduler=sched)


@settings(max_examples=50)
@given(run_specs())
def test_any_spec_survives_json_and_back(spec):
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_from_flags_over_a_config():
    from optstate.sim.spec_text import spec_from_flags

    spec = spec_from_flags(
        EXPECTED, optimizer="Adam", common={"lr": 0.5, "momentum": None},
        assignments=["betas=0.8,0.9", "lr=0.1"], shapes=["5"], groups=["6 lr=1e-2"],
        scheduler_args=["gamma=0.1"], steps=3, seed=None)
    assert spec.optimizer == "Adam"
    assert spec.hyperparams == {"lr": 0.5, "betas": (0.8, 0.9)}  # --lr beats --set lr=
    assert spec.groups == (GroupSpec(((5,),)), GroupSpec(((6,),), {"lr": 1e-2}))
    assert spec.scheduler == SchedulerSpec("StepLR", {"step_size": 5, "gamma": 0.1})
    assert (spec.steps, spec.seed) == (3, 2)
    assert spec_from_flags(RunSpec(), scheduler="ExponentialLR",
                           scheduler_args=["gamma=0.9"]).scheduler == SchedulerSpec(
        "ExponentialLR", {"gamma": 0.9})
    with pytest.raises(ConfigError, match="^scheduler_args needs scheduler=NAME"):
        spec_from_flags(RunSpec(), scheduler_args=["gamma=0.9"])
