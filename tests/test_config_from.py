"""``optstate config CKPT``: the config it writes is valid TOML that check and simulate
read, and ``optstate check CKPT --config <(optstate config CKPT)`` exits 0 for every
checkpoint fixture optstate reads (the known exceptions are listed with their reason).
Real models, real optimizers, real training steps."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from optstate.analysis.check import check_checkpoint
from optstate.analysis.config_from import config_from_checkpoint, param_shape
from optstate.base.errors import ConfigError, OptstateError
from optstate.render.config_view import config_toml, to_toml, toml_value
from optstate.sim.config import spec_from_dict
from tests.conftest import ROOT


class SmallCNN(nn.Module):
    """The tutorial's kind of model: convolutions with BatchNorm, then linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.out(torch.relu(self.fc3(torch.relu(self.fc2(x)))))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
          scheduler=None) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def decay_groups(model: nn.Module, named: bool) -> list[dict]:
    """Two groups as trainers make them: weights decay, biases and BatchNorm do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or name.startswith("bn") else decay).append(
            (name, p) if named else p)
    return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0,
                                                      "lr": 3e-3}]


def derived(path: Path, **kw) -> tuple[dict, str]:
    """The config of a checkpoint, as TOML read back by tomllib, and the TOML."""
    text = config_toml(config_from_checkpoint(path, **kw))
    return tomllib.loads(text), text


def comments(text: str) -> str:
    """The TOML's comments as one text (wrapped lines joined)."""
    return " ".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))


def check_with_config(path: Path, tmp_path: Path, **kw):
    data, text = derived(path, **kw)
    cfg = tmp_path / "derived.toml"
    cfg.write_text(text)
    return check_checkpoint(path, cfg, model_file=kw.get("model_file")), data, text


def problems(result) -> list[tuple[str, str]]:
    return [(f.code, f.message) for f in result.findings if f.level != "info"]


# --------------------------------------------------------------------------- TOML


def test_toml_writer_round_trips_every_value_tomllib_reads():
    values = {"s": 'a "quoted"\\ name\nwith\ttabs \x01 and ü', "t": True, "f": False,
              "i": -3, "x": 1e-08, "big": 1.5e300, "inf": math.inf, "ninf": -math.inf,
              "list": [0.9, 0.999], "tuple": (1, 2), "nested": [[1, 2], ["a"]],
              "odd key": 1, "": "empty key"}
    text = to_toml({"top": 1, "table": values, "arr": [{"a": 1}, {"b": "2"}]},
                   ["header line", "bad \x07 char"], {"table": ["a note"], "arr.1": ["n1"]})
    back = tomllib.loads(text)
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    assert back == {"top": 1, "table": expected, "arr": [{"a": 1}, {"b": "2"}]}
    assert "# bad \\x07 char" in text and "# a note" in text and "# n1" in text
    assert math.isnan(tomllib.loads("v = " + toml_value(math.nan))["v"])
    with pytest.raises(TypeError):
        toml_value(None)  # TOML has no null: callers leave such values out


# --------------------------------------------------------------------------- real runs


def test_tutorial_cnn_with_two_groups_and_steplr(tmp_path):
    """A CNN with BatchNorm, Adam in two groups (decay / no decay, their own lr), StepLR,
    trained 7 steps, saved the tutorial's way: the config rebuilds all of it and check
    exits 0 on it."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(decay_groups(model, named=False), lr=1e-2, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    train(model, opt, 7, sched)
    path = tmp_path / "tutorial.pt"
    torch.save({"epoch": 7, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict()}, path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["optimizer"] == "Adam" and data["steps"] == 7
    assert data["scheduler"] == {"name": "StepLR", "step_size": 3, "gamma": 0.5}
    # the base lrs (initial_lr): the scheduler has halved the groups' lr twice since
    assert data["hyperparams"]["betas"] == [0.8, 0.99]
    assert [g["lr"] for g in data["groups"]] == [1e-2, 3e-3]
    assert opt.param_groups[0]["lr"] == 1e-2 * 0.25
    assert [g["weight_decay"] for g in data["groups"]] == [0.05, 0.0]
    for g, torch_group in zip(data["groups"], opt.param_groups, strict=True):
        assert g["shapes"] == ["x".join(map(str, p.shape)) for p in torch_group["params"]]
    assert "the optimizer state at 'optimizer_state_dict'" in comments(text)  # where
    spec_from_dict(data)  # simulate reads it too


def test_named_params_are_listed_in_torch_order(tmp_path):
    """An optimizer built from named_parameters() (torch writes param_names): the groups
    list the names in named_parameters() order."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.AdamW(decay_groups(model, named=True), lr=1e-3)
    train(model, opt, 2)
    path = tmp_path / "named.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    result, data, _ = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    names = [n for g in data["groups"] for n in g["names"]]
    decay = [n for n, _ in model.named_parameters()
             if not (n.endswith("bias") or n.startswith("bn"))]
    assert names == decay + [n for n, _ in model.named_parameters() if n not in decay]
    assert data["optimizer"] == "AdamW"


