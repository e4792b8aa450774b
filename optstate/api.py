"""optstate's documented Python API: the commands of the command line as functions.

Each function does what its command does and returns what the command's ``--json``
prints (``inspect``, ``diff``, ``check``: the plain-data report, JSON-ready) or, for the
commands that make something (``set_hyperparameters``, ``convert``, ``simulate``), the
result object the command's report is drawn from. Nothing is printed. Problems raise
``optstate.OptstateError`` (a ``ConfigError`` for bad arguments, a ``CheckpointError``
for a file that cannot be read, ...), whose ``str()`` is one line naming options by
their Python parameters (``force=True``), where the command line names flags.

Importing this module imports no torch (each function imports what it needs when
called), so ``import optstate`` stays cheap.

Example::

    import optstate

    report = optstate.inspect("adam.pt")
    print(report["optimizer"]["kind"], len(report["params"]))
    if not optstate.diff("a.pt", "b.pt", atol=1e-6)["equal"]:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only
    from collections.abc import Callable, Iterable, Mapping
    from os import PathLike

    from optstate.edit.convert import ConvertResult
    from optstate.edit.set_plan import SetResult
    from optstate.io.source import Source
    from optstate.sim.config import RunSpec
    from optstate.sim.simulate import SimulationResult
    from optstate.state.view import OptimizerStateView

    StrPath = str | PathLike[str]

__all__ = [
    "inspect",
    "diff",
    "load_state",
    "LoadedState",
    "check",
    "config",
    "set_hyperparameters",
    "convert",
    "simulate",
    "timeline",
]


def inspect(path: StrPath, *, key: str | None = None, stats: bool = True,
            params: Iterable[int | str] | None = None, groups: Iterable[int] | None = None,
            values: bool = False, hist: bool = False, layout: bool = False,
            unsafe: bool = False, model: StrPath | None = None) -> dict[str, Any]:
    """What an optimizer checkpoint holds: ``optstate inspect PATH --json`` as a dict.

    ``path`` is a torch.save file, a Hugging Face / accelerate checkpoint folder or a
    torch.distributed.checkpoint (DCP) folder; the optimizer state is found inside it
    (``key`` names where, e.g. ``"optimizer_states[0]"``, when there are several).
    ``stats=False`` reads no tensor data (structure only); ``params`` (positions or names)
    and ``groups`` (indices) select what is reported; ``values`` adds tensor values,
    ``hist`` a 16-bin histogram per state entry, ``layout`` a DCP folder's chunk layout.
    ``unsafe=True`` loads with full pickle (runs code from the file: own files only).
    ``model`` (a model.safetensors or torch.save model state_dict) names the params of an
    optimizer state saved alone; names are found by themselves otherwise (``naming``).

    Returns the report of schema ``optstate.inspect/1`` (README, "inspect --json"): keys
    ``naming`` (where the param names come from), ``optimizer`` (the inferred kind),
    ``param_groups``, ``params`` (per parameter, per state entry: shape, dtype,
    statistics), ``totals``, ``scheduler``, ``warnings``, ...

    Raises ``CheckpointError`` (missing or unreadable file), ``NoOptimizerStateError``
    (no optimizer state in it), ``ConfigError`` (a bad ``key``, ``params`` or ``groups``);
    ``CheckpointError`` too for a ``model`` file that is missing or holds no model.
    """
    from optstate.analysis.histogram import BINS
    from optstate.analysis.inspect import inspect_path
    from optstate.base.errors import ConfigError, option

    if hist and not stats:
        raise ConfigError(f"{option('hist', True)} reads tensor data; it cannot go with "
                          f"{option('stats', False)}")
    report = inspect_path(path, key=key, unsafe=unsafe, stats=stats,
                          params=None if params is None else [str(p) for p in params],
                          groups=None if groups is None else list(groups), values=values,
                          hist_bins=BINS if hist else None, model=model)
    if layout:
        from optstate.io.dcp_layout import layout_report

        report["layout"] = layout_report(path)
    return report


def diff(a: StrPath, b: StrPath, *, atol: float = 0.0, rtol: float = 0.0,
         nan_equal: bool = True, ignore: Iterable[str] = (), key: str | None = None,
         key_a: str | None = None, key_b: str | None = None, match: str = "auto",
         max_diffs: int | None = None, verbose: bool = False,
         unsafe: bool = False, params: Iterable[int | str] = (),
         model: StrPath | None = None) -> dict[str, Any]:
    """Compare two optimizer checkpoints: ``optstate diff A B --json`` as a dict.

    Groups, hyperparameters, parameters, state entries and the scheduler state are
    compared; two tensor elements are equal when ``|a - b| <= atol + rtol * |b|`` (NaN
    equals NaN in the same place unless ``nan_equal=False``). ``ignore`` skips keys,
    parameter names or paths (``"step"``, ``"param_groups[1]"``); ``key`` (both) or
    ``key_a``/``key_b`` say where each optimizer state is; ``match`` pairs parameters
    by ``"position"``, ``"name"`` or ``"auto"``. ``params`` keeps only the params whose
    name or alias a glob matches (``"conv*"``), or at a position (``"3"``); ``model`` (a
    ``.safetensors`` file or a torch.save state_dict) names the params of both sides when
    the checkpoints do not (each change under ``state[...]`` carries ``name`` and
    ``name_source``; ``report["naming"]`` says how each side was named). ``max_diffs``
    lists at most that many differences (all are counted); ``verbose`` lists equal items
    too (``"same"``).

    Returns the report of schema ``optstate.diff/1``: ``report["equal"]`` is the answer;
    ``counts``, ``changes`` (each difference), ``by_entry`` and ``notes`` say more.

    Raises ``CheckpointError``/``NoOptimizerStateError`` for an unreadable input,
    ``ConfigError`` for a bad option (a negative ``atol``, an unknown ``match``).
    """
    from optstate.analysis.diff import DiffOptions, diff_files
    from optstate.analysis.diff_report import diff_report
    from optstate.base.errors import ConfigError, option

    if max_diffs is not None and max_diffs < 0:
        raise ConfigError(f"{option('max_diffs')} must be 0 or more, got {max_diffs}")
    options = DiffOptions(atol=atol, rtol=rtol, nan_equal=nan_equal, ignore=tuple(ignore),
                          match=match,
                          params=(params,) if isinstance(params, str) else tuple(params))
    result, side_a, side_b = diff_files(a, b, options, key_a=key_a or key,
                                        key_b=key_b or key, unsafe=unsafe, model=model)
    return diff_report(result, side_a, side_b, verbose=verbose, max_diffs=max_diffs)


class LoadedState:
    """An optimizer state found in a checkpoint (what ``load_state`` returns).

    ``state``: the optimizer's ``state_dict()`` as saved (``optimizer.load_state_dict``
    takes it); ``view``: the normalized ``OptimizerStateView`` over it (``view.groups``,
    ``view.params``: position, group, name and state entries of each parameter);
    ``location``: where it was in the checkpoint (``""`` for a bare state_dict,
    ``"optimizer_states[0]"``, ...); ``scheduler`` and ``scheduler_location``: the
    learning-rate scheduler's state found beside it, or ``None``; ``source``: the opened
    checkpoint (``source.path``, ``source.format``, ``source.obj``: the whole object).
    """

    __slots__ = ("state", "view", "location", "scheduler", "scheduler_location", "source")

    def __init__(self, state: dict[str, Any], view: OptimizerStateView, location: str,
                 scheduler: dict[str, Any] | None, scheduler_location: str | None,
                 source: Source) -> None:
        self.state = state
        self.view = view
        self.location = location
        self.scheduler = scheduler
        self.scheduler_location = scheduler_location
        self.source = source

    def __repr__(self) -> str:
        return (f"LoadedState(source={self.source.label!r}, location={self.location!r}, "
                f"groups={len(self.view.groups)}, params={len(self.view.params)}, "
                f"scheduler={self.scheduler_location!r})")


def load_state(path: StrPath, key: str | None = None, *, unsafe: bool = False,
               mmap: bool = True) -> LoadedState:
    """Load a checkpoint safely and find the optimizer state in it.

    ``path`` is any checkpoint ``inspect`` reads; ``key`` says where the optimizer state
    is when the checkpoint holds several (``"optimizer_states[1]"``). Loading never runs
    code from the file (``weights_only=True``) unless ``unsafe=True``, and maps GPU
    tensors to the CPU; with ``mmap=True`` a torch.save zip file's tensors are
    memory-mapped (read when used), with ``mmap=False`` read at once.

    Returns a ``LoadedState``: ``.state`` (the state_dict), ``.view`` (its normalized
    view), ``.location``, ``.scheduler``, ``.scheduler_location`` and ``.source``.

    Raises ``CheckpointError`` (missing, unreadable or malformed), ``NoOptimizerStateError``
    (no optimizer state found), ``ConfigError`` (a ``key`` that names nothing there).
    """
    from optstate.io.source import open_source
    from optstate.state.locate import locate
    from optstate.state.view import OptimizerStateView

    source = open_source(path, mmap=mmap, unsafe=unsafe)
    located = locate(source, key)
    return LoadedState(located.state, OptimizerStateView.from_state_dict(located.state),
                       located.location, located.scheduler, located.scheduler_location,
                       source)


def check(checkpoint: StrPath, config: StrPath, *, key: str | None = None,
          trial: bool = True, unsafe: bool = False,
          model: StrPath | None = None) -> dict[str, Any]:
    """Will this checkpoint load into the optimizer a config builds?
    ``optstate check CKPT --config CONFIG --json`` as a dict.

    ``config`` is a TOML or JSON run config (the format of ``simulate --config``);
    ``trial=True`` also loads the state into torch's optimizer on copies and takes one
    step, as a resumed run would. The checkpoint's params are named as ``inspect`` names
    them (``model``: a model file to name them from); with names in the config's groups,
    a reordering or a missing name is reported by name.

    Returns the report of schema ``optstate.check/1``: ``report["verdict"]`` and
    ``report["exit_code"]`` (0 loads and matches, 1 loads with differences worth knowing,
    2 would fail) and ``findings`` (each mismatch in plain words).

    Raises ``CheckpointError``/``NoOptimizerStateError`` for an unreadable checkpoint,
    ``ConfigError`` for a bad config file.
    """
    from optstate.analysis.check import check_checkpoint, check_report

    return check_report(check_checkpoint(checkpoint, config, key=key, unsafe=unsafe,
                                         trial=trial, model_file=model))


def config(checkpoint: StrPath, *, key: str | None = None, model: StrPath | None = None,
           unsafe: bool = False) -> dict[str, Any]:
    """The run config that rebuilds a checkpoint's optimizer: ``optstate config CKPT
    --json`` as a dict (``check`` and ``simulate`` take it as a config; the TOML form,
    with comments on where each part came from, is ``optstate config CKPT``).

    Returns the config as a dict of plain values: ``optimizer``, ``steps``,
    ``hyperparams``, ``groups`` (``shapes``, ``names`` when known, per-group values),
    ``scheduler`` when its class can be told from its state.

    Raises ``CheckpointError``/``NoOptimizerStateError`` for an unreadable checkpoint,
    ``ConfigError`` when no config can build its optimizer (a third-party one).
    """
    from optstate.analysis.config_from import config_from_checkpoint

    return config_from_checkpoint(checkpoint, key=key, model_file=model, unsafe=unsafe).data


def set_hyperparameters(
    path: StrPath,
    values: Mapping[str, Any] | None = None,
    *,
    output: StrPath | None,
    group: int | None = None,
    key: str | None = None,
    scheduler: bool = True,
    force: bool = False,
    in_place: bool = False,
    dry_run: bool = False,
    unsafe: bool = False,
    trial: bool = True,
    scheduler_values: Mapping[str, Any] | None = None,
    base_lr: float | None = None,
) -> SetResult:
    """Write a copy of a checkpoint with hyperparameters changed (``optstate set``).

    ``values`` maps a hyperparameter to its new value (``{"lr": 0.01, "betas": (0.9,
    0.95)}``), set in every param group or in ``group``; each must already exist in the
    group and keeps the saved value's type. ``lr`` also changes a scheduler saved beside
    the state (its ``base_lrs``, ``_last_lr``) unless ``scheduler=False``;
    ``scheduler_values`` sets scheduler fields; ``base_lr`` rescales a scheduled run to
    another base lr. The copy goes to ``output`` (``in_place=True``: over the input;
    ``force=True`` replaces an existing output); ``dry_run=True`` writes nothing. The new
    file is re-read and compared with the input before it is put in place, and with
    ``trial=True`` torch loads it and takes one step.

    Returns a ``SetResult`` (``.changes``: path, old and new value of each change;
    ``.outputs``, ``.trial``, ``.notes``); ``optstate.edit.hyperparameters.set_report(r)``
    is the plain-data report ``set --json`` prints.

    Raises ``ConfigError`` (an unknown hyperparameter, a value of the wrong type, an
    ``output`` that exists without ``force=True``), ``CheckpointError`` (unreadable).
    """
    from optstate.edit.hyperparameters import set_hyperparameters as run

    return run(path, dict(values or {}), output=output, group=group, key=key,
               scheduler=scheduler, force=force, in_place=in_place, dry_run=dry_run,
               unsafe=unsafe, trial=trial,
               scheduler_values=None if scheduler_values is None else dict(scheduler_values),
               base_lr=base_lr)


def convert(src: StrPath, dst: StrPath, *, force: bool = False,
            unsafe: bool = False) -> ConvertResult:
    """Convert a torch.save file to a DCP folder, or a DCP folder to one torch.save file
    (``optstate convert``).

    The copy is written beside ``dst``, read back and compared with ``src`` bit for bit,
    then renamed into place (``force=True`` replaces an existing ``dst``, which must be a
    torch.save file or a DCP folder).

    Returns a ``ConvertResult`` (``.tensors``: tensors verified, ``.bytes`` written,
    ``.warnings``); ``.to_dict()`` is the report ``convert --json`` prints.

    Raises ``OutputExistsError`` (``dst`` exists, ``force`` not given), ``CheckpointError``
    (an unreadable source), ``ConfigError`` (a state DCP cannot store).
    """
    from optstate.edit.convert import convert as run

    return run(src, dst, force=force, unsafe=unsafe)


def simulate(spec: RunSpec | Mapping[str, Any] | StrPath | None = None, *,
             resume: Any = None, save: StrPath | None = None, save_every: int | None = None,
             with_params: bool = False, force: bool = False,
             record_every: int | str = "auto", on_step: Callable[[int], None] | None = None,
             unsafe: bool = False) -> SimulationResult:
    """Step a real torch optimizer on synthetic gradients (``optstate simulate``).

    ``spec`` is a ``RunSpec``, a config mapping (the keys of a config file:
    ``{"optimizer": "AdamW", "steps": 10, "hyperparams": {"lr": 1e-3}}``), the path of a
    TOML/JSON config file, or ``None`` for the defaults (SGD, one 2x2 parameter, 10 steps).
    ``resume`` continues from a checkpoint (a path, or an already loaded object);
    ``save`` writes the final state (``save_every``: a series too) through the atomic
    writer, ``with_params`` with the parameters. Runs are seeded: the same spec gives the
    same state bit for bit. ``on_step(step)`` is called after every step.

    Returns a ``SimulationResult``: ``.optimizer`` and ``.scheduler`` (the real torch
    objects), ``.optimizer_state``, ``.params``, ``.history`` (loss, parameter norm and
    lrs at recorded steps), ``.saved``, ``.warnings``;
    ``optstate.sim.report.simulate_report(r)`` is the report ``simulate --json`` prints.

    Raises ``ConfigError`` (an unknown optimizer or hyperparameter, a setting torch
    refuses, a resume state that does not fit), ``CheckpointError`` (``resume`` unreadable).
    """
    import os

    from optstate.sim.config import RunSpec, read_config_file, spec_from_dict
    from optstate.sim.simulate import simulate as run

    if spec is None:
        spec = RunSpec()
    elif isinstance(spec, (str, os.PathLike)):
        spec = spec_from_dict(read_config_file(spec), os.fspath(spec))
    elif not isinstance(spec, RunSpec):
        spec = spec_from_dict(dict(spec))
    if isinstance(resume, (str, os.PathLike)):
        from optstate.io.source import open_source

        resume = open_source(resume, mmap=False, unsafe=unsafe)
    return run(spec, resume=resume, save=save, save_every=save_every,
               with_params=with_params, force=force, record_every=record_every,
               on_step=on_step)


def timeline(paths: StrPath | Iterable[StrPath], *, spike: float = 10.0,
             cache_dir: StrPath | None = None, use_cache: bool = True,
             workers: int | None = None, key: str | None = None,
             unsafe: bool = False) -> dict[str, Any]:
    """Where a training run went wrong: ``optstate timeline RUN --json`` as a dict.

    ``paths`` is a run's folder (its checkpoints are the files and checkpoint folders
    directly in it: ``step_1000.pt``, ``checkpoint-500/``, ``global_step2000/``, DCP
    folders) or a list of checkpoints of one run. Each is read once (inspect's
    statistics, in parallel over ``workers`` threads), ordered by the step it records,
    and the series are searched for findings: the first NaN/Inf, a norm growing more
    than ``spike`` times between two checkpoints, an lr off its schedule or reset, step
    counters that go back or skip, changed hyperparameters, collapsed second moments,
    lost state. Statistics are cached beside the run (``<run>/.optstate``, or
    ``cache_dir``) keyed by each file's size and times and signed with the user's own key
    (docs/timeline.md); ``use_cache=False`` neither reads nor writes the cache. ``key``
    says where the optimizer state is in every checkpoint;
    ``unsafe=True`` loads with full pickle (own files only).

    Returns the report of schema ``optstate.timeline/1`` (docs/timeline.md): ``checkpoints``
    (one record each, in order), ``series`` (per param and entry: norm, max_abs, nan, inf,
    zeros per checkpoint), ``lr`` (per group, with the scheduler's own lr), ``findings``
    (first occurrence first; none: the run looks clean), ``order``, ``cache``, ``notes``.

    Raises ``CheckpointError`` (a path that does not exist, no checkpoint found),
    ``ConfigError`` (``spike`` not more than 1).
    """
    import os

    from optstate.analysis.timeline import timeline as run

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    from pathlib import Path

    return run([Path(p) for p in paths], spike=spike, cache_dir=cache_dir,
               use_cache=use_cache, workers=workers, key=key, unsafe=unsafe)
