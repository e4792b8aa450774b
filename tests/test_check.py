"""``optstate check``: each verdict is checked against what torch's own
``load_state_dict`` and ``step()`` do with the same pair of checkpoint and config.

Checkpoints come from real optimizers (built from a config with ``optstate.sim.build`` or by
hand), saved with torch.save; configs are the TOML/JSON files ``simulate`` reads.
"""

from __future__ import annotations

import json

import pytest
import torch

from optstate.analysis.check import check_checkpoint
from optstate.sim.build import build
from optstate.sim.config import read_config_file, spec_from_dict

ADAM_2G = {
    "optimizer": "Adam",
    "hyperparams": {"lr": 0.01},
    "groups": [{"shapes": ["2x2"]}, {"shapes": ["3"], "lr": 0.5}],
}


def _write_config(tmp_path, data, name="run.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _trained_from(config: dict, steps: int = 2):
    """The optimizer (and scheduler) a config builds, stepped on gradients of ones."""
    built = build(spec_from_dict(config))
    for _ in range(steps):
        for p in built.params:
            p.grad = torch.ones_like(p)
        built.optimizer.step()
        if built.scheduler is not None:
            built.scheduler.step()
    return built


def _save_state(tmp_path, config, name="ckpt.pt", steps=2, mutate=None):
    built = _trained_from(config, steps)
    sd = built.optimizer.state_dict()
    if mutate is not None:
        mutate(sd)
    obj = sd if built.scheduler is None else {
        "optimizer_state_dict": sd, "scheduler_state_dict": built.scheduler.state_dict()}
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _torch_resume(ckpt_path, config_path):
    """What a user's resume does: build from the config, load_state_dict, one step.
    Returns (optimizer, built, error raised by torch or None)."""
    built = build(spec_from_dict(read_config_file(config_path)))
    obj = torch.load(ckpt_path, weights_only=True)
    sd = obj.get("optimizer_state_dict", obj)
    try:
        built.optimizer.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001 - the point is which error torch raises
        return built, ("load", e)
    for p in built.params:
        p.grad = torch.ones_like(p)
    try:
        built.optimizer.step()
    except Exception as e:  # noqa: BLE001
        return built, ("step", e)
    return built, None


def _codes(result):
    return [(f.code, f.level) for f in result.findings]


# --------------------------------------------------------------------------- ok


def test_matching_pair_is_ok(cli, tmp_path):
    cfg = _write_config(tmp_path, ADAM_2G)
    ckpt = _save_state(tmp_path, ADAM_2G)
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "OK: load_state_dict works and the state matches the config" in r.stdout
    res = check_checkpoint(ckpt, cfg)
    assert res.findings == [] and res.verdict == "ok"
    assert res.trial == {"load_state_dict": "ok", "step": "ok",
                         "scheduler_load_state_dict": None, "scheduler_step": None,
                         "missing_after_load": {}}
    assert _torch_resume(ckpt, cfg)[1] is None


def test_header_counts_groups_and_params_in_words(cli, tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    one = {**ADAM_2G, "groups": [{"shapes": ["2x2", "3"]}]}
    for config, counts in ((ADAM_2G, "2 groups, 1 + 1 params"), (one, "1 group, 2 params")):
        cfg = _write_config(tmp_path, config)
        r = cli("check", ckpt, "--config", cfg, env={"COLUMNS": "400"})
        assert r.stdout.splitlines()[0] == (f"{ckpt} (optimizer state at the top level) "
                                            f"against {cfg} (Adam, {counts})")


def test_json_report(cli, tmp_path):
    cfg = _write_config(tmp_path, ADAM_2G)
    ckpt = _save_state(tmp_path, ADAM_2G)
    r = cli("check", ckpt, "--config", cfg, "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert list(report) == ["schema", "source", "location", "scheduler_location", "config",
                            "optimizer", "verdict", "exit_code", "groups", "findings",
                            "trial", "fixes", "no_fix_reason", "naming", "names_compared"]
    assert report["schema"] == "optstate.check/1"
    assert report["verdict"] == "ok" and report["exit_code"] == 0
    assert report["groups"] == {"checkpoint": [1, 1], "config": [1, 1]}
    assert report["optimizer"] == "Adam" and report["location"] == ""


# --------------------------------------------------------------------------- fails


def test_group_count(cli, tmp_path):
    ckpt = _save_state(tmp_path, {**ADAM_2G, "groups": [{"shapes": ["2x2", "3"]}]})
    cfg = _write_config(tmp_path, ADAM_2G)
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("group-count", "fail")]
    assert res.findings[0].message == (
        "the checkpoint has 1 param group, the config builds 2: load_state_dict raises "
        "\"loaded state dict has a different number of parameter groups\"; the shapes first "
        "differ at group 0, position 1: 3 in the checkpoint, nothing in the config")
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 2 and "FAILS" in r.stdout and r.stderr == ""
    _, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "load" and isinstance(err, ValueError)
    assert str(err) == "loaded state dict has a different number of parameter groups"


def test_group_size_names_the_group_and_both_counts(tmp_path):
    ckpt = _save_state(tmp_path, {**ADAM_2G, "groups": [
        {"shapes": ["2x2"]}, {"shapes": ["3", "3", "3"], "lr": 0.5}]})
    cfg = _write_config(tmp_path, ADAM_2G)
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("group-size", "fail")]
    f = res.findings[0]
    assert f.group == 1 and (f.detail["checkpoint"], f.detail["config"]) == (3, 1)
    assert f.message.startswith("param group 1 holds 3 parameters in the checkpoint but 1 "
                                "in the config")
    assert res.exit_code == 2
    _, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "load" and str(err) == (
        "loaded state dict contains a parameter group that doesn't match the size of "
        "optimizer's group")
    assert res.trial["load_state_dict"] == f"ValueError: {err}"


def test_state_shape_loads_silently_then_step_fails(cli, tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg = _write_config(tmp_path, {**ADAM_2G, "groups": [{"shapes": ["4"]},
                                                         {"shapes": ["3"], "lr": 0.5}]})
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("state-shape", "fail"), ("state-shape", "fail")]
    assert res.findings[0].message == (
        "param 0 (group0.param0): the checkpoint's exp_avg has shape 2x2 but the configured "
        "parameter needs 4: load_state_dict accepts this silently and the first step() fails")
    # torch: the load itself is accepted, the step is not
    _, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "step" and isinstance(err, RuntimeError)
    assert res.trial["load_state_dict"] == "ok"
    assert res.trial["step"] == f"RuntimeError: {err}"
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 2


