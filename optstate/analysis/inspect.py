"""``inspect``: a checkpoint path in, one plain-data report out (schema ``optstate.inspect/1``).

The report is JSON-ready as is (``--json`` dumps it) and is what the rich view draws. It
holds: where the state came from, the inferred optimizer kind, the param groups, every
parameter's state entries (statistics unless ``stats=False``, which reads no tensor data
beyond 0-d scalars such as ``step``), totals, the scheduler state beside it, and warnings.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optstate.analysis.master_weights import master_weight_warnings
from optstate.analysis.suspicious import state_warnings
from optstate.analysis.underflow import Underflow, find_underflows
from optstate.base.errors import ConfigError, option
from optstate.base.suggest import did_you_mean
from optstate.io.remote import display
from optstate.io.source import Source, open_source
from optstate.state.kind import container_of, infer_kind, stored_formats
from optstate.state.locate import Located, locate
from optstate.state.lowbit import low_bit_totals
from optstate.state.names import name_params
from optstate.state.report import (
    as_stored,
    entry_report,
    groups_report,
    plain,
    scheduler_report,
    tensor_like,
)
from optstate.state.sharded import shard_note
from optstate.state.view import OptimizerStateView

SCHEMA = "optstate.inspect/1"


def inspect_path(path: str | Path, *, key: str | None = None, unsafe: bool = False,
                 workers: int = 1, **options: Any) -> dict[str, Any]:
    """Open ``path`` (file or checkpoint folder) safely and inspect the optimizer state.
    ``model`` (a model file: safetensors or a torch.save state_dict) names the params
    of an optimizer state saved without names or model (``state.names``). The tensor
    statistics are split over ``workers`` processes, or over the torchrun ranks this
    process is one of (``analysis/ranks.py``): the same report."""
    from optstate.analysis.ranks import ranked

    source = open_source(path, unsafe=unsafe, reader="auto")  # without torch if it can
    job = {"command": "inspect", "path": str(path), "key": key, "unsafe": unsafe,
           "options": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in options.items() if k != "on_progress"}}
    return ranked(lambda: inspect_source(source, key=key, **options), workers=workers,
                  job=job, sources=(source,))


def inspect_source(source: Source, *, key: str | None = None, stats: bool = True,
                   params: list[str] | None = None, groups: list[int] | None = None,
                   values: bool = False, hist_bins: int | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   model: str | Path | None = None) -> dict[str, Any]:
    """Inspect the optimizer state in an opened source.

    Params are named where that is certain (``state.names.name_params``: the checkpoint's
    param_names or FQN keys, a model state_dict beside the state, or the ``model`` file);
    the report's ``naming`` says how. ``params`` selects parameters by position, name or
    name glob (``'encoder.*'``), ``groups`` by group index: only
    those are reported (and only their tensors are read); totals and warnings that need no
    tensor data still cover the whole state. ``on_progress(done, total)`` is called after
    each parameter's tensors are read.
    """
    located = locate(source, key)
    view = OptimizerStateView.from_state_dict(located.state, located.extra)
    naming = name_params(view, source, located, model_file=model)
    selected = _select(view, params, groups)
    state_keys = {str(k) for p in view.params for k in p.state
                  if p.stored.get(str(k), {}).get("format") != "wrapper"}
    kind = infer_kind([g.hyperparams for g in view.groups], state_keys, stored_formats(view),
                      container_of(source.obj, located.location))

    param_reports = []
    underflows: list[Underflow] = []
    for p in view.params:
        if p.position not in selected:
            continue
        param_reports.append({
            "id": plain(p.key),
            "position": p.position,
            "group": p.group,
            "name": p.name,
            "name_source": p.name_source,
            "aliases": list(p.aliases),
            "state": {str(k): as_stored(entry_report(v, stats=stats, values=values),
                                        p.stored.get(str(k))) for k, v in p.state.items()},
            "stored": {k: plain(d) for k, d in p.stored.items()},  # state.packed
        })
        if hist_bins:  # inspect --hist
            from optstate.analysis.histogram import add_histograms

            add_histograms(param_reports[-1]["state"], p.state, hist_bins)
        # counted now, while a remote file's storages of this param are still held
        underflows += find_underflows(param_reports[-1:], view)
        if on_progress is not None:
            on_progress(len(param_reports), len(selected))
    group_reports = groups_report(view)
    for g, gv in zip(group_reports, view.groups, strict=True):
        g["n_params"] = len(gv.param_keys)
        names = [p.name for p in view.params if p.group == gv.index]
        g["names"] = names if any(n is not None for n in names) else None
    if groups is not None:
        group_reports = [g for g in group_reports if g["index"] in set(groups)]

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "file": _file_info(source),
        "location": located.location,
        "locations": list(located.candidates),
        "optimizer": kind.to_dict(),
        "legacy_ids": view.legacy_ids,
        "stats": stats,
        "selection": {"params": sorted(selected) if (params or groups is not None) else None,
                      "groups": groups},
        "naming": naming.to_dict(),
        "param_groups": group_reports,
        "params": param_reports,
        "totals": _totals(view),
        "scheduler": _scheduler(located, source),
        "warnings": [],
        "notes": [],
    }
    warnings, notes = state_warnings(view, kind.kind, param_reports, report["scheduler"],
                                     underflows)
    if stats and isinstance(source.obj, dict):  # DeepSpeed's, beside the state
        chosen = {p["name"] for p in param_reports} if (params or groups is not None) else None
        warnings += master_weight_warnings(source.obj.get("fp32_master_weights"), chosen)
    for role, reason in source.sibling_errors.items():
        warnings.append({"code": f"{role}_unreadable", "message": f"the {role} file beside the "
                         f"optimizer state could not be read: {reason}",
                         "where": [str(source.sibling_files[role])]})
    shards = shard_note([p.stored for p in view.params])
    if shards:
        notes.append({"code": "dtensor_shard", "message": shards, "where": []})
    report["warnings"], report["notes"] = warnings, list(source.notes) + notes
    report["file"].update(read_info(source))  # last: after every tensor read
    return report


def _file_info(source: Source) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": display(source.path),
        "read": display(source.file),
        "format": source.format,
        "bytes": source.bytes,
        **read_info(source),
    }
    if source.sibling_files:
        info["siblings"] = {k: display(v) for k, v in source.sibling_files.items()}
    if source.summary:  # e.g. DeepSpeed: ZeRO stage, world size, dtype, loss scale
        info["summary"] = source.summary
        info["details"] = dict(source.details)
    return info


def read_info(source: Source) -> dict[str, Any]:
    """What was read: ``bytes_read``, ``requests``, ``retries`` (None for a local source,
    which is memory-mapped: what the kernel pages in is not counted) and ``bytes_total``,
    the size of every file the checkpoint consists of (with its scheduler file); and by
    which reader: ``reader`` ("native": without torch; "torch") and ``reader_note`` (why
    torch read it; None when native, or when torch was asked for)."""
    how = {"reader": source.reader, "reader_note": source.reader_note}
    if source.read is not None:
        return {**source.read.to_dict(), **how}
    total = source.bytes
    for sibling in source.sibling_files.values():
        try:
            total += sibling.stat().st_size
        except (OSError, AttributeError):
            pass
    return {"bytes_read": None, "bytes_total": total, "requests": None, "retries": None,
            **how}


def _select(view: OptimizerStateView, params: list[str] | None,
            groups: list[int] | None) -> set[int]:
    """Positions of the params to report: all, or those ``params``/``groups`` name."""
    chosen = {p.position for p in view.params}
    if groups is not None:
        for g in groups:
            if not 0 <= g < len(view.groups):
                raise ConfigError(
                    f"{option('groups', [g])}: the state has {len(view.groups)} param group"
                    f"{'s' * (len(view.groups) != 1)} (0..{len(view.groups) - 1})"
                )
        chosen = {p.position for p in view.params if p.group in set(groups)}
    if params:
        wanted: set[int] = set()
        by_name: dict[str, int] = {}
        for p in view.params:
            for n in (p.name, *p.aliases):
                if n is not None:
                    by_name.setdefault(n, p.position)
        for text in params:
            if text not in by_name and any(c in text for c in "*?["):
                wanted |= _glob_positions(view, text, by_name)
            else:
                wanted.add(_param_position(view, text, by_name))
        chosen &= wanted
    return chosen


def _names_from(view: OptimizerStateView) -> str:
    """'names here come from ...': where this state's names came from, for messages."""
    naming = view.naming
    if naming is None or not naming.named:
        reason = naming.reason if naming is not None and naming.reason else "none is known"
        if naming is None or naming.model is None:  # nothing named them: say how to
            return f"no names here: {option('model', shown='FILE')} names them ({reason})"
        return f"this state has no parameter names ({reason})"
    where = naming.model or {"param_names": "the optimizer's param_names",
                             "dcp": "the DCP folder's keys"}.get(naming.source, naming.source)
    return f"names here come from {where}"


