"""``check`` with names on both sides: the checkpoint's params named as inspect names them
(param_names, a model state_dict beside, ``--model``), the config's groups listing names.
torch matches by position only; a reordering is named on both sides, a count mismatch
names what is missing or extra. Real CNN with BatchNorm, two groups, real training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from optstate.analysis.check import check_checkpoint
from optstate.analysis.config_from import config_from_checkpoint
from optstate.render.config_view import to_toml
from optstate.sim.build import build
from optstate.sim.config import read_config_file, spec_from_dict
from optstate.state.names import ORDER_ASSUMPTION
from tests.test_config_from import SmallCNN, decay_groups, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tutorial's container of a CNN with BatchNorm, Adam in two named groups (torch
    writes param_names), 3 real steps; and the config optstate derives from it."""
    tmp = tmp_path_factory.mktemp("names")
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(decay_groups(model, named=True), lr=1e-2)
    train(model, opt, 3)
    path = tmp / "tutorial.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    data = config_from_checkpoint(path).data
    return path, data, opt.state_dict()


def edited(tmp_path: Path, data: dict, group: int, names: list[str],
           shapes: list[str] | None = None) -> Path:
    new = json.loads(json.dumps(data))
    new["groups"][group]["names"] = names
    if shapes is not None:
        new["groups"][group]["shapes"] = shapes
    path = tmp_path / "edited.toml"
    path.write_text(to_toml(new))
    return path


def codes(result) -> list[tuple[str, str]]:
    return [(f.code, f.level) for f in result.findings if f.level != "info"]


def test_the_derived_config_lists_torchs_names_and_checks_clean(run, tmp_path):
    path, data, sd = run
    assert [g["names"] for g in data["groups"]] == [g["param_names"] for g in sd["param_groups"]]
    cfg = tmp_path / "same.toml"
    cfg.write_text(to_toml(data))
    assert check_checkpoint(path, cfg).exit_code == 0


def test_a_reordering_names_both_parameters(run, tmp_path):
    """fc2.weight and fc3.weight (both 16x16) swapped in the config: torch loads without
    a word and each gets the other's state; check names both moves."""
    path, data, sd = run
    names = list(data["groups"][0]["names"])
    i, j = names.index("fc2.weight"), names.index("fc3.weight")
    names[i], names[j] = names[j], names[i]
    cfg = edited(tmp_path, data, 0, names)
    result = check_checkpoint(path, cfg)
    assert codes(result) == [("names-reordered", "warn")]
    message = result.findings[0].message
    assert "`fc3.weight` gets the state of `fc2.weight`" in message
    assert "`fc2.weight` gets the state of `fc3.weight`" in message
    moves = result.findings[0].detail["moves"]
    assert [(m["checkpoint"], m["config"]) for m in moves] == [
        ("fc2.weight", "fc3.weight"), ("fc3.weight", "fc2.weight")]
    # torch: the config's fc3.weight really gets the state saved for fc2.weight
    built = build(spec_from_dict(read_config_file(cfg)))
    built.optimizer.load_state_dict(torch.load(path, weights_only=True)["optimizer_state_dict"])
    fc3 = built.params[built.names.index("fc3.weight")]
    saved_fc2 = sd["state"][sd["param_groups"][0]["param_names"].index("fc2.weight")]
    assert torch.equal(built.optimizer.state[fc3]["exp_avg"], saved_fc2["exp_avg"])


def test_one_name_fewer_lists_the_missing_name(run, tmp_path):
    path, data, _ = run
    names, shapes = list(data["groups"][1]["names"]), list(data["groups"][1]["shapes"])
    k = names.index("fc3.bias")
    del names[k], shapes[k]
    result = check_checkpoint(path, edited(tmp_path, data, 1, names, shapes))
    assert ("group-size", "fail") in codes(result) and ("names-differ", "warn") in codes(result)
    differ = next(f for f in result.findings if f.code == "names-differ")
    assert differ.detail["only_checkpoint"] == ["fc3.bias"]
    assert differ.detail["only_config"] == []
    assert "missing from the config: `fc3.bias`" in differ.message
    assert result.exit_code == 2


def test_one_name_more_lists_the_extra_name(run, tmp_path):
    path, data, _ = run
    names = [*data["groups"][1]["names"], "head.bias"]
    shapes = [*data["groups"][1]["shapes"], "3"]
    result = check_checkpoint(path, edited(tmp_path, data, 1, names, shapes))
    differ = next(f for f in result.findings if f.code == "names-differ")
    assert differ.detail["only_config"] == ["head.bias"] and differ.detail["only_checkpoint"] == []
    assert "only in the config: `head.bias`" in differ.message


def test_json_findings_carry_the_checkpoints_names(run, tmp_path, cli):
    """out.bias (3) and fc1.bias (16) swapped: each state has the other's shape; the
    state-shape findings carry the checkpoint's name of the param in --json."""
    path, data, sd = run
    names, shapes = list(data["groups"][1]["names"]), list(data["groups"][1]["shapes"])
    a, b = names.index("fc1.bias"), names.index("out.bias")
    names[a], names[b] = names[b], names[a]
    shapes[a], shapes[b] = shapes[b], shapes[a]
    r = cli("check", path, "--config", edited(tmp_path, data, 1, names, shapes), "--json")
    report = json.loads(r.stdout)
    assert r.exit_code == 2 and report["naming"]["source"] == "param_names"
    flat = [n for g in sd["param_groups"] for n in g["param_names"]]
    shape_findings = [f for f in report["findings"] if f["code"] == "state-shape"]
    assert shape_findings and {f["detail"]["name"] for f in shape_findings} == {
        "fc1.bias", "out.bias"}
    for f in shape_findings:
        assert flat[f["param"]] == f["detail"]["name"]


