"""Hugging Face models: the parameter list from a folder's config.json, and the Trainer's rule.

A Trainer / accelerate folder stores ``model.safetensors`` sorted by name, not in model
order, so it cannot say which optimizer slot is which parameter. ``skeleton_tensors``
recovers the true order: it builds the model class that ``config.json`` names on the
meta device (no weights allocated, nothing downloaded, never remote code) and reads its
``named_parameters()``. For the tiny BERT of tests/fixtures/hf_lightning the first call
takes 1.5 - 3 s on this machine, nearly all of it importing transformers and the model's
module; building it again takes about 6 ms.

The Trainer builds AdamW with two groups, decay then no-decay, each in
``model.named_parameters()`` order (``Trainer.create_optimizer``). Which parameters
decay is ``Trainer.get_decay_parameter_names``; ``trainer_no_decay`` is that rule without
transformers. transformers changed it twice (read from the released wheels):

- 4.44 - 4.48 (and back to huggingface/transformers#10598, 2021): no decay for parameters
  inside a module of a type in ``ALL_LAYERNORM_LAYERS`` (``nn.LayerNorm`` and the norm
  classes models appended to it: ``LlamaRMSNorm``, ``T5LayerNorm``, ...) and for names
  containing ``"bias"`` (case-sensitive);
- 4.49 - 4.52 (#35927): the same types, and lower-cased names containing ``bias``,
  ``layernorm`` or ``rmsnorm``;
- 4.53 and later, through 5.25 (#38922): ``nn.LayerNorm`` only, and lower-cased names
  matching ``bias``, ``layernorm``, ``rmsnorm``, ``(?:^|\\.)norm(?:$|\\.)`` or
  ``_norm(?:$|\\.)`` (Llama's ``model.norm.weight``, T5's ``final_layer_norm``).

They differ for norm layers outside that type list: Qwen2's ``input_layernorm.weight``
decays before 4.49, its ``model.norm.weight`` before 4.53; and for names spelling ``Bias``.
BERT, GPT-2 and Llama split the same way under all three. ``config.json`` records the
transformers version that saved the checkpoint (``saved_transformers_version``); pass it
to pick the rule, else the newest applies.

``get_parameter_names`` tests the patterns against each suffix of a name as it recurses;
each pattern matching a suffix also matches the full name (a suffix starts after a dot),
so testing the full lower-cased name is the same rule. A tied parameter follows the name
``named_parameters()`` gives it first (``ModelTensor.name``), as ``create_optimizer`` does.
Parameters frozen during training are in no group; a skeleton cannot know them.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optstate.base.errors import one_line
from optstate.io.model_tensors import ModelTensor, ModelTensors

NOT_INSTALLED = "transformers is not installed (pip install 'optstate[hf]')"

# The newest rule (transformers >= 4.53), as Trainer.get_decay_parameter_names writes it.
_NO_DECAY_PATTERNS = tuple(re.compile(p) for p in (
    r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"))
# transformers 4.49 - 4.52: plain substrings of the lower-cased name.
_NO_DECAY_SUBSTRINGS = ("bias", "layernorm", "rmsnorm")
# The norm classes transformers 4.44 - 4.52 appended to ALL_LAYERNORM_LAYERS when their
# model was imported (read from those wheels), so that their Trainer excluded them by type
# as it does nn.LayerNorm. 4.53 dropped the list: its name patterns match every attribute
# these classes are assigned to in 4.52 (norm, input_layernorm, q_norm, final_layer_norm,
# ...), so marking them ``layernorm`` changes nothing under the newest rule.
_LEGACY_NORM_CLASSES = frozenset({
    "ChameleonRMSNorm", "CohereLayerNorm", "GemmaRMSNorm", "GraniteMoeRMSNorm",
    "IdeficsRMSNorm", "LlamaRMSNorm", "LongT5LayerNorm", "MegaSequenceNorm", "MoshiRMSNorm",
    "NemotronLayerNorm1P", "Olmo2RMSNorm", "OlmoLayerNorm", "OlmoeRMSNorm",
    "Pix2StructLayerNorm", "Pop2PianoLayerNorm", "RecurrentGemmaRMSNorm",
    "SwitchTransformersLayerNorm", "T5LayerNorm", "ZambaRMSNorm"})


def is_trainer_folder(folder: Path | str) -> bool:
    """True when ``folder`` holds what a Hugging Face Trainer saves beside the optimizer
    (``trainer_state.json`` or ``training_args.bin``)."""
    folder = Path(folder)
    return (folder / "trainer_state.json").is_file() or (folder / "training_args.bin").is_file()


def saved_transformers_version(folder: Path | str) -> str | None:
    """The transformers version ``config.json`` in ``folder`` says saved it, or None."""
    raw = _read_config(Path(folder) / "config.json")
    version = raw.get("transformers_version") if isinstance(raw, dict) else None
    return version if isinstance(version, str) else None


def _rule_era(transformers_version: str | None) -> int:
    """0: transformers <= 4.48, 1: 4.49 - 4.52, 2: 4.53 and later (or unknown)."""
    match = re.match(r"\s*(\d+)\.(\d+)", transformers_version or "")
    if match is None:
        return 2
    major_minor = (int(match.group(1)), int(match.group(2)))
    if major_minor < (4, 49):
        return 0
    return 1 if major_minor < (4, 53) else 2


def _name_says_no_decay(name: str, era: int) -> bool:
    if era == 0:
        return "bias" in name
    lower = name.lower()
    if era == 1:
        return any(s in lower for s in _NO_DECAY_SUBSTRINGS)
    return any(p.search(lower) for p in _NO_DECAY_PATTERNS)


def trainer_no_decay(t: ModelTensor, *, transformers_version: str | None = None) -> bool:
    """True when the Trainer puts ``t`` in its no-decay group: ``t`` is in an
    ``nn.LayerNorm`` module (``t.layernorm``, known from a skeleton) or its name matches
    the rule of ``transformers_version`` (the newest when None).

    With ``t.layernorm`` None (no skeleton), only the name is tested: right for BERT
    (its LayerNorm modules are named ``LayerNorm``), wrong for GPT-2's ``ln_1.weight``
    (an ``nn.LayerNorm`` whose name says nothing); ``trainer_rule_is_certain`` tells."""
    if t.layernorm:
        return True
    return _name_says_no_decay(t.name, _rule_era(transformers_version))


def trainer_rule_is_certain(t: ModelTensor, *, transformers_version: str | None = None) -> bool:
    """True when ``trainer_no_decay(t)`` does not depend on an unknown module type: the
    skeleton said whether ``t`` is in an ``nn.LayerNorm``, or its name alone already
    puts it in no-decay."""
    return t.layernorm is not None or _name_says_no_decay(t.name, _rule_era(transformers_version))


def trainer_groups(tensors: list[ModelTensor], *, transformers_version: str | None = None
                   ) -> tuple[list[ModelTensor], list[ModelTensor]]:
    """(decay, no_decay): the Trainer's two param groups, each in the order of ``tensors``
    (which should be ``named_parameters()`` order, as a skeleton gives)."""
    decay: list[ModelTensor] = []
    no_decay: list[ModelTensor] = []
    for t in tensors:
        (no_decay if trainer_no_decay(t, transformers_version=transformers_version)
         else decay).append(t)
    return decay, no_decay


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = one_line(text or type(exc).__name__)
    return text if len(text) <= 200 else text[:197] + "..."


def _read_config(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


@contextlib.contextmanager
def _quiet_and_offline(transformers: Any) -> Iterator[None]:
    """transformers' logging at error level, Python warnings off, and the Hub offline
    (config.json is read from the folder; a model whose __init__ would fetch something,
    such as a pretrained backbone, fails instead), all restored afterwards."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    hub_constants: Any = None
    offline = None
    try:
        import huggingface_hub.constants as hub_constants
        offline = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        hub_constants = None
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = offline