def _glob_positions(view: OptimizerStateView, pattern: str, by_name: dict[str, int]) -> set[int]:
    """Positions of every param whose name or alias matches ``pattern`` (fnmatch,
    case-sensitive); a pattern matching none is an error naming it."""
    found = {pos for name, pos in by_name.items() if fnmatch.fnmatchcase(name, pattern)}
    if not found:
        raise ConfigError(f"{option('params', [pattern], shown=repr(pattern))}: no parameter "
                          f"name matches it{did_you_mean(pattern, by_name)}",
                          hint=f"{_names_from(view)}; a position 0..{view.n_params - 1} "
                          "works too")
    return found


def _param_position(view: OptimizerStateView, text: str, by_name: dict[str, int]) -> int:
    if text in by_name:
        return by_name[text]
    try:
        n = int(text)
    except ValueError:
        names = ", ".join(list(by_name)[:5]) or "none in this checkpoint"
        raise ConfigError(f"{option('params', [text], shown=repr(text))}: no parameter "
                          f"has that name{did_you_mean(text, by_name)}",
                          hint=f"give a position 0..{view.n_params - 1} or a name ({names}); "
                          f"{_names_from(view)}") from None
    if 0 <= n < view.n_params:
        return n
    if view.legacy_ids:
        for p in view.params:
            if p.key == n:
                return p.position
    raise ConfigError(f"{option('params', [text], shown=str(n))}: the state has "
                      f"{view.n_params} parameter{'s' * (view.n_params != 1)} "
                      f"(positions 0..{view.n_params - 1})")


