"""Optimizer kind inference (optstate.state.kind) on states written by real torch.optim classes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from optstate.state.kind import SIGNATURES, infer_kind
from tests.optim_states import OPTIMIZERS, state_dict_of, stepped_optimizer


def kind_of(sd: dict[str, Any]):
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    keys = {k for s in sd["state"].values() for k in s}
    return infer_kind(groups, keys)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_torch_optimizer_is_recognised_with_high_confidence(name):
    guess = kind_of(state_dict_of(name, steps=2))
    assert (guess.kind, guess.confidence) == (name, "high")
    assert name in guess.candidates


def test_signatures_cover_the_installed_torch_exactly():
    """Each signature's full key set is what this torch's optimizer really writes."""
    for sig in SIGNATURES:
        cls = getattr(torch.optim, sig.name, None)
        if cls is None:
            continue
        p = [torch.nn.Parameter(torch.zeros(3, 3))]
        opt = cls(p, lr=0.1) if sig.name not in ("Muon",) else cls(p)
        written = set(opt.state_dict()["param_groups"][0]) - {"params"}
        assert sig.core <= written, (sig.name, sig.core - written)
        assert written <= sig.full, (sig.name, written - sig.full)


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"Adamax"}))
def test_never_stepped_state_is_recognised_from_its_group_keys(name):
    guess = kind_of(state_dict_of(name, steps=0))
    assert (guess.kind, guess.confidence) == (name, "high")


def test_never_stepped_adamax_is_honestly_ambiguous_with_radam_keys_of_older_torch():
    guess = kind_of(state_dict_of("Adamax", steps=0))
    assert guess.confidence == "low"
    assert guess.candidates == ("Adamax", "RAdam")
    assert "no state entries" in guess.reason


def _without(sd: dict[str, Any], key: str) -> dict[str, Any]:
    return {**sd, "param_groups": [{k: v for k, v in g.items() if k != key}
                                   for g in sd["param_groups"]]}


def test_adam_and_adamw_from_decoupled_weight_decay():
    assert kind_of(state_dict_of("AdamW")).kind == "AdamW"
    assert kind_of(state_dict_of("Adam")).kind == "Adam"
    # Adam(decoupled_weight_decay=True) is AdamW's update; reported as AdamW.
    both = kind_of(state_dict_of("Adam", decoupled_weight_decay=True))
    assert (both.kind, both.confidence) == ("AdamW", "high")


@pytest.mark.parametrize(("name", "wd", "kind", "confidence"), [
    ("Adam", 0.0, "Adam", "medium"),
    ("AdamW", 0.01, "AdamW", "medium"),  # AdamW's default weight decay
    ("Adam", 0.05, "Adam", "low"),
])
def test_older_torch_adam_without_decoupled_key_says_how_sure(name, wd, kind, confidence):
    sd = _without(state_dict_of(name, weight_decay=wd), "decoupled_weight_decay")
    guess = kind_of(sd)
    assert (guess.kind, guess.confidence) == (kind, confidence)
    assert guess.candidates == ("Adam", "AdamW")


def test_torch_1x_sgd_keys_are_still_sgd():
    sd = state_dict_of("SGD")
    for k in ("maximize", "foreach", "differentiable", "fused"):
        sd = _without(sd, k)
    assert kind_of(sd).kind == "SGD"
    assert kind_of(sd).confidence == "high"


def test_scheduler_keys_do_not_lower_confidence():
    opt, _ = stepped_optimizer("SGD")
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    sd = opt.state_dict()
    assert {"initial_lr", "max_lr", "min_lr"} <= set(sd["param_groups"][0])
    guess = kind_of(sd)
    assert (guess.kind, guess.confidence) == ("SGD", "high")


def test_foreign_group_key_gives_medium_and_names_it():
    sd = state_dict_of("RMSprop")
    sd["param_groups"][0]["my_flag"] = True
    guess = kind_of(sd)
    assert (guess.kind, guess.confidence) == ("RMSprop", "medium")
    assert guess.foreign == ("my_flag",)
    assert "my_flag" in guess.reason


def test_lion_pytorch_keys_are_lion_from_the_table():
    # lion-pytorch's Lion: lr, betas, weight_decay and one momentum buffer (torch.optim
    # alone called it unknown).
    groups = [{"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}]
    guess = infer_kind(groups, {"exp_avg"})
    assert (guess.kind, guess.confidence) == ("lion-pytorch Lion", "high")
    assert guess.library == "lion-pytorch"
    assert guess.import_path == "lion_pytorch.Lion"


def test_unknown_optimizer_lists_the_keys_seen_and_the_closest():
    # Lion's keys plus a flag and an entry no optimizer in the table writes.
    groups = [{"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, "my_flag": True}]
    guess = infer_kind(groups, {"exp_avg", "my_buffer"})
    assert (guess.kind, guess.confidence) == ("unknown", "none")
    assert guess.state_keys == ("exp_avg", "my_buffer")
    assert guess.hyperparams == ("betas", "lr", "my_flag", "weight_decay")
    assert "exp_avg" in guess.reason and "betas" in guess.reason
    assert guess.closest == "lion-pytorch Lion"
    assert guess.differs == {"group_keys_added": ["my_flag"], "group_keys_missing": [],
                             "state_added": ["my_buffer"], "state_missing": []}
    assert "closest: lion-pytorch Lion, which differs in group keys +my_flag; state " \
           "+my_buffer" in guess.reason


def test_nothing_close_says_so_without_a_closest():
    guess = infer_kind([{"alpha_zeta": 1, "beta_zeta": 2}], {"gamma_zeta"})
    assert (guess.kind, guess.closest, guess.differs) == ("unknown", None, None)
    assert "none is close" in guess.reason


def test_state_keys_from_another_optimizer_make_it_unknown():
    # SGD's groups with Adam's buffers: no torch optimizer writes that combination.
    sd = state_dict_of("SGD")
    guess = infer_kind([{k: v for k, v in sd["param_groups"][0].items() if k != "params"}],
                       {"exp_avg", "exp_avg_sq", "step"})
    assert guess.kind == "unknown"


def test_to_dict_is_plain():
    d = kind_of(state_dict_of("NAdam")).to_dict()
    assert d["kind"] == "NAdam"
    assert d["state_keys"] == ["exp_avg", "exp_avg_sq", "mu_product", "step"]
    assert isinstance(d["candidates"], list)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is torch >= 2.9")
def test_muon_is_not_mistaken_for_sgd():
    w = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Muon([w], lr=0.02)
    (w ** 2).sum().backward()
    opt.step()
    guess = kind_of(opt.state_dict())
    assert (guess.kind, guess.confidence) == ("Muon", "high")


def test_transformers_adamw_keys():
    groups = [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "correct_bias": True}]
    guess = infer_kind(groups, {"step", "exp_avg", "exp_avg_sq"})
    assert (guess.kind, guess.confidence) == ("AdamW", "medium")
    assert "transformers.optimization.AdamW" in guess.reason


def test_foreign_keys_with_a_shared_state_layout_is_only_low():
    # RAdam's keys plus one no library in the table writes, and the Adam-family state
    # that five optimizers write.
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "my_option": True}]
    guess = infer_kind(groups, {"step", "exp_avg", "exp_avg_sq"})
    assert (guess.kind, guess.confidence) == ("RAdam", "low")
    assert guess.foreign == ("my_option",)


def test_another_librarys_keys_do_not_make_it_radam():
    # RAdam's keys plus bias_correction, which timm's Lamb writes (issue #19: Lamb, NAdamW,
    # ADOPT and AdamP were "RAdam, all entries there"): unknown, with the closest named.
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "bias_correction": True}]
    guess = infer_kind(groups, {"step", "exp_avg", "exp_avg_sq"})
    assert guess.kind == "unknown"
    assert guess.closest is not None and guess.differs is not None
