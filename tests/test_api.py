"""The documented Python API (``optstate/api.py``, re-exported by ``optstate``): each
function on real checkpoints gives what its command's ``--json`` prints, or what the core
function beneath it returns; the names are listed, documented, and cost no torch import."""

from __future__ import annotations

import json
import pydoc
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import optstate
from optstate.render.json_view import dumps
from tests.conftest import ROOT

CONFIG = """\
optimizer = "AdamW"
steps = 5
grad = "quadratic"

[hyperparams]
lr = 0.01
betas = [0.9, 0.95]

[[groups]]
shapes = ["2x2"]
names = ["w"]

[[groups]]
shapes = ["3"]
names = ["b"]
weight_decay = 0.0

[scheduler]
name = "StepLR"
step_size = 2
gamma = 0.5
"""

API = ["inspect", "diff", "load_state", "check", "config", "set_hyperparameters", "convert",
       "simulate", "timeline"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A config file and two checkpoints simulated through the API: ``a.pt`` (the config)
    and ``b.pt`` (the same run at another lr)."""
    d = tmp_path_factory.mktemp("api")
    (d / "run.toml").write_text(CONFIG)
    optstate.simulate(d / "run.toml", save=d / "a.pt")
    spec = optstate.spec_from_dict(optstate.read_config_file(d / "run.toml"))
    optstate.simulate(replace(spec, hyperparams={**spec.hyperparams, "lr": 0.02}),
                      save=d / "b.pt")
    return d


def _cli_json(cli, *args: object, code: int = 0) -> dict:
    r = cli(*map(str, args), "--json")
    assert r.exit_code == code, r.stderr
    return json.loads(r.stdout)


def _plain(report: dict) -> dict:
    """A report as --json prints it (tuples become lists, ...)."""
    return json.loads(dumps(report))


def test_inspect_is_inspect_json(cli, run):
    p = str(run / "a.pt")
    assert _plain(optstate.inspect(p)) == _cli_json(cli, "inspect", p)
    assert _plain(optstate.inspect(p, params=[1], hist=True, values=True)) == _cli_json(
        cli, "inspect", p, "--param", "1", "--hist", "--values")
    assert _plain(optstate.inspect(p, stats=False)) == _cli_json(cli, "inspect", p,
                                                                 "--no-stats")


def test_inspect_refuses_hist_without_stats_in_python_words(run):
    with pytest.raises(optstate.OptstateError) as e:
        optstate.inspect(run / "a.pt", hist=True, stats=False)
    assert str(e.value) == "hist=True reads tensor data; it cannot go with stats=False"


def test_diff_is_diff_json(cli, run):
    a, b = str(run / "a.pt"), str(run / "b.pt")
    report = optstate.diff(a, b)
    assert not report["equal"] and report["counts"]["differences"] > 0
    assert _plain(report) == _cli_json(cli, "diff", a, b, code=1)
    assert _plain(optstate.diff(a, b, atol=1.0, ignore=["lr", "initial_lr"])) == _cli_json(
        cli, "diff", a, b, "--atol", "1", "--ignore", "lr", "--ignore", "initial_lr")
    assert optstate.diff(a, a)["equal"]
    with pytest.raises(optstate.OptstateError) as e:
        optstate.diff(a, b, max_diffs=-1)
    assert str(e.value) == "max_diffs must be 0 or more, got -1"


def test_load_state_is_the_saved_optimizer_state(run):
    loaded = optstate.load_state(run / "a.pt")
    saved = torch.load(run / "a.pt", weights_only=True)
    assert loaded.state is not None and loaded.location == "optimizer_state_dict"
    assert loaded.scheduler == saved["scheduler_state_dict"]
    assert loaded.scheduler_location == "scheduler_state_dict"
    ours, theirs = loaded.state, saved["optimizer_state_dict"]
    assert ours["param_groups"] == theirs["param_groups"]
    for k, entries in theirs["state"].items():
        for name, value in entries.items():
            assert torch.equal(ours["state"][k][name], value)
    assert [(p.position, p.group, p.name) for p in loaded.view.params] == [
        (0, 0, "w"), (1, 1, "b")]
    assert "params=2" in repr(loaded)
    # the core functions beneath it agree
    source = optstate.open_source(run / "a.pt")
    assert optstate.locate(source).location == loaded.location


def test_check_is_check_json(cli, run):
    p, config = str(run / "a.pt"), str(run / "run.toml")
    report = optstate.check(p, config)
    assert report["exit_code"] == 0
    assert _plain(report) == _cli_json(cli, "check", p, "--config", config)
    b = str(run / "b.pt")  # trained at another lr: loads, with a difference worth knowing
    assert _plain(optstate.check(b, config)) == _cli_json(cli, "check", b, "--config",
                                                          config, code=1)


def test_set_hyperparameters_is_set_json(cli, run, tmp_path):
    from optstate.edit.hyperparameters import set_report

    p = str(run / "a.pt")
    result = optstate.set_hyperparameters(p, {"betas": (0.8, 0.9), "lr": 0.5},
                                          output=None, dry_run=True)
    assert _plain(set_report(result)) == _cli_json(
        cli, "set", p, "--lr", "0.5", "--set", "betas=0.8,0.9", "--dry-run")
    out = tmp_path / "set.pt"
    optstate.set_hyperparameters(p, {"lr": 0.5}, output=out)
    groups = optstate.load_state(out).state["param_groups"]
    assert [g["lr"] for g in groups] == [0.5, 0.5]


def test_convert_is_convert_json(cli, run, tmp_path):
    p = str(run / "a.pt")
    # names of one length: DCP's .metadata records the folder it was written into
    ours = optstate.convert(p, tmp_path / "dcp_a").to_dict()
    theirs = _cli_json(cli, "convert", p, tmp_path / "dcp_b")
    assert theirs["destination"] == str(tmp_path / "dcp_b")
    assert ours == {**theirs, "destination": str(tmp_path / "dcp_a")}
    assert optstate.diff(p, tmp_path / "dcp_a")["equal"]
    dcp = str(tmp_path / "dcp_a")
    assert _plain(optstate.inspect(dcp, layout=True)) == _cli_json(cli, "inspect", dcp,
                                                                   "--layout")


def test_simulate_is_simulate_json(cli, run, tmp_path):
    from optstate.sim.report import simulate_report

    config = str(run / "run.toml")
    result = optstate.simulate(config)
    assert _plain(simulate_report(result)) == _cli_json(cli, "simulate", "--config", config)
    # a mapping, a RunSpec and the core function give the same run
    spec = optstate.spec_from_dict(optstate.read_config_file(config), config)
    from optstate.sim.simulate import simulate as core

    for same in (optstate.simulate(spec), core(spec),
                 optstate.simulate(optstate.read_config_file(config))):
        assert torch.equal(same.params[0], result.params[0])
        assert same.history.loss == result.history.loss
    assert optstate.simulate().spec == optstate.RunSpec()  # the defaults: SGD, 10 steps


def test_every_public_name_is_listed_documented_and_resolves():
    assert set(API) | {"LoadedState", "__version__"} <= set(optstate.__all__)
    assert set(optstate.__all__) <= set(dir(optstate))
    for name in optstate.__all__:
        assert getattr(optstate, name) is not None, name
    for name in API:
        doc = getattr(optstate, name).__doc__
        assert doc and "Returns" in doc and "Raises" in doc, name
    # the names that were lazy before the API kept their objects
    from optstate.analysis.diff import diff_states
    from optstate.sim.config import RunSpec

    assert optstate.diff_states is diff_states and optstate.RunSpec is RunSpec


def test_the_functions_stay_functions_after_their_modules_load():
    """No top-level submodule shares a name with a public function (the layer packages
    hold them: ``optstate.sim.simulate``, ...), so importing a module never replaces a
    function on the package, whatever the order of imports."""
    import importlib
    import pkgutil

    assert not {m.name for m in pkgutil.iter_modules(optstate.__path__)} & set(
        optstate.__all__)
    for module in ("optstate.sim.simulate", "optstate.edit.convert",
                   "optstate.analysis.inspect", "optstate.analysis.diff",
                   "optstate.analysis.check", "optstate.state.locate"):
        importlib.import_module(module)
    for name in API:
        assert getattr(optstate, name) is getattr(optstate.api, name), name
    assert callable(optstate.locate)


def test_help_lists_the_api():
    text = pydoc.render_doc(optstate, renderer=pydoc.plaintext)
    functions = text[text.index("FUNCTIONS"):]
    for name in API:
        assert f"\n    {name}(" in functions, name
    assert "class LoadedState" in text


def test_the_api_imports_no_torch_until_called():
    code = ("import sys, optstate\n"
            "names = dir(optstate)\n"
            "docs = [getattr(optstate, n).__doc__ for n in " + repr(API) + "]\n"
            "print(all(docs), sorted(m for m in ('torch', 'typer', 'rich', 'numpy')"
            " if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout == "True []\n", r.stderr
