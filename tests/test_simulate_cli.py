"""``optstate simulate`` on the command line (CliRunner, real torch, real files)."""

from __future__ import annotations

import json

import pytest
import torch

from optstate.sim.config import GroupSpec, RunSpec
from optstate.sim.simulate import simulate
from tests.conftest import ROOT
from tests.test_simulate import assert_identical


def run_json(cli, *args):
    r = cli("simulate", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_tutorial_needs_no_config(cli):
    rep = run_json(cli, "--lr", "0.1", "--momentum", "0.9")
    assert rep["schema"] == "optstate.simulate/1"
    assert rep["optimizer"] == "SGD"
    assert (rep["start_step"], rep["final_step"]) == (0, 10)
    assert rep["config"]["groups"] == [{"shapes": ["2x2"]}]
    assert rep["param_groups"][0]["hyperparams"]["lr"] == 0.1
    assert rep["param_groups"][0]["hyperparams"]["momentum"] == 0.9
    core = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}))
    buf = core.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert rep["params"][0]["state"]["momentum_buffer"]["values"] == buf.tolist()
    assert rep["params"][0]["values"] == core.params[0].detach().tolist()
    assert rep["history"]["step"] == list(range(11))
    assert rep["history"]["lr"] == [[0.1]] * 11
    assert rep["saved"] == [] and rep["warnings"] == []


def test_human_output(cli):
    r = cli("simulate", "--lr", "0.1", "--momentum", "0.9", "--init", "zeros", "--steps", "1",
            env={"COLUMNS": "100"})
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "SGD · steps 0 → 1 · grad constant · zero_grad none · seed 0"
    assert "│ lr             │ 0.1     │" in lines
    assert "│ momentum       │ 0.9     │" in lines
    row = next(ln for ln in lines if "momentum_buffer" in ln)
    assert [cell.strip() for cell in row.split("│")[2:5]] == ["momentum_buffer", "2x2",
                                                             "[[1, 1], [1, 1]]"]
    value = next(ln for ln in lines if "(value)" in ln)
    assert "[[-0.1, -0.1], [-0.1, -0.1]]" in value
    assert lines[-1] == "loss 0 → -0.4"
    assert r.stderr == ""


def test_save_writes_exactly_the_state_dict(cli, tmp_path):
    out = tmp_path / "sgd.pkl"
    rep = run_json(cli, "--lr", "0.1", "--momentum", "0.9", "--save", out)
    assert rep["saved"] == [str(out)]
    core = simulate(RunSpec(hyperparams={"lr": 0.1, "momentum": 0.9}))
    assert_identical(torch.load(out, weights_only=True), core.optimizer.state_dict())


def test_save_refuses_to_overwrite_without_force(cli, tmp_path):
    out = tmp_path / "sgd.pkl"
    out.write_bytes(b"keep me")
    r = cli("simulate", "--save", out)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == f"Error: {out} already exists\nHint: pass --force to overwrite it\n"
    assert out.read_bytes() == b"keep me"
    torch.save({"old": 1}, out)  # --force replaces a checkpoint, never another file
    assert cli("simulate", "--save", out, "--force").exit_code == 0
    assert torch.load(out, weights_only=True)["param_groups"][0]["lr"] == 0.001


def test_flags_for_every_run_setting(cli):
    rep = run_json(cli, "-O", "adamw", "--lr", "0.01", "--weight-decay", "0.1",
                   "--set", "betas=0.8,0.9", "--set", "amsgrad=true", "--shape", "3",
                   "--shape", "2x2", "--group", "4 lr=1e-4", "--steps", "3", "--seed", "9",
                   "--grad", "quadratic", "--grad-value", "0.5", "--init", "constant",
                   "--init-value", "2", "--zero-grad", "zeros")
    core = simulate(RunSpec(
        optimizer="adamw", hyperparams={"betas": (0.8, 0.9), "amsgrad": True, "lr": 0.01,
                                        "weight_decay": 0.1},
        groups=(GroupSpec(((3,), (2, 2))), GroupSpec(((4,),), {"lr": 1e-4})), steps=3,
        seed=9, grad="quadratic", grad_value=0.5, init="constant", init_value=2.0,
        zero_grad="zeros"))
    assert rep["config"] == core.spec.to_dict()
    assert rep["optimizer"] == "AdamW"
    groups = rep["param_groups"]
    assert [g["hyperparams"]["lr"] for g in groups] == [0.01, 1e-4]
    assert groups[0]["hyperparams"]["betas"] == [0.8, 0.9]
    assert groups[0]["hyperparams"]["amsgrad"] is True
    assert [p["values"] for p in rep["params"]] == [p.detach().tolist() for p in core.params]
    assert rep["history"]["loss"] == core.history.loss