def test_adam_state_into_sgd(tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg = _write_config(tmp_path, {"optimizer": "SGD", "hyperparams": {"lr": 0.01,
                                                                       "momentum": 0.9},
                                   "groups": [{"shapes": ["2x2"]}, {"shapes": ["3"]}]})
    res = check_checkpoint(ckpt, cfg)
    codes = _codes(res)
    assert sorted(set(codes)) == [("hyperparams-foreign", "warn"), ("hyperparams-missing", "warn"),
                                  ("hyperparams-override", "warn"), ("optimizer-kind", "warn"),
                                  ("state-foreign", "warn"), ("trial", "fail")]
    assert codes[0] == ("optimizer-kind", "warn") and res.fixes == []
    foreign = next(f for f in res.findings if f.code == "state-foreign")
    assert foreign.detail == {"keys": ["exp_avg", "exp_avg_sq", "step"]}
    assert "are not SGD state" in foreign.message
    missing = [f for f in res.findings if f.code == "hyperparams-missing"]
    assert [f.detail["keys"] for f in missing] == [["dampening", "momentum", "nesterov"]] * 2
    assert codes[-1] == ("trial", "fail") and res.verdict == "fails"
    assert res.findings[-1].message == (
        "torch fails at optimizer.step(): KeyError: missing key 'momentum'")
    built, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "step" and isinstance(err, KeyError) and err.args == ("momentum",)
    # and torch filled nesterov itself, as check's trial says: only two keys stay missing
    assert res.trial["missing_after_load"] == {"0": ["dampening", "momentum"],
                                                "1": ["dampening", "momentum"]}
    assert "nesterov" in built.optimizer.param_groups[0]


def test_amsgrad_switched_on_fails_at_step(tmp_path):
    """A state saved without amsgrad, with amsgrad=True written into it (what a careless
    `set` would do): torch loads it and fails at step() for want of max_exp_avg_sq."""
    def on(sd):
        for g in sd["param_groups"]:
            g["amsgrad"] = True
    ckpt = _save_state(tmp_path, ADAM_2G, mutate=on)
    cfg = _write_config(tmp_path, ADAM_2G)
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("hyperparams-override", "warn"), ("hyperparams-override", "warn"),
                           ("trial", "fail")]
    assert res.findings[-1].message == (
        "torch fails at optimizer.step(): KeyError: missing key 'max_exp_avg_sq'")
    _, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "step" and err.args == ("max_exp_avg_sq",)


# --------------------------------------------------------------------------- differs


def test_hyperparameters_the_checkpoint_overrides(cli, tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg_data = {**ADAM_2G, "hyperparams": {"lr": 0.001, "betas": [0.9, 0.95]}}
    cfg = _write_config(tmp_path, cfg_data)
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.group, f.detail) for f in res.findings] == [
        ("hyperparams-override", 0, {"key": "lr", "checkpoint": 0.01, "config": 0.001}),
        ("hyperparams-override", 0, {"key": "betas", "checkpoint": [0.9, 0.999],
                                     "config": [0.9, 0.95]}),
        ("hyperparams-override", 1, {"key": "betas", "checkpoint": [0.9, 0.999],
                                     "config": [0.9, 0.95]}),
    ]
    assert res.findings[0].message == (
        "param group 0: the checkpoint's lr = 0.01 replaces the config's 0.001 "
        "(load_state_dict restores every hyperparameter from the checkpoint)")
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 1 and "DIFFERS" in r.stdout
    built, err = _torch_resume(ckpt, cfg)
    assert err is None
    assert built.optimizer.param_groups[0]["lr"] == 0.01
    assert built.optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_suggested_fix_makes_the_pair_match(cli, tmp_path):
    """check's suggested `set` line, run as is, gives a checkpoint that loads as configured
    (scheduler included): the StepLR run's base lr becomes the config's, and the decay it
    has made (two of 0.1 by step 5) is kept: the lr resumes at 3e-4 * 0.01."""
    saved = {"optimizer": "AdamW", "hyperparams": {"lr": 1e-3}, "groups": [
        {"shapes": ["4x4", "4"]}], "scheduler": {"name": "StepLR", "step_size": 2}}
    ckpt = _save_state(tmp_path, saved, steps=5)
    cfg = _write_config(tmp_path, {**saved, "hyperparams": {"lr": 3e-4, "betas": [0.9, 0.95]}})
    r = cli("check", ckpt, "--config", cfg, "--json")
    report = json.loads(r.stdout)
    assert r.exit_code == 1
    fixed = tmp_path / "ckpt-fixed.pt"
    assert report["fixes"] == [f"optstate set {ckpt} -o {fixed} --base-lr 0.0003 "
                               "--set betas=0.9,0.95"]
    r = cli(*report["fixes"][0].split()[1:])
    assert r.exit_code == 0, r.stderr
    res = check_checkpoint(fixed, cfg)
    assert _codes(res) == [("lr-scheduled", "info"), ("scheduler-resume", "info")]
    assert res.exit_code == 0
    built = build(spec_from_dict(read_config_file(cfg)))
    obj = torch.load(fixed, weights_only=True)
    built.optimizer.load_state_dict(obj["optimizer_state_dict"])
    built.scheduler.load_state_dict(obj["scheduler_state_dict"])
    assert built.optimizer.param_groups[0]["lr"] == pytest.approx(3e-6, rel=1e-12)
    assert built.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert built.scheduler.base_lrs == [3e-4]


