"""optstate compare: each run's numbers are exactly a separate `optstate simulate` run's."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optstate.base.errors import ConfigError
from optstate.sim.compare import Contender, contenders_from_flags, parse_contenders


def run_json(cli, *args):
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def simulate_json(cli, optimizer, *flags, steps=15, grad="rosenbrock"):
    return run_json(cli, "simulate", "-O", optimizer, "--grad", grad, "--shape", "2",
                    "--steps", str(steps), *flags)


def test_numbers_equal_separate_simulate_runs(cli):
    report = run_json(cli, "compare", "-O", "sgd,adam,rmsprop", "--set", "lr=0.001",
                      "--set", "sgd.momentum=0.9", "--set", "adam.lr=0.02", "--steps", "15")
    assert report["schema"] == "optstate.compare/1"
    assert [r["label"] for r in report["runs"]] == ["sgd", "adam", "rmsprop"]
    alone = {
        "sgd": simulate_json(cli, "sgd", "--lr", "0.001", "--momentum", "0.9"),
        "adam": simulate_json(cli, "adam", "--lr", "0.02"),
        "rmsprop": simulate_json(cli, "rmsprop", "--lr", "0.001"),
    }
    for run in report["runs"]:
        sim = alone[run["label"]]
        assert run["optimizer"] == sim["optimizer"]
        assert run["history"]["loss"] == sim["history"]["loss"]
        assert run["history"]["point"] == sim["history"]["point"]
        assert run["history"]["param_norm"] == sim["history"]["param_norm"]
        assert run["final_loss"] == sim["history"]["loss"][-1]
        assert run["initial_loss"] == sim["history"]["loss"][0]
        assert run["final_params"] == sim["params"][0]["values"]
        assert run["lr"] == sim["param_groups"][0]["hyperparams"]["lr"]
        expected = float((torch.tensor(sim["params"][0]["values"]).double() - 1.0).norm())
        assert run["distance_to_optimum"] == expected
        assert run["best_loss"] == min(sim["history"]["loss"])
    assert report["objective"] == {
        "grad": "rosenbrock", "grad_value": 1.0, "shapes": [[2]],
        "start": alone["sgd"]["history"]["point"][0], "optimum": [1.0, 1.0],
    }
    finals = {r["label"]: r["final_loss"] for r in report["runs"]}
    assert report["best"] == min(finals, key=finals.get)
    assert report["runs"][0]["hyperparams"] == {"lr": 0.001, "momentum": 0.9}
    assert report["runs"][1]["hyperparams"] == {"lr": 0.02}


def test_labels_run_one_optimizer_twice(cli):
    report = run_json(cli, "compare", "-O", "slow=sgd,fast=sgd", "--set", "slow.lr=0.0001",
                      "--set", "fast.lr=0.001", "--grad", "quadratic", "--grad-value", "0.5",
                      "--steps", "6")
    slow, fast = report["runs"]
    assert (slow["label"], slow["optimizer"], fast["label"]) == ("slow", "SGD", "fast")
    for run, lr in ((slow, "0.0001"), (fast, "0.001")):
        sim = simulate_json(cli, "sgd", "--lr", lr, "--grad-value", "0.5", steps=6,
                            grad="quadratic")
        assert run["history"]["loss"] == sim["history"]["loss"]
        values = torch.tensor(sim["params"][0]["values"]).double()
        assert run["distance_to_optimum"] == float((values - 0.5).norm())
    assert report["objective"]["optimum"] == [0.5, 0.5]
    assert report["best"] == "fast" and fast["final_loss"] < slow["final_loss"]


def test_a_labelled_setting_wins_over_the_shared_one_in_any_order():
    for settings in (["adam.lr=0.1", "lr=0.01"], ["lr=0.01", "adam.lr=0.1"]):
        got = contenders_from_flags("sgd,Adam", settings)
        assert got == [Contender("sgd", "sgd", {"lr": 0.01}),
                       Contender("adam", "Adam", {"lr": 0.1})]


def test_diverged_run_is_marked_and_json_stays_valid(cli):
    report = run_json(cli, "compare", "-O", "sgd,adam", "--set", "lr=0.01", "--steps", "8")
    sgd, adam = report["runs"]
    assert sgd["diverged"] is True and sgd["final_loss"] is None
    assert sgd["distance_to_optimum"] is None
    assert adam["diverged"] is False and report["best"] == "adam"
    r = cli("compare", "-O", "sgd,adam", "--set", "lr=0.01", "--steps", "8")
    sgd_row = next(line for line in r.stdout.splitlines() if line.startswith("│ sgd"))
    assert "diverged" in sgd_row
    assert any(line.startswith("│ adam ★") for line in r.stdout.splitlines())


def test_objective_without_optimum(cli):
    report = run_json(cli, "compare", "-O", "sgd,adagrad", "--grad", "constant",
                      "--shape", "2x2", "--steps", "3")
    assert report["objective"]["optimum"] is None
    assert [r["distance_to_optimum"] for r in report["runs"]] == [None, None]
    sim = run_json(cli, "simulate", "-O", "adagrad", "--steps", "3")
    assert report["runs"][1]["final_loss"] == sim["history"]["loss"][-1]
    assert report["runs"][1]["final_params"] == [v for row in sim["params"][0]["values"]
                                                 for v in row]
    assert report["runs"][1]["history"]["point"] == []


def test_human_table(cli):
    r = cli("compare", "-O", "sgd,fast=adam", "--set", "fast.lr=0.05", "--steps", "4")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "rosenbrock · start (1.541, -0.2934) · optimum (1, 1) · 4 steps · seed 0"
    # sgd's first step (lr 0.001 on a gradient of ~2700) lands low in the valley: best.
    assert any(line.startswith("│ sgd ★ ") and "lr=0.001" in line for line in lines)
    assert any(line.startswith("│ fast (Adam) ") and "lr=0.05" in line for line in lines)


@pytest.mark.parametrize("args, message", [
    (["-O", "sgd,adam", "--set", "adm.lr=0.1"],
     "Error: --set adm.lr=0.1: no optimizer is labelled 'adm'; did you mean 'adam'?\n"
     "Hint: labels: sgd, adam\n"),
    (["-O", "sgd,adam", "--set", "momentum=0.9"],
     "Error: --set momentum=... applies to every optimizer, but Adam (adam) has no "
     "hyperparameter 'momentum'\nHint: set it for one optimizer only: --set LABEL.momentum=...\n"),
    (["-O", "sgd,sgd"],
     "Error: --optimizers lists 'sgd' twice\nHint: label the runs to tell them apart: "
     "slow=sgd,fast=sgd\n"),
    (["-O", "sgd,adamm"], None),
    (["-O", ","], "Error: --optimizers names no optimizer\nHint: for example --optimizers "
     "sgd,adam,adamw,rmsprop\n"),
    (["-O", "sgd", "--grad", "rosenbrock", "--shape", "3"], None),
])
def test_bad_input_is_one_error_line(cli, args, message):
    r = cli("compare", *args, "--steps", "2")
    assert r.exit_code == 2
    assert r.stdout == ""
    if message is not None:
        assert r.stderr == message
    else:
        assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr


def test_parse_contenders():
    assert parse_contenders(" SGD , w=AdamW ") == [Contender("sgd", "SGD"),
                                                   Contender("w", "AdamW")]
    with pytest.raises(ConfigError):
        parse_contenders("1x=sgd")
    with pytest.raises(ConfigError):
        parse_contenders("a=sgd,A=adam")


def test_compare_plot(cli, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp.png"
    report = run_json(cli, "compare", "-O", "sgd,adam", "--steps", "3", "--plot", out)
    assert report["plot"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("compare", "-O", "sgd", "--steps", "3", "--plot", out)
    assert r.exit_code == 2 and r.stderr.startswith(f"Error: {out} already exists")


def test_distance_is_float64_euclidean():
    from optstate.sim.compare import distance

    p = [torch.tensor([0.1, 0.2], dtype=torch.float32), torch.tensor([[3.0]])]
    want = math.sqrt(sum((float(v) - 1.0) ** 2 for v in (p[0][0], p[0][1], p[1][0, 0])))
    assert distance(p, [1.0, 1.0, 1.0]) == pytest.approx(want, rel=0, abs=1e-15)


def test_help_teaches(cli):
    for command in ("compare", "simulate"):
        r = cli(command, "--help", env={"COLUMNS": "250"})
        assert r.exit_code == 0
        assert "pip install 'optstate[plot]'" in r.stdout  # not eaten as rich markup
    r = cli("compare", "--help", env={"COLUMNS": "250"})
    assert "Example:\n   optstate compare -O sgd,adam,adamw,rmsprop --set lr=0.01 --plot " \
        "cmp.png" in "\n".join(ln.rstrip() for ln in r.stdout.splitlines())
    assert "[default: 2, one point in the plane]" in r.stdout
