"""Parameter names derived for an optimizer state (``optstate.state.names``), checked
against what torch itself says: ``model.named_parameters()`` of real models after real
training steps, and the committed Lightning / Hugging Face Trainer fixtures'
expected.json (written by scripts/fixtures/make_hf_lightning.py with the real libraries).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from optstate.analysis.inspect import inspect_path
from optstate.base.errors import CheckpointError
from optstate.state.names import slot_shape

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hf_lightning"


class CNN(nn.Module):
    """The tutorial's kind of model: conv, BatchNorm (buffers in its state_dict), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class TinyLM(nn.Module):
    """Tied embeddings: head.weight is embed.weight (parameters() yields it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.linear = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.linear(self.embed(ids))))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    """Real training steps on random data (inputs shaped for the model)."""
    torch.manual_seed(0)
    for _ in range(steps):
        if isinstance(model, TinyLM):
            loss = model(torch.randint(0, 10, (4, 5))).logsumexp(-1).mean()
        elif isinstance(model, CNN):
            loss = nn.functional.cross_entropy(model(torch.randn(5, 1, 8, 8)),
                                               torch.randint(0, 3, (5,)))
        else:
            first = next(m for m in model.modules() if isinstance(m, nn.Linear))
            loss = model(torch.randn(5, first.in_features)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _names(report: dict) -> list[str | None]:
    return [p["name"] for p in report["params"]]


def _param_names(model: nn.Module, keep=lambda n: True) -> list[str]:
    return [n for n, p in model.named_parameters() if keep(n) and p.requires_grad]


def test_tutorial_container_cnn_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    assert "param_names" not in opt.state_dict()["param_groups"][0]  # names must be derived
    path = tmp_path / "ckpt.tar"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": 0.25}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model)
    assert {p["name_source"] for p in report["params"]} == {"model_state_dict"}
    naming = report["naming"]
    assert naming["source"] == "model_state_dict"
    assert (naming["named"], naming["total"]) == (6, 6)
    assert "model_state_dict" in naming["model"] and naming["reason"] is None
    assert report["param_groups"][0]["names"] == _param_names(model)


def test_model_and_optimizer_keys_sgd_momentum_same_shaped_layers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model)  # same shapes, told apart by order
    assert report["naming"]["matched"] == "order and shape"


def test_tied_embeddings_one_param_two_names(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, opt)
    assert len(model.state_dict()) == 4 and len(list(model.parameters())) == 3
    path = tmp_path / "lm.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model) == ["embed.weight", "linear.weight",
                                                     "linear.bias"]
    assert report["params"][0]["aliases"] == ["head.weight"]
    assert all(p["aliases"] == [] for p in report["params"][1:])


def test_several_groups_from_named_parameter_filters(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 3))  # 8x8 would be backbone.2's shape: ambiguous
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    opt = torch.optim.Adam([{"params": head, "lr": 1e-3},  # head first: not model order
                            {"params": backbone, "lr": 1e-4}])
    _train(model, opt)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    want_head = _param_names(model, lambda n: n.startswith("head."))
    want_backbone = _param_names(model, lambda n: n.startswith("backbone."))
    assert [g["names"] for g in report["param_groups"]] == [want_head, want_backbone]
    assert _names(report) == want_head + want_backbone


def test_frozen_layer_is_skipped(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                          nn.Linear(5, 2))
    for p in model[2].parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    _train(model, opt)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model) == ["0.weight", "0.bias", "4.weight",
                                                     "4.bias"]


def test_same_shaped_layers_in_two_groups_stay_unnamed(tmp_path):
    """a.weight and b.weight are both 4x4, one in each group: order cannot tell which
    group holds which, so neither is named (never a guess); c.weight is certain."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("a", nn.Linear(4, 4, bias=False))
    model.add_module("b", nn.Linear(4, 4, bias=False))
    model.add_module("c", nn.Linear(4, 2, bias=False))
    opt = torch.optim.Adam([{"params": [model.b.weight, model.c.weight]},
                            {"params": [model.a.weight], "lr": 1e-4}])
    _train(model, opt)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == [None, "c.weight", None]
    naming = report["naming"]
    assert (naming["named"], naming["total"]) == (1, 3)
    assert naming["reason"].startswith("2 of 3 params unnamed: ")
    assert report["params"][0]["name_source"] is None