def test_adam_checkpoint_into_adamw_keeps_adamw(tmp_path):
    """The checkpoint says decoupled_weight_decay=False, but AdamW forces True when it
    loads a state: check reads the groups as torch leaves them, so this is info only."""
    adam = {"optimizer": "Adam", "hyperparams": {"lr": 0.1, "weight_decay": 0.1},
            "groups": [{"shapes": ["3"]}]}
    adamw = {**adam, "optimizer": "AdamW"}
    ckpt = _save_state(tmp_path, adam)
    cfg = _write_config(tmp_path, adamw)
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.level, f.detail) for f in res.findings] == [
        ("hyperparams-kept", "info", {"key": "decoupled_weight_decay", "checkpoint": False,
                                      "config": True}),
    ]
    assert res.exit_code == 0
    # torch: the resumed step is AdamW's: the same as resuming the same state with the
    # flag set to True, and not what Adam does with it
    built, err = _torch_resume(ckpt, cfg)
    assert err is None and built.optimizer.param_groups[0]["decoupled_weight_decay"] is True

    def flag_true(sd):
        sd["param_groups"][0]["decoupled_weight_decay"] = True
    own, _ = _torch_resume(_save_state(tmp_path, adam, "w.pt", mutate=flag_true), cfg)
    as_adam, _ = _torch_resume(ckpt, _write_config(tmp_path, adam, "adam.json"))
    assert torch.equal(built.params[0], own.params[0])
    assert not torch.equal(built.params[0], as_adam.params[0])


def test_dtype_cast(tmp_path):
    def to_double(sd):
        for st in sd["state"].values():
            st["exp_avg"] = st["exp_avg"].double()
    ckpt = _save_state(tmp_path, ADAM_2G, mutate=to_double)
    cfg = _write_config(tmp_path, ADAM_2G)
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("dtype-cast", "warn")]
    assert res.findings[0].message == (
        "2 state tensors are float64 but the parameters are float32: load_state_dict casts "
        "them to float32 (precision is lost)")
    assert res.findings[0].detail["entries"] == ["0.exp_avg", "1.exp_avg"]
    built, err = _torch_resume(ckpt, cfg)
    assert err is None
    saved = torch.load(ckpt, weights_only=True)["state"][0]["exp_avg"]
    # torch did cast on load (read before the step of _torch_resume changed it)
    fresh = build(spec_from_dict(ADAM_2G))
    fresh.optimizer.load_state_dict(torch.load(ckpt, weights_only=True))
    loaded = fresh.optimizer.state[fresh.params[0]]["exp_avg"]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, saved.float())


def test_names_reordered(tmp_path):
    """torch matches by position: the state saved for 'a' lands on the config's 'b'."""
    saved_cfg = {"optimizer": "SGD", "hyperparams": {"lr": 0.1, "momentum": 0.9},
                 "groups": [{"shapes": ["2", "2"], "names": ["a", "b"]}]}
    built = build(spec_from_dict(saved_cfg))
    built.params[0].grad = torch.full((2,), 1.0)
    built.params[1].grad = torch.full((2,), 5.0)
    built.optimizer.step()
    ckpt = tmp_path / "named.pt"
    torch.save(built.optimizer.state_dict(), ckpt)
    assert torch.load(ckpt, weights_only=True)["param_groups"][0]["param_names"] == ["a", "b"]
    cfg = _write_config(tmp_path, {**saved_cfg, "groups": [{"shapes": ["2", "2"],
                                                            "names": ["b", "a"]}]})
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("names-reordered", "warn")]
    assert res.findings[0].message == (
        "the same parameter names in a different order: torch matches by position, not by "
        "name, so `b` gets the state of `a` (position 0); `a` gets the state of `b` "
        "(position 1)")
    resumed = build(spec_from_dict(read_config_file(cfg)))
    resumed.optimizer.load_state_dict(torch.load(ckpt, weights_only=True))
    b_param = resumed.params[0]  # the config's first param is named 'b'
    assert resumed.names[0] == "b"
    assert torch.equal(resumed.optimizer.state[b_param]["momentum_buffer"],
                       torch.full((2,), 1.0))  # a's buffer


def test_old_checkpoint_missing_keys_torch_fills(tmp_path):
    """A state from an older torch lacks foreach/maximize/differentiable: SGD fills them on
    load, so this is only worth an info line."""
    cfg_data = {"optimizer": "SGD", "hyperparams": {"lr": 0.1, "momentum": 0.9},
                "groups": [{"shapes": ["3"]}]}

    def old(sd):
        for g in sd["param_groups"]:
            for k in ("foreach", "maximize", "differentiable", "fused"):
                g.pop(k)
    ckpt = _save_state(tmp_path, cfg_data, mutate=old)
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg_data))
    assert _codes(res) == [("hyperparams-missing", "info")]
    assert res.exit_code == 0 and res.trial["step"] == "ok"


# --------------------------------------------------------------------------- scheduler


SGD_STEP = {"optimizer": "SGD", "hyperparams": {"lr": 0.1}, "groups": [{"shapes": ["3"]}],
            "scheduler": {"name": "StepLR", "step_size": 5, "gamma": 0.5}}


def test_scheduler_settings_the_checkpoint_overrides(cli, tmp_path):
    ckpt = _save_state(tmp_path, SGD_STEP, steps=3)
    cfg = _write_config(tmp_path, {**SGD_STEP, "scheduler": {"name": "StepLR",
                                                             "step_size": 2, "gamma": 0.5}})
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.level) for f in res.findings] == [
        ("scheduler-override", "warn"), ("lr-scheduled", "info"), ("scheduler-resume", "info")]
    assert res.findings[0].detail == {"key": "step_size", "checkpoint": 5, "config": 2}
    assert res.fixes == [f"optstate set {ckpt} -o {tmp_path}/ckpt-fixed.pt "
                         "--scheduler-set step_size=2"]
    r = cli(*res.fixes[0].split()[1:])
    assert r.exit_code == 0, r.stderr
    assert _codes(check_checkpoint(tmp_path / "ckpt-fixed.pt", cfg)) == [
        ("lr-scheduled", "info"), ("scheduler-resume", "info")]
    built = build(spec_from_dict(read_config_file(cfg)))
    obj = torch.load(ckpt, weights_only=True)
    built.optimizer.load_state_dict(obj["optimizer_state_dict"])
    built.scheduler.load_state_dict(obj["scheduler_state_dict"])
    assert built.scheduler.step_size == 5  # torch: the checkpoint's value won
    assert res.trial["scheduler_step"] == "ok"


