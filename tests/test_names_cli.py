"""``optstate inspect`` with derived parameter names: --json's naming and name_source, the
human view's names line, --param globs, --model; names checked against
``model.named_parameters()`` of a real model after real Adam steps."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import ROOT


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
        self.classifier = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _trained() -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 6, 6)),
                                           torch.randint(0, 2, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.fixture
def tutorial(tmp_path):
    model, opt = _trained()
    path = tmp_path / "ckpt.tar"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": 0.5}, path)
    return path, [n for n, _ in model.named_parameters()]


def test_json_carries_naming_and_name_source(cli, tutorial):
    path, names = tutorial
    r = cli("inspect", path, "--json", "--no-stats")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "optstate.inspect/1"
    assert [p["name"] for p in doc["params"]] == names
    assert {p["name_source"] for p in doc["params"]} == {"model_state_dict"}
    assert all(p["aliases"] == [] for p in doc["params"])
    assert doc["naming"]["source"] == "model_state_dict"
    assert (doc["naming"]["named"], doc["naming"]["total"]) == (len(names), len(names))
    assert doc["param_groups"][0]["names"] == names


def test_human_view_shows_the_names(cli, tutorial):
    path, names = tutorial
    r = cli("inspect", path, "--no-stats", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("names "))
    assert f"{len(names)} of {len(names)} from the model state_dict at 'model_state_dict'" \
        in line
    for n in names:
        assert n in r.stdout


def test_human_view_says_why_there_are_no_names(cli, tmp_path):
    _, opt = _trained()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    r = cli("inspect", path, "--no-stats", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("names "))
    assert "none: " in line and "--model FILE" in line


def test_param_glob_selects_by_name(cli, tutorial):
    path, names = tutorial
    r = cli("inspect", path, "--json", "--no-stats", "--param", "features.*")
    assert r.exit_code == 0, r.stderr
    got = [p["name"] for p in json.loads(r.stdout)["params"]]
    assert got == [n for n in names if n.startswith("features.")] and len(got) == 4
    r = cli("inspect", path, "--json", "--no-stats", "--param", "*.bias")
    got = [p["name"] for p in json.loads(r.stdout)["params"]]
    assert got == [n for n in names if n.endswith(".bias")] and len(got) == 3


def test_several_params_union(cli, tutorial):
    path, names = tutorial
    r = cli("inspect", path, "--json", "--no-stats", "--param", "classifier.*",
            "--param", "0")
    got = [p["name"] for p in json.loads(r.stdout)["params"]]
    assert got == [names[0], "classifier.weight", "classifier.bias"]


def test_param_glob_matching_nothing_is_one_error_line(run_cli, tutorial):
    path, _ = tutorial
    r = run_cli("inspect", path, "--param", "encoder.*")
    assert r.returncode == 2
    assert r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith("Error: --param 'encoder.*': no parameter name matches it")
    assert "Traceback" not in r.stderr
    assert "names here come from the model state_dict at 'model_state_dict'" in r.stderr


def test_model_option_names_an_optimizer_saved_alone(cli, tmp_path):
    model, opt = _trained()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    r = cli("inspect", tmp_path / "opt.pt", "--json", "--no-stats",
            "--model", tmp_path / "model.pt")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [p["name"] for p in doc["params"]] == [n for n, _ in model.named_parameters()]
    assert doc["naming"]["source"] == "model_file"


def test_model_option_missing_file_is_one_error_line(run_cli, tmp_path):
    _, opt = _trained()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    r = run_cli("inspect", tmp_path / "opt.pt", "--model", tmp_path / "missing.safetensors")
    assert r.returncode == 2
    assert r.stderr.startswith("Error: ")
    assert "missing.safetensors" in r.stderr.splitlines()[0]
    assert "Traceback" not in r.stderr


def test_hist_shows_derived_names(cli, tutorial):
    path, names = tutorial
    r = cli("inspect", path, "--hist", "--param", "classifier.weight",
            env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    hist = r.stdout[r.stdout.index("histograms"):]
    assert f"{names.index('classifier.weight')} classifier.weight" in hist


def test_statistics_table_names_each_param(cli, tutorial):
    """The statistics rows (not only the state table) say which parameter they are."""
    path, names = tutorial
    r = cli("inspect", path, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    stats = r.stdout.split("statistics (norm")[1].split("totals:")[0].splitlines()
    assert stats[1].split()[:3] == ["param", "name", "entry"]
    firsts = [line.split()[1] for line in stats[3:] if line[:5].strip()]
    assert firsts == names


@pytest.mark.parametrize("param", ["enc*", "encoder.weight"])
def test_param_on_a_state_without_names_says_how_to_name_them(run_cli, tmp_path, param):
    """A name or glob on a state saved alone: the hint gives positions and how to get
    names (--model FILE), in the CLI's words."""
    _, opt = _trained()
    torch.save(opt.state_dict(), tmp_path / "opt_alone.pt")
    r = run_cli("inspect", tmp_path / "opt_alone.pt", "--param", param)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"Error: --param {param!r}: no parameter")
    hint = r.stderr.splitlines()[1]
    assert "0..5" in hint
    assert "no names here: --model FILE names them" in hint
    assert "Traceback" not in r.stderr


def test_param_hint_on_a_named_state_does_not_offer_model(run_cli, tutorial):
    path, _ = tutorial
    r = run_cli("inspect", path, "--param", "enc*")
    assert r.returncode == 2
    assert "--model" not in r.stderr


def test_param_hint_in_python_words(tmp_path):
    from optstate.analysis.inspect import inspect_path
    from optstate.base.errors import ConfigError

    _, opt = _trained()
    torch.save(opt.state_dict(), tmp_path / "opt_alone.pt")
    with pytest.raises(ConfigError) as err:
        inspect_path(tmp_path / "opt_alone.pt", params=["enc*"])
    assert "no names here: model=FILE names them" in err.value.hint


def test_diff_and_check_names_lines_wrap_under_their_value(cli, tmp_path, monkeypatch):
    """diff's and check's names lines (with the order note) wrap like inspect's header: the
    continuation lines hang under the value, never back to column 0."""
    monkeypatch.chdir(ROOT)
    sample = "sample_checkpoints/tutorial_cnn.pt"
    config = tmp_path / "c.toml"
    config.write_text(cli("config", sample).stdout)
    for argv, key in ((("diff", sample, sample), "names a, b:"),
                      (("check", sample, "--config", str(config)), "names")):
        r = cli(*argv, env={"COLUMNS": "60"})
        lines = r.stdout.splitlines()
        i = next(n for n, line in enumerate(lines) if line.startswith(key))
        block = [lines[i]]
        for line in lines[i + 1:]:
            if not line.startswith(" "):
                break
            block.append(line)
        width = len(key) + 1 if key != "names" else 10
        assert len(block) >= 3, (argv, block)  # the names line and its note wrapped
        assert all(line[:width].strip() == "" and line[width] != " " for line in block[1:])
        assert "model order" in " ".join(block)


def test_step_mismatch_warning_names_the_params(cli, tmp_path):
    """A layer added to the optimizer later has fewer steps: the warning says which layer
    by name, not only by position."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model[0].parameters(), lr=1e-3)
    for step in range(3):
        if step == 2:
            opt.add_param_group({"params": list(model[1].parameters())})
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    path = tmp_path / "late.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               path)
    r = cli("inspect", str(path), "--json")
    warning = next(w for w in json.loads(r.stdout)["warnings"] if w["code"] == "step_mismatch")
    assert "2 (1.weight)" in warning["message"] and "0 (0.weight)" in warning["message"]