def test_config_file_and_flags_over_it(cli, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('optimizer = "RMSprop"\nsteps = 4\n[hyperparams]\nlr = 0.01\n'
                   'momentum = 0.5\n[[groups]]\nshapes = ["2"]\nnames = ["w"]\n')
    rep = run_json(cli, "--config", cfg, "--lr", "0.02")
    assert rep["optimizer"] == "RMSprop"
    assert rep["final_step"] == 4
    hp = rep["param_groups"][0]["hyperparams"]
    assert (hp["lr"], hp["momentum"]) == (0.02, 0.5)
    assert rep["params"][0]["name"] == "w"


def test_scheduler_saves_a_container(cli, tmp_path):
    out = tmp_path / "c.pkl"
    rep = run_json(cli, "-O", "sgd", "--lr", "1", "--scheduler", "StepLR", "--scheduler-arg",
                   "step_size=2", "--scheduler-arg", "gamma=0.5", "--steps", "5", "--save", out)
    assert rep["scheduler"] == {"name": "StepLR", "last_epoch": 5, "last_lr": [0.25]}
    assert [row[0] for row in rep["history"]["lr"]] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    obj = torch.load(out, weights_only=True)
    assert list(obj) == ["optimizer_state_dict", "scheduler_state_dict", "step", "optstate"]
    assert obj["scheduler_state_dict"]["_last_lr"] == [0.25]


def test_save_every_and_resume_continue_the_run(cli, tmp_path):
    base = ["-O", "nadam", "--lr", "0.05", "--grad", "rosenbrock", "--shape", "2"]
    whole = run_json(cli, *base, "--steps", "10")
    part = tmp_path / "part.pkl"
    first = run_json(cli, *base, "--steps", "6", "--save", part, "--save-every", "3",
                     "--with-params")
    assert first["saved"] == [str(tmp_path / "part.step000003.pkl"),
                              str(tmp_path / "part.step000006.pkl"), str(part)]
    rest = run_json(cli, *base, "--steps", "4", "--resume", part)
    assert (rest["start_step"], rest["final_step"]) == (6, 10)
    assert rest["params"] == whole["params"]
    assert rest["history"]["loss"] == whole["history"]["loss"][6:]


def test_resume_without_params_warns_on_stderr(cli, tmp_path):
    out = tmp_path / "bare.pkl"
    run_json(cli, "-O", "adam", "--steps", "2", "--save", out)
    r = cli("simulate", "-O", "adam", "--steps", "2", "--resume", out, "--json")
    assert r.exit_code == 0
    assert r.stderr == ("Warning: the --resume file holds no parameter values; parameters "
                        "start from their initial values (save with --with-params to keep "
                        "them)\n")
    assert json.loads(r.stdout)["final_step"] == 4


def test_resume_mismatch_is_one_error_line(cli, tmp_path):
    out = tmp_path / "adam.pkl"
    run_json(cli, "-O", "adam", "--steps", "1", "--save", out)
    r = cli("simulate", "-O", "adam", "--shape", "3x3", "--resume", out)
    assert r.exit_code == 2
    assert r.stderr == ("Error: param 0 (group0.param0): the --resume state's exp_avg has shape "
                        "2x2, the config's parameter is 3x3\n")


def test_resume_refuses_unsafe_files(cli, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"state": {}, "param_groups": [], "x": Evil()}, protocol=2))
    r = cli("simulate", "--resume", bad)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ")
    assert "pwned" not in r.stdout + r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--optimizer", "Adamm"], "Error: unknown optimizer 'Adamm'; did you mean 'adam'?"),
    (["--set", "momentum=0.9", "-O", "adam"], "Error: Adam has no hyperparameter 'momentum'"),
    (["--set", "betas=0.9"], "Error: SGD has no hyperparameter 'betas'"),
    (["-O", "adam", "--set", "betas=0.9"],
     "Error: Adam betas must be 2 comma-separated values like 0.9,0.999, got 0.9"),
    (["--shape", "2x0"], "Error: bad shape '2x0': every size must be a positive whole number"),
    (["--steps", "-3"], "Error: steps must be 0 or more, got -3"),
    (["--config", "/nonexistent/run.toml"],
     "Error: config file /nonexistent/run.toml does not exist"),
    (["--grad", "sine"], "Error: unknown gradient source 'sine'"),
    (["--zero-grad", "sometimes"], "Error: unknown zero_grad mode 'sometimes'"),
    (["--scheduler-arg", "step_size=2"],
     "Error: --scheduler-arg needs --scheduler NAME (or a [scheduler] in the config)"),
    (["--save-every", "2"], "Error: --save-every needs --save PATH to name the series"),
    (["--set", "lr"], "Error: expected key=value, got 'lr'"),
])
def test_bad_flags_are_one_error_line(cli, args, message):
    r = cli("simulate", *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == message
    assert len(lines) <= 2 and all(ln.startswith("Hint: ") for ln in lines[1:])


def test_unreadable_config_is_one_error_line(cli, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("optimizer = \n")
    r = cli("simulate", "--config", cfg)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0].startswith(f"Error: config file {cfg} is not valid TOML: ")


def test_help_teaches(cli):
    r = cli("simulate", "--help", env={"COLUMNS": "120"})
    text = " ".join(r.stdout.replace("│", " ").split())  # undo rich's wrapping
    assert "Example: optstate simulate --lr 0.1 --momentum 0.9 --steps 10 --save sgd.pkl" in text
    for flag in ("--optimizer", "--lr", "--momentum", "--weight-decay", "--shape", "--steps",
                 "--seed", "--set", "--group", "--grad", "--config", "--save", "--save-every",
                 "--with-params", "--resume", "--force", "--json", "--zero-grad",
                 "--scheduler"):
        assert flag in text
    assert "none: grads become None" in text
    assert "zeros: grads are zero-filled" in text


def test_flags_and_config_file_save_the_same_bytes(cli, tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"optimizer": "Adam", "steps": 3, "grad": "normal",
                               "init": "normal", "hyperparams": {"lr": 0.01},
                               "groups": [{"shapes": ["2x2"]}, {"shapes": ["3"], "lr": 0.1}],
                               "scheduler": {"name": "StepLR", "step_size": 2}}))
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert cli("simulate", "--config", cfg, "--save", a, "--with-params").exit_code == 0
    r = cli("simulate", "-O", "Adam", "--steps", "3", "--grad", "normal", "--lr", "0.01",
            "--group", "3 lr=0.1", "--scheduler", "StepLR", "--scheduler-arg", "step_size=2",
            "--save", b, "--with-params")
    assert r.exit_code == 0
    assert a.read_bytes() == b.read_bytes()


