"""``simulate``: build the optimizer of a RunSpec, resume it, step it, save it.

Returns a ``SimulationResult`` and prints nothing. The steps themselves are the one
training loop of ``loop.py`` (shared with ``simulate --world-size``); this module adds
what a single-process run does around it: ``--resume`` (``load_resume``) and ``--save``.

What ``--save`` writes (``run_checkpoint``):

- no scheduler and no params asked for: ``optimizer.state_dict()`` itself, the exact
  object ``optimizer.load_state_dict`` takes;
- otherwise a dict in the PyTorch tutorial's general-checkpoint layout:
  ``{"optimizer_state_dict": ..., "scheduler_state_dict": ... (with a scheduler),
  "model_state_dict": {name: tensor} (with params), "step": int,
  "optstate": {"version": str, "config": {...}}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.base.errors import ConfigError, StateMismatchError, option
from optstate.base.values import format_shape
from optstate.base.version import __version__
from optstate.io.source import Source
from optstate.io.torch_file import check_writable, save_checkpoint
from optstate.sim.build import (
    Built,
    build,
    hyperparameter_defaults,
    optimizer_class,
    scheduler_classes,
)
from optstate.sim.config import RunSpec, validate
from optstate.sim.fit import group_fit
from optstate.sim.loop import History, divergence_warning, resolve_record_every, run_loop
from optstate.sim.trial import reference_state
from optstate.state.locate import find_optimizer_states, locate
from optstate.state.view import OptimizerStateView

# Group keys torch adds or drops between versions and optimizers share; never a sign
# that a checkpoint comes from another optimizer kind.
COMMON_GROUP_KEYS = frozenset({
    "params", "param_names", "lr", "initial_lr", "weight_decay", "foreach", "fused",
    "differentiable", "capturable", "maximize", "decoupled_weight_decay",
})


@dataclass
class SimulationResult:
    spec: RunSpec
    params: list[torch.Tensor]
    names: list[str]
    group_of: list[int]
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    history: History
    start_step: int  # steps already taken before this run (from --resume)
    final_step: int
    saved: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    @property
    def scheduler_state(self) -> dict[str, Any] | None:
        return self.scheduler.state_dict() if self.scheduler is not None else None


def run_checkpoint(built: Built, spec: RunSpec, step: int, with_params: bool) -> Any:
    """The object ``--save`` writes (layout in the module docstring)."""
    opt_sd = built.optimizer.state_dict()
    if built.scheduler is None and not with_params:
        return opt_sd
    out: dict[str, Any] = {"optimizer_state_dict": opt_sd}
    if built.scheduler is not None:
        out["scheduler_state_dict"] = built.scheduler.state_dict()
    if with_params:
        out["model_state_dict"] = {
            n: p.detach().clone() for n, p in zip(built.names, built.params, strict=True)
        }
    out["step"] = step
    # Through JSON: fresh, unshared strings, so the pickled bytes do not depend on whether
    # the spec came from flags, a config file or Python (pickle shares strings by identity).
    config = json.loads(json.dumps(spec.to_dict()))
    out["optstate"] = {"version": __version__, "config": config}
    return out


def series_path(path: Path, step: int) -> Path:
    """``out.pkl`` -> ``out.step000010.pkl`` for ``--save-every``."""
    return path.with_name(f"{path.stem}.step{step:06d}{path.suffix}")


def check_save_every(save: str | Path | None, save_every: int | None) -> None:
    """``save_every`` is a positive number of steps, and only with ``save``."""
    if save_every is not None and save_every <= 0:
        raise ConfigError(f"{option('save_every')} must be a positive number of steps, got "
                          f"{save_every}")
    if save_every is not None and save is None:
        raise ConfigError(f"{option('save_every')} needs {option('save', shown='PATH')} to "
                          "name the series")


def save_targets(save: str | Path | None, save_every: int | None, start: int,
                 end: int) -> list[tuple[int, Path]]:
    """(after step, path) of every save of a run from ``start`` to ``end``: each multiple
    of ``save_every`` after the start (``series_path``), then ``save`` at the end."""
    if save is None:
        return []
    save_path = Path(save)
    targets: list[tuple[int, Path]] = []
    if save_every:
        first = (start // save_every + 1) * save_every
        targets += [(s, series_path(save_path, s)) for s in range(first, end + 1, save_every)]
    targets.append((end, save_path))
    return targets


def simulate(
    spec: RunSpec,
    *,
    resume: Any = None,
    save: str | Path | None = None,
    save_every: int | None = None,
    with_params: bool = False,
    force: bool = False,
    record_every: int | str = "auto",
    on_step: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Build the optimizer of ``spec``, optionally load ``resume`` (an opened ``Source``
    or an already loaded checkpoint object), run ``spec.steps`` more steps, and save as
    asked. Prints nothing; ``on_step(step)`` is called after every step.

    The history records the start, every step that is a multiple of ``record_every``
    (``"auto"``: ``record_interval``; 1: every step) and the final step."""
    check_save_every(save, save_every)
    spec = validate(spec)
    record_every = check_record_every(record_every)
    built = build(spec)
    warnings: list[str] = []
    start = load_resume(built, spec, resume, warnings) if resume is not None else 0
    end = start + spec.steps

    targets = save_targets(save, save_every, start, end)
    for _, p in targets:  # fail before stepping, not after
        check_writable(p, force, kind="torch")

    numel = sum(p.numel() for p in built.params)
    every = resolve_record_every(record_every, spec.steps, numel)
    series = iter(targets)
    next_save = next(series, None)

    def save_due(done: int) -> None:
        nonlocal next_save
        while next_save is not None and next_save[0] == done:
            save_checkpoint(run_checkpoint(built, spec, done, with_params), next_save[1],
                            force=force, notes=warnings)
            next_save = next(series, None)

    history = run_loop(spec, built.params, built.optimizer, built.scheduler, start=start,
                       every=every, on_step=on_step, save_due=save_due)
    saved = [p for _, p in targets]
    warning = divergence_warning(history)
    if warning is not None:
        warnings.append(warning)
    return SimulationResult(spec, built.params, built.names, built.group_of, built.optimizer,
                            built.scheduler, history, start, end, saved, warnings)


