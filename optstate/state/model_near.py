"""Finding the model that names an optimizer state's params: in the same container, in a
Hugging Face / accelerate folder (a skeleton from config.json, or the model file beside),
or a model the user named; and saying why not when it is not certain which model that is
(``state.names`` aligns what this finds with the optimizer's params)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.io.source import OPTIMIZER_FILE
from optstate.state.view import OptimizerStateView, slot_shape

Shape = tuple[int, ...]

# Naming.reason when nothing near the optimizer state holds a model (the CLI adds how
# to give one); kept as one constant so views can recognise it.
NO_MODEL = "the checkpoint holds no param_names and no model state_dict"



def count(n: int, word: str) -> str:
    """``1 param``, ``3 params``."""
    return f"{n} {word}{'s' * (n != 1)}"


def checkpoint_folder(source: Any) -> Path | None:
    """The Hugging Face / accelerate checkpoint folder the optimizer state was read
    from (the folder named, or the folder of an ``optimizer.pt`` named directly)."""
    if source is None or getattr(source, "format", None) == "dcp":
        return None
    if getattr(source, "read", None) is not None:  # a URL: the local copy of its small files
        return getattr(source, "mirror", None)
    path, file = Path(source.path), Path(source.file)
    if path.is_dir():
        return path
    if OPTIMIZER_FILE.fullmatch(file.name):
        return file.parent
    return None


def model_near(source: Any, located: Any
               ) -> tuple[Any, str | None, str | None, list[list[Shape | None]]]:
    """(ModelTensors or None, why none, why its order is unknown, others): the model beside
    the optimizer state, when nothing leaves it in doubt which model that is. ``others``:
    for a model from the container, the slot shapes of the container's other optimizer
    states' groups, to align with this one's so that no two optimizers take one tensor."""
    from optstate.io.model_tensors import (
        could_be_parameter,
        model_tensors_from_state_dict,
        models_in_container,
    )

    if source is None:
        return None, NO_MODEL, None, []
    location = getattr(located, "location", "") or ""
    models = []
    for loc, sd in models_in_container(source.obj, location):
        tensors = model_tensors_from_state_dict(
            sd, origin=f"the model state_dict at '{loc}'", path=str(source.file), location=loc)
        if any(could_be_parameter(t) for t in tensors.tensors):  # not an rng state, a log
            models.append(tensors)
    if models:
        model, why, others = _one_container_model(source, getattr(located, "state", None),
                                                  models)
        return model, why, None, others
    folder = checkpoint_folder(source)
    if folder is None:
        return None, NO_MODEL, None, []
    m = OPTIMIZER_FILE.fullmatch(source.file.name)  # a Path, or a RemotePath
    return (*_folder_model(folder, (m.group(1) or "") if m else ""), [])


def _signature(model: Any) -> list[tuple[str, Shape]]:
    from optstate.io.model_tensors import could_be_parameter

    return [(t.name, tuple(t.shape)) for t in model.tensors if could_be_parameter(t)]


def _one_container_model(source: Any, mine: Any, models: list[Any]
                         ) -> tuple[Any, str | None, list[list[Shape | None]]]:
    """The one model of a container and the other optimizer states' slot shapes (``mine``
    is this optimizer's state), or None and why it is not certain which model (two
    different models: an actor and a critic; several optimizers that one model cannot
    all hold)."""
    from optstate.state.locate import find_optimizer_states

    model = models[0]
    if any(_signature(m) != _signature(model) for m in models[1:]):  # an EMA copy is alike
        where = ", ".join(f"'{m.location}'" for m in models)
        return None, (f"the checkpoint holds {len(models)} different model state_dicts "
                      f"({where}) and nothing says which one holds this optimizer's "
                      "params"), []
    states = find_optimizer_states(source.obj)
    others: list[list[Shape | None]] = []
    if len(states) > 1:
        held = sum(len(g.get("params", [])) for _, st in states for g in st["param_groups"]
                   if isinstance(g, dict))
        n = len(_signature(model))
        if n < held:
            return None, (f"the checkpoint holds {len(states)} optimizer states ({held} "
                          f"params in all) and {model.origin} has only "
                          f"{count(n, 'parameter tensor')}: it is not the model of all of "
                          "them, and nothing says which"), []
        for _, st in states:
            if st is mine:
                continue
            try:
                other = OptimizerStateView.from_state_dict(st)
            except CheckpointError:
                return None, ("another optimizer state in the checkpoint is malformed, so "
                              "which model tensors it holds is unknown"), []
            others += [[slot_shape(p.state, p.stored) for p in other.params if p.group == g.index]
                       for g in other.groups]
    return model, None, others


def _folder_model(folder: Path, suffix: str) -> tuple[Any, str | None, str | None]:
    """A Hugging Face / accelerate folder's model: the skeleton from config.json, else the
    model file beside (``suffix`` "_1": accelerate's second model, for optimizer_1.bin)."""
    from optstate.io.model_tensors import find_model_beside, read_model_file
    from optstate.state.hf_model import skeleton_tensors

    why_not = None
    if not suffix:  # config.json describes the folder's (first) model
        skeleton, why_not = skeleton_tensors(folder)
        if skeleton is not None:
            return skeleton, None, None
    beside = find_model_beside(folder, suffix)
    if beside is None:
        if suffix:
            return None, (f"no model{suffix}.safetensors or pytorch_model{suffix}.bin (the "
                          f"model saved with optimizer{suffix}) in {folder.name}"), None
        return None, NO_MODEL, None
    try:
        tensors = read_model_file(beside)
    except CheckpointError as e:
        return None, f"the model file beside it ({beside.name}) could not be read: {e}", None
    unordered = None
    if not tensors.ordered:
        unordered = f"{beside.name} lists tensors by name, not in the model's order"
        if why_not and (folder / "config.json").is_file():
            unordered += f", and the model could not be built from config.json: {why_not}"
    return tensors, None, unordered


def read_given(model_file: str | Path) -> tuple[Any, str | None]:
    """A model the user named: a model file, or a Hugging Face folder (or its config.json):
    its skeleton when transformers can build it, else its model file. (model, why the
    order is unknown)."""
    from optstate.io.model_tensors import read_model_file

    path = Path(model_file)
    folder = path.parent if path.name == "config.json" and path.is_file() else path
    if not folder.is_dir():
        model = read_model_file(path)
        return model, (None if model.ordered
                       else f"{model.origin} lists tensors by name, not in the model's order")
    model, why, unordered = _folder_model(folder, "")
    if model is None:
        raise CheckpointError(
            f"{path}: no model found there: {why}",
            hint="give a model file (model.safetensors, pytorch_model.bin) or a Hugging Face "
            "folder with config.json (and transformers installed)")
    return model, unordered
