"""Parameter names in ``optstate diff``: each side named (``state.names``), names as labels of
params matched by position, ``--param GLOB``, ``--model FILE``. Real models, real training
loops; every name is checked against ``model.named_parameters()``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import optstate.api


class CNN(nn.Module):
    """The tutorial's small CNN, with BatchNorm (buffers between the parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class RenamedCNN(CNN):
    """The same layers under other attribute names: other state_dict keys, same shapes."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _train(model: nn.Module, steps: int, *, named: bool = False, seed: int = 0,
           lr_after_3: float | None = None):
    """Adam on real batches for ``steps`` steps; yields (step, optimizer) after each."""
    torch.manual_seed(seed)
    params = model.named_parameters() if named else model.parameters()
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        yield step, opt, loss.item()
        if step == 3 and lr_after_3 is not None:
            for g in opt.param_groups:
                g["lr"] = lr_after_3


def _tutorial_pair(folder, model_cls=CNN, *, named: bool = False, seed: int = 0):
    """ckpt3.pt and ckpt5.pt: the tutorial's {"epoch", "model_state_dict",
    "optimizer_state_dict", "loss"} after 3 and 5 Adam steps (lr 1e-3 -> 5e-4 after 3).
    Returns the model's parameter names in order, as torch gives them."""
    torch.manual_seed(seed)
    model = model_cls()
    for step, opt, loss in _train(model, 5, named=named, seed=seed, lr_after_3=5e-4):
        if step in (3, 5):
            torch.save({"epoch": step, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": opt.state_dict(), "loss": loss},
                       folder / f"ckpt{step}.pt")
    return [n for n, _ in model.named_parameters()]


def _alone_pair(folder):
    """opt3.pt and opt5.pt: the optimizer state_dict saved alone; model.pt: the model's
    state_dict (torch.save). Returns named_parameters() names."""
    torch.manual_seed(0)
    model = CNN()
    for step, opt, _ in _train(model, 5):
        if step in (3, 5):
            torch.save(opt.state_dict(), folder / f"opt{step}.pt")
    torch.save(model.state_dict(), folder / "model.pt")
    return [n for n, _ in model.named_parameters()]


def _position(path: str) -> int:
    """3 from 'state[3].exp_avg'."""
    return int(path.split("[", 1)[1].split("]", 1)[0])


def _param_changes(rep):
    return [c for c in rep["changes"] + rep.get("same", []) if c["path"].startswith("state[")]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tutorial_checkpoints_name_every_change_as_torch_does(cli, here):
    names = _tutorial_pair(here)
    r = cli("diff", "--json", "--verbose", "ckpt3.pt", "ckpt5.pt")
    assert r.exit_code == 1, r.stderr
    rep = json.loads(r.stdout)
    assert rep["options"]["match"] == "position"  # a model's names label; they never pair
    for side in "ab":
        n = rep["naming"][side]
        assert (n["source"], n["named"], n["total"]) == ("model_state_dict", 10, 10)
    changes = _param_changes(rep)
    # every entry of every param: exp_avg, exp_avg_sq (values) and step, differ or equal
    assert {_position(c["path"]) for c in changes} == set(range(len(names)))
    assert len(changes) == 3 * len(names)
    for c in changes:
        assert c["name"] == names[_position(c["path"])], c
        assert c["name_source"] == "model_state_dict"
    assert {c["path"] for c in rep["changes"] if not c["path"].startswith("state[")} == {
        "param_groups[0].lr"}
    # the human view: the name beside each path
    r = cli("diff", "--max-diffs", "100", "ckpt3.pt", "ckpt5.pt")
    lines = r.stdout.splitlines()
    assert lines[2].startswith("names a, b: 10 of 10 from the model state_dict at "
                               "'model_state_dict'"), lines[2]
    row = next(line for line in lines if "state[2].step " in line)
    assert row.split("│")[1:4] == [" state[2].step      ", " bn1.weight   ", " changed "]


def test_param_glob_compares_only_those_params_and_every_hyperparameter(cli, here):
    names = _tutorial_pair(here)
    rep = json.loads(cli("diff", "--json", "--param", "conv*", "ckpt3.pt", "ckpt5.pt").stdout)
    assert rep["options"]["params"] == ["conv*"]
    state = _param_changes(rep)
    conv = {n for n in names if n.startswith("conv")}
    assert {c["name"] for c in state} == conv == {"conv1.weight", "conv1.bias",
                                                   "conv2.weight", "conv2.bias"}
    assert {_position(c["path"]) for c in state} == {names.index(n) for n in conv}
    assert any(c["path"] == "param_groups[0].lr" for c in rep["changes"])
    assert any("4 of 10 params compared (--param conv*)" in n for n in rep["notes"])
    # several globs: their union; a position too
    rep = json.loads(cli("diff", "--json", "-p", "*.bias", "-p", "0", "ckpt3.pt",
                         "ckpt5.pt").stdout)
    assert {c["name"] for c in _param_changes(rep)} == {
        n for n in names if n.endswith(".bias")} | {names[0]}


def test_param_glob_matching_nothing_is_one_error_line(cli, here):
    _tutorial_pair(here)
    r = cli("diff", "--param", "conv1.wieght", "ckpt3.pt", "ckpt5.pt")
    assert r.exit_code == 2
    err = r.stderr.splitlines()
    assert err[0] == ("Error: --param 'conv1.wieght': no parameter of a or b has a name it "
                      "matches; did you mean 'conv1.weight'?")
    assert err[1:] == ["Hint: names here come from model_state_dict (a), model_state_dict "
                       "(b); or give a position (positions 0..9)"]
    assert r.stdout == ""
    _alone_pair(here)  # no names at all: only a position selects
    r = cli("diff", "--param", "conv*", "opt3.pt", "opt5.pt")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        "Error: --param 'conv*': neither checkpoint names its params, so only a position "
        "selects one (positions 0..9)")
    assert "Traceback" not in r.stderr
    assert cli("diff", "--param", "10", "opt3.pt", "opt5.pt").exit_code == 2