def check_record_every(value: int | str) -> int | str:
    """``record_every`` as ``simulate`` takes it: ``"auto"`` or a positive int."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad_record_every(value)
    return value


def parse_record_every(text: str | None) -> int | str:
    """``--record-every``'s text: absent or ``auto`` -> ``"auto"``, else a positive int."""
    if text is None or text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise _bad_record_every(text) from None
    if value <= 0:
        raise _bad_record_every(text)
    return value


def _bad_record_every(value: object) -> ConfigError:
    return ConfigError(f"{option('record_every')} must be a positive number of steps or auto, got "
                       f"{value!r}")


def load_resume(built: Built, spec: RunSpec, obj: Any, warnings: list[str]) -> int:
    """Load a checkpoint into the built run; return the step count it reached.

    ``obj`` is an opened ``Source`` (a file or a Trainer folder) or an object already
    loaded. The optimizer state may sit anywhere ``locate`` finds one (bare, the
    tutorial's container, Lightning, Hugging Face); the scheduler state beside it is
    loaded too, and the parameters when the file holds them (``--with-params``)."""
    source = obj if isinstance(obj, Source) else Source(
        path=Path(option("resume")), file=Path(option("resume")), format="object", bytes=0,
        obj=obj)
    found = find_optimizer_states(source.obj)
    if not found:
        raise StateMismatchError(f"the {option('resume')} file holds no optimizer state")
    if len(found) > 1:
        raise StateMismatchError(
            f"the {option('resume')} file holds {len(found)} optimizer states "
            f"({', '.join(loc or '(top level)' for loc, _ in found)}); optstate cannot tell "
            "which to resume"
        )
    located = locate(source)
    sd = located.state
    check_compatible(built, spec, sd)
    try:
        built.optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise StateMismatchError(f"torch could not load the {option('resume')} state: {e}"
                                 ) from None

    if built.scheduler is not None:
        if located.scheduler is None:
            warnings.append(f"the {option('resume')} file has no scheduler state; the "
                            "scheduler starts fresh")
        else:
            _check_scheduler_kind(built.scheduler, located.scheduler)
            try:
                built.scheduler.load_state_dict(located.scheduler)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise StateMismatchError(
                    f"torch could not load the {option('resume')} scheduler state: {e}"
                ) from None
    container = source.obj if isinstance(source.obj, dict) and sd is not source.obj else {}
    model = container.get("model_state_dict")
    if isinstance(model, dict):
        _load_params(built, model)
    else:
        warnings.append(f"the {option('resume')} file holds no parameter values; parameters "
                        "start from their initial values (save with "
                        f"{option('with_params', True)} to keep them)")
    # Steps taken: ours ("step"), Lightning's ("global_step"), the scheduler's epoch
    # count, or the optimizer's own per-parameter step counters.
    for key in ("step", "global_step"):
        if isinstance(container.get(key), int) and not isinstance(container[key], bool):
            return container[key]
    epoch = (located.scheduler or {}).get("last_epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        return epoch
    return _step_from_state(sd)


def _check_scheduler_kind(scheduler: Any, state: dict[str, Any]) -> None:
    """``load_state_dict`` of a scheduler copies any keys it is given: a StepLR state
    would silently turn a CosineAnnealingLR into a hybrid. Refuse states that carry
    another scheduler's arguments."""
    ours = set(hyperparameter_defaults(type(scheduler))) | {"last_epoch", "verbose"}
    others: set[str] = set()
    for cls in scheduler_classes().values():
        others |= set(hyperparameter_defaults(cls))
    foreign = sorted((set(state) & others) - ours)
    if foreign:
        name = type(scheduler).__name__
        raise StateMismatchError(
            f"the {option('resume')} scheduler state is not {name} state: it has "
            f"{', '.join(foreign)}, which {name} does not use",
            hint=f"set {option('scheduler')} to the scheduler that wrote the checkpoint",
        )


def check_compatible(built: Built, spec: RunSpec, sd: dict[str, Any]) -> None:
    """One-line errors for states that would load wrongly or fail later at step().

    The groups are compared by ``sim.fit.group_fit``, as ``check`` compares them. The rest
    is not shared with check, whose findings differ on purpose and would change what
    --resume accepts: check tells the writer's kind from the state (``infer_kind``) where
    this refuses group keys the configured class does not take, and check compares each
    state entry with the shape the configured optimizer's own first step gives it (0-d
    steps, LBFGS's flat vectors, Adafactor's factored row/column statistics). Here too an
    entry is compared with that shape where the configured optimizer makes one other than
    its parameter's (Adafactor's row_var 3x1 for a 3x4 weight), else with the parameter's;
    that reference is built (one more optimizer, one step) only for an entry whose shape is
    not its parameter's, so an ordinary resume does not pay for it."""
    view = OptimizerStateView.from_state_dict(sd)
    cls = optimizer_class(spec.optimizer)
    ours = set(hyperparameter_defaults(cls)) | COMMON_GROUP_KEYS
    theirs = set(view.hyperparameter_names())
    foreign = sorted(theirs - ours)
    if foreign:
        raise StateMismatchError(
            f"the {option('resume')} state is not {cls.__name__} state: its groups have "
            f"{', '.join(foreign)}, which {cls.__name__} does not use",
            hint=f"set {option('optimizer')} to the optimizer that wrote the checkpoint",
        )
    fit = group_fit(view, built.optimizer)
    if fit.count_differs:
        raise StateMismatchError(
            f"the {option('resume')} state has {len(fit.checkpoint)} param group(s), the "
            "config builds "
            f"{len(fit.config)}"
        )
    if fit.sizes_differ:
        gi = fit.sizes_differ[0]
        raise StateMismatchError(
            f"param group {gi} has {fit.checkpoint[gi]} param(s) in the {option('resume')} "
            f"state but {fit.config[gi]} in the config"
        )
    if isinstance(built.optimizer, torch.optim.LBFGS):
        _check_lbfgs_sizes(view, built)
        return
    reference: list[dict[str, Any]] | None = None  # built (one more optimizer) if needed
    for pv, p in zip(view.params, built.params, strict=True):
        for key, value in pv.state.items():
            if not (isinstance(value, torch.Tensor) and value.dim() > 0):
                continue
            if value.shape == p.shape:
                continue
            if reference is None:  # the shapes the configured optimizer gives its entries
                reference = reference_state(spec)
            want = reference[pv.position].get(key) if pv.position < len(reference) else None
            factored = (isinstance(want, torch.Tensor) and want.dim() > 0
                        and want.shape != p.shape)  # Adafactor's row/column statistics
            if factored and value.shape != want.shape:
                raise StateMismatchError(
                    f"param {pv.position} ({built.names[pv.position]}): the "
                    f"{option('resume')} state's {key} has shape "
                    f"{format_shape(tuple(value.shape))}, the configured "
                    f"{type(built.optimizer).__name__} makes it "
                    f"{format_shape(tuple(want.shape))}"
                )
            if not factored:
                raise StateMismatchError(
                    f"param {pv.position} ({built.names[pv.position]}): the "
                    f"{option('resume')} state's "
                    f"{key} has shape {format_shape(tuple(value.shape))}, the config's "
                    f"parameter is {format_shape(tuple(p.shape))}"
                )


def _check_lbfgs_sizes(view: OptimizerStateView, built: Built) -> None:
    """LBFGS keeps one state, on its first parameter, of vectors over all parameters
    flattened together (``d``, ``prev_flat_grad``, the ``old_dirs`` history)."""
    total = sum(p.numel() for p in built.params)
    for pv in view.params:
        for key, value in pv.state.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            for t in items:
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.numel() != total:
                    raise StateMismatchError(
                        f"the {option('resume')} state's LBFGS {key} has {t.numel()} "
                        "elements, the "
                        f"config's parameters have {total} in all"
                    )


def _load_params(built: Built, model: dict[str, Any]) -> None:
    missing = [n for n in built.names if n not in model]
    if missing:
        raise StateMismatchError(
            f"the {option('resume')} file's model_state_dict lacks "
            f"{', '.join(missing[:4])}"
            + (" …" if len(missing) > 4 else "")
        )
    with torch.no_grad():
        for n, p in zip(built.names, built.params, strict=True):
            t = model[n]
            if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                raise StateMismatchError(
                    f"the {option('resume')} file's parameter {n} does not have shape "
                    f"{format_shape(tuple(p.shape))}"
                )
            p.copy_(t)


def _step_from_state(sd: dict[str, Any]) -> int:
    """Best guess of steps taken, from per-param ``step`` entries (0 if none)."""
    steps = []
    for st in sd.get("state", {}).values():
        v = st.get("step") if isinstance(st, dict) else None
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            steps.append(int(v.item()))
        elif isinstance(v, (int, float)):
            steps.append(int(v))
    return max(steps) if steps else 0