def test_adafactor_shapes_are_rebuilt_from_row_and_col_var(tmp_path):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        opt.step()
    assert tuple(opt.state_dict()["state"][0]["row_var"].shape) == (5, 1)
    assert [param_shape(s, "Adafactor") for s in opt.state_dict()["state"].values()] == [
        tuple(p.shape) for p in model.parameters()]
    path = tmp_path / "adafactor.pt"
    torch.save(opt.state_dict(), path)
    result, data, _ = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["groups"][0]["shapes"] == ["5x6", "5", "2x5", "2"]
    assert "eps" not in data["hyperparams"]  # (None, 1e-3): no TOML null; the default


def test_cosine_is_inferred_lambdalr_is_not_invented(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    train_linear(model, opt, cos)
    path = tmp_path / "cos.pt"
    torch.save({"optimizer": opt.state_dict(), "scheduler": cos.state_dict()}, path)
    result, data, _ = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["scheduler"] == {"name": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-4}
    assert data["steps"] == 3  # SGD keeps no step: the scheduler's last_epoch

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9 ** e)
    train_linear(model, opt, lam)
    path = tmp_path / "lambda.pt"
    torch.save({"optimizer": opt.state_dict(), "scheduler": lam.state_dict()}, path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert "scheduler" not in data and data["hyperparams"]["lr"] == opt.param_groups[0]["lr"]
    assert "[scheduler] the checkpoint's scheduler is a LambdaLR or MultiplicativeLR: its " \
        "function is not stored, so it cannot be rebuilt; no [scheduler]" in comments(text)


def train_linear(model: nn.Module, opt: torch.optim.Optimizer, sched) -> None:
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        sched.step()


def test_a_param_without_state_gets_a_placeholder_and_a_comment(tmp_path):
    """A param that never had a gradient has no state, so no known shape: "1" and a
    comment; check accepts any shape for it (torch starts its state fresh)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model[1](torch.ones(2, 4)).sum().backward()  # the first layer gets no gradient
    opt.step()
    path = tmp_path / "fresh.pt"
    torch.save(opt.state_dict(), path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["groups"][0]["shapes"] == ["1", "1", "2x4", "2"]
    assert "params 0, 1: no state, shape unknown" in comments(text)


def test_a_param_without_state_takes_its_shape_from_the_model_that_names_it(tmp_path):
    """The same run saved with its model (the tutorial's container): the model names the
    stateless params and gives their true shapes, so no placeholder is needed."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model[1](torch.ones(2, 4)).sum().backward()  # the first layer gets no gradient
    opt.step()
    path = tmp_path / "fresh.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["groups"][0]["shapes"] == ["4x3", "4", "2x4", "2"]
    assert data["groups"][0]["names"] == [n for n, _ in model.named_parameters()]
    assert "shape unknown" not in comments(text)


TORCH_OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
                    "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "SparseAdam", "Adafactor",
                    "Muon"]


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_every_torch_optimizer_checks_clean_against_its_config(name, tmp_path):
    """Each torch.optim class, 2 real steps with its defaults: config + check exit 0
    (LBFGS's flat state: placeholder shapes that add up to its size, said in a comment)."""
    if not hasattr(torch.optim, name):
        pytest.skip(f"this torch has no torch.optim.{name}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    params = list(model.parameters())
    if name == "Muon":  # 2-D params only
        params = [p for p in params if p.dim() == 2]
    if name == "SparseAdam":
        model = nn.Embedding(5, 3, sparse=True)
        params = list(model.parameters())
    opt = getattr(torch.optim, name)(params)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        x = torch.tensor([1, 2]) if name == "SparseAdam" else torch.ones(2, 4)
        loss = model(x).square().sum()
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    path = tmp_path / f"{name}.pt"
    torch.save(opt.state_dict(), path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, (problems(result), text)
    assert data["optimizer"] == name
    if name == "LBFGS":
        assert data["groups"][0]["shapes"] == ["20", "1", "1", "1"]  # 12 + 3 + 6 + 2
        assert "LBFGS keeps one flat state (23 elements)" in comments(text)


def test_a_third_party_optimizer_gets_no_config():
    # timm's AdamP (issue #19: it used to be taken for RAdam)
    with pytest.raises(ConfigError, match="the state is timm AdamP's, not a torch.optim class"):
        config_from_checkpoint(ROOT / "tests/fixtures/third_party/timm_adamp")


# --------------------------------------------------------------------------- every fixture

# Fixtures optstate reads but for which `check --config <(config X)` does not exit 0,
# each with the reason (and the error or finding that shows it).
KNOWN_EXCEPTIONS = {
    "tests/fixtures/third_party/": (
        "a third-party optimizer (issue #19): a config builds torch.optim classes only, "
        "so config refuses ('cannot write a config')", None),
    "tests/fixtures/third_party_all/": (
        "third-party optimizers, one library's states per file (a file of one state is "
        "read): a config builds torch.optim classes only, so config refuses", None),
    "tests/fixtures/lowbit/bitsandbytes_": (
        "bitsandbytes' 8-bit state: not a torch.optim optimizer, config refuses", None),
    "tests/fixtures/lowbit/torchao_": (
        "torchao's low-bit state: torch.optim cannot load it, config refuses", None),
    # (the folder of all rank files is read as one whole state, and checks clean)
    "tests/fixtures/fsdp2/adamw_ws2/rank": (
        "one FSDP2 rank file holds DTensor shards: a config builds plain tensors, and torch "
        "cannot step DTensor state on them", "trial"),
}
CONFIGURABLE_THIRD_PARTY = ("tests/fixtures/third_party/torch_",  # torch's own classes
                            "tests/fixtures/third_party_all/torch/")


def _fixtures() -> list[Path]:
    out = []
    for root in (ROOT / "sample_checkpoints", ROOT / "tests/fixtures"):
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in (".json", ".md", ".txt", ".py", ".safetensors"):
                continue
            out.append(p)
    return out


def test_every_fixture_optstate_reads_checks_clean_against_its_own_config(tmp_path):
    import optstate

    readable, clean, excepted = 0, [], {}
    for p in _fixtures():
        rel = p.relative_to(ROOT).as_posix()
        try:
            optstate.inspect(p, stats=False)
        except OptstateError:
            continue  # inspect does not read it (no optimizer state, unsafe pickle ...)
        readable += 1
        known = next((v for k, v in KNOWN_EXCEPTIONS.items() if rel.startswith(k)
                      and not rel.startswith(CONFIGURABLE_THIRD_PARTY)), None)
        try:
            result, _, _ = check_with_config(p, tmp_path)
        except ConfigError as e:
            assert known is not None and known[1] is None, f"{rel}: {e}"
            assert "\n" not in str(e) and str(e).startswith("cannot write a config")
            excepted[rel] = known[0]
            continue
        if known is None:
            assert result.exit_code == 0, (rel, problems(result))
            clean.append(rel)
        else:
            assert result.exit_code != 0 and any(f.code == known[1] for f in result.findings)
            excepted[rel] = known[0]
    report = f"{len(clean)} of {readable} exit 0; {len(excepted)} known exceptions"
    print(report, clean)
    assert readable == len(clean) + len(excepted)
    assert {"sample_checkpoints/tutorial_cnn.pt", "sample_checkpoints/lightning.ckpt",
            "sample_checkpoints/hf-checkpoint-12",
            "tests/fixtures/hf_lightning/hf_trainer_bert_mlm/checkpoint-3",
            "tests/fixtures/hf_lightning/lightning_cnn_bn/model.ckpt",
            "tests/fixtures/third_party/torch_Adafactor",
            "tests/fixtures/third_party/torch_SGD_SWALR"} <= set(clean), report


# --------------------------------------------------------------------------- the CLI


def _bash(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    env.pop("OPTSTATE_DEBUG", None)
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


@pytest.mark.parametrize("ckpt", ["sample_checkpoints/adamw_scheduler.pt",
                                  "tests/fixtures/hf_lightning/lightning_cnn_bn/model.ckpt",
                                  "tests/fixtures/third_party/torch_SGD_SWALR"])
def test_check_with_process_substitution_exits_0(ckpt):
    opt = f"{shlex.quote(sys.executable)} -m optstate"
    r = _bash(f"{opt} check {ckpt} --config <({opt} config {ckpt})")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: load_state_dict works and the state matches the config" in r.stdout


def test_output_file_json_and_bad_input(tmp_path, run_cli):
    ckpt = ROOT / "sample_checkpoints/adam_two_groups.pt"
    out = tmp_path / "run.toml"
    r = run_cli("config", ckpt, "-o", out)
    assert r.returncode == 0 and r.stdout == "" and out.exists(), r.stderr
    assert tomllib.loads(out.read_text())["optimizer"] == "Adam"
    again = run_cli("config", ckpt, "-o", out)
    assert again.returncode == 2 and again.stderr.startswith("Error: ")
    assert "--force" in again.stderr
    assert run_cli("config", ckpt, "-o", out, "--force").returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name != "run.toml"]  # no temp left
    as_json = run_cli("config", ckpt, "--json")
    data = json.loads(as_json.stdout)
    assert data == tomllib.loads(out.read_text())
    cfg = tmp_path / "run.json"
    cfg.write_text(as_json.stdout)
    assert run_cli("check", ckpt, "--config", cfg).returncode == 0
    bad = run_cli("config", ROOT / "tests/fixtures/third_party/lion-pytorch_Lion")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("Error: cannot write a config: the state is lion-pytorch "
                                 "Lion's, not a torch.optim class")
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- schedulers

L = torch.optim.lr_scheduler
SCHEDULERS = {  # name -> (how to build it, the [scheduler] the config must hold or None)
    "StepLR": (lambda o: L.StepLR(o, 2, 0.5), {"step_size": 2, "gamma": 0.5}),
    "MultiStepLR": (lambda o: L.MultiStepLR(o, [1, 3], 0.3),
                    {"milestones": [1, 3], "gamma": 0.3}),
    "ConstantLR": (lambda o: L.ConstantLR(o, 0.5, 4), {"factor": 0.5, "total_iters": 4}),
    "LinearLR": (lambda o: L.LinearLR(o, 0.2, 1.0, 5),
                 {"start_factor": 0.2, "end_factor": 1.0, "total_iters": 5}),
    "ExponentialLR": (lambda o: L.ExponentialLR(o, 0.9), {"gamma": 0.9}),
    "PolynomialLR": (lambda o: L.PolynomialLR(o, 6, 2.0), {"total_iters": 6, "power": 2.0}),
    "CosineAnnealingLR": (lambda o: L.CosineAnnealingLR(o, 7, 1e-4),
                          {"T_max": 7, "eta_min": 1e-4}),
    "CosineAnnealingWarmRestarts": (lambda o: L.CosineAnnealingWarmRestarts(o, 2, 2, 1e-5),
                                    {"T_0": 2, "T_mult": 2, "eta_min": 1e-5}),
    "ReduceLROnPlateau": (lambda o: L.ReduceLROnPlateau(o, factor=0.5, patience=0),
                          {"factor": 0.5, "patience": 0}),
    "CyclicLR": (lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=2), None),
    "OneCycleLR": (lambda o: L.OneCycleLR(o, 0.1, total_steps=20), None),
    "LambdaLR": (lambda o: L.LambdaLR(o, lambda e: 0.9 ** e), None),
    "SequentialLR": (lambda o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.5, 2), L.ExponentialLR(o, 0.9)], [2]), None),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_is_rebuilt_or_said_why_not(name, tmp_path):
    """Two groups (their own lr), 5 real steps under the scheduler: its class is inferred
    from its state's settings when they give back its arguments, else a comment says why;
    check exits 0 either way."""
    make, expected = SCHEDULERS[name]
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}],
                          lr=0.1, momentum=0.9)
    sched = make(opt)
    for i in range(5):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        sched.step(1.0 / (i + 1)) if name == "ReduceLROnPlateau" else sched.step()
    path = tmp_path / "sched.pt"
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, (problems(result), text)
    if expected is None:
        assert "scheduler" not in data and "[scheduler] " in comments(text)
    else:
        assert data["scheduler"]["name"] == name
        assert expected.items() <= data["scheduler"].items()
        assert f"{name}: inferred from the scheduler state's settings" in comments(text)


