"""The stepping loop: build an optimizer from a RunSpec and step it on synthetic gradients.

Returns a ``SimulationResult`` and prints nothing. Each step is exactly what a
hand-written training loop does::

    optimizer.zero_grad()            # per spec.zero_grad: set_to_none / zeros / skipped
    <gradients written into .grad>   # autograd's accumulation rule (gradients.py)
    optimizer.step()                 # LBFGS: step(closure)
    scheduler.step()                 # if configured (ReduceLROnPlateau: step(loss))

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
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.base.errors import ConfigError, StateMismatchError
from optstate.base.version import __version__
from optstate.io.source import Source
from optstate.io.torch_file import check_writable, clean_message, save_checkpoint
from optstate.numeric.kernels import norm_fn
from optstate.sim.build import (
    Built,
    build,
    hyperparameter_defaults,
    optimizer_class,
    scheduler_classes,
)
from optstate.sim.config import RunSpec, format_shape, validate
from optstate.sim.gradients import accumulate, make_source
from optstate.state.locate import find_optimizer_states, locate
from optstate.state.view import OptimizerStateView

# Group keys torch adds or drops between versions and optimizers share; never a sign
# that a checkpoint comes from another optimizer kind.
COMMON_GROUP_KEYS = frozenset({
    "params", "param_names", "lr", "initial_lr", "weight_decay", "foreach", "fused",
    "differentiable", "capturable", "maximize", "decoupled_weight_decay",
})


@dataclass
class History:
    """Per-step records, one entry per recorded step: the start, every step that is a
    multiple of ``record_every``, and the final step (see ``record_interval``)."""

    step: list[int] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    param_norm: list[float] = field(default_factory=list)
    lr: list[list[float]] = field(default_factory=list)  # one lr per group
    # (x, y) per recorded step when the run has exactly two parameter elements (the 2-D
    # objectives that --plot draws over their contour plot); empty otherwise.
    point: list[tuple[float, float]] = field(default_factory=list)
    record_every: int = 1


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


# The "auto" history: at most this many recorded steps, and the norms read at most this
# many parameter elements over a run (the norm is a float64 pass over every parameter).
MAX_RECORDS = 1000
MAX_NORM_ELEMENTS = 50_000_000


def record_interval(steps: int, numel: int) -> int:
    """The ``record_every`` of ``"auto"``: the smallest k >= 1 with at most
    ``MAX_RECORDS`` recorded steps (``ceil(steps / k)``) whose norms read at most
    ``MAX_NORM_ELEMENTS`` elements in all (``ceil(steps / k) * numel``). It depends only
    on the run's size, never on timing: 10 000 steps of a 2x2 record every 10th step,
    50 steps of 10M parameters every 10th, runs up to 1000 steps of up to 50 000
    elements every step. Beyond 5e7 elements only the start and the end are recorded."""
    records = min(MAX_RECORDS, MAX_NORM_ELEMENTS // max(numel, 1))
    if records < 1:
        return max(steps, 1)
    return max(1, -(-steps // records))


def series_path(path: Path, step: int) -> Path:
    """``out.pkl`` -> ``out.step000010.pkl`` for ``--save-every``."""
    return path.with_name(f"{path.stem}.step{step:06d}{path.suffix}")


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
    if save_every is not None and save_every <= 0:
        raise ConfigError(f"--save-every must be a positive number of steps, got {save_every}")
    if save_every is not None and save is None:
        raise ConfigError("--save-every needs --save PATH to name the series")
    spec = validate(spec)
    record_every = check_record_every(record_every)
    built = build(spec)
    warnings: list[str] = []
    start = load_resume(built, spec, resume, warnings) if resume is not None else 0
    end = start + spec.steps

    save_path = Path(save) if save is not None else None
    targets: list[tuple[int, Path]] = []
    if save_path is not None:
        if save_every:
            first = (start // save_every + 1) * save_every
            targets += [(s, series_path(save_path, s)) for s in range(first, end + 1, save_every)]
        targets.append((end, save_path))
        for _, p in targets:  # fail before stepping, not after
            check_writable(p, force, kind="torch")

    numel = sum(p.numel() for p in built.params)
    every = record_every if record_every != "auto" else record_interval(spec.steps, numel)
    history = History(record_every=every)
    source = make_source(spec.grad, spec.grad_value, spec.seed)
    params, opt, sched = built.params, built.optimizer, built.scheduler
    is_lbfgs = isinstance(opt, torch.optim.LBFGS)
    sparse = isinstance(opt, torch.optim.SparseAdam)
    plateau = sched is not None and isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    set_to_none = spec.zero_grad == "none"
    zero = spec.zero_grad != "never"
    if spec.zero_grad == "zeros" and source.name == "none":
        # Older torch kept zero-filled .grad tensors after the first backward; with no
        # gradient source we start from that state so steps still run on zero grads.
        for p in params:
            p.grad = torch.zeros_like(p).to_sparse() if sparse else torch.zeros_like(p)
    series = iter(targets)
    next_save = next(series, None)
    two_d = numel == 2

    # Recording recurs through the run: views, blocks and (without a scheduler, where
    # nothing changes the learning rates) the lr list are made once, not per record.
    norm_now = norm_fn(params)  # norm_of(params): float64, chunked, no temporaries
    loss_now = source.loss if source.has_objective else None
    fixed_lr = None if sched is not None else [float(g["lr"]) for g in opt.param_groups]

    def record(step: int) -> None:
        norm = norm_now()
        history.step.append(step)
        history.loss.append(loss_now(params) if loss_now is not None else None)
        history.param_norm.append(norm)
        history.lr.append([float(g["lr"]) for g in opt.param_groups] if fixed_lr is None
                          else fixed_lr.copy())
        if two_d:
            x, y = torch.cat([p.detach().reshape(-1) for p in params]).tolist()
            history.point.append((x, y))

    record(start)
    next_record = (start // every + 1) * every
    for step in range(start, end):
        if is_lbfgs:
            def closure(step: int = step) -> torch.Tensor:
                if zero:
                    opt.zero_grad(set_to_none=set_to_none)
                accumulate(params, source.gradients(params, step))
                if not source.has_objective:
                    return torch.tensor(0.0)
                with torch.no_grad():  # the loss a hand-written closure returns
                    return source.objective(params)

            try:
                opt.step(closure)
            except TORCH_REFUSALS as e:
                raise _refused(opt, step + 1, e) from None
        else:
            if zero:
                opt.zero_grad(set_to_none=set_to_none)
            source.fill_grads(params, step, sparse=sparse)
            try:
                opt.step()
            except TORCH_REFUSALS as e:
                raise _refused(opt, step + 1, e) from None
        if sched is not None:
            try:
                if plateau:
                    loss = source.loss(params)
                    sched.step(loss if loss is not None else 0.0)
                else:
                    sched.step()
            except TORCH_REFUSALS as e:
                raise _refused(sched, step + 1, e) from None
        done = step + 1
        if done == next_record:
            record(done)
            next_record += every
        elif done == end:
            record(done)
        if on_step is not None:
            on_step(done)
        while next_save is not None and next_save[0] == done:
            save_checkpoint(run_checkpoint(built, spec, done, with_params), next_save[1],
                            force=force, notes=warnings)
            next_save = next(series, None)
    saved = [p for _, p in targets]
    if next_save is not None:  # zero steps: only the final save remains
        for _, p in [next_save, *series]:
            save_checkpoint(run_checkpoint(built, spec, end, with_params), p, force=force,
                            notes=warnings)
    warning = divergence_warning(history)
    if warning is not None:
        warnings.append(warning)
    return SimulationResult(spec, params, built.names, built.group_of, opt, sched, history,
                            start, end, saved, warnings)


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
    return ConfigError(f"--record-every must be a positive number of steps or auto, got "
                       f"{value!r}")


def thin_history(result: SimulationResult, record_every: int | str) -> None:
    """Keep, of a history recorded at every step (``simulate --world-size``'s), the steps
    ``simulate`` records with ``record_every``: the start, the multiples, the end."""
    h = result.history
    start, end = result.start_step, result.final_step
    every = record_every if record_every != "auto" else record_interval(
        end - start, sum(p.numel() for p in result.params))
    keep = [i for i, s in enumerate(h.step) if s in (start, end) or s % every == 0]
    h.step, h.loss, h.param_norm, h.lr = ([xs[i] for i in keep] for xs in (
        h.step, h.loss, h.param_norm, h.lr))
    h.point = [h.point[i] for i in keep] if h.point else []
    h.record_every = every


def divergence_warning(history: History) -> str | None:
    """Where the recorded parameter norms first turn NaN or Inf, said as precisely as
    the history allows: between two recorded steps, it happened after the earlier."""
    rows = list(zip(history.step, history.param_norm, strict=True))
    i = next((i for i, (_, n) in enumerate(rows) if not math.isfinite(n)), None)
    if i is None:
        return None
    bad = rows[i][0]
    if i == 0 or bad - rows[i - 1][0] == 1:
        return (f"the run diverged: parameters hold NaN or Inf from step {bad} on "
                "(try a smaller --lr)")
    return (f"the run diverged: parameters hold NaN or Inf from recorded step {bad} on, "
            f"first after step {rows[i - 1][0]} (the history records every "
            f"{history.record_every} steps; --record-every 1 finds the step; try a smaller "
            "--lr)")


# What torch raises when a setting its constructor accepted fails at step() (capturable
# on CPU, differentiable on leaf parameters, OneCycleLR past total_steps, ...).
TORCH_REFUSALS = (RuntimeError, ValueError, TypeError, AssertionError)


def _refused(obj: Any, step: int, e: BaseException) -> ConfigError:
    return ConfigError(
        f"torch refused step {step} of {type(obj).__name__}: {clean_message(e)}",
        hint="torch's constructor accepts these settings but its step() does not (on "
        "this device); change the hyperparameters or the scheduler arguments",
    )


def load_resume(built: Built, spec: RunSpec, obj: Any, warnings: list[str]) -> int:
    """Load a checkpoint into the built run; return the step count it reached.

    ``obj`` is an opened ``Source`` (a file or a Trainer folder) or an object already
    loaded. The optimizer state may sit anywhere ``locate`` finds one (bare, the
    tutorial's container, Lightning, Hugging Face); the scheduler state beside it is
    loaded too, and the parameters when the file holds them (``--with-params``)."""
    source = obj if isinstance(obj, Source) else Source(
        path=Path("--resume"), file=Path("--resume"), format="object", bytes=0, obj=obj)
    found = find_optimizer_states(source.obj)
    if not found:
        raise StateMismatchError("the --resume file holds no optimizer state")
    if len(found) > 1:
        raise StateMismatchError(
            f"the --resume file holds {len(found)} optimizer states "
            f"({', '.join(loc or '(top level)' for loc, _ in found)}); optstate cannot tell "
            "which to resume"
        )
    located = locate(source)
    sd = located.state
    check_compatible(built, spec, sd)
    try:
        built.optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise StateMismatchError(f"torch could not load the --resume state: {e}") from None

    if built.scheduler is not None:
        if located.scheduler is None:
            warnings.append("the --resume file has no scheduler state; the scheduler starts "
                            "fresh")
        else:
            _check_scheduler_kind(built.scheduler, located.scheduler)
            try:
                built.scheduler.load_state_dict(located.scheduler)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise StateMismatchError(
                    f"torch could not load the --resume scheduler state: {e}") from None
    container = source.obj if isinstance(source.obj, dict) and sd is not source.obj else {}
    model = container.get("model_state_dict")
    if isinstance(model, dict):
        _load_params(built, model)
    else:
        warnings.append("the --resume file holds no parameter values; parameters start "
                        "from their initial values (save with --with-params to keep them)")
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
            f"the --resume scheduler state is not {name} state: it has "
            f"{', '.join(foreign)}, which {name} does not use",
            hint="set --scheduler to the scheduler that wrote the checkpoint",
        )


def check_compatible(built: Built, spec: RunSpec, sd: dict[str, Any]) -> None:
    """One-line errors for states that would load wrongly or fail later at step()."""
    view = OptimizerStateView.from_state_dict(sd)
    cls = optimizer_class(spec.optimizer)
    ours = set(hyperparameter_defaults(cls)) | COMMON_GROUP_KEYS
    theirs = set(view.hyperparameter_names())
    foreign = sorted(theirs - ours)
    if foreign:
        raise StateMismatchError(
            f"the --resume state is not {cls.__name__} state: its groups have "
            f"{', '.join(foreign)}, which {cls.__name__} does not use",
            hint="set --optimizer to the optimizer that wrote the checkpoint",
        )
    if len(view.groups) != len(built.optimizer.param_groups):
        raise StateMismatchError(
            f"the --resume state has {len(view.groups)} param group(s), the config builds "
            f"{len(built.optimizer.param_groups)}"
        )
    for g, ours_g in zip(view.groups, built.optimizer.param_groups, strict=True):
        if len(g.param_keys) != len(ours_g["params"]):
            raise StateMismatchError(
                f"param group {g.index} has {len(g.param_keys)} param(s) in the --resume "
                f"state but {len(ours_g['params'])} in the config"
            )
    if isinstance(built.optimizer, torch.optim.LBFGS):
        _check_lbfgs_sizes(view, built)
        return
    for pv, p in zip(view.params, built.params, strict=True):
        for key, value in pv.state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise StateMismatchError(
                    f"param {pv.position} ({built.names[pv.position]}): the --resume state's "
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
                        f"the --resume state's LBFGS {key} has {t.numel()} elements, the "
                        f"config's parameters have {total} in all"
                    )


def _load_params(built: Built, model: dict[str, Any]) -> None:
    missing = [n for n in built.names if n not in model]
    if missing:
        raise StateMismatchError(
            f"the --resume file's model_state_dict lacks {', '.join(missing[:4])}"
            + (" …" if len(missing) > 4 else "")
        )
    with torch.no_grad():
        for n, p in zip(built.names, built.params, strict=True):
            t = model[n]
            if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                raise StateMismatchError(
                    f"the --resume file's parameter {n} does not have shape "
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