def test_adafactor_factored_state_gives_the_param_shape(tmp_path):
    torch.manual_seed(0)
    # The frozen 3x6 layer between makes the shapes matter: a slot of unknown shape would
    # fit it too, and the later layers could not be named for sure.
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(3, 2))
    for p in model[1].parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adafactor([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _train(model, opt)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert "row_var" in opt.state[trained[0]]
    assert [slot_shape(opt.state[p]) for p in trained] == [tuple(p.shape) for p in trained]
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model) == ["0.weight", "0.bias", "2.weight",
                                                     "2.bias"]


def test_slot_shape_unknown_for_empty_or_scalar_state():
    assert slot_shape({}) is None
    assert slot_shape({"step": torch.tensor(3.0)}) is None
    assert slot_shape({"step": torch.tensor(1.0), "exp_avg": torch.zeros(2, 3),
                       "exp_avg_sq": torch.zeros(2, 3)}) == (2, 3)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A minimal safetensors writer (the format: 8-byte header length, JSON header, data),
    tensors sorted by name as the safetensors library writes them."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _optimizer_alone(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 7))
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    path = tmp_path / "optimizer.pth"
    torch.save(opt.state_dict(), path)
    return model, path


def test_optimizer_saved_alone_has_no_names_and_says_so(tmp_path):
    _, path = _optimizer_alone(tmp_path)
    report = inspect_path(path, stats=False)
    assert _names(report) == [None] * 4
    assert report["naming"]["source"] is None
    assert "no model state_dict" in report["naming"]["reason"]


def test_model_file_torch_save_state_dict(tmp_path):
    model, path = _optimizer_alone(tmp_path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    report = inspect_path(path, stats=False, model=tmp_path / "model.pt")
    assert _names(report) == _param_names(model)
    assert {p["name_source"] for p in report["params"]} == {"model_file"}
    assert report["naming"]["matched"] == "order and shape"


def test_model_file_safetensors(tmp_path):
    """A safetensors file lists tensors by name; every shape here is unique, so shape
    alone names each param, and each name is the one torch gives."""
    model, path = _optimizer_alone(tmp_path)
    _write_safetensors(tmp_path / "model.safetensors", model.state_dict())
    report = inspect_path(path, stats=False, model=tmp_path / "model.safetensors")
    assert _names(report) == _param_names(model)
    assert report["naming"]["source"] == "model_file"
    assert report["naming"]["matched"] == "shape"


def test_model_file_missing_or_not_a_model(tmp_path):
    _, path = _optimizer_alone(tmp_path)
    with pytest.raises(CheckpointError):
        inspect_path(path, stats=False, model=tmp_path / "nope.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        inspect_path(path, stats=False, model=tmp_path / "junk.pt")


def test_checkpoint_param_names_win_over_a_model_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 7))
    opt = torch.optim.Adam(model.named_parameters())
    _train(model, opt)
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    report = inspect_path(path, stats=False, model=tmp_path / "model.pt")
    assert _names(report) == _param_names(model)
    assert report["naming"]["source"] == "param_names"
    assert report["naming"]["notes"]


def test_lightning_fixture_names_match_expected():
    expected = json.loads((FIXTURES / "lightning_cnn_bn" / "expected.json").read_text())
    report = inspect_path(FIXTURES / "lightning_cnn_bn" / "model.ckpt", stats=False)
    assert [g["names"] for g in report["param_groups"]] == [
        g["names"] for g in expected["param_groups"]]
    assert report["naming"]["source"] == "model_state_dict"
    assert report["naming"]["model"] == "the model state_dict at 'state_dict'"


TRAINER = FIXTURES / "hf_trainer_bert_mlm"


def test_trainer_folder_with_transformers_names_every_param():
    pytest.importorskip("transformers")
    expected = json.loads((TRAINER / "expected.json").read_text())
    report = inspect_path(TRAINER / "checkpoint-3", stats=False)
    assert [g["names"] for g in report["param_groups"]] == [
        g["names"] for g in expected["param_groups"]]
    assert report["naming"]["source"] == "hf_trainer_rule"
    assert report["naming"]["named"] == report["naming"]["total"] > 30


def test_trainer_folder_without_transformers_names_only_unique_shapes():
    """transformers blocked: model.safetensors is sorted by name, so only shapes unique
    within a group can be named, each right; the reason says transformers is missing."""
    code = (
        "import sys, json; sys.modules['transformers'] = None\n"
        "from optstate.analysis.inspect import inspect_path\n"
        f"r = inspect_path({str(TRAINER / 'checkpoint-3')!r}, stats=False)\n"
        "print(json.dumps({'names': [g['names'] for g in r['param_groups']],"
        " 'naming': r['naming']}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = json.loads((TRAINER / "expected.json").read_text())
    want = [g["names"] for g in expected["param_groups"]]
    pairs = [(n, w) for gn, gw in zip(got["names"], want, strict=True)
             for n, w in zip(gn or [None] * len(gw), gw, strict=True)]
    named = [(n, w) for n, w in pairs if n is not None]
    assert named and all(n == w for n, w in named)  # each name given is right
    assert len(named) < len(pairs)  # the query/key/value weights share shapes
    assert "transformers" in got["naming"]["reason"]


def test_api_inspect_takes_a_model_file(tmp_path):
    import optstate

    model, path = _optimizer_alone(tmp_path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    report = optstate.inspect(path, stats=False, model=tmp_path / "model.pt")
    assert _names(report) == _param_names(model)
    assert report["naming"]["model"] is not None


def test_names_by_order_state_their_assumption(tmp_path):
    """Nothing in a state says in which order a group lists its params: every name matched
    by order says what it assumes; the Trainer's groups (built from named_parameters())
    need no such note."""
    from optstate.state.names import ORDER_ASSUMPTION

    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               path)
    assert ORDER_ASSUMPTION in inspect_path(path, stats=False)["naming"]["notes"]
    if TRAINER.is_dir():
        pytest.importorskip("transformers")
        naming = inspect_path(TRAINER / "checkpoint-3", stats=False)["naming"]
        assert naming["source"] == "hf_trainer_rule" and ORDER_ASSUMPTION not in naming["notes"]


class NormLM(nn.Module):
    """GPT-2's naming: its LayerNorm is 'ln_f', which only the module type marks no-decay."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(12, 6)
        self.ln_f = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.wte(ids))).mean(1)


def test_trainer_rule_is_not_applied_when_a_module_type_decides(tmp_path):
    """A Trainer folder without config.json (no skeleton): its pytorch_model.bin gives the
    order but not the module types, so the rule cannot say where ln_f.weight goes; it is
    not applied (said in a note) and the names come from order and shape, each right."""
    torch.manual_seed(0)
    model = NormLM()
    no_decay = {"ln_f.weight", "ln_f.bias", "head.bias"}  # the Trainer's rule, by type
    groups = [{"params": [p for n, p in model.named_parameters() if n not in no_decay],
               "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n in no_decay],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randint(0, 12, (4, 5))).pow(2).mean().backward()
        opt.step()
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text('{"global_step": 2}')
    report = inspect_path(folder, stats=False)
    want = [[n for n, _ in model.named_parameters() if n not in no_decay],
            [n for n, _ in model.named_parameters() if n in no_decay]]
    got = [g["names"] for g in report["param_groups"]]
    for gg, gw in zip(got, want, strict=True):
        assert all(n is None or n == w for n, w in zip(gg, gw, strict=True))
    assert report["naming"]["source"] == "model_state_dict"
    assert any("rule was not applied" in n and "ln_f.weight" in n
               for n in report["naming"]["notes"])


class Actor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.torso = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.torso(x)))


class Critic(nn.Module):
    """The actor's shapes under other names."""

    def __init__(self) -> None:
        super().__init__()
        self.value_net = nn.Linear(4, 8)
        self.value_head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_head(torch.relu(self.value_net(x)))


def _actor_critic(tmp_path: Path, critic_saved: bool) -> tuple[Path, nn.Module, nn.Module]:
    """Two models with the same shapes and an optimizer each (A2C), in one container."""
    torch.manual_seed(0)
    actor, critic = Actor(), Critic()
    opt_a = torch.optim.Adam(actor.parameters(), lr=1e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(2):
        for model, opt in ((actor, opt_a), (critic, opt_c)):
            opt.zero_grad()
            model(torch.randn(3, 4)).pow(2).mean().backward()
            opt.step()
    ckpt = {"model": actor.state_dict(), "optimizer": opt_a.state_dict(),
            "critic_optimizer": opt_c.state_dict()}
    if critic_saved:
        ckpt["critic"] = critic.state_dict()
    path = tmp_path / "a2c.pt"
    torch.save(ckpt, path)
    return path, actor, critic


def test_two_different_models_in_one_container_name_nothing(tmp_path):
    """{model: actor, critic: critic, optimizer, critic_optimizer}: nothing says which
    model goes with which optimizer (the critic's would get the actor's names)."""
    path, _, _ = _actor_critic(tmp_path, critic_saved=True)
    for key in ("optimizer", "critic_optimizer"):
        naming = inspect_path(path, key=key, stats=False)["naming"]
        assert naming["named"] == 0
        assert "2 different model state_dicts ('model', 'critic')" in naming["reason"]


def test_one_model_for_two_optimizers_that_it_cannot_both_hold(tmp_path):
    """Only the actor saved: its 4 tensors cannot hold both optimizers' 8 params, so the
    critic's optimizer (shaped like the actor) is not named from it."""
    path, _, _ = _actor_critic(tmp_path, critic_saved=False)
    naming = inspect_path(path, key="critic_optimizer", stats=False)["naming"]
    assert naming["named"] == 0
    assert "2 optimizer states (8 params in all)" in naming["reason"]


def test_an_ema_copy_beside_the_model_does_not_stop_the_names(tmp_path):
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    path = tmp_path / "ema.pt"
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": model.state_dict(),
                "optimizer": opt.state_dict()}, path)
    report = inspect_path(path, stats=False)
    assert _names(report) == _param_names(model)
    assert report["naming"]["model"] == "the model state_dict at 'state_dict'"


def test_a_model_without_the_optimizers_shapes_is_not_its_model(tmp_path):
    """A model that has no tensor of some param's shape is another model: nothing is named
    from it, even the params whose shapes it does have."""
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 9))
    path = tmp_path / "mixed.pt"
    torch.save({"model_state_dict": other.state_dict() | {"extra.weight": torch.zeros(4, 4),
                                                          "extra.bias": torch.zeros(3)},
                "optimizer_state_dict": opt.state_dict()}, path)
    naming = inspect_path(path, stats=False)["naming"]
    assert naming["named"] == 0 and "it is not this optimizer's model" in naming["reason"]


