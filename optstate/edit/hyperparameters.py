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
(``numeric.trees.compare_trees``), and only the requested paths may differ.

Here: the entry point and its report; ``set_plan`` plans the changes, ``set_write``
writes and verifies.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, ConfigError, OutputExistsError, option
from optstate.edit.set_plan import (
    Change,
    SetResult,
    apply_changes,
    coerce_value,
    plan_changes,
)
from optstate.edit.set_write import write_file, write_folder
from optstate.io.remote import display
from optstate.io.source import open_source
from optstate.io.targets import as_target
from optstate.io.torch_file import check_writable
from optstate.sim.schedule import SET_LR, scalar
from optstate.sim.trial import trial_step
from optstate.state.locate import locate


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
        raise ConfigError("nothing to set", hint=(
            f"give {option(SET_LR, shown='VALUE')} and/or "
            f"{option('values', shown='KEY=VALUE', python='{KEY: VALUE}')}"))
    if base_lr is not None and "lr" in values:
        raise ConfigError(f"give {option(SET_LR)} or {option('base_lr')}, not both")
    if base_lr is not None and not scheduler:
        raise ConfigError(f"{option('base_lr')} changes the scheduler state with the groups; "
                          f"it cannot be used with {option('scheduler', False)}")
    src_path = as_target(path)  # a Path, or a RemotePath for a URL
    target = _output_path(src_path, output, in_place, dry_run)
    remote = not isinstance(src_path, Path) or (target is not None
                                                and not isinstance(target, Path))
    if remote and target is not None and not in_place and src_path.is_dir():
        raise ConfigError(
            f"set writes a copy of a checkpoint folder only from and to local paths "
            f"({display(src_path)} -> {display(target)})",
            hint="copy the folder locally, or set its optimizer file: "
            f"{option('output')} takes a URL for one file")
    if target is not None and not in_place:
        if src_path.is_dir():
            if target.exists() and not force:
                raise OutputExistsError(f"{target} already exists",
                                        hint=f"pass {option('force', True)} to replace it")
            if not target.parent.exists():
                raise CheckpointError(f"cannot write {target}: folder {target.parent} "
                                      "does not exist")
        else:
            check_writable(target, force, kind="torch")
    # rewriting a URL in place: the version read, so that another writer's newer object
    # is not overwritten (R2: a lost update); taken before the read
    versions = _versions(src_path) if in_place and not dry_run and not isinstance(
        src_path, Path) else {}
    source = open_source(src_path, unsafe=unsafe, copying="set")
    if source.format == "dcp":
        raise ConfigError(
            f"{src_path} is a torch.distributed.checkpoint (DCP) folder, which set does not "
            "rewrite",
            hint=f"convert it to one file, set that, and convert back: optstate convert "
            f"{src_path} one.pt",
        )
    if source.format == "deepspeed":  # its rank files hold flat partitions, not this tree
        raise ConfigError(
            f"{src_path} is a DeepSpeed ZeRO checkpoint, which set does not rewrite",
            hint=f"convert it to one file and set that: optstate convert {src_path} one.pt",
        )
    if source.format == "fsdp2-ranks":  # joined from several files: none holds this tree
        raise ConfigError(
            f"{src_path} is an FSDP2 rank folder (one file per rank, each DTensor a shard), "
            "which set does not rewrite",
            hint=f"convert it to one file (the whole state) and set that: optstate convert "
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
            factor = scalar(c.new) / scalar(c.old)
            result.notes.append(
                f"param group {c.group}: base lr {scalar(c.old)!r} -> {scalar(c.new)!r} "
                f"(x{factor:.6g}): the lr the scheduler has reached and every lr of its "
                "schedule are scaled alike, as if the run had started at the new base lr")
    if "lr" in values and located.scheduler is None:
        result.notes.append("no scheduler state found beside the optimizer state: only the "
                            "optimizer's lr is changed")
    elif "lr" in values and not scheduler:
        result.notes.append(f"{option('scheduler', False)}: the scheduler's base_lrs/_last_lr "
                            "keep their old values")
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
        write_folder(source, target, changes, located, in_place=in_place, force=force,
                     unsafe=unsafe, result=result, versions=versions)
    else:
        write_file(source.obj, src_path, target, changes, main_label, force=force or in_place,
                   legacy=legacy, unsafe=unsafe, result=result,
                   version=versions.get(str(src_path)))
    return result


def _versions(src: Any) -> dict[str, str]:
    """The ETag of the object at URL ``src``, or of each object directly in the folder
    ``src``, by URL (a store without ETags: none)."""
    from optstate.io.remote_write import object_version

    if not src.is_dir():
        etag = object_version(src)
        return {str(src): etag} if etag else {}
    out = {}
    for child in src.iterdir():
        if child.is_file():
            etag = object_version(child)
            if etag:
                out[str(child)] = etag
    return out


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


def _output_path(src: Any, output: str | Path | None, in_place: bool,
                 dry_run: bool) -> Any:
    if dry_run:
        return None
    if in_place:
        if output is not None and not _same_path(as_target(output), src):
            raise ConfigError(f"{option('in_place', True)} writes onto the input; do not also "
                              f"give {option('output')} with another path")
        return src
    if output is None:
        raise ConfigError("say where to write the result",
                          hint=f"{option('output', shown='NEW_FILE')} writes a copy; "
                          f"{option('in_place', True)} rewrites the input; "
                          f"{option('dry_run', True)} only shows the changes")
    if str(output).endswith(("/", os.sep)) and not as_target(src).is_dir():
        from optstate.io.remote import display

        raise ConfigError(f"{option('output')} {display(output)} ends with '/', which names "
                          "a folder; give a file name")
    out = as_target(output)
    if _same_path(out, src):
        raise ConfigError(f"{option('output', out)} is the input checkpoint",
                          hint=f"pass {option('in_place', True)} to rewrite the input, or "
                          f"{option('output')} another path")
    return out


def _same_path(a: Any, b: Any) -> bool:
    if not (isinstance(a, Path) and isinstance(b, Path)):  # a URL: the same URL
        return a == b
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


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


__all__ = ["Change", "SetResult", "apply_changes", "coerce_value", "plan_changes",
           "set_hyperparameters", "set_report", "unshare"]