def test_model_file_names_an_optimizer_saved_alone(tmp_path, cli):
    """Adam from model.parameters() (no param_names), saved alone; the model's state_dict
    in its own file: check --model names the checkpoint side, and a config that lists the
    names in another order is caught by name. Without --model nothing is claimed."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, 2)
    ckpt, model_file = tmp_path / "optimizer.pt", tmp_path / "weights.pt"
    torch.save(opt.state_dict(), ckpt)
    torch.save(model.state_dict(), model_file)
    derived = config_from_checkpoint(ckpt, model_file=model_file)
    torch_names = [n for n, _ in model.named_parameters()]
    assert derived.data["groups"][0]["names"] == torch_names
    names = list(torch_names)
    i, j = names.index("fc2.weight"), names.index("fc3.weight")
    names[i], names[j] = names[j], names[i]
    cfg = edited(tmp_path, derived.data, 0, names)
    named = check_checkpoint(ckpt, cfg, model_file=model_file)
    # the model file's names are matched by order: the move is told, as conditional
    assert codes(named) == [] and named.exit_code == 0
    move = next(f for f in named.findings if f.code == "names-reordered")
    assert move.level == "info" and "`fc3.weight` gets the state of `fc2.weight`" in move.message
    unnamed = check_checkpoint(ckpt, cfg)
    assert codes(unnamed) == [] and unnamed.exit_code == 0
    assert not any(f.code.startswith("names-") for f in unnamed.findings)
    r = cli("check", ckpt, "--config", cfg, "--model", model_file)
    assert r.exit_code == 0 and "fc3.weight` gets the state of `fc2.weight" in \
        " ".join(r.stdout.split())


# --------------------------------------------------------------------------- names by order


class AutoEncoder(torch.nn.Module):
    """Two layers of one shape: order and shape alone cannot tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(8, 8)
        self.decoder = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(x)))


@pytest.fixture(scope="module")
def decoder_first(tmp_path_factory):
    """Adam([*decoder.parameters(), *encoder.parameters()]) (not model order), 3 real
    steps, saved in the tutorial's container without param_names; and the config that
    lists the params as the optimizer really holds them (the truth, from torch's ids)."""
    tmp = tmp_path_factory.mktemp("decoder_first")
    torch.manual_seed(0)
    model = AutoEncoder()
    opt = torch.optim.Adam([*model.decoder.parameters(), *model.encoder.parameters()],
                           lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=gen)).pow(2).mean().backward()
        opt.step()
    path = tmp / "checkpoint.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    id2name = {id(p): n for n, p in model.named_parameters()}
    truth = [id2name[id(p)] for g in opt.param_groups for p in g["params"]]
    data = config_from_checkpoint(path).data
    data["groups"][0]["names"] = truth
    cfg = tmp / "true_order.toml"
    cfg.write_text(to_toml(data))
    return path, cfg, truth, opt.state_dict()


def test_a_reorder_seen_through_names_matched_by_order_is_only_conditional(decoder_first):
    """The checkpoint's names come from its model state_dict, matched by order: they assume
    model order, which this optimizer did not use. The config lists the true order, so
    the load is right (torch: the config's decoder.weight gets decoder's saved state);
    check must not warn of a reorder as a certainty, only say what it would mean."""
    path, cfg, truth, sd = decoder_first
    assert truth[0] == "decoder.weight"
    result = check_checkpoint(path, cfg)
    assert result.naming["source"] == "model_state_dict"
    assert result.exit_code == 0, [(f.code, f.level, f.message) for f in result.findings]
    reordered = next(f for f in result.findings if f.code == "names-reordered")
    assert reordered.level == "info" and reordered.detail["conditional"] is True
    assert reordered.message.startswith("if the optimizer listed its params in model order")
    assert "the model state_dict at 'model_state_dict'" in reordered.message
    # torch: loading into the config's optimizer gives decoder.weight decoder's state
    built = build(spec_from_dict(read_config_file(cfg)))
    built.optimizer.load_state_dict(torch.load(path, weights_only=True)["optimizer_state_dict"])
    dec = built.params[built.names.index("decoder.weight")]
    assert torch.equal(built.optimizer.state[dec]["exp_avg"], sd["state"][0]["exp_avg"])


def test_names_differ_through_names_matched_by_order_is_only_conditional(decoder_first,
                                                                         tmp_path):
    path, cfg, truth, _ = decoder_first
    data = read_config_file(cfg)
    data["groups"][0]["names"] = [n.replace("encoder", "enc") for n in truth]
    other = tmp_path / "renamed.toml"
    other.write_text(to_toml(data))
    result = check_checkpoint(path, other)
    differ = next(f for f in result.findings if f.code == "names-differ")
    assert differ.level == "info" and differ.detail["conditional"] is True
    assert result.exit_code == 0


def test_check_says_where_names_came_from_and_when_they_were_not_compared(
        decoder_first, tmp_path, cli):
    path, cfg, _, sd = decoder_first
    out = " ".join(cli("check", path, "--config", cfg).stdout.split())
    assert "names 4 of 4 from the model state_dict at 'model_state_dict' (matched by order " \
        "and shape)" in out
    assert ORDER_ASSUMPTION in out
    alone = tmp_path / "optimizer.pt"
    torch.save(sd, alone)
    r = cli("check", alone, "--config", cfg)
    text = " ".join(r.stdout.split())
    assert r.exit_code == 0
    assert "names not compared: the checkpoint has none (--model FILE names them)" in text
    assert "optimizer state at the top level" in text and "(top level)" not in text
    assert "names not compared" not in out
