"""Parameter names on real checkpoints written by the real libraries (issue #18).

Each case in tests/fixtures/names/ (scripts/fixtures/make_names_cases.py: HF Trainer GPT-2,
accelerate save_state, a Lightning GAN with two optimizers, a frozen backbone, timm's
CheckpointSaver, an optimizer built from named_parameters(), tied embeddings) comes with
``truth.json``: the names of each param group's params, in group order, read from the LIVE
optimizer by parameter identity when the checkpoint was written.

Per case the test holds optstate to:
- never a wrong name: every ``name`` it gives equals the truth at that position (for a tied
  tensor, either of its names, the other one then in ``aliases``); aliases only ever name the
  same tensor;
- the source the issue says names come from there (``name_source`` on every named param,
  ``naming.source``);
- the coverage the issue asks for: all named where the order is known (a model state_dict
  in the container, pytorch_model.bin, a Hugging Face skeleton, param_names); where it is
  not (model.safetensors without transformers) exactly the params whose shape no other
  parameter shares, and a reason for the rest; where order and shape leave a choice (a
  frozen backbone of identical blocks) those params unnamed, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from optstate.analysis.inspect import inspect_path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "fixtures" / "names"

ALL = "all"
UNIQUE_SHAPES = "unique shapes"  # named exactly when no other parameter has the same shape

# case -> (name_source expected on named params, coverage, must stay unnamed)
# coverage: ALL, UNIQUE_SHAPES, or the set of names that must be named (of every optimizer
# in the file; each optimizer is held to those among its own params).
EXPECT: dict[str, tuple[str, Any, frozenset[str]]] = {
    # the skeleton built from config.json (transformers) gives the order and marks ln_1/ln_2/
    # ln_f as LayerNorm modules; the Trainer's two groups then follow its rule.
    "a_hf_trainer_gpt2": ("hf_trainer_rule", ALL, frozenset()),
    # model.safetensors and no config.json: no order; four (16,) tensors share a shape.
    "c_accelerate_mlp": ("model_state_dict", UNIQUE_SHAPES, frozenset()),
    # pytorch_model.bin is a torch.save state_dict: the model's order.
    "c2_accelerate_mlp_bin": ("model_state_dict", ALL, frozenset()),
    "d_lightning_gan": ("model_state_dict", ALL, frozenset()),
    # the discriminator's first Linear (16x8, 16) fits the generator's first layer as well:
    # aligned alone, its optimizer could take either; the two optimizer states are aligned
    # together (no model tensor in two optimizers, a note says so), and the generator's
    # optimizer takes the generator's layer, so every name is certain.
    "d2_lightning_gan_mirror": ("model_state_dict", ALL, frozenset()),
    # trainable: blocks 2-3 and head; stem and blocks 0-1 are frozen and not in the optimizer.
    # Which two of the four identical blocks were trained, order and shape cannot tell.
    "e_frozen_backbone": ("model_state_dict", {"head.weight", "head.bias"},
                          frozenset(f"blocks.{b}.{m}.{w}" for b in (2, 3)
                                    for m in ("norm", "fc") for w in ("weight", "bias"))),
    "f_timm_vit": ("model_state_dict", ALL, frozenset()),
    "g_named_params_optimizer": ("param_names", ALL, frozenset()),
    "h_tied_lm": ("model_state_dict", ALL, frozenset()),
}


def truth_of(case: str) -> dict[str, Any]:
    return json.loads((CASES / case / "truth.json").read_text())


def tie_sets(truth: dict[str, Any]) -> dict[str, set[str]]:
    """name -> every name of the same tensor (itself included)."""
    sets: dict[str, set[str]] = {}
    for pair in truth["tied"]:
        group = set(pair).union(*(sets.get(n, set()) for n in pair))
        for n in group:
            sets[n] = group
    return sets


def optimizers(case: str) -> list[tuple[str, int]]:
    return [(case, i) for i in range(len(truth_of(case)["optimizers"]))]


def check_names(report: dict[str, Any], truth: dict[str, Any], opt_index: int,
                *, source: str, coverage: Any, unnamed: frozenset[str],
                label: str) -> None:
    """Every name right; the expected source; the expected coverage."""
    groups = truth["optimizers"][opt_index]["param_groups"]
    ties = tie_sets(truth)
    by_group: dict[int, list[dict[str, Any]]] = {}
    for p in sorted(report["params"], key=lambda p: p["position"]):
        by_group.setdefault(p["group"], []).append(p)
    assert [len(by_group.get(g, [])) for g in range(len(groups))] == \
        [len(g["names"]) for g in groups], f"{label}: params per group"

    wrong, named = [], set()
    for g, group in enumerate(groups):
        truths = zip(group["names"], group["shapes"], strict=True)
        for p, (true, shape) in zip(by_group[g], truths, strict=True):
            name, aliases = p["name"], tuple(p.get("aliases") or ())
            if name is None:
                assert not aliases, f"{label}: position {p['position']} unnamed with aliases"
                continue
            same = ties.get(true, {true})
            if name not in same or (name != true and true not in aliases) \
                    or not set(aliases) <= same - {name}:
                wrong.append(f"position {p['position']} (group {g}): optstate says {name!r} "
                             f"(aliases {list(aliases)}), truth {true!r} {shape}")
                continue
            named.add(true)
            assert p.get("name_source") == source, \
                f"{label}: {true} named from {p.get('name_source')!r}, expected {source!r}"
    assert not wrong, f"{label}: WRONG NAMES:\n" + "\n".join(wrong)

    naming = report["naming"]
    all_names = [n for g in groups for n in g["names"]]
    if coverage == ALL:
        expected = set(all_names)
    elif coverage == UNIQUE_SHAPES:
        counts = Counter(tuple(s) for _, s, _ in truth["named_parameters"])
        expected = {n for n, s, _ in truth["named_parameters"]
                    if counts[tuple(s)] == 1 and n in all_names}
        unnamed = frozenset(set(all_names) - expected)
    else:
        expected = set(coverage) & set(all_names)
    missing = sorted(expected - named)
    assert not missing, f"{label}: left unnamed although certain: {missing} " \
                        f"(naming: {naming})"
    guessed = sorted(named & unnamed)
    assert not guessed, f"{label}: named although order and shape leave a choice: {guessed}"
    assert naming["named"] == len(named) and naming["total"] == len(all_names), naming
    if named:
        assert naming["source"] == source, naming
    if len(named) < len(all_names):
        assert naming["reason"], f"{label}: some params unnamed and no reason: {naming}"
    else:
        assert naming["reason"] is None, naming


def inspect_case(case: str, opt_index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    truth = truth_of(case)
    key = truth["optimizers"][opt_index]["key"]
    return inspect_path(CASES / case / truth["inspect"], key=key, stats=False), truth


def test_every_case_has_an_expectation() -> None:
    on_disk = {p.name for p in CASES.iterdir() if p.is_dir()}
    assert on_disk == set(EXPECT)


@pytest.mark.parametrize(("case", "opt_index"),
                         [c for case in sorted(EXPECT) for c in optimizers(case)])
def test_names_match_the_live_optimizer(case: str, opt_index: int) -> None:
    if case == "a_hf_trainer_gpt2":  # the skeleton needs transformers (the dev / hf extra)
        pytest.importorskip("transformers")
    report, truth = inspect_case(case, opt_index)
    source, coverage, unnamed = EXPECT[case]
    check_names(report, truth, opt_index, source=source, coverage=coverage, unnamed=unnamed,
                label=f"{case} optimizer {opt_index}")


def test_tied_embeddings_are_one_param_with_two_names() -> None:
    report, truth = inspect_case("h_tied_lm", 0)
    assert truth["tied"] == [["embed.weight", "head.weight"]]
    tied = [p for p in report["params"] if p["position"] == 0][0]
    assert {tied["name"], *tied["aliases"]} == {"embed.weight", "head.weight"}
    assert len(report["params"]) == 5  # parameters() yields the tie once


def test_gpt2_trainer_skeleton_names_the_tie_and_the_layernorm_groups() -> None:
    pytest.importorskip("transformers")
    report, truth = inspect_case("a_hf_trainer_gpt2", 0)
    wte = [p for p in report["params"] if p["position"] == 0][0]
    assert {wte["name"], *wte["aliases"]} == {"transformer.wte.weight", "lm_head.weight"}
    # ln_1 / ln_2 / ln_f: no-decay by module type only; the rule put them in group 1
    no_decay = {p["name"] for p in report["params"] if p["group"] == 1}
    assert {f"transformer.h.{i}.ln_{k}.weight" for i in (0, 1) for k in (1, 2)} <= no_decay
    # the Trainer's own list names the tie twice (lm_head.weight is transformer.wte.weight)
    decay = set(truth["decay_parameter_names"]) - {"lm_head.weight"}
    assert decay == set(truth["optimizers"][0]["param_groups"][0]["names"])
    assert decay == {p["name"] for p in report["params"] if p["group"] == 0}


NO_TRANSFORMERS = """
import json, sys
sys.modules["transformers"] = None  # as if not installed
from optstate.analysis.inspect import inspect_path
r = inspect_path(sys.argv[1], stats=False)
print(json.dumps({"params": r["params"], "naming": r["naming"]}))
"""


def test_gpt2_trainer_without_transformers_names_only_unique_shapes() -> None:
    """No skeleton: model.safetensors is sorted by name, and the Trainer's rule by names
    alone would put ln_1/ln_2/ln_f weights in the decay group (wrong for GPT-2: 15 / 13
    params, the optimizer's groups hold 10 / 18), so only what shape makes unique can be
    named (transformer.wte.weight, 64x16; wpe's 32x16 is also each mlp.c_proj's), and the
    reason says why."""
    truth = truth_of("a_hf_trainer_gpt2")
    out = subprocess.run([sys.executable, "-c", NO_TRANSFORMERS,
                          str(CASES / "a_hf_trainer_gpt2" / truth["inspect"])],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    check_names(report, truth, 0, source="model_state_dict", coverage=UNIQUE_SHAPES,
                unnamed=frozenset(), label="a_hf_trainer_gpt2 without transformers")
    assert {p["name"] for p in report["params"]} == {"transformer.wte.weight", None}
    assert not any(p["name_source"] == "hf_trainer_rule" for p in report["params"])
    assert "transformers is not installed" in report["naming"]["reason"]


def test_lightning_gan_through_the_cli_json(cli) -> None:
    truth = truth_of("d_lightning_gan")
    for i, opt in enumerate(truth["optimizers"]):
        result = cli("inspect", CASES / "d_lightning_gan" / truth["inspect"], "--key",
                     opt["key"], "--json", "--no-stats")
        assert result.exit_code == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        check_names(report, truth, i, source="model_state_dict", coverage=ALL,
                    unnamed=frozenset(), label=f"d_lightning_gan CLI {opt['key']}")