def test_scheduler_of_another_kind(tmp_path):
    ckpt = _save_state(tmp_path, {**SGD_STEP, "scheduler": {"name": "CosineAnnealingLR",
                                                            "T_max": 10}})
    res = check_checkpoint(ckpt, _write_config(tmp_path, SGD_STEP))
    kind = next(f for f in res.findings if f.code == "scheduler-kind")
    assert kind.detail == {"only_checkpoint": ["T_max", "eta_min"],
                           "only_config": ["gamma", "step_size"]}
    assert res.verdict == "differs"
    # torch: StepLR.load_state_dict takes the cosine state without a word, attributes and all
    built = build(spec_from_dict(SGD_STEP))
    obj = torch.load(ckpt, weights_only=True)
    built.optimizer.load_state_dict(obj["optimizer_state_dict"])
    built.scheduler.load_state_dict(obj["scheduler_state_dict"])
    assert built.scheduler.T_max == 10 and built.scheduler.step_size == 5
    assert res.trial["scheduler_step"] == "ok"


def test_names_differ(tmp_path):
    cfg_data = {"optimizer": "SGD", "hyperparams": {"lr": 0.1, "momentum": 0.9},
                "groups": [{"shapes": ["2", "3"], "names": ["fc.weight", "fc.bias"]}]}
    ckpt = _save_state(tmp_path, cfg_data)
    cfg = _write_config(tmp_path, {**cfg_data, "groups": [
        {"shapes": ["2", "3"], "names": ["head.weight", "fc.bias"]}]})
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.detail) for f in res.findings] == [
        ("names-differ", {"only_checkpoint": ["fc.weight"], "only_config": ["head.weight"],
                          "moves": [{"position": 0, "checkpoint": "fc.weight",
                                     "config": "head.weight"}]})]
    assert res.exit_code == 1
    assert _torch_resume(ckpt, cfg)[1] is None  # torch ignores the names entirely


def test_scheduler_missing_from_checkpoint(tmp_path):
    ckpt = _save_state(tmp_path, {k: v for k, v in SGD_STEP.items() if k != "scheduler"})
    res = check_checkpoint(ckpt, _write_config(tmp_path, SGD_STEP))
    assert _codes(res) == [("scheduler-missing", "warn")]
    assert res.findings[0].message == (
        "the config builds StepLR but the checkpoint holds no scheduler state: the "
        "scheduler starts from epoch 0")
    assert res.exit_code == 1
    built, err = _torch_resume(ckpt, _write_config(tmp_path, SGD_STEP))
    assert err is None and built.scheduler.last_epoch == 0


# --------------------------------------------------------------------------- input


def test_toml_config_and_no_trial(cli, tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg = tmp_path / "run.toml"
    cfg.write_text('optimizer = "Adam"\n[hyperparams]\nlr = 0.01\n[[groups]]\n'
                   'shapes = ["2x2"]\n[[groups]]\nshapes = ["3"]\nlr = 0.5\n')
    r = cli("check", ckpt, "-c", cfg, "--no-trial", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["trial"] == {}


@pytest.mark.parametrize("setup, message", [
    ("missing-ckpt", "Error: {tmp}/nope.pt does not exist"),
    ("missing-config", "Error: config file {tmp}/nope.toml does not exist"),
    ("bad-config", "Error: {tmp}/bad.json: unknown key(s) optimiser; did you mean 'optimizer'?"),
])
def test_bad_input_is_one_error_line(cli, tmp_path, setup, message):
    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg = _write_config(tmp_path, ADAM_2G)
    if setup == "missing-ckpt":
        ckpt = tmp_path / "nope.pt"
    elif setup == "missing-config":
        cfg = tmp_path / "nope.toml"
    else:
        cfg = _write_config(tmp_path, {"optimiser": "Adam"}, "bad.json")
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == message.format(tmp=tmp_path)
    assert "Traceback" not in r.stderr


def test_unsafe_warns_and_help_teaches(cli, tmp_path):
    ckpt = _save_state(tmp_path, ADAM_2G)
    r = cli("check", ckpt, "--config", _write_config(tmp_path, ADAM_2G), "--unsafe")
    assert r.exit_code == 0 and r.stderr.startswith("WARNING: --unsafe")
    r = cli("check", "--help")
    text = " ".join(r.stdout.split())
    assert "Example: optstate check ckpt.pt --config run.toml" in text


# --------------------------------------------------------------------------- every optimizer


def _every_optimizer():
    from optstate.sim.build import optimizer_classes

    return sorted(c.__name__ for c in optimizer_classes().values())


def _step_like_a_user(built, name):
    for p in built.params:
        p.grad = torch.ones_like(p).to_sparse() if name == "SparseAdam" else torch.ones_like(p)
    if name == "LBFGS":
        built.optimizer.step(lambda: torch.zeros(()))
    else:
        built.optimizer.step()


@pytest.mark.parametrize("name", _every_optimizer())
def test_verdict_agrees_with_torch_for_every_optimizer(tmp_path, name):
    """For each torch.optim optimizer: its own state checks ok; the same state against a
    config whose first parameter is 3x2 instead of 2x3 'fails' exactly when torch's
    load_state_dict + step() raises (LBFGS keeps flat state and SGD without momentum
    none, so there torch carries on and check says ok)."""
    shapes = [["2x3", "4x2"], ["5x2"]]
    groups = [{"shapes": shapes[0] + shapes[1]}] if name == "LBFGS" else [
        {"shapes": s} for s in shapes]
    cfg = {"optimizer": name, "groups": groups}
    bad = json.loads(json.dumps(cfg))
    bad["groups"][0]["shapes"][0] = "3x2"
    built = build(spec_from_dict(cfg))
    _step_like_a_user(built, name)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(built.optimizer.state_dict(), ckpt)
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg))
    assert (res.verdict, res.findings) == ("ok", [])
    res = check_checkpoint(ckpt, _write_config(tmp_path, bad, "bad.json"))
    other = build(spec_from_dict(bad))
    other.optimizer.load_state_dict(torch.load(ckpt, weights_only=True))  # never raises here
    try:
        _step_like_a_user(other, name)
        torch_fails = False
    except RuntimeError:
        torch_fails = True
    assert res.verdict == ("fails" if torch_fails else "ok")
    assert torch_fails == (name not in ("LBFGS", "SGD"))
    if torch_fails:
        assert {f.code for f in res.findings} == {"state-shape"}


# --------------------------------------------------------------------------- containers


