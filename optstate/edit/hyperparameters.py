"""``set``: change hyperparameters in a saved optimizer state, and nothing else.

``optimizer.load_state_dict`` restores every group's hyperparameters from the checkpoint,
so a new lr given to the optimizer's constructor is silently replaced by the old one
(pytorch/examples#816, transformers#9099). The fix is to change the checkpoint.

What is changed: the chosen keys of the chosen param groups and, where the checkpoint
holds scheduler state beside the optimizer state and ``lr`` is set, the scheduler's
``base_lrs`` and ``_last_lr`` (and the group's ``initial_lr``, which a scheduler reads
when it is built). Everything else in the file (the rest of a Lightning or tutorial
container, every tensor, its dtype and layout) is written back as loaded; before the new
file replaces anything it is re-loaded and compared, leaf by leaf, with the input
(``compare_trees``), and only the requested paths may differ.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, ConfigError, OutputExistsError
from optstate.base.paths import follow, join, path_keys
from optstate.base.suggest import did_you_mean
from optstate.io.source import Source, open_source
from optstate.io.torch_file import atomic_write, check_writable, load_torch_file
from optstate.numeric.leaves import same_leaf
from optstate.state.locate import Located, locate
from optstate.state.view import GROUP_META_KEYS

# Group keys that ``set`` may not touch: they are bookkeeping, not hyperparameters.
_READ_ONLY = frozenset(GROUP_META_KEYS)


@dataclass
class Change:
    """One value ``set`` changed."""

    target: str  # "optimizer" | "scheduler"
    file: str  # the file the value lives in
    path: str  # where in that file's object tree, e.g. optimizer_states[0].param_groups[1].lr
    key: str
    group: int | None
    old: Any
    new: Any


@dataclass
class SetResult:
    source: str
    location: str
    scheduler_location: str | None
    changes: list[Change]
    trial: str | None = None  # torch's load_state_dict + step() on the new state: "ok" or why not
    outputs: list[str] = field(default_factory=list)
    verified: dict[str, int] = field(default_factory=dict)  # leaves compared per file
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False


# --------------------------------------------------------------------------- values


def coerce_value(key: str, new: Any, old: Any, where: str) -> Any:
    """``new`` in the type of ``old`` (the value already in the checkpoint), or a
    ConfigError saying what is expected. A tuple stays a tuple, a float a float, a
    tensor a tensor of the same dtype."""
    import torch

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{key}{where} must be {expected} (the checkpoint holds {_show(old)}), got "
            f"{_show(new)}"
        )

    if old is None:  # foreach=None & co.: any value is what torch accepts there
        return new
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise bad("true or false")
        return new
    if isinstance(old, torch.Tensor):
        if old.numel() != 1 or not _is_number(new):
            raise bad("a number" if old.numel() == 1 else f"a tensor of shape {list(old.shape)}")
        _finite(new, bad)
        return torch.tensor(new, dtype=old.dtype).reshape(old.shape)
    if _is_number(old):
        if not _is_number(new):
            raise bad("a number")
        _finite(new, bad)
        # An int stays an int only if an int is given: torch writes weight_decay=0 and
        # dampening=0 as ints, and 1e-4 must still be accepted there.
        return new if isinstance(old, int) else float(new)
    if isinstance(old, (tuple, list)):
        items = new if isinstance(new, (tuple, list)) else None
        if items is None or len(items) != len(old):
            example = ",".join(str(x) for x in old)
            raise bad(f"{len(old)} comma-separated values like {example}")
        out = [coerce_value(f"{key}[{i}]", n, o, where)
               for i, (n, o) in enumerate(zip(items, old, strict=True))]
        return tuple(out) if isinstance(old, tuple) else out
    if isinstance(old, str):
        if not isinstance(new, str):
            raise bad("a string")
        return new
    raise bad(f"a {type(old).__name__}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any, bad: Any) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise bad("a finite number")


def _show(v: Any) -> str:
    import torch

    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"tensor({v.item()!r}, dtype={str(v.dtype).removeprefix('torch.')})"
    return repr(v)


# --------------------------------------------------------------------------- planning


def plan_changes(
    located: Located,
    values: dict[str, Any],
    *,
    group: int | None = None,
    scheduler: bool = True,
    scheduler_values: dict[str, Any] | None = None,
    file_label: str = "",
    scheduler_file_label: str = "",
    base_lr: float | None = None,
) -> list[Change]:
    """The changes that setting ``values`` makes (nothing is modified yet). Raises
    ConfigError for an unknown group or key, or a value of the wrong type.

    ``base_lr``: the base lr a scheduler starts from, changed as if the run had started
    there (see ``_base_lr_changes``)."""
    if base_lr is not None and "lr" in values:
        raise ConfigError("give --lr or --base-lr, not both")
    groups = located.state["param_groups"]
    if not groups:
        raise ConfigError("this optimizer state has no param groups to change")
    if group is not None and not 0 <= group < len(groups):
        raise ConfigError(
            f"--group {group}: this optimizer state has {len(groups)} param group(s), "
            f"numbered 0 to {len(groups) - 1}"
        )
    chosen = [group] if group is not None else list(range(len(groups)))
    groups_path = join(located.location, "param_groups")
    changes: list[Change] = []
    for key, value in values.items():
        if key in _READ_ONLY:
            raise ConfigError(f"{key!r} is bookkeeping, not a hyperparameter; set cannot "
                              "change it")
        for gi in chosen:
            g = groups[gi]
            if key not in g:
                known = [k for k in g if k not in _READ_ONLY]
                raise ConfigError(
                    f"param group {gi} has no hyperparameter {key!r}"
                    f"{did_you_mean(key, map(str, known))}",
                    hint=f"its hyperparameters: {', '.join(map(str, known))}",
                )
            new = coerce_value(key, value, g[key], f" (param group {gi})")
            changes.append(Change("optimizer", file_label, join(join(groups_path, gi), key),
                                  key, gi, g[key], new))
            if key == "lr" and "initial_lr" in g:
                init = coerce_value("initial_lr", value, g["initial_lr"], f" (param group {gi})")
                changes.append(Change("optimizer", file_label,
                                      join(join(groups_path, gi), "initial_lr"), "initial_lr",
                                      gi, g["initial_lr"], init))
    if scheduler and "lr" in values and located.scheduler is not None:
        changes += _scheduler_changes(located, values["lr"], chosen, len(groups),
                                      scheduler_file_label)
    if scheduler_values:
        changes += _scheduler_settings(located, scheduler_values, scheduler_file_label)
    if base_lr is not None:
        changes += _base_lr_changes(located, base_lr, chosen, file_label,
                                    scheduler_file_label)
    return [c for c in changes if not same_leaf(c.old, c.new)]


# Group keys a scheduler writes that hold lrs of the same schedule (OneCycleLR's peak and
# floor): they move with the base lr.
_SCHEDULED_LR_KEYS = ("max_lr", "min_lr")


def _base_lr_changes(located: Located, base_lr: Any, chosen: list[int], file_label: str,
                     sched_label: str) -> list[Change]:
    """``--base-lr X``: the state of the run that would have started at base lr X.

    The lr-based schedulers torch ships compute every lr as base lr times a factor that
    does not depend on the base (StepLR, MultiStepLR, ExponentialLR, LinearLR,
    ConstantLR, PolynomialLR, CosineAnnealingLR and CosineAnnealingWarmRestarts with
    eta_min = 0, LambdaLR, MultiplicativeLR, OneCycleLR, and SequentialLR/ChainedScheduler
    of those), chainable or closed form. So per group, with f = X / old base: initial_lr and
    base_lrs become X and every lr of the schedule (the group's lr, _last_lr, OneCycleLR's
    max_lr/min_lr, those of wrapped schedulers) is multiplied by f. Schedules holding an
    absolute lr (eta_min != 0, CyclicLR's max_lrs) or no base at all (ReduceLROnPlateau)
    are refused: scaling cannot give that run."""
    groups = located.state["param_groups"]
    sched = located.scheduler
    has_initial = any("initial_lr" in g for g in groups)
    if sched is None:
        if has_initial:
            raise ConfigError("--base-lr: the groups have initial_lr (a scheduler ran) but no "
                              "scheduler state was found beside the optimizer state: its "
                              "base_lrs and _last_lr could not follow")
        raise ConfigError("--base-lr: no scheduler state beside the optimizer state and no "
                          "initial_lr in its groups: without a scheduler the lr is the base "
                          "lr; use --lr")
    why = not_proportional(sched)
    if why:
        raise ConfigError(f"--base-lr: {why}")
    if not _is_number(base_lr) or not math.isfinite(base_lr) or base_lr <= 0:
        raise ConfigError(f"--base-lr must be a positive number, got {base_lr!r}")
    groups_path = join(located.location, "param_groups")
    sched_prefix = _scheduler_prefix(located, sched_label)
    out: list[Change] = []
    for gi in chosen:
        g = groups[gi]
        old = base_lr_of(sched, g, gi)
        if "initial_lr" in g and not math.isclose(_scalar(g["initial_lr"]), old,
                                                  rel_tol=1e-12):
            raise ConfigError(
                f"--base-lr: param group {gi}'s initial_lr {_scalar(g['initial_lr'])!r} and "
                f"the scheduler's base_lrs[{gi}] {old!r} disagree: which one is the base lr "
                "cannot be told")
        if old == 0:
            raise ConfigError(f"--base-lr: param group {gi}'s base lr is 0: there is no "
                              "schedule to scale")
        factor = base_lr / old
        where = f" (param group {gi})"

        def opt_change(key: str, new: Any, *, gi: int = gi, where: str = where) -> None:
            g = groups[gi]
            out.append(Change("optimizer", file_label, join(join(groups_path, gi), key),
                              key, gi, g[key], coerce_value(key, new, g[key], where)))

        opt_change("lr", _scalar(g["lr"]) * factor)
        if "initial_lr" in g:
            opt_change("initial_lr", base_lr)
        for key in _SCHEDULED_LR_KEYS:
            if key in g and _is_number(_scalar(g[key])):
                opt_change(key, _scalar(g[key]) * factor)
        for rel, state in _scheduler_tree(sched):
            for key in ("base_lrs", "_last_lr"):
                lrs = state.get(key)
                if not isinstance(lrs, list) or len(lrs) != len(groups):
                    continue
                new = base_lr if key == "base_lrs" and not rel else _scalar(lrs[gi]) * factor
                name = join(rel, key)  # "base_lrs", "_schedulers[1].base_lrs"
                out.append(Change("scheduler", sched_label,
                                  join(_join_path(sched_prefix, name), gi), name, gi,
                                  lrs[gi], coerce_value(key, new, lrs[gi], where)))
    return out


def base_lr_of(sched: dict[str, Any], group: dict[str, Any], gi: int) -> float:
    """A group's base lr: the scheduler's base_lrs (SequentialLR keeps none of its own:
    those of the first scheduler it wraps), else the group's initial_lr."""
    for _, state in _scheduler_tree(sched):
        lrs = state.get("base_lrs")
        if isinstance(lrs, list) and gi < len(lrs):
            return _scalar(lrs[gi])
    return _scalar(group["initial_lr"])


def _scalar(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


def _join_path(path: str, rel: str) -> str:
    for key in path_keys(rel):
        path = join(path, key)
    return path


def _scheduler_tree(sched: dict[str, Any], rel: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The scheduler state and those it wraps (SequentialLR, ChainedScheduler), each with
    its path relative to the top: ``""``, ``"_schedulers[0]"``, ..."""
    out = [(rel, sched)]
    for i, sub in enumerate(sched.get("_schedulers") or []):
        if isinstance(sub, dict):
            out += _scheduler_tree(sub, join(join(rel, "_schedulers"), i))
    return out


def not_proportional(sched: dict[str, Any]) -> str | None:
    """Why a scheduler's lrs are not base lr times a base-free factor, or None."""
    for _, state in _scheduler_tree(sched):
        if "base_lrs" not in state and "_schedulers" not in state:
            name = " (ReduceLROnPlateau changes the lr from the metric it is given, not " \
                "from a base lr)" if "patience" in state else ""
            return f"the scheduler state has no base_lrs{name}: set the lr itself with --lr"
        if "max_lrs" in state:
            return (f"CyclicLR moves the lr between base_lrs and max_lrs "
                    f"({', '.join(repr(_scalar(v)) for v in state['max_lrs'])}), an absolute "
                    "lr of its own: scaling cannot give the run that started at another base "
                    "lr")
        eta = state.get("eta_min")
        if _is_number(eta) and eta != 0:
            return (f"the scheduler's eta_min = {eta!r} is an absolute lr: the schedule is "
                    "not proportional to its base lr, so scaling cannot give the run that "
                    "started at another base lr")
    return None


def _scheduler_prefix(located: Located, file_label: str) -> str:
    """The path of the scheduler state in its file ('': the file is the scheduler)."""
    loc = located.scheduler_location or ""
    # A sibling file's scheduler is that file's whole object: paths start at its root.
    return "" if file_label and file_label == loc else loc


def _scheduler_settings(located: Located, values: dict[str, Any],
                        file_label: str) -> list[Change]:
    """``--scheduler-set step_size=10``: top-level scheduler attributes, which
    ``scheduler.load_state_dict`` copies onto the scheduler as they are."""
    sched = located.scheduler
    if sched is None:
        raise ConfigError("--scheduler-set: no scheduler state found beside the optimizer "
                          "state")
    prefix = _scheduler_prefix(located, file_label)
    out = []
    for key, value in values.items():
        if key not in sched:
            known = [k for k in sched if not str(k).startswith("_")]
            raise ConfigError(f"the scheduler state has no {key!r}"
                              f"{did_you_mean(key, map(str, known))}",
                              hint=f"its settings: {', '.join(map(str, known))}")
        if key in ("base_lrs", "_last_lr"):
            raise ConfigError(f"{key} follows --lr; set the learning rate with --lr")
        new = coerce_value(key, value, sched[key], " (scheduler)")
        out.append(Change("scheduler", file_label, join(prefix, key), key, None, sched[key],
                          new))
    return out


def _scheduler_changes(located: Located, lr: Any, chosen: list[int], n_groups: int,
                       file_label: str) -> list[Change]:
    sched = located.scheduler
    assert sched is not None
    prefix = _scheduler_prefix(located, file_label)
    out = []
    for key in ("base_lrs", "_last_lr"):
        lrs = sched.get(key)
        if not isinstance(lrs, list) or len(lrs) != n_groups:
            continue
        for gi in chosen:
            new = coerce_value(key, lr, lrs[gi], f" (scheduler, group {gi})")
            out.append(Change("scheduler", file_label, join(join(prefix, key), gi), key, gi,
                              lrs[gi], new))
    return out


def apply_changes(located: Located, changes: list[Change]) -> None:
    """Write the planned values into the loaded objects (in place)."""
    groups = located.state["param_groups"]
    for c in changes:
        if c.target == "optimizer":
            groups[c.group][c.key] = c.new
        else:
            assert located.scheduler is not None
            if c.group is None:
                located.scheduler[c.key] = c.new
            else:  # "base_lrs", or "_schedulers[1].base_lrs" in a wrapped scheduler
                state = located.scheduler
                *outer, key = path_keys(c.key)
                for k in outer:
                    state = state[k]
                state[key][c.group] = c.new


# --------------------------------------------------------------------------- comparing


def compare_trees(before: Any, after: Any, path: str = "") -> tuple[list[str], int]:
    """Walk two loaded checkpoints side by side. Returns (paths that differ, number of
    leaves compared). Containers must match in type, keys (and key order) and length;
    leaves must be the same (``leaves.same_leaf``: tensors bit for bit, strides too)."""
    import torch

    diffs: list[str] = []
    count = 0

    def walk(a: Any, b: Any, p: str) -> None:
        nonlocal count
        if isinstance(a, dict) and isinstance(b, dict) and type(a) is type(b):
            if list(a) != list(b):
                diffs.append(p or "(top level)")
                return
            for k in a:
                walk(a[k], b[k], join(p, k))
        elif isinstance(a, (list, tuple)) and type(a) is type(b) and not isinstance(
                a, torch.Tensor):
            if len(a) != len(b):
                diffs.append(p or "(top level)")
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, join(p, i))
        else:
            count += 1
            if not same_leaf(a, b):
                diffs.append(p or "(top level)")

    walk(before, after, path)
    return diffs, count


# --------------------------------------------------------------------------- writing


def set_hyperparameters(
    path: str | Path,
    values: dict[str, Any],
    *,
    output: str | Path | None,
    group: int | None = None,
    key: str | None = None,
    scheduler: bool = True,
    force: bool = False,
    in_place: bool = False,
    dry_run: bool = False,
    unsafe: bool = False,
    trial: bool = True,
    scheduler_values: dict[str, Any] | None = None,
    base_lr: float | None = None,
) -> SetResult:
    """Write a copy of the checkpoint at ``path`` with ``values`` set in its param groups
    (all, or ``group``) and, for ``lr``, in the scheduler state beside it; ``base_lr``
    rescales a scheduled run to another base lr (``_base_lr_changes``)."""
    if not values and not scheduler_values and base_lr is None:
        raise ConfigError("nothing to set", hint="give --lr VALUE and/or --set KEY=VALUE")
    if base_lr is not None and "lr" in values:
        raise ConfigError("give --lr or --base-lr, not both")
    if base_lr is not None and not scheduler:
        raise ConfigError("--base-lr changes the scheduler state with the groups; it cannot "
                          "be used with --no-scheduler")
    src_path = Path(path)
    target = _output_path(src_path, output, in_place, dry_run)
    if target is not None and not in_place:
        if src_path.is_dir():
            if target.exists() and not force:
                raise OutputExistsError(f"{target} already exists",
                                        hint="pass --force to replace it")
            if not target.parent.exists():
                raise CheckpointError(f"cannot write {target}: folder {target.parent} "
                                      "does not exist")
        else:
            check_writable(target, force, kind="torch")
    source = open_source(src_path, unsafe=unsafe, copying="set")
    if source.format == "dcp":
        raise ConfigError(
            f"{src_path} is a torch.distributed.checkpoint (DCP) folder, which set does not "
            "rewrite",
            hint=f"convert it to one file, set that, and convert back: optstate convert "
            f"{src_path} one.pt",
        )
    # Shared containers (torch.save({"a": sd, "b": sd}) pickles sd once) would carry a
    # change made at one location to the other: give every location its own containers.
    source.obj = unshare(source.obj)
    if "scheduler" in source.siblings:
        source.siblings["scheduler"] = unshare(source.siblings["scheduler"])
    located = locate(source, key)
    main_label = source.file.name if source.file != source.path else str(source.path)
    sched_file = source.sibling_files.get("scheduler")
    sched_is_sibling = sched_file is not None and located.scheduler is source.siblings.get(
        "scheduler")
    sched_label = sched_file.name if sched_is_sibling and sched_file else main_label
    changes = plan_changes(located, values, group=group, scheduler=scheduler,
                           scheduler_values=scheduler_values, file_label=main_label,
                           scheduler_file_label=sched_label, base_lr=base_lr)
    result = SetResult(str(source.path), located.location, located.scheduler_location,
                       changes, dry_run=dry_run)
    for c in changes:
        if c.target == "scheduler" and c.key == "base_lrs":
            factor = _scalar(c.new) / _scalar(c.old)
            result.notes.append(
                f"param group {c.group}: base lr {_scalar(c.old)!r} -> {_scalar(c.new)!r} "
                f"(x{factor:.6g}): the lr the scheduler has reached and every lr of its "
                "schedule are scaled alike, as if the run had started at the new base lr")
    if "lr" in values and located.scheduler is None:
        result.notes.append("no scheduler state found beside the optimizer state: only the "
                            "optimizer's lr is changed")
    elif "lr" in values and not scheduler:
        result.notes.append("--no-scheduler: the scheduler's base_lrs/_last_lr keep their old "
                            "values")
    if not changes:
        result.notes.append("every value already has the requested value; nothing changed")
    apply_changes(located, changes)
    result.trial = trial_step(located.state) if changes and trial else None
    if dry_run or target is None:
        return result
    legacy = source.format == "legacy"
    if legacy:
        result.notes.append("the input is in torch's legacy (pre-1.6) format; the output is "
                            "written in the same format")
    if src_path.is_dir():
        _write_folder(source, target, changes, located, in_place=in_place, force=force,
                      unsafe=unsafe, result=result)
    else:
        _write_file(source.obj, src_path, target, changes, main_label, force=force or in_place,
                    legacy=legacy, unsafe=unsafe, result=result)
    return result


def unshare(obj: Any) -> Any:
    """The same tree with every dict, list and tuple copied (tensors and other leaves are
    kept as they are, so tensor storage sharing, which torch.save preserves, is
    unchanged)."""
    import copy

    active: set[int] = set()

    def rec(node: Any) -> Any:
        if not isinstance(node, (dict, list, tuple)) or id(node) in active:
            return node  # a leaf, or a cycle (left as is)
        active.add(id(node))
        try:
            if isinstance(node, dict):
                new = copy.copy(node)
                for k in list(new):
                    new[k] = rec(node[k])
                return new
            items = [rec(x) for x in node]
            if isinstance(node, list):
                new_list = copy.copy(node)
                new_list[:] = items
                return new_list
            if hasattr(node, "_fields"):  # namedtuple
                return type(node)(*items)
            return type(node)(items)
        finally:
            active.discard(id(node))

    return rec(obj)


def _output_path(src: Path, output: str | Path | None, in_place: bool,
                 dry_run: bool) -> Path | None:
    if dry_run:
        return None
    if in_place:
        if output is not None and not _same_path(Path(output), src):
            raise ConfigError("--in-place writes onto the input; do not also give -o "
                              "with another path")
        return src
    if output is None:
        raise ConfigError("say where to write the result",
                          hint="-o NEW_FILE writes a copy; --in-place rewrites the input; "
                          "--dry-run only shows the changes")
    out = Path(output)
    if _same_path(out, src):
        raise ConfigError(f"-o {out} is the input checkpoint",
                          hint="pass --in-place to rewrite the input, or -o another path")
    return out


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _write_file(obj: Any, src: Path, target: Path, changes: list[Change], label: str, *,
                force: bool, legacy: bool, unsafe: bool, result: SetResult) -> None:
    """Save ``obj`` atomically to ``target`` after proving the temp file differs from
    ``src`` only where ``changes`` say."""
    expected = {c.path: c.new for c in changes if c.file == label}

    def verify(tmp: Path) -> None:
        result.verified[str(target)] = _verify_against(src, tmp, expected, unsafe)

    from optstate.io.atomic import saved_size, torch_save

    def write(f: Any) -> None:
        torch_save(obj, f, _use_new_zipfile_serialization=not legacy)

    try:
        atomic_write(target, write, force=force, verify=verify, notes=result.notes,
                     needed=lambda: saved_size(obj, _use_new_zipfile_serialization=not legacy),
                     kind="torch")
    except OSError as e:
        raise CheckpointError(f"cannot write {target}: {e.strerror or e}") from None
    result.outputs.append(str(target))


def _verify_against(src: Path, tmp: Path, expected: dict[str, Any], unsafe: bool) -> int:
    try:
        written = load_torch_file(tmp, mmap=True, unsafe=unsafe).obj
    except CheckpointError as e:
        raise CheckpointError(f"refusing to write: the new file does not load back ({e})"
                              ) from None
    original = load_torch_file(src, mmap=True, unsafe=unsafe).obj
    diffs, count = compare_trees(original, written)
    unexpected = sorted(d for d in diffs if not any(_under(d, p) for p in expected))
    missing = sorted(p for p in expected if not any(_under(d, p) for d in diffs))
    if unexpected or missing:
        raise CheckpointError(
            "refusing to write: the new file would differ from the input at "
            f"{', '.join(unexpected) or '(nothing)'} and not at {', '.join(missing) or '-'}; "
            "this is a bug in optstate",
        )
    for p, value in expected.items():
        got = _get_path(written, p)
        if not same_leaf(got, value):
            raise CheckpointError(f"refusing to write: {p} reads back as {got!r}, "
                                  f"not {value!r}")
    return count


def _under(path: str, parent: str) -> bool:
    """``betas[1]`` is under ``betas``: tuples are compared item by item."""
    return path == parent or path.startswith((parent + "[", parent + "."))


def _get_path(obj: Any, path: str) -> Any:
    return follow(obj, path)


def _write_folder(source: Source, target: Path, changes: list[Change], located: Located, *,
                  in_place: bool, force: bool, unsafe: bool, result: SetResult) -> None:
    """Folders (Hugging Face Trainer / accelerate): rewrite the optimizer file and, if its
    values changed, the scheduler file. ``-o DIR`` first copies the whole folder (model
    weights included, so the copy is a complete checkpoint); ``--in-place`` rewrites the
    two files inside the input folder, each atomically."""
    sched_file = source.sibling_files.get("scheduler")
    files: list[tuple[Path, Any]] = [(source.file, source.obj)]
    if sched_file is not None and any(c.file == sched_file.name for c in changes):
        files.append((sched_file, source.siblings["scheduler"]))
    if in_place:
        for f, obj in files:
            _write_file(obj, f, f, changes, f.name, force=True, legacy=source.format ==
                        "legacy", unsafe=unsafe, result=result)
        return
    from optstate.io.atomic import staged

    def needed() -> int:
        return sum(p.stat().st_size for p in source.path.rglob("*") if p.is_file())

    # --force replaces only a folder that is a checkpoint of this kind (holds the file
    # named like the input's optimizer file), never a folder of someone's other files
    with staged(target, force=force, folder=True, kind=source.file.name, notes=result.notes,
                needed=needed) as tmp:
        shutil.copytree(source.path, tmp.path, symlinks=True, dirs_exist_ok=True)
        for f, obj in files:
            _write_file(obj, f, tmp.path / f.name, changes, f.name, force=True,
                        legacy=source.format == "legacy", unsafe=unsafe, result=result)
    result.outputs = [str(target / f.name) for f, _ in files]
    result.verified = {str(target / Path(k).name): v for k, v in result.verified.items()}
    result.notes.append(f"copied the folder {source.path} to {target} and rewrote "
                        f"{', '.join(f.name for f, _ in files)}")


def trial_step(sd: dict[str, Any]) -> str | None:
    """Load the (changed) state into a fresh optimizer of the kind that wrote it, over
    parameters shaped like its state, and take one step on gradients of ones: "ok", or
    torch's error (amsgrad=True with no max_exp_avg_sq saved, say). None when the kind or
    the parameter shapes cannot be told."""
    import copy
    import warnings

    import torch

    from optstate.state.kind import infer_kind
    from optstate.state.view import OptimizerStateView

    try:
        view = OptimizerStateView.from_state_dict(sd)
    except CheckpointError:
        return None
    guess = infer_kind([g.hyperparams for g in view.groups],
                       {k for p in view.params for k in p.state})
    cls = getattr(torch.optim, guess.kind, None)
    if guess.confidence not in ("high", "medium") or cls is None or guess.kind in (
            "LBFGS", "SparseAdam", "Adafactor"):
        return None  # flat, sparse or factored state: shapes do not give the params
    params = []
    for p in view.params:
        shapes = {tuple(v.shape) for k, v in p.state.items()
                  if isinstance(v, torch.Tensor) and v.dim() > 0}
        if len(shapes) > 1:
            return None
        params.append(torch.zeros(next(iter(shapes), (1,)), requires_grad=True))
    groups, i = [], 0
    for g in view.groups:
        groups.append({"params": params[i:i + len(g.param_keys)]})
        i += len(g.param_keys)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = cls(groups)
            opt.load_state_dict(copy.deepcopy(sd))
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
    except Exception as e:
        from optstate.io.torch_file import clean_message

        msg = clean_message(e)
        return f"{type(e).__name__}: {'missing key ' if isinstance(e, KeyError) else ''}{msg}"
    return "ok"


def set_report(result: SetResult) -> dict[str, Any]:
    """The plain-data report of a ``set`` run (schema ``optstate.set/1``)."""
    from optstate.state.report import plain

    return {
        "schema": "optstate.set/1",
        "source": result.source,
        "location": result.location,
        "scheduler_location": result.scheduler_location,
        "dry_run": result.dry_run,
        "changes": [
            {**asdict(c), "old": plain(c.old), "new": plain(c.new)} for c in result.changes
        ],
        "outputs": result.outputs,
        "verified": result.verified,
        "trial": result.trial,
        "notes": result.notes,
    }