def test_accelerate_second_optimizer_pairs_with_the_second_model(tmp_path):
    """accelerate's save_state numbers a second model and optimizer alike:
    optimizer_1.bin goes with pytorch_model_1.bin, never the first model's file."""
    torch.manual_seed(0)
    gen, disc = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 4)), Actor()
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    for i, m in enumerate((gen, disc)):
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        opt.zero_grad()
        m(torch.randn(2, 3 if m is gen else 4)).sum().backward()
        opt.step()
        suffix = f"_{i}" if i else ""
        torch.save(m.state_dict(), folder / f"pytorch_model{suffix}.bin")
        torch.save(opt.state_dict(), folder / f"optimizer{suffix}.bin")
    report = inspect_path(folder / "optimizer_1.bin", stats=False)
    assert _names(report) == _param_names(disc)
    assert report["naming"]["model"] == "pytorch_model_1.bin"
    (folder / "pytorch_model_1.bin").unlink()
    naming = inspect_path(folder / "optimizer_1.bin", stats=False)["naming"]
    assert naming["named"] == 0 and "pytorch_model_1.bin" in naming["reason"]


def test_model_option_takes_a_hugging_face_folder_or_its_config(tmp_path):
    """--model DIR (or DIR/config.json): the model built from config.json gives every
    name of an optimizer.pt copied out of its Trainer folder."""
    pytest.importorskip("transformers")
    import shutil

    shutil.copy(TRAINER / "checkpoint-3" / "optimizer.pt", tmp_path / "optimizer.pt")
    expected = json.loads((TRAINER / "expected.json").read_text())
    want = [n for g in expected["param_groups"] for n in g["names"]]
    for given in (TRAINER / "checkpoint-3", TRAINER / "checkpoint-3" / "config.json"):
        report = inspect_path(tmp_path / "optimizer.pt", model=str(given), stats=False)
        assert _names(report) == want
        assert report["naming"]["source"] == "model_file"
    with pytest.raises(CheckpointError, match="no model found there"):
        inspect_path(tmp_path / "optimizer.pt", model=str(tmp_path), stats=False)


class CenterLoss(nn.Module):
    """The center-loss recipe: the loss has its own learned centers and its own optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(3, 4))


def test_a_loss_with_its_own_optimizer_names_nothing_it_cannot_place(tmp_path):
    """{model, optimizer, optimizer_centloss}: the centers (3x4) have the shape of the
    model's fc.weight and the frozen stem leaves the model enough tensors, so aligned alone
    either optimizer could take fc.weight. Aligned together the model cannot hold both, so
    which are the model's is unknown: nothing is named, in either."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    model[0].requires_grad_(False)  # a frozen stem, as fine-tuning does
    crit = CenterLoss()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt_c = torch.optim.SGD(crit.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        opt_c.zero_grad()
        out = model(torch.randn(5, 4))
        (out.pow(2).mean() + (crit.centers.sum(0)[:3] - out.mean(0)).pow(2).sum()).backward()
        opt.step()
        opt_c.step()
    path = tmp_path / "center.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "optimizer_centloss": opt_c.state_dict()}, path)
    for key in ("optimizer", "optimizer_centloss"):
        naming = inspect_path(path, key=key, stats=False)["naming"]
        assert naming["named"] == 0, key
        assert "cannot all hold" in naming["reason"]