def test_tied_weights_are_one_param_with_both_names(tmp_path):
    """An LM whose head shares the embedding's weight: parameters() yields it once, the
    model state_dict lists it twice; the config lists it once and says it is tied."""

    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(12, 6)
            self.mix = nn.Linear(6, 6)
            self.head = nn.Linear(6, 12, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.mix(self.embed(x))))

    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        x = torch.randint(0, 12, (4, 5))
        nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()
    path = tmp_path / "tied.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    result, data, text = check_with_config(path, tmp_path)
    assert result.exit_code == 0, problems(result)
    assert data["groups"][0]["names"] == [n for n, _ in model.named_parameters()]
    assert "embed.weight is also head.weight (tied: one parameter)" in comments(text)


def test_a_failed_config_in_the_pipeline_is_not_checked_as_defaults():
    """config refuses a third-party state; check then reads an empty file, which would be
    simulate's defaults (SGD on one 2x2 param): it says the config is empty instead."""
    ckpt = "tests/fixtures/third_party/timm_adamp"
    opt = f"{shlex.quote(sys.executable)} -m optstate"
    r = _bash(f"{opt} check {ckpt} --config <({opt} config {ckpt})")
    assert r.returncode == 2 and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 2 and errors[0].startswith("Error: cannot write a config")
    assert errors[1].startswith("Error: config /dev/fd/") and "is empty" in errors[1]