def test_hf_folder_uses_the_scheduler_file_beside_it(tmp_path):
    built = _trained_from(SGD_STEP, steps=3)
    d = tmp_path / "checkpoint-3"
    d.mkdir()
    torch.save(built.optimizer.state_dict(), d / "optimizer.pt")
    torch.save(built.scheduler.state_dict(), d / "scheduler.pt")
    res = check_checkpoint(d, _write_config(tmp_path, SGD_STEP))
    assert res.scheduler_location == "scheduler.pt"
    assert _codes(res) == [("lr-scheduled", "info"), ("scheduler-resume", "info")]
    assert res.findings[1].detail == {"last_epoch": 3}
    assert res.trial["scheduler_step"] == "ok" and res.exit_code == 0


def test_lightning_container_with_key(cli, tmp_path):
    a = _trained_from(ADAM_2G).optimizer.state_dict()
    b = _trained_from({**ADAM_2G, "optimizer": "SGD", "hyperparams": {"lr": 0.01}}
                      ).optimizer.state_dict()
    ckpt = tmp_path / "l.ckpt"
    torch.save({"epoch": 1, "optimizer_states": [a, b], "lr_schedulers": []}, ckpt)
    cfg = _write_config(tmp_path, ADAM_2G)
    r = cli("check", ckpt, "--config", cfg)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"Error: {ckpt} holds 2 optimizer states")
    res = check_checkpoint(ckpt, cfg, key="optimizer_states[0]")
    assert res.location == "optimizer_states[0]" and res.verdict == "ok"
    res = check_checkpoint(ckpt, cfg, key="optimizer_states[1]")
    assert res.verdict == "fails"