def skeleton_tensors(folder: Path | str) -> tuple[ModelTensors | None, str | None]:
    """The parameters of the model ``folder/config.json`` describes, in
    ``named_parameters()`` order, from the class it names built on the meta device;
    (None, why not) when that cannot be done.

    Tied parameters are one entry with the other names in ``aliases``
    (``named_parameters(remove_duplicate=False)``); ``layernorm`` says whether each is
    inside a layer norm the Trainer excludes by type: an ``nn.LayerNorm``, or one of the
    norm classes transformers <= 4.52 listed beside it (``LlamaRMSNorm``, ``T5LayerNorm``,
    ...; see ``_LEGACY_NORM_CLASSES``). dtypes are the skeleton's (float32 unless the
    class says otherwise), not necessarily those of the trained run."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None, "the folder has no config.json"
    raw = _read_config(config_path)
    if not isinstance(raw, dict):
        return None, "config.json is not a JSON object"
    architectures = raw.get("architectures")
    if not (isinstance(architectures, list) and architectures
            and isinstance(architectures[0], str)):
        return None, "config.json names no architecture"
    class_name = architectures[0]
    if not class_name.isidentifier() or class_name.startswith("_"):
        return None, f"config.json's architecture {one_line(class_name)!r} is not a class name"
    too_big = _too_big(raw)
    if too_big is not None:
        return None, too_big
    try:
        import transformers
    except ImportError:
        return None, NOT_INSTALLED
    except Exception as exc:  # a broken install: say so, never fail the command
        return None, f"transformers failed to import: {_first_line(exc)}"
    return _build(transformers, folder, class_name)


# A config.json comes with the checkpoint, from anyone: a skeleton costs no memory for
# weights, but each module is a Python object, so its size is bounded before building.
# The largest released models have ~100-200 layers and 61 x 256 MoE experts (~16k).
MAX_SKELETON_LAYERS = 4096
MAX_SKELETON_BLOCKS = 100_000  # layers x experts
_LAYER_KEY = re.compile(r"(num_hidden_layers|num_layers|n_layers?|\w+_layers)")
_EXPERT_KEY = re.compile(r"(num_experts|num_local_experts|n_routed_experts|moe_num_experts)")


def _too_big(raw: dict[str, Any]) -> str | None:
    """Why a skeleton of this config would be too large to build, or None."""
    layers = experts = 1
    stack: list[Any] = [raw]
    seen = 0
    while stack and seen < 10_000:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append(v)
                elif isinstance(v, int) and not isinstance(v, bool) and isinstance(k, str):
                    if _LAYER_KEY.fullmatch(k):
                        layers = max(layers, v)
                    elif _EXPERT_KEY.fullmatch(k):
                        experts = max(experts, v)
        elif isinstance(node, list):
            stack.extend(node)
    if layers > MAX_SKELETON_LAYERS or layers * experts > MAX_SKELETON_BLOCKS:
        what = f"{layers:,} layers" + (f" x {experts:,} experts" if experts > 1 else "")
        return (f"config.json asks for {what}: too large to build a skeleton of (limits: "
                f"{MAX_SKELETON_LAYERS:,} layers, {MAX_SKELETON_BLOCKS:,} layers x experts)")
    return None


def _build(transformers: Any, folder: Path, class_name: str
           ) -> tuple[ModelTensors | None, str | None]:
    import torch

    version = getattr(transformers, "__version__", "?")
    if not transformers.utils.is_torch_available():
        return None, (f"transformers {version} does not support torch {torch.__version__} "
                      "(it turns its PyTorch models off)")
    with _quiet_and_offline(transformers):
        try:
            cls = getattr(transformers, class_name, None)
        except Exception as exc:  # transformers' lazy module imports the class's module here
            return None, f"transformers {version} cannot load {class_name}: {_first_line(exc)}"
        if cls is None:
            return None, f"transformers {version} has no model class {class_name}"
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            return None, f"{class_name} is not a transformers model class"
        try:
            config = transformers.AutoConfig.from_pretrained(
                str(folder), trust_remote_code=False, local_files_only=True)
        except Exception as exc:
            return None, f"config.json could not be read by transformers: {_first_line(exc)}"
        expected = getattr(cls, "config_class", None)
        if isinstance(expected, type) and not isinstance(config, expected):
            return None, (f"config.json's model_type {getattr(config, 'model_type', '?')!r} "
                          f"is not {class_name}'s")
        try:
            with torch.device("meta"):
                model = cls(config)
        except Exception as exc:
            return None, f"building {class_name} from config.json failed: {_first_line(exc)}"
    return _tensors_of(model, class_name, folder), None


def _legacy_norm(module: Any) -> bool:
    cls = type(module)
    return cls.__name__ in _LEGACY_NORM_CLASSES and cls.__module__.startswith("transformers.")


def _tensors_of(model: Any, class_name: str, folder: Path) -> ModelTensors:
    import torch

    layernorm_modules = {name for name, module in model.named_modules(remove_duplicate=False)
                         if isinstance(module, torch.nn.LayerNorm) or _legacy_norm(module)}
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    tensors = []
    for name, param in model.named_parameters():
        parts = name.split(".")[:-1]
        in_layernorm = any(".".join(parts[:i]) in layernorm_modules
                           for i in range(1, len(parts) + 1))
        tensors.append(ModelTensor(
            name=name, shape=tuple(param.shape),
            dtype=str(param.dtype).removeprefix("torch."),
            aliases=tuple(n for n in names_of[id(param)] if n != name),
            layernorm=in_layernorm))
    return ModelTensors(tensors=tensors, ordered=True,
                        origin=f"{class_name} built from config.json (meta device)",
                        path=str(folder / "config.json"), params_only=True)