def test_the_header_says_where_names_came_from_and_what_order_they_assume(tmp_path):
    """Names matched to a model state_dict by order and shape rest on an assumption (each
    group lists its params in model order): the TOML header says so, where the model
    was, and why the rest are unnamed when some are."""
    from optstate.state.names import ORDER_ASSUMPTION

    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, 2)
    path = tmp_path / "tutorial.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    data, text = derived(path)
    assert [n for g in data["groups"] for n in g["names"]] == [
        n for n, _ in model.named_parameters()]
    said = comments(text)
    assert "the model state_dict at 'model_state_dict'" in said
    assert "matched by order and shape" in said and ORDER_ASSUMPTION in said
    # only the two same-shaped 16x16 layers' first is in the optimizer: which one it
    # is cannot be told, and the header says why it is unnamed
    torch.manual_seed(0)
    model = SmallCNN()
    part = torch.optim.Adam([model.fc2.weight, model.out.bias], lr=1e-3)
    train(model, part, 1)
    path = tmp_path / "part.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": part.state_dict()}, path)
    data, text = derived(path)
    said = comments(text)
    assert "names" not in data["groups"][0]
    assert "names: 1 of 2 from the model state_dict at 'model_state_dict'" in said
    assert "names: 1 of 2 params unnamed:" in said and ORDER_ASSUMPTION in said


def test_config_and_check_say_top_level_alike(tmp_path, cli):
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, opt, 1)
    path = tmp_path / "alone.pt"
    torch.save(opt.state_dict(), path)
    cfg = tmp_path / "run.toml"
    assert cli("config", path, "-o", cfg).exit_code == 0
    assert "the optimizer state at the top level" in comments(cfg.read_text())
    out = " ".join(cli("check", path, "--config", cfg).stdout.split())
    assert "(optimizer state at the top level)" in out