def _totals(view: OptimizerStateView) -> dict[str, Any]:
    """Counts and bytes over the whole state; reads shapes and dtypes only."""
    by_dtype: Counter[str] = Counter()
    tensors = scalars = numel = 0

    def add(value: Any) -> None:
        nonlocal tensors, scalars, numel
        t = tensor_like(value)
        if t is not None:
            n = t.numel()
            if len(t.shape) == 0:
                scalars += 1
            else:
                tensors += 1
            numel += n
            by_dtype[str(t.dtype).removeprefix("torch.")] += n * t.element_size()
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)
        else:
            scalars += 1

    for p in view.params:
        for v in p.state.values():
            add(v)
    # as stored: a low-bit entry (state.lowbit) by its format, at its stored bytes
    by_format = Counter(by_dtype)
    for p in view.params:
        for k, d in p.stored.items():
            t = tensor_like(p.state.get(k))
            if d.get("bytes_stored") is not None and t is not None:
                by_format[str(t.dtype).removeprefix("torch.")] -= t.numel() * t.element_size()
                by_format[str(d["format"])] += int(d["bytes_stored"])
    return {
        "groups": len(view.groups),
        "params": view.n_params,
        "params_with_state": sum(1 for p in view.params if p.state),
        "state_tensors": tensors,
        "state_scalars": scalars,
        "numel": numel,
        "bytes": sum(by_dtype.values()),
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "bytes_stored": sum(by_format.values()),
        "bytes_stored_by_format": {k: v for k, v in sorted(by_format.items()) if v},
        "orphan_state_keys": [plain(k) for k in view.orphan_keys],
        "low_bit": low_bit_totals([p.stored for p in view.params]),
    }


def _scheduler(located: Located, source: Source) -> dict[str, Any] | None:
    if located.scheduler is None:
        return None
    report = scheduler_report(located.scheduler, located.scheduler_location or "")
    ds = source.details.get("scheduler") if source.format == "deepspeed" else None
    if isinstance(ds, dict) and ds.get("type"):  # DeepSpeed's: its ds_config names it
        report["kind"] = f"DeepSpeed {ds['type']}"
        report["settings"] = {**report["settings"], **ds.get("params", {})}
    return report