def test_model_file_names_optimizer_states_saved_alone(cli, here):
    names = _alone_pair(here)
    plain = json.loads(cli("diff", "--json", "opt3.pt", "opt5.pt").stdout)
    assert all(c["name"] is None and c["name_source"] is None for c in _param_changes(plain))
    assert plain["naming"]["a"]["named"] == 0
    rep = json.loads(cli("diff", "--json", "--model", "model.pt", "opt3.pt", "opt5.pt").stdout)
    assert [rep["naming"][s]["source"] for s in "ab"] == ["model_file", "model_file"]
    changes = _param_changes(rep)
    assert {_position(c["path"]) for c in changes} == set(range(len(names)))
    for c in changes:
        assert (c["name"], c["name_source"]) == (names[_position(c["path"])], "model_file")
    # the same through the Python API, with a glob
    api = optstate.api.diff(here / "opt3.pt", here / "opt5.pt", model=here / "model.pt",
                            params=["fc.*", 0])
    assert {c["name"] for c in _param_changes(api)} == {"fc.weight", "fc.bias", names[0]}
    assert api["options"]["params"] == ["fc.*", "0"]
    r = cli("diff", "--model", "missing.pt", "opt3.pt", "opt5.pt")
    assert r.exit_code == 2 and r.stderr.startswith("Error: ")


def test_param_names_on_both_sides_still_pair_by_name(cli, here):
    """Regression: names the checkpoints carry themselves (param_names) pair params by
    name, even beside a model state_dict; a reordered optimizer is 'reordered'."""
    names = _tutorial_pair(here, named=True)
    rep = json.loads(cli("diff", "--json", "ckpt3.pt", "ckpt5.pt").stdout)
    assert rep["options"]["match"] == "name"
    assert [rep["naming"][s]["source"] for s in "ab"] == ["param_names", "param_names"]
    changes = _param_changes(rep)
    assert {c["name"] for c in changes} == set(names)
    for c in changes:
        assert c["path"].startswith(f'state["{c["name"]}"].')
        assert c["name_source"] == "param_names"
    # b's optimizer lists the params in reverse order: paired by name, reported as moved
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(list(model.named_parameters())[::-1], lr=1e-3)
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([1, 2])).backward()
    opt.step()
    torch.save(opt.state_dict(), here / "reversed.pt")
    rep = json.loads(cli("diff", "--json", "ckpt3.pt", "reversed.pt").stdout)
    assert rep["options"]["match"] == "name"
    reordered = {c["name"]: (c["before"], c["after"]) for c in rep["changes"]
                 if c["kind"] == "reordered"}
    assert reordered["conv1.weight"] == (0, len(names) - 1)
    assert reordered["fc.bias"] == (len(names) - 1, 0)


def test_two_models_naming_one_position_differently_is_renamed_not_labelled(cli, here):
    """a's model calls position 0 'conv1.weight', b's 'features.0.weight': matched by
    position, the two names are a 'renamed' change and no change is labelled with either."""
    names_a = _tutorial_pair(here)
    (here / "ckpt3.pt").rename(here / "a.pt")
    names_b = _tutorial_pair(here, RenamedCNN)
    rep = json.loads(cli("diff", "--json", "a.pt", "ckpt5.pt").stdout)
    assert rep["options"]["match"] == "position"
    renamed = [c for c in rep["changes"] if c["kind"] == "renamed"]
    assert [(c["before"], c["after"]) for c in renamed] == list(zip(names_a, names_b,
                                                                  strict=True))
    assert all(c["name"] is None for c in _param_changes(rep))


