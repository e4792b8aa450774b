"""state.hf_model: a Hugging Face model's parameters from config.json (meta device), and the
Trainer's decay / no-decay rule, checked against real transformers (issue #18).

The truth is what transformers and torch give: expected.json of the committed Trainer
fixture (written by scripts/fixtures/make_hf_lightning.py from the live optimizer and
``Trainer.get_decay_parameter_names``), and, for GPT-2 and Qwen2, a real tiny model and
the installed ``Trainer.get_decay_parameter_names``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from optstate.io.model_tensors import ModelTensor
from optstate.state.hf_model import (
    NOT_INSTALLED,
    is_trainer_folder,
    saved_transformers_version,
    skeleton_tensors,
    trainer_groups,
    trainer_no_decay,
    trainer_rule_is_certain,
)

ROOT = Path(__file__).resolve().parents[1]
BERT = ROOT / "tests" / "fixtures" / "hf_lightning" / "hf_trainer_bert_mlm"
CHECKPOINT = BERT / "checkpoint-3"
EXPECTED = json.loads((BERT / "expected.json").read_text())

needs_transformers = pytest.mark.skipif(
    __import__("importlib").util.find_spec("transformers") is None,
    reason="transformers is not installed (it is in the dev extra: pip install -e '.[dev]')")


def _names(tensors: list[ModelTensor]) -> list[str]:
    return [t.name for t in tensors]


def _names_only(named_parameters: list) -> list[ModelTensor]:
    """What a model file without a skeleton gives: names and shapes, module types unknown."""
    return [ModelTensor(name=n, shape=tuple(s), dtype="float32") for n, s in named_parameters]


# ---------------------------------------------------------------- the Trainer fixture (BERT)

@needs_transformers
def test_skeleton_of_the_trainer_checkpoint_is_named_parameters_in_order_with_ties():
    tensors, reason = skeleton_tensors(CHECKPOINT)
    assert reason is None
    assert [[t.name, list(t.shape)] for t in tensors.tensors] == EXPECTED["named_parameters"]
    assert (tensors.ordered, tensors.params_only) == (True, True)
    assert tensors.origin == "BertForMaskedLM built from config.json (meta device)"
    assert tensors.path == str(CHECKPOINT / "config.json")
    # the MLM decoder is tied to the word embeddings: one tensor, the state_dict's other name
    # as its alias, and every state_dict key is a name or an alias
    aliases = {t.name: list(t.aliases) for t in tensors.tensors if t.aliases}
    assert aliases == {first: [second] for first, second in EXPECTED["tied"]}
    every = {n for t in tensors.tensors for n in (t.name, *t.aliases)}
    assert every == set(EXPECTED["state_dict_keys"])
    assert {t.dtype for t in tensors.tensors} == {"float32"}
    # BertLayerNorm is nn.LayerNorm; nothing else in BERT is
    assert {t.name for t in tensors.tensors if t.layernorm} == {
        n for n, _ in EXPECTED["named_parameters"] if ".LayerNorm." in n}


@needs_transformers
def test_trainer_groups_of_the_skeleton_are_the_live_optimizers_groups():
    tensors, _ = skeleton_tensors(CHECKPOINT)
    decay, no_decay = trainer_groups(
        tensors.tensors, transformers_version=saved_transformers_version(CHECKPOINT))
    groups = EXPECTED["param_groups"]
    assert _names(decay) == groups[0]["names"] and groups[0]["weight_decay"] > 0
    assert _names(no_decay) == groups[1]["names"] and groups[1]["weight_decay"] == 0
    # get_decay_parameter_names lists every name, tied ones too (in its own recursion
    # order): the rule applied to each name and alias gives the same set
    decay_names = {n for t in tensors.tensors for n in (t.name, *t.aliases)
                   if not trainer_no_decay(replace(t, name=n))}
    assert decay_names == set(EXPECTED["decay_parameter_names"])
    assert len(EXPECTED["decay_parameter_names"]) == len(decay_names)


def test_the_names_only_rule_gets_bert_right_because_its_layernorms_are_named_layernorm():
    # no skeleton: no module types, only the names; BERT calls its nn.LayerNorm modules
    # "LayerNorm", which the Trainer's name pattern "layernorm" matches once lower-cased,
    # so the split is the live optimizer's all the same
    tensors = _names_only(EXPECTED["named_parameters"])
    decay, no_decay = trainer_groups(tensors)
    assert _names(decay) == EXPECTED["param_groups"][0]["names"]
    assert _names(no_decay) == EXPECTED["param_groups"][1]["names"]
    # but a decayed name is certain only with a skeleton: any module could be an nn.LayerNorm
    assert not any(trainer_rule_is_certain(t) for t in decay)
    assert all(trainer_rule_is_certain(t) for t in no_decay)


def test_the_rule_before_4_49_knew_only_bias_by_name():
    # transformers <= 4.48: "bias" (case-sensitive) by name, layer norms by type only; so
    # without a skeleton BERT's LayerNorm.weight would be called decayed there
    bert_ln = ModelTensor(name="bert.embeddings.LayerNorm.weight", shape=(16,), dtype="float32")
    assert trainer_no_decay(bert_ln) and trainer_no_decay(bert_ln, transformers_version="4.49.0")
    assert not trainer_no_decay(bert_ln, transformers_version="4.48.2")
    assert trainer_no_decay(replace(bert_ln, layernorm=True), transformers_version="4.48.2")
    upper = ModelTensor(name="head.Bias", shape=(3,), dtype="float32")
    assert trainer_no_decay(upper) and not trainer_no_decay(upper, transformers_version="4.40.0")
    # 4.49 - 4.52: substrings only; "norm" as a whole module name came with 4.53
    final_norm = ModelTensor(name="model.norm.weight", shape=(16,), dtype="float32")
    assert not trainer_no_decay(final_norm, transformers_version="4.52.4")
    assert trainer_no_decay(final_norm, transformers_version="4.53.0")
    assert trainer_no_decay(final_norm)
    assert not trainer_no_decay(replace(final_norm, name="model.normal.weight"))


# ---------------------------------------------------------------- real tiny models

def _save_config(config, folder: Path, architecture: str) -> Path:
    config.architectures = [architecture]
    config.save_pretrained(folder)  # transformers writes config.json itself
    return folder


def _live_decay_names(model) -> list[str]:
    from transformers import Trainer

    # get_decay_parameter_names uses no Trainer state: called on the class, as create_optimizer
    # would, then taken in named_parameters() order as create_optimizer builds its group
    names = set(Trainer.get_decay_parameter_names(None, model))
    return [n for n, _ in model.named_parameters() if n in names]


@needs_transformers
def test_gpt2_the_skeleton_rule_is_the_trainers_and_the_names_only_rule_is_not(tmp_path):
    import torch
    import transformers

    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16,
                                     vocab_size=64, bos_token_id=0, eos_token_id=0)
    folder = _save_config(config, tmp_path, "GPT2LMHeadModel")
    tensors, reason = skeleton_tensors(folder)
    assert reason is None

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)  # a real model, real weights, on the CPU
    assert _names(tensors.tensors) == [n for n, _ in model.named_parameters()]
    assert [t.shape for t in tensors.tensors] == [
        tuple(p.shape) for _, p in model.named_parameters()]
    assert {t.name: t.aliases for t in tensors.tensors if t.aliases} == {
        "transformer.wte.weight": ("lm_head.weight",)}

    live = _live_decay_names(model)
    decay, no_decay = trainer_groups(tensors.tensors)
    assert _names(decay) == live
    assert set(_names(no_decay)) == {n for n, _ in model.named_parameters()} - set(live)

    # GPT-2's nn.LayerNorm modules are ln_1, ln_2, ln_f: their weights say nothing of a norm,
    # so the name alone puts them in decay, which the Trainer does not
    names_only = [replace(t, layernorm=None) for t in tensors.tensors]
    wrong = set(_names(trainer_groups(names_only)[0])) - set(live)
    assert wrong == {n for n, m in model.named_parameters()
                     if n.endswith(".weight") and n.split(".")[-2] in ("ln_1", "ln_2", "ln_f")}
    assert len(wrong) == 5
    assert not any(trainer_rule_is_certain(t) for t in names_only if t.name in wrong)


# config.json as transformers 4.44.0 saved it for a tiny Qwen2, and the decay names its
# Trainer.get_decay_parameter_names gave for that model (run once with transformers 4.44.0
# and torch 2.13.0: Qwen2RMSNorm is not in 4.44's ALL_LAYERNORM_LAYERS, so its norms decay)
QWEN2_CONFIG_4_44 = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "hidden_act": "silu",
    "hidden_size": 16, "initializer_range": 0.02, "intermediate_size": 32,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
    "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": None,
    "tie_word_embeddings": False, "transformers_version": "4.44.0", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 64}
QWEN2_DECAY_4_44 = ["model.embed_tokens.weight"] + [
    f"model.layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")
] + ["model.norm.weight", "lm_head.weight"]


@needs_transformers
def test_qwen2_the_rule_follows_the_transformers_version_that_saved_it(tmp_path):
    import transformers

    (tmp_path / "config.json").write_text(json.dumps(QWEN2_CONFIG_4_44))
    tensors, reason = skeleton_tensors(tmp_path)
    assert reason is None
    version = saved_transformers_version(tmp_path)
    assert version == "4.44.0"
    assert _names(trainer_groups(tensors.tensors, transformers_version=version)[0]) == (
        QWEN2_DECAY_4_44)
    # the installed transformers' own rule, on a real model of the same config
    model = transformers.Qwen2ForCausalLM(transformers.AutoConfig.from_pretrained(tmp_path))
    live = _live_decay_names(model)
    assert _names(trainer_groups(tensors.tensors)[0]) == live
    assert _names(trainer_groups(
        tensors.tensors, transformers_version=transformers.__version__)[0]) == live
    assert set(QWEN2_DECAY_4_44) - set(live) == {
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight"}


@needs_transformers
def test_llama_rmsnorm_is_a_layernorm_by_type_as_transformers_4_listed_it(tmp_path):
    import transformers

    config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=64)
    tensors, _ = skeleton_tensors(_save_config(config, tmp_path, "LlamaForCausalLM"))
    assert {t.name for t in tensors.tensors if t.layernorm} == {
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight"}
    # so every era's rule excludes them, as every Trainer did (4.x by type, 4.53+ by name)
    live = _live_decay_names(transformers.LlamaForCausalLM(config))
    for version in ("4.44.0", "4.50.0", None):
        assert _names(trainer_groups(tensors.tensors, transformers_version=version)[0]) == live


# ---------------------------------------------------------------- why not

def _config(folder: Path, **fields) -> Path:
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def test_no_config_json(tmp_path):
    assert skeleton_tensors(tmp_path) == (None, "the folder has no config.json")
    (tmp_path / "config.json").write_text("{not json")
    assert skeleton_tensors(tmp_path) == (None, "config.json is not a JSON object")


def test_a_config_without_an_architecture(tmp_path):
    assert skeleton_tensors(_config(tmp_path, model_type="bert")) == (
        None, "config.json names no architecture")
    assert skeleton_tensors(_config(tmp_path, model_type="bert", architectures=[])) == (
        None, "config.json names no architecture")
    assert skeleton_tensors(_config(tmp_path, architectures=["os.system"])) == (
        None, "config.json's architecture 'os.system' is not a class name")


def test_a_config_asking_for_a_huge_model_is_not_built(tmp_path):
    """config.json comes with the checkpoint: a million layers (or layers x experts past
    the bound) is refused before transformers is imported, in no time."""
    import time

    from optstate.state.hf_model import MAX_SKELETON_BLOCKS

    start = time.perf_counter()
    tensors, why = skeleton_tensors(_config(tmp_path, architectures=["BertForMaskedLM"],
                                            model_type="bert", num_hidden_layers=10**6))
    assert tensors is None and time.perf_counter() - start < 1
    assert why.startswith("config.json asks for 1,000,000 layers: too large")
    tensors, why = skeleton_tensors(_config(
        tmp_path, architectures=["MixtralForCausalLM"], model_type="mixtral",
        num_hidden_layers=1000, num_local_experts=MAX_SKELETON_BLOCKS // 100))
    assert tensors is None and "1,000 layers x 1,000 experts" in why
    # nested (a multimodal config's text_config) counts too
    tensors, why = skeleton_tensors(_config(
        tmp_path, architectures=["LlavaForConditionalGeneration"], model_type="llava",
        text_config={"num_hidden_layers": 5000}))
    assert tensors is None and "5,000 layers" in why


@needs_transformers
def test_only_transformers_own_model_classes_are_built(tmp_path):
    import transformers

    version = transformers.__version__
    assert skeleton_tensors(_config(tmp_path, architectures=["NoSuchModel"], model_type="bert")
                            ) == (None, f"transformers {version} has no model class NoSuchModel")
    # names transformers has that are not model classes: a function that would download,
    # an Auto class
    for name in ("pipeline", "AutoModel", "BertConfig"):
        assert skeleton_tensors(_config(tmp_path, architectures=[name], model_type="bert")) == (
            None, f"{name} is not a transformers model class")
    assert skeleton_tensors(_config(tmp_path, architectures=["GPT2LMHeadModel"],
                                    model_type="bert")) == (
        None, "config.json's model_type 'bert' is not GPT2LMHeadModel's")


@needs_transformers
def test_remote_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nclass EvilModel: pass\n")
    (tmp_path / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nclass EvilConfig: pass\n")
    _config(tmp_path, architectures=["BertForMaskedLM"], model_type="evil",
            auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                      "AutoModel": "modeling_evil.EvilModel"})
    tensors, reason = skeleton_tensors(tmp_path)
    assert tensors is None
    assert reason.startswith("config.json could not be read by transformers: ")
    assert not marker.exists()


@needs_transformers
def test_a_config_the_class_refuses_says_why(tmp_path):
    config = dict(json.loads((CHECKPOINT / "config.json").read_text()), hidden_size=15)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors, reason = skeleton_tensors(tmp_path)
    assert tensors is None
    assert reason.startswith(
        "building BertForMaskedLM from config.json failed: The hidden size (15)")
    assert "\n" not in reason


@needs_transformers
def test_a_transformers_that_turned_its_torch_models_off_says_so(monkeypatch):
    # transformers 5.25 does this below torch 2.6 (is_torch_available() is False, and its
    # model classes are stubs that raise); this torch is newer, so the check is stood in for
    import torch
    import transformers

    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    assert skeleton_tensors(CHECKPOINT) == (None, (
        f"transformers {transformers.__version__} does not support torch {torch.__version__} "
        "(it turns its PyTorch models off)"))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_without_transformers_the_reason_says_how_to_install_it():
    out = _run("import sys; sys.modules['transformers'] = None\n"
               "from optstate.state.hf_model import skeleton_tensors\n"
               f"print(repr(skeleton_tensors({str(CHECKPOINT)!r})))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr((None, NOT_INSTALLED))
    assert NOT_INSTALLED == "transformers is not installed (pip install 'optstate[hf]')"


@needs_transformers
def test_building_is_offline_and_quiet_and_restores_what_it_changed(tmp_path):
    # bos/eos outside the vocabulary: transformers warns about this config when it loads it
    # (once per process: hence one process that loads it plainly, one that builds)
    config = dict(json.loads((CHECKPOINT / "config.json").read_text()),
                  bos_token_id=500, eos_token_id=500)
    (tmp_path / "config.json").write_text(json.dumps(config))
    plain = _run(f"import transformers; transformers.AutoConfig.from_pretrained({str(tmp_path)!r})")
    assert plain.returncode == 0 and "bos_token_id" in plain.stderr
    out = _run(
        "import socket\n"
        "tried = []\n"
        "def connect(self, *a): tried.append(a); raise OSError('no network in this test')\n"
        "socket.socket.connect = connect\n"
        "import transformers, huggingface_hub.constants as c\n"
        "from transformers.utils import logging\n"
        "before = (logging.get_verbosity(), c.HF_HUB_OFFLINE)\n"
        "from optstate.state.hf_model import skeleton_tensors\n"
        f"t, why = skeleton_tensors({str(tmp_path)!r})\n"
        "print(why, len(t.tensors), tried, before == (logging.get_verbosity(), c.HF_HUB_OFFLINE))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "42", "[]", "True"]
    assert out.stderr == ""


@needs_transformers
def test_while_building_the_hub_is_offline(tmp_path, monkeypatch):
    # a model whose __init__ fetches something (a pretrained backbone) must fail, not download
    import socket

    import huggingface_hub
    import transformers

    from optstate.state.hf_model import _quiet_and_offline

    tried = []

    def connect(self, *address):
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with _quiet_and_offline(transformers):
        assert huggingface_hub.constants.is_offline_mode()
        with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
            huggingface_hub.hf_hub_download("optstate/none", "config.json",
                                            cache_dir=str(tmp_path))
    assert tried == []  # it never tried the network


def test_a_trainer_folder_has_trainer_state_or_training_args(tmp_path):
    assert is_trainer_folder(CHECKPOINT)
    assert not is_trainer_folder(tmp_path)
    (tmp_path / "training_args.bin").write_bytes(b"")
    assert is_trainer_folder(tmp_path)
    assert not is_trainer_folder(tmp_path / "missing")
    assert saved_transformers_version(CHECKPOINT) == "5.25.0"
    assert saved_transformers_version(tmp_path) is None