SAMPLES = ROOT / "sample_checkpoints"


@pytest.mark.parametrize("resume", ["hf-checkpoint-12", "lightning.ckpt", "adamw_scheduler.pt"])
def test_resume_from_trainer_folders_and_containers(cli, resume):
    """The sample run's state (12 steps) sits in a Trainer folder, a Lightning file and
    the tutorial container; each resumes with its scheduler. With noise gradients the
    AdamW state does not depend on the parameters, so 12 + 3 steps equal 15 in all."""
    from optstate.sim.config import read_config_file, spec_from_dict

    config = SAMPLES / "adamw_scheduler.json"
    rep = run_json(cli, "--config", config, "--resume", SAMPLES / resume, "--steps", "3")
    assert (rep["start_step"], rep["final_step"]) == (12, 15)
    spec = spec_from_dict(read_config_file(config))
    whole = simulate(RunSpec(**{**spec.__dict__, "steps": 15}))
    assert rep["scheduler"] == {"name": "StepLR", "last_epoch": 15,
                                "last_lr": whole.scheduler.get_last_lr()}
    for got, want in zip(rep["params"], whole.optimizer.state_dict()["state"].values(),
                         strict=True):
        assert got["state"]["exp_avg"]["values"] == want["exp_avg"].tolist()
    if resume == "adamw_scheduler.pt":  # saved with its parameters: the exact trajectory
        assert [p["values"] for p in rep["params"]] == [p.detach().tolist()
                                                        for p in whole.params]
        assert rep["warnings"] == []
    else:
        assert rep["warnings"] == ["the --resume file holds no parameter values; parameters "
                                   "start from their initial values (save with --with-params "
                                   "to keep them)"]


def test_resume_bare_state_with_a_scheduler_warns(cli, tmp_path):
    out = tmp_path / "bare.pt"
    run_json(cli, "--steps", "2", "--save", out)
    r = cli("simulate", "--scheduler", "StepLR", "--scheduler-arg", "step_size=1", "--resume",
            out, "--json")
    assert r.exit_code == 0
    assert r.stderr.splitlines()[0] == ("Warning: the --resume file has no scheduler state; "
                                        "the scheduler starts fresh")


def test_json_config_replays_the_run(cli, tmp_path):
    first = run_json(cli, "-O", "rprop", "--set", "etas=0.4,1.3", "--group", "3 lr=0.1",
                     "--grad", "normal", "--seed", "4", "--steps", "5")
    cfg = tmp_path / "replay.json"
    cfg.write_text(json.dumps(first["config"]))
    again = run_json(cli, "--config", cfg)
    assert again["params"] == first["params"]
    assert again["config"] == first["config"]


def test_unsafe_resume_is_explicit_and_loud(cli, tmp_path):
    from pathlib import PurePosixPath

    good = tmp_path / "good.pt"
    run_json(cli, "-O", "adam", "--steps", "2", "--save", good)
    odd = tmp_path / "odd.pt"  # a class safe loading does not allow
    torch.save({"optimizer_state_dict": torch.load(good, weights_only=True),
                "note": PurePosixPath("/data/run")}, odd)
    r = cli("simulate", "-O", "adam", "--resume", odd)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0].startswith(f"Error: {odd} needs pathlib")
    assert "--unsafe" in r.stderr.splitlines()[1]
    r = cli("simulate", "-O", "adam", "--resume", odd, "--unsafe", "--steps", "3", "--json")
    assert r.exit_code == 0
    assert r.stderr.startswith("WARNING: --unsafe: loading with full pickle")
    assert (json.loads(r.stdout)["start_step"], json.loads(r.stdout)["final_step"]) == (2, 5)
    r = cli("simulate", "--unsafe")
    assert (r.exit_code, r.stderr) == (2, "Error: --unsafe only changes how --resume loads its "
                                          "file; there is no --resume\n")