def test_exit_status_through_the_entry_point(tmp_path, capsys):
    """Through ``optstate.cli.main`` (the console script: standalone_mode=False, its own
    exit handling), not CliRunner: 1 for a pair that differs, 2 for one that fails."""
    from optstate.cli import main

    ckpt = _save_state(tmp_path, ADAM_2G)
    cfg = _write_config(tmp_path, {**ADAM_2G, "hyperparams": {"lr": 0.02}})
    with pytest.raises(SystemExit) as exc:
        main(["check", str(ckpt), "--config", str(cfg), "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 1 and json.loads(out)["verdict"] == "differs" and err == ""
    bad = _write_config(tmp_path, {**ADAM_2G, "groups": [{"shapes": ["2x2"]}]}, "bad.json")
    with pytest.raises(SystemExit) as exc:
        main(["check", str(ckpt), "--config", str(bad), "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and json.loads(out)["verdict"] == "fails" and err == ""


def test_state_without_step_fails_at_load(tmp_path):
    """Adam state whose 'step' entries were dropped (a hand-edited or foreign file): torch's
    Adam.__setstate__ raises at load_state_dict already."""
    def drop_step(sd):
        for st in sd["state"].values():
            del st["step"]
    ckpt = _save_state(tmp_path, ADAM_2G, mutate=drop_step)
    cfg = _write_config(tmp_path, ADAM_2G)
    res = check_checkpoint(ckpt, cfg)
    assert _codes(res) == [("state-incomplete", "warn"), ("trial", "fail")]
    assert res.findings[0].detail == {"key": "step", "params": [0, 1]}
    assert res.findings[1].message == (
        "torch fails at optimizer.load_state_dict(): KeyError: missing key 'step'")
    _, (stage, err) = _torch_resume(ckpt, cfg)
    assert stage == "load" and isinstance(err, KeyError) and err.args == ("step",)


def test_fix_per_group_and_with_key(cli, tmp_path):
    """Different config values per group: one `set --group` line per group, chained, each
    with the --key that picked the state; run in order they give a matching checkpoint."""
    a = _trained_from(ADAM_2G).optimizer.state_dict()
    ckpt = tmp_path / "l.ckpt"
    torch.save({"optimizer_states": [a, a]}, ckpt)
    cfg = _write_config(tmp_path, {**ADAM_2G, "hyperparams": {"lr": 0.02},
                                   "groups": [{"shapes": ["2x2"]},
                                              {"shapes": ["3"], "lr": 0.7}]})
    res = check_checkpoint(ckpt, cfg, key="optimizer_states[1]")
    assert res.fixes == [
        f"optstate set {ckpt} --key 'optimizer_states[1]' -o {tmp_path}/l-fixed0.ckpt "
        "--group 0 --lr 0.02",
        f"optstate set {tmp_path}/l-fixed0.ckpt --key 'optimizer_states[1]' -o "
        f"{tmp_path}/l-fixed.ckpt --group 1 --lr 0.7",
    ]
    import shlex

    for line in res.fixes:
        r = cli(*shlex.split(line)[1:])
        assert r.exit_code == 0, r.stderr
    fixed = check_checkpoint(tmp_path / "l-fixed.ckpt", cfg, key="optimizer_states[1]")
    assert fixed.findings == [] and fixed.exit_code == 0


def test_param_without_saved_state(tmp_path):
    """A parameter that never had a gradient has no state: fine, it starts fresh."""
    cfg_data = {"optimizer": "SGD", "hyperparams": {"lr": 0.1, "momentum": 0.9},
                "groups": [{"shapes": ["2", "3"]}]}
    built = build(spec_from_dict(cfg_data))
    built.params[0].grad = torch.ones(2)  # params[1] gets no gradient: torch skips it
    built.optimizer.step()
    ckpt = tmp_path / "partial.pt"
    torch.save(built.optimizer.state_dict(), ckpt)
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg_data))
    assert [(f.code, f.level, f.message) for f in res.findings] == [
        ("state-missing", "info", "1 parameter (position 1) has no saved state: its SGD "
         "state starts fresh at the first step")]
    assert res.exit_code == 0
    resumed = build(spec_from_dict(cfg_data))
    resumed.optimizer.load_state_dict(torch.load(ckpt, weights_only=True))
    assert resumed.params[1] not in resumed.optimizer.state
    assert "momentum_buffer" in resumed.optimizer.state[resumed.params[0]]


# --------------------------------------------------------------------------- under a scheduler
#
# A config's lr is the base lr a scheduler starts from; the checkpoint's group lr is where
# the scheduler has taken it. They are compared through the groups' initial_lr and the
# scheduler's base_lrs, never the current lr.

ADAMW_STEP = {"optimizer": "AdamW", "hyperparams": {"lr": 1e-3},
              "groups": [{"shapes": ["2x4", "2"]}],
              "scheduler": {"name": "StepLR", "step_size": 5, "gamma": 0.5}}


def _issue_checkpoint(tmp_path, name="steplr.pt"):
    """The issue's run: a model trained by AdamW(lr=1e-3) + StepLR(5, 0.5) for 10 steps,
    saved as {"model", "optimizer", "scheduler"}."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    for _ in range(10):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, path)
    return path


def test_scheduled_lr_is_not_an_override(cli, tmp_path):
    ckpt = _issue_checkpoint(tmp_path)
    cfg = _write_config(tmp_path, ADAMW_STEP)
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.level) for f in res.findings] == [
        ("lr-scheduled", "info"), ("scheduler-resume", "info")]
    assert res.findings[0].message == (
        "param group 0: lr 0.00025 is the scheduler's current value, from base lr 0.001 "
        "(initial_lr, base_lrs), which is the config's lr")
    assert res.findings[0].detail == {"lr": 0.00025, "base_lr": 0.001, "config": 0.001}
    assert res.exit_code == 0 and res.fixes == []
    r = cli("check", ckpt, "--config", cfg, env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "OK" in r.stdout and "optstate set" not in r.stdout
    # torch: the resume does run at 0.00025 and goes on decaying from there
    built = build(spec_from_dict(ADAMW_STEP))
    obj = torch.load(ckpt, weights_only=True)
    built.optimizer.load_state_dict(obj["optimizer"])
    built.scheduler.load_state_dict(obj["scheduler"])
    assert built.optimizer.param_groups[0]["lr"] == 0.00025
    assert built.scheduler.base_lrs == [0.001]


def test_other_base_lr_suggests_base_lr_and_the_fix_resumes_as_that_run(cli, tmp_path):
    ckpt = _issue_checkpoint(tmp_path)
    cfg = _write_config(tmp_path, {**ADAMW_STEP, "hyperparams": {"lr": 5e-4}})
    res = check_checkpoint(ckpt, cfg)
    assert [(f.code, f.level) for f in res.findings] == [
        ("base-lr-override", "warn"), ("scheduler-resume", "info")]
    assert res.findings[0].message == (
        "param group 0: the checkpoint's base lr 0.001 (initial_lr, base_lrs) replaces the "
        "config's 0.0005; the scheduler has taken it to 0.00025")
    fixed = tmp_path / "steplr-fixed.pt"
    assert res.fixes == [f"optstate set {ckpt} -o {fixed} --base-lr 0.0005"]
    r = cli(*res.fixes[0].split()[1:])
    assert r.exit_code == 0, r.stderr
    again = check_checkpoint(fixed, cfg)
    assert again.exit_code == 0 and again.findings[0].detail == {
        "lr": 0.000125, "base_lr": 0.0005, "config": 0.0005}
    # torch: resumed from the fixed file, every lr is the fresh run's at base 5e-4
    cfg_data = {**ADAMW_STEP, "hyperparams": {"lr": 5e-4}}
    fresh = _trained_from(cfg_data, steps=10)
    resumed = build(spec_from_dict(cfg_data))
    obj = torch.load(fixed, weights_only=True)
    resumed.optimizer.load_state_dict(obj["optimizer"])
    resumed.scheduler.load_state_dict(obj["scheduler"])
    for _ in range(12):
        assert resumed.optimizer.param_groups[0]["lr"] == fresh.optimizer.param_groups[0]["lr"]
        assert resumed.scheduler.get_last_lr() == fresh.scheduler.get_last_lr()
        for b in (fresh, resumed):
            for p in b.params:
                p.grad = torch.ones_like(p)
            b.optimizer.step()
            b.scheduler.step()


@pytest.mark.parametrize("opt, extra, driven", [
    ("AdamW", {}, "betas"), ("SGD", {"momentum": 0.9}, "momentum")])
def test_momentum_a_cycling_scheduler_drives_is_not_an_override(tmp_path, opt, extra, driven):
    cfg_data = {"optimizer": opt, "hyperparams": {"lr": 1e-3, **extra},
                "groups": [{"shapes": ["3"]}],
                "scheduler": {"name": "OneCycleLR", "max_lr": 0.01, "total_steps": 20}}
    ckpt = _save_state(tmp_path, cfg_data, steps=5)
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg_data))
    assert [(f.code, f.level) for f in res.findings] == [
        ("lr-scheduled", "info"), ("momentum-scheduled", "info"), ("scheduler-resume", "info")]
    assert res.findings[1].message.startswith(
        f"param group 0: {driven} is driven by the scheduler (cycle_momentum), now ")
    assert res.exit_code == 0 and res.fixes == []
    # a config whose momentum range differs is an override, of the range
    other = {**cfg_data, "scheduler": {**cfg_data["scheduler"], "max_momentum": 0.9}}
    res = check_checkpoint(ckpt, _write_config(tmp_path, other, "other.json"))
    over = [f for f in res.findings if f.level == "warn"]
    assert [(f.code, f.detail["key"]) for f in over] == [("hyperparams-override",
                                                          "max_momentum")]


# --------------------------------------------------------------------------- findings order


def test_kind_mismatch_first_and_no_fix_that_cannot_fit(cli, tmp_path):
    ckpt = _issue_checkpoint(tmp_path)
    cfg = _write_config(tmp_path, {"optimizer": "SGD", "hyperparams": {"lr": 1e-3},
                                   "groups": [{"shapes": ["2x4", "2"]}]})
    res = check_checkpoint(ckpt, cfg)
    assert res.findings[0].code == "optimizer-kind" and res.findings[0].message == (
        "the checkpoint holds AdamW state (exp_avg, exp_avg_sq, step), the config builds SGD: "
        "this checkpoint was not written by the optimizer the config builds")
    assert res.verdict == "fails" and res.fixes == []
    r = cli("check", ckpt, "--config", cfg, env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "  optstate set" not in r.stdout
    # a warning (SGD without momentum would step on it, ignoring the state); torch's failure
    # at step() below makes the verdict
    first = next(line for line in r.stdout.splitlines() if line[:5] in ("WARN ", "FAIL "))
    assert first.startswith("WARN the checkpoint holds AdamW state")
    assert "no `optstate set` line is suggested" in r.stdout


def test_fix_only_when_every_finding_is_one_set_fixes(tmp_path):
    def to_double(sd):
        for st in sd["state"].values():
            st["exp_avg"] = st["exp_avg"].double()
    cfg = _write_config(tmp_path, {**ADAM_2G, "hyperparams": {"lr": 0.02}})
    fixable = check_checkpoint(_save_state(tmp_path, ADAM_2G), cfg)
    assert [f.code for f in fixable.findings] == ["hyperparams-override"]
    assert len(fixable.fixes) == 1
    unfixable = check_checkpoint(_save_state(tmp_path, ADAM_2G, "d.pt", mutate=to_double),
                                 cfg)
    assert {f.code for f in unfixable.findings} == {"hyperparams-override", "dtype-cast"}
    assert unfixable.fixes == []


def test_group_size_lists_both_sides_shapes_aligned(cli, tmp_path):
    ckpt = _save_state(tmp_path, {**ADAM_2G, "groups": [
        {"shapes": ["2x2"]}, {"shapes": ["3", "4x5", "3"], "lr": 0.5}]})
    cfg = _write_config(tmp_path, {**ADAM_2G, "groups": [
        {"shapes": ["2x2"]}, {"shapes": ["3", "3"], "lr": 0.5}]})
    res = check_checkpoint(ckpt, cfg)
    f = res.findings[0]
    assert f.code == "group-size"
    assert f.detail["shapes"] == {"checkpoint": [["2x2"], ["3", "4x5", "3"]],
                                  "config": [["2x2"], ["3", "3"]]}
    assert f.detail["first_difference"] == {"group": 1, "position": 1}
    r = cli("check", ckpt, "--config", cfg, env={"COLUMNS": "200"})
    lines = r.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("group 0"))
    assert lines[at:at + 5] == [
        "     group 0  checkpoint  2x2",
        "              config      2x2",
        "     group 1  checkpoint  3  4x5  3",
        "              config      3  3",
        "                             ^ first difference: group 1, position 1",
    ]


def test_one_cycle_of_another_peak_is_fixed_by_base_lr(cli, tmp_path):
    """OneCycleLR's base lr is max_lr / div_factor: a config with another max_lr differs in
    the base lr (and in the groups' max_lr/min_lr, which --base-lr scales alike)."""
    saved = {"optimizer": "SGD", "hyperparams": {"lr": 1e-3, "momentum": 0.9},
             "groups": [{"shapes": ["3"]}],
             "scheduler": {"name": "OneCycleLR", "max_lr": 0.01, "total_steps": 20}}
    ckpt = _save_state(tmp_path, saved, steps=5)
    cfg_data = {**saved, "scheduler": {**saved["scheduler"], "max_lr": 0.0123}}
    cfg = _write_config(tmp_path, cfg_data)
    res = check_checkpoint(ckpt, cfg)
    assert [f.code for f in res.findings if f.level == "warn"] == [
        "base-lr-override", "hyperparams-override", "hyperparams-override"]
    assert res.fixes == [f"optstate set {ckpt} -o {tmp_path}/ckpt-fixed.pt --base-lr "
                         f"{0.0123 / 25!r}"]
    assert cli(*res.fixes[0].split()[1:]).exit_code == 0
    assert check_checkpoint(tmp_path / "ckpt-fixed.pt", cfg).exit_code == 0


def test_base_lr_of_a_cyclic_schedule_is_not_offered(tmp_path):
    saved = {"optimizer": "SGD", "hyperparams": {"lr": 1e-3, "momentum": 0.9},
             "groups": [{"shapes": ["3"]}],
             "scheduler": {"name": "CyclicLR", "base_lr": 1e-4, "max_lr": 1e-2}}
    ckpt = _save_state(tmp_path, saved, steps=3)
    cfg = _write_config(tmp_path, {**saved, "scheduler": {**saved["scheduler"],
                                                          "base_lr": 2e-4}})
    res = check_checkpoint(ckpt, cfg)
    f = res.findings[0]
    assert f.code == "base-lr-override" and "set base_lr cannot move it: CyclicLR" in f.message
    assert res.fixes == [] and "base-lr-override" in res.no_fix_reason


def test_base_lr_without_scheduler_state_is_compared_but_not_offered(tmp_path):
    """Only the optimizer state saved (initial_lr in its groups says a StepLR ran): the base
    lr is compared through initial_lr; set --base-lr needs the scheduler state, so no line."""
    built = _trained_from(ADAMW_STEP, steps=6)
    ckpt = tmp_path / "opt.pt"
    torch.save(built.optimizer.state_dict(), ckpt)
    same = check_checkpoint(ckpt, _write_config(tmp_path, ADAMW_STEP))
    assert [(f.code, f.level) for f in same.findings] == [
        ("scheduler-missing", "warn"), ("lr-scheduled", "info")]
    assert same.findings[1].message == (
        "param group 0: lr 0.0005 is the scheduler's current value, from base lr 0.001 "
        "(initial_lr), which is the config's lr")
    other = check_checkpoint(ckpt, _write_config(
        tmp_path, {**ADAMW_STEP, "hyperparams": {"lr": 2e-3}}, "other.json"))
    assert [f.code for f in other.findings] == ["base-lr-override", "scheduler-missing"]
    assert other.fixes == []


@pytest.mark.parametrize("columns", [40, 60, 100])
def test_long_group_shapes_fit_any_width(cli, tmp_path, columns):
    """20 params against 19 whose first difference is at position 13: at every width each
    shape is printed whole, the difference is marked, and what is left out is counted."""
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(10)])
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    ckpt = tmp_path / "big.pt"
    torch.save(opt.state_dict(), ckpt)
    shapes = [s for _ in range(10) for s in ("8x8", "8")]
    shapes[13] = "8x4"
    del shapes[15]
    cfg = _write_config(tmp_path, {"optimizer": "Adam", "groups": [{"shapes": shapes}]})
    r = cli("check", ckpt, "--config", cfg, env={"COLUMNS": str(columns)})
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert all(len(line) <= columns for line in lines)
    shown = " ".join(r.stdout.split())
    assert "8x4" in shown and "first difference" in shown
    if columns >= 60:
        row = next(line for line in lines if "config      …" in line)
        caret = lines[lines.index(row) + 1]
        assert row[caret.index("^"):].startswith("8x4")
        if columns == 60:
            assert row.endswith("… 4 more")
    else:
        assert "    13  8    8x4 < first difference" in lines


# --------------------------------------------------------------------------- review of #15 item 2

def _model_run(tmp_path, sched_cfg, lr=1e-3, steps=10, name="run.pt", metric=1.0):
    """A real training loop: Linear(4, 2) + AdamW(lr) + the scheduler a config names,
    stepped as a user does (ReduceLROnPlateau on a metric that never improves), saved as
    {"model", "optimizer", "scheduler"}."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    kw = {k: v for k, v in sched_cfg.items() if k != "name"}
    sched = getattr(torch.optim.lr_scheduler, sched_cfg["name"])(opt, **kw)
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for _ in range(steps):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step(metric) if plateau else sched.step()
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, path)
    return path


def _resumed_lrs(path, cfg_data, steps, metric=1.0):
    built = build(spec_from_dict(cfg_data))
    obj = torch.load(path, weights_only=True)
    built.optimizer.load_state_dict(obj["optimizer"])
    built.scheduler.load_state_dict(obj["scheduler"])
    plateau = isinstance(built.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    out = []
    for _ in range(steps):
        built.scheduler.step(metric) if plateau else built.scheduler.step()
        out.append(built.optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("sched", [
    {"name": "CosineAnnealingWarmRestarts", "T_0": 4, "T_mult": 2},
    {"name": "ReduceLROnPlateau", "patience": 1},
], ids=["warm-restarts", "plateau"])
def test_scheduler_progress_is_not_a_setting_to_undo(cli, tmp_path, sched):
    """A checkpoint checked against the config that made it: the warm restarts' T_cur/T_i
    and the plateau's best/num_bad_epochs/cooldown_counter are where the schedule is, not
    settings. They were reported as overrides (exit 1) with a `--scheduler-set T_cur=0`
    that restarts the cycle (or `best=None`, which set refuses)."""
    ckpt = _model_run(tmp_path, sched)
    cfg_data = {"optimizer": "AdamW", "hyperparams": {"lr": 1e-3},
                "groups": [{"shapes": ["2x4", "2"]}], "scheduler": sched}
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg_data))
    assert [f for f in res.findings if f.level != "info"] == []
    assert res.exit_code == 0 and res.fixes == []
    # torch: resuming that file under that config continues the run that made it
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    longer = _model_run(fresh_dir, sched, steps=16)
    assert _resumed_lrs(ckpt, cfg_data, 6)[-1] == torch.load(
        longer, weights_only=True)["optimizer"]["param_groups"][0]["lr"]


def test_plateau_lr_is_compared_with_the_config_lr_it_was_reduced_from(tmp_path):
    """ReduceLROnPlateau keeps no base lr, and the lr comparison was skipped altogether:
    a run started at 1e-3 checked against a config at 3e-4 said nothing about the lr.
    Now the lr is compared with the config's lr reduced by the checkpoint's factor."""
    sched = {"name": "ReduceLROnPlateau", "patience": 1}
    ckpt = _model_run(tmp_path, sched, lr=1e-3)
    cfg_data = {"optimizer": "AdamW", "hyperparams": {"lr": 3e-4},
                "groups": [{"shapes": ["2x4", "2"]}], "scheduler": sched}
    res = check_checkpoint(ckpt, _write_config(tmp_path, cfg_data))
    f = res.findings[0]
    assert (f.code, f.level) == ("base-lr-override", "warn")
    assert "ReduceLROnPlateau" in f.message and res.exit_code == 1
    assert res.fixes == [] and "base-lr-override" in res.no_fix_reason
    same = check_checkpoint(ckpt, _write_config(
        tmp_path, {**cfg_data, "hyperparams": {"lr": 1e-3}}, "same.json"))
    lr = torch.load(ckpt, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    info = [f for f in same.findings if f.code == "lr-scheduled"]
    assert len(info) == 1 and f"lr {lr!r}" in info[0].message and "0.001" in info[0].message


def test_chained_scheduler_state_is_found(tmp_path):
    """ChainedScheduler's state has no last_epoch of its own (only _schedulers and
    _last_lr): it was not recognised, and check said the checkpoint holds no scheduler
    state at all."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    S = torch.optim.lr_scheduler
    sched = S.ChainedScheduler([S.StepLR(opt, 3, 0.5), S.ExponentialLR(opt, 0.9)])
    for _ in range(5):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    ckpt = tmp_path / "chained.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, ckpt)
    cfg = _write_config(tmp_path, {"optimizer": "AdamW", "hyperparams": {"lr": 1e-3},
                                   "groups": [{"shapes": ["2x4", "2"]}],
                                   "scheduler": {"name": "StepLR", "step_size": 3,
                                                 "gamma": 0.5}})
    res = check_checkpoint(ckpt, cfg)
    assert res.scheduler_location == "scheduler"
    assert "scheduler-missing" not in [f.code for f in res.findings]
    assert "scheduler-kind" in [f.code for f in res.findings]


