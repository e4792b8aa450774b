"""One path syntax (optstate/base/paths.py): what optstate prints is what --key selects."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.base.errors import ConfigError, NoOptimizerStateError
from optstate.base.paths import format_path, join, parse_path, path_keys
from optstate.state.locate import find_optimizer_states, resolve_key
from tests.optim_states import stepped_optimizer

# --------------------------------------------------------------------------- the printer


@pytest.mark.parametrize(("keys", "text"), [
    ((), ""),
    (("optimizer",), "optimizer"),
    (("trainer", "optimizer"), "trainer.optimizer"),
    (("optimizer_states", 1), "optimizer_states[1]"),
    (("param_groups", 0, "lr"), "param_groups[0].lr"),
    (("run", "opt.v1"), 'run["opt.v1"]'),
    (("", "a.b", 0), '[""]["a.b"][0]'),
    (("state", 0), "state[0]"),
    (("state", "0"), 'state["0"]'),  # the string "0" is not the int 0
    (("a", 'say "hi"\\'), r'a["say \"hi\"\\"]'),
    (("a", "x]y", "[", "it's"), '''a["x]y"]["["]["it's"]'''),
    (("a", "new\nline"), r'a["new\nline"]'),
    (("a", "é"), 'a["é"]'),
    (("a", "has space"), 'a["has space"]'),
    (("a", True, None, 1.5, (1, "b")), "a[True][None][1.5][(1, 'b')]"),
    ((-3,), "[-3]"),
])
def test_printed_form(keys, text):
    assert format_path(keys) == text
    assert path_keys(text) == keys
    assert [type(k) for k in path_keys(text)] == [type(k) for k in keys]


def test_lenient_reading():
    assert path_keys("a['b.c']") == ("a", "b.c")  # single quotes too
    assert path_keys(".") == ()
    steps = parse_path("optimizer_states.1.lightning-state")
    assert [(s.key, s.bare) for s in steps] == [("optimizer_states", False), ("1", True),
                                                ("lightning-state", True)]


@pytest.mark.parametrize("bad", ["a..b", "a.", "a[0", "a[0]b", "a[\"x]", "a[@]", "[0]]"])
def test_bad_paths_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_path(bad)


# --------------------------------------------------------------------------- round trip

_KEYS = st.one_of(st.text(max_size=6), st.sampled_from(["", ".", "a.b", "0", "[0]", '"', "'",
                                                        "a", "b", "x y", "]"]),
                  st.integers(-3, 20))


def _optimizer_state(tag: int) -> dict:
    return {"state": {}, "param_groups": [{"params": [tag], "lr": 0.1}]}


@st.composite
def _containers(draw, depth: int = 0):  # noqa: ANN001, ANN202
    counter = draw(st.shared(st.just([0]), key="counter"))
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        counter[0] += 1
        return _optimizer_state(counter[0])
    if draw(st.booleans()):
        keys = draw(st.lists(_KEYS, max_size=4, unique_by=lambda k: (type(k), k)))
        return {k: draw(_containers(depth + 1)) for k in keys}
    return [draw(_containers(depth + 1)) for _ in range(draw(st.integers(0, 3)))]


def _nodes(obj, path=(), text=""):
    yield path, text, obj
    if isinstance(obj, dict) and "param_groups" not in obj:
        for k, v in obj.items():
            yield from _nodes(v, (*path, k), join(text, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, (*path, i), join(text, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_containers())
def test_every_printed_path_selects_exactly_that_object(obj):
    for keys, text, node in _nodes(obj):
        assert format_path(keys) == text
        assert path_keys(text) == keys
        assert [type(k) for k in path_keys(text)] == [type(k) for k in keys]
        assert resolve_key(obj, text) is node
    # the locations locate prints (inspect's "found at", --json, the --key hint)
    states = [n for _, _, n in _nodes(obj) if isinstance(n, dict) and "param_groups" in n]
    found = find_optimizer_states(obj)
    assert sorted(id(s) for _, s in found) == sorted(id(s) for s in states)
    for location, state in found:
        assert resolve_key(obj, location) is state


def test_dotted_key_and_nested_path_are_told_apart():
    x, y = _optimizer_state(1), _optimizer_state(2)
    obj = {"a.b": x, "a": {"b": y}}
    found = dict((loc, s) for loc, s in find_optimizer_states(obj))
    assert set(found) == {'["a.b"]', "a.b"}
    assert resolve_key(obj, '["a.b"]') is x
    assert resolve_key(obj, "a.b") is y
    # an unquoted top-level key still works when it is not a path to something else
    assert resolve_key({"opt.v1": x}, "opt.v1") is x


def test_int_key_and_string_key_are_told_apart():
    x, y = _optimizer_state(1), _optimizer_state(2)
    obj = {0: x, "0": y}
    assert {loc for loc, _ in find_optimizer_states(obj)} == {"[0]", '["0"]'}
    assert resolve_key(obj, "[0]") is x
    assert resolve_key(obj, '["0"]') is y
    with pytest.raises(NoOptimizerStateError, match="nothing at"):
        resolve_key({0: x}, '["0"]')


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def dotted(tmp_path):
    opt, _ = stepped_optimizer("AdamW", steps=2)
    path = tmp_path / "dotted.pt"
    torch.save({"run": {"opt.v1": opt.state_dict()}}, path)
    return path


def test_inspect_prints_a_path_that_key_and_set_accept(cli, dotted, tmp_path):
    r = cli("inspect", dotted, "--no-stats", "--json")
    assert r.exit_code == 0, r.stderr
    location = json.loads(r.stdout)["location"]
    assert location == 'run["opt.v1"]'
    human = cli("inspect", dotted, "--no-stats")
    assert 'found at  run["opt.v1"]' in human.stdout
    r = cli("inspect", dotted, "--no-stats", "--json", "--key", location)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["location"] == location
    out = tmp_path / "out.pt"
    r = cli("set", dotted, "--key", location, "--lr", "0.5", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert [c["path"] for c in report["changes"]] == ['run["opt.v1"].param_groups[0].lr']
    saved = torch.load(out, weights_only=True)
    assert saved["run"]["opt.v1"]["param_groups"][0]["lr"] == 0.5
    # without --key too: set finds the one state and writes it back
    r = cli("set", dotted, "--lr", "0.25", "-o", tmp_path / "out2.pt")
    assert r.exit_code == 0, r.stderr
    # the old spelling selects nothing, and says so in one line
    r = cli("inspect", dotted, "--key", "run.opt.v1")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: --key 'run.opt.v1': nothing at '.opt' in")


def test_empty_string_key_is_printed(cli, tmp_path):
    opt, _ = stepped_optimizer("SGD", steps=1)
    path = tmp_path / "empty.pt"
    torch.save({"": {"a.b": [opt.state_dict()]}}, path)
    r = cli("inspect", path, "--no-stats", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["location"] == '[""]["a.b"][0]'
    r = cli("diff", path, path, "--key", '[""]["a.b"][0]')
    assert r.exit_code == 0, r.stdout + r.stderr


def test_key_help_documents_the_syntax(cli):
    for command in ("inspect", "set", "check", "diff"):
        r = cli(command, "--help", env={"COLUMNS": "200"})
        assert '[""] for the empty string' in r.stdout, command


# --------------------------------------------------------------------------- review of #15 item 4

_ANY_KEYS = st.one_of(_KEYS, st.floats(), st.booleans(), st.none(),
                      st.tuples(st.integers(-2, 2), st.floats()), st.binary(max_size=2))


@st.composite
def _containers_any_keys(draw, depth: int = 0):  # noqa: ANN001, ANN202
    counter = draw(st.shared(st.just([0]), key="counter_any"))
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        counter[0] += 1
        return _optimizer_state(counter[0])
    keys = draw(st.lists(_ANY_KEYS, max_size=4))
    return {k: draw(_containers_any_keys(depth + 1)) for k in keys}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_containers_any_keys())
def test_every_printed_path_selects_that_object_whatever_the_key_type(obj):
    """Float keys included: inf and nan were printed [inf] / [nan], which --key refused
    ("cannot read the key [inf]"); a nan key, unequal to itself, was never found."""
    for _keys, text, node in _nodes(obj):
        assert resolve_key(obj, text) is node
    for location, state in find_optimizer_states(obj):
        assert resolve_key(obj, location) is state


def test_infinite_and_nan_float_keys(cli, tmp_path):
    sd, other = (stepped_optimizer("Adam", seed=s)[0].state_dict() for s in (0, 1))
    path = tmp_path / "floats.pt"
    torch.save({"runs": {float("inf"): sd, float("nan"): {"x": other}, -float("inf"): 1}},
               path)
    for loc in ("runs[inf]", "runs[nan].x"):
        r = cli("inspect", path, "--key", loc, "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["location"] == loc