def test_names_from_one_side_label_the_pair_and_say_so(cli, here):
    names = _tutorial_pair(here)
    _alone_pair(here)
    rep = json.loads(cli("diff", "--json", "ckpt3.pt", "opt5.pt").stdout)
    assert rep["naming"]["a"]["named"] == 10 and rep["naming"]["b"]["named"] == 0
    for c in _param_changes(rep):
        assert c["name"] == names[_position(c["path"])]
    assert ("names come from a only (b has none): b's params are the ones at the same "
            "positions, as load_state_dict pairs them") in rep["notes"]


def test_ignore_skips_a_param_by_its_derived_name(cli, here):
    names = _tutorial_pair(here)
    rep = json.loads(cli("diff", "--json", "--ignore", "bn2.bias", "ckpt3.pt",
                         "ckpt5.pt").stdout)
    assert rep["counts"]["ignored"] == 1
    left = {c["name"] for c in _param_changes(rep)}
    assert left == set(names) - {"bn2.bias"}


FIXTURES = Path(__file__).parent / "fixtures" / "hf_lightning"


def _expected_positions(folder: Path) -> list[str]:
    """The names torch gave each optimizer position, per the generator's expected.json
    (param_groups mapped by identity to named_parameters(), in group order)."""
    expected = json.loads((folder / "expected.json").read_text())
    return [n for g in expected["param_groups"] for n in g["names"]]


def test_real_lightning_checkpoint_diff_names_match_torch(cli):
    folder = FIXTURES / "lightning_cnn_bn"
    names = _expected_positions(folder)
    r = cli("diff", "--json", "--verbose", folder / "model.ckpt", folder / "model.ckpt")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["naming"]["a"]["source"] == "model_state_dict"
    items = _param_changes(rep)
    assert {_position(c["path"]) for c in items} == set(range(len(names)))
    assert all(c["name"] == names[_position(c["path"])] for c in items)
    rep = json.loads(cli("diff", "--json", "--verbose", "--param", "head.*",
                         folder / "model.ckpt", folder / "model.ckpt").stdout)
    assert {c["name"] for c in _param_changes(rep)} == {"head.weight", "head.bias"}
    assert any(c["path"] == "param_groups[1].lr" for c in rep["same"])  # groups still compared


def test_real_trainer_folder_diff_names_and_tied_alias(cli):
    pytest.importorskip("transformers")
    folder = FIXTURES / "hf_trainer_bert_mlm"
    names = _expected_positions(folder)
    ckpt = folder / "checkpoint-3"
    rep = json.loads(cli("diff", "--json", "--verbose", ckpt, ckpt).stdout)
    assert rep["equal"] is True
    assert rep["naming"]["a"]["source"] == rep["naming"]["b"]["source"] == "hf_trainer_rule"
    items = _param_changes(rep)
    assert {_position(c["path"]) for c in items} == set(range(len(names)))
    assert all(c["name"] == names[_position(c["path"])] for c in items)
    # the tied decoder weight is one param with two names: its alias selects it
    rep = json.loads(cli("diff", "--json", "--verbose", "--param",
                         "cls.predictions.decoder.weight", ckpt, ckpt).stdout)
    assert {c["name"] for c in _param_changes(rep)} == {
        "bert.embeddings.word_embeddings.weight"}


def test_accelerate_safetensors_against_bin_labels_each_position_from_the_side_that_knows(cli):
    """model.safetensors lists tensors by name: some of a's same-shaped params stay unnamed;
    pytorch_model.bin keeps the model's order: b names all. Each label is torch's name."""
    cases = Path(__file__).parent / "fixtures" / "names"
    truth = json.loads((cases / "c_accelerate_mlp" / "truth.json").read_text())
    names = [n for g in truth["optimizers"][0]["param_groups"] for n in g["names"]]
    rep = json.loads(cli("diff", "--json", "--verbose", cases / "c_accelerate_mlp" / "state",
                         cases / "c2_accelerate_mlp_bin" / "state").stdout)
    assert rep["naming"]["b"]["named"] == len(names)
    assert 0 < rep["naming"]["a"]["named"] < len(names)  # shapes alone cannot tell (16,)s
    items = _param_changes(rep)
    assert {_position(c["path"]) for c in items} == set(range(len(names)))
    assert all(c["name"] == names[_position(c["path"])] for c in items)