# --------------------------------------------------------------------------- review of #15 item 7

def test_kind_told_by_group_keys_when_the_state_entries_are_shared(tmp_path):
    """RAdam keeps exp_avg/exp_avg_sq/step like AdamW; its groups (no amsgrad, no fused)
    are RAdam's only, which inspect says with high confidence. Checked against an AdamW
    config it was 'weight_decay differs' with a set line, and after that set line 'OK: the
    state matches the config'. Adam and AdamW (the same update with
    decoupled_weight_decay) stay a hyperparameter difference that set fixes."""
    cfg_data = {"optimizer": "AdamW", "hyperparams": {"lr": 1e-3},
                "groups": [{"shapes": ["2x2", "2"]}]}
    radam = _save_state(tmp_path, {**cfg_data, "optimizer": "RAdam"}, "radam.pt")
    cfg = _write_config(tmp_path, cfg_data)
    res = check_checkpoint(radam, cfg)
    assert res.findings[0].code == "optimizer-kind"
    assert res.findings[0].message.startswith("the checkpoint holds RAdam state")
    assert res.exit_code == 1 and res.fixes == []
    assert "optimizer-kind" in res.no_fix_reason
    adam = _save_state(tmp_path, {**cfg_data, "optimizer": "Adam"}, "adam.pt")
    res = check_checkpoint(adam, cfg)
    assert "optimizer-kind" not in [f.code for f in res.findings]
    assert res.fixes and "--set weight_decay=0.01" in res.fixes[0]
