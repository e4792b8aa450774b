"""One checkpoint of a run as ``timeline`` keeps it: a small plain-JSON record (its steps,
lr per group and the lr its saved scheduler computes, and per parameter and entry the
statistics ``inspect`` computes, from the same code: ``analysis.inspect.inspect_source``).
No tensor is kept. docs/timeline.md documents the record.

Floats that are not finite are stored as the strings ``"nan"``, ``"inf"`` and ``"-inf"``
(JSON has no NaN); ``num`` reads any number of a record or report back as a float or None.
``analysis.timeline`` orders the records and builds the report; ``timeline_findings``
reads them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from optstate.base.errors import NoOptimizerStateError, OptstateError
from optstate.io.run_dir import Candidate
from optstate.state.report import plain
from optstate.state.view import GROUP_META_KEYS

TRAINER_STATE = "trainer_state.json"
_TRAINER_STATE_MAX = 64 * 2**20  # bytes: a Trainer's log history, never a whole disk
_RUN_STEP_KEYS = ("step", "global_step", "iteration")
# seconds: the newest checkpoint of a run, changed this recently and unreadable, may be
# one the run is still writing (a large torch.save takes seconds)
LIVE_SECONDS = 10


def num(x: Any) -> float | None:
    """A number of a record or report as a float: ``"nan"``/``"inf"``/``"-inf"`` back to
    floats, None (or anything else) to None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x in ("nan", "inf", "-inf"):
        return float(x)
    return None


def json_safe(obj: Any) -> Any:
    """``obj`` (plain data: dicts, lists, numbers, strings) with every non-finite float in
    it as a string (module docstring): what a record or a report holds, ready for
    ``json.dumps(allow_nan=False)``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _int(v: Any) -> int | None:
    """An integral step (an int, or a float such as a float32 tensor's 40.0)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _empty_record(c: Candidate) -> dict[str, Any]:
    return {"label": c.label, "path": str(c.path), "format": None, "reader": None,
            "reader_note": None,
            "identity": dict(c.identity), "name_step": c.name_step,
            "steps": {"run": None, "run_source": None, "optimizer": None, "scheduler": None},
            "kind": None, "groups": [], "scheduler": None, "params": [], "warnings": [],
            "error": None, "error_code": None}


def read_record(candidate: Candidate, *, key: str | None = None,
                unsafe: bool = False, newest: bool = False) -> dict[str, Any]:
    """One checkpoint's record (module docstring; docs/timeline.md). A checkpoint that
    cannot be read gives a record with ``error`` (one line), never an exception.
    ``newest``: the run's newest checkpoint (by mtime); if it cannot be read and changed
    within ``LIVE_SECONDS``, its error says it may still be being written."""
    from optstate.analysis.inspect import inspect_source
    from optstate.io.source import open_source
    from optstate.state.locate import find_optimizer_states, locate

    rec = _empty_record(candidate)
    source = None
    try:
        source = open_source(candidate.path, unsafe=unsafe, reader="auto")
        report = inspect_source(source, key=key, stats=True)
        located = locate(source, key)  # the raw scheduler state (inspect keeps its report)
        rec["steps"]["run"], rec["steps"]["run_source"] = _run_step(source, located)
        sched_state, raw_groups = located.scheduler, located.state.get("param_groups")
        source = located = None  # no tensor kept past here
    except OptstateError as e:
        # only a file that holds none is "no optimizer state" (a model's weights, passed
        # over in a folder); several states, or a folder with several optimizer files,
        # is a checkpoint that could not be read as one
        found = (find_optimizer_states(source.obj)
                 if isinstance(e, NoOptimizerStateError) and source is not None
                 and key is None else None)
        none = found is not None and not found
        text = str(e).splitlines()[0]
        # only a file that could not be opened at all: what a half-written one gives
        age = _age(candidate) if newest and source is None else None
        if age is not None and age < LIVE_SECONDS:
            text += (f": it may still be being written (the run's newest checkpoint, changed "
                     f"{age:.0f} s ago); run again once it is complete")
        elif e.hint:
            text += f" ({e.hint})"
        rec["error"] = text
        rec["error_code"] = ("no_optimizer_state" if none else "several_states"
                             if found is not None and len(found) > 1 else "unreadable")
        return rec
    rec["format"] = report["file"]["format"]
    rec["reader"], rec["reader_note"] = report["file"]["reader"], report["file"]["reader_note"]
    rec["kind"] = report["optimizer"].get("kind")
    positions: dict[int, list[int]] = {}
    for p in report["params"]:
        positions.setdefault(p["group"], []).append(p["position"])
    rec["groups"] = []
    for g in report["param_groups"]:
        # the raw group's numbers (the view's groups are these, in order): inspect's
        # report drops a non-finite one to None
        raw = raw_groups[g["index"]] if isinstance(raw_groups, list) \
            and g["index"] < len(raw_groups) and isinstance(raw_groups[g["index"]], dict) \
            else None
        hyper = ({str(k): plain(v, finite=False) for k, v in raw.items()
                  if k not in GROUP_META_KEYS}
                 if raw is not None else g["hyperparams"])
        lr = hyper.get("lr")
        rec["groups"].append({"index": g["index"],
                              "lr": lr if num(lr) is not None else None,
                              "hyperparams": hyper, "params": positions.get(g["index"], [])})
    steps = []
    for p in report["params"]:
        entries = {}
        for name, e in p["state"].items():
            if "value" in e and name == "step":
                steps.append(_int(e["value"]))
            if "shape" in e and "norm" in e:
                entries[name] = _entry(e)
        rec["params"].append({"position": p["position"], "name": p["name"],
                              "group": p["group"], "entries": entries})
    known = [s for s in steps if s is not None]
    if not known:  # apex's / DeepSpeed's FusedAdam count in the group, not per param
        known = [s for g in rec["groups"] if (s := _int(g["hyperparams"].get("step")))
                 is not None]
    rec["steps"]["optimizer"] = max(known) if known else None
    rec["scheduler"] = _scheduler(report["scheduler"], sched_state, raw_groups)
    if rec["scheduler"] is not None:
        rec["steps"]["scheduler"] = _int(rec["scheduler"]["last_epoch"])
    rec["warnings"] = [{"code": w["code"], "message": w["message"]} for w in report["warnings"]]
    return json_safe(rec)


def _age(c: Candidate) -> float | None:
    """Seconds since ``c`` last changed (now, or when it was found), None if unknown."""
    import os
    import time

    mtime = c.mtime_ns
    try:
        mtime = max(mtime, os.stat(c.path).st_mtime_ns)
    except (OSError, ValueError):
        pass
    return max(0.0, (time.time_ns() - mtime) / 1e9) if mtime else None


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    """inspect's statistics of one tensor entry, as the record keeps them."""
    lo, hi = e.get("min"), e.get("max")
    max_abs = max(abs(lo), abs(hi)) if lo is not None and hi is not None else None
    return {"shape": e["shape"], "dtype": e["dtype"], "numel": e["numel"],
            "norm": e.get("norm"), "max_abs": max_abs,
            "nan": e.get("nan", 0), "inf": e.get("inf", 0), "zeros": e.get("zeros")}


def _scheduler(rep: dict[str, Any] | None, state: dict[str, Any] | None,
               raw_groups: Any) -> dict[str, Any] | None:
    if rep is None:
        return None
    last_epoch = rep.get("last_epoch")
    if last_epoch is None and isinstance(state, dict):  # DeepSpeed's own schedulers
        last_epoch = _int(state.get("last_batch_iteration"))
    raw = state if isinstance(state, dict) else {}
    settings = {k: plain(raw[k], finite=False) if k in raw else v
                for k, v in rep.get("settings", {}).items()}
    # the raw state's numbers: inspect's report drops a non-finite one to None
    out = {"kind": rep["kind"], "last_epoch": last_epoch,
           "last_lr": plain(raw.get("_last_lr", rep.get("last_lr")), finite=False),
           "base_lrs": plain(raw.get("base_lrs", rep.get("base_lrs")), finite=False),
           "settings": settings,
           "scheduled_lr": None, "scheduled_reason": "the scheduler state is not a dict"}
    from optstate.state.scheduled import scheduled_lrs

    groups = raw_groups if isinstance(raw_groups, list) else []
    if isinstance(state, dict):
        plain_groups = [{k: v for k, v in g.items() if k != "params"} for g in groups
                        if isinstance(g, dict)]
        lrs, reason = scheduled_lrs(state, len(groups), groups=plain_groups)
        out["scheduled_lr"] = lrs
        out["scheduled_reason"] = reason
    return out


def _run_step(source: Any, located: Any) -> tuple[int | None, str | None]:
    """The step the run recorded beside the optimizer state, and where it was found."""
    trainer = _trainer_state_step(source)
    if trainer is not None:
        return trainer, "trainer_state.json global_step"
    if source.format == "deepspeed" and _int(source.details.get("global_steps")) is not None:
        return _int(source.details["global_steps"]), "DeepSpeed global_steps"
    obj = source.obj
    if not isinstance(obj, dict):
        return None, None
    if "optimizer_states" in obj and _int(obj.get("global_step")) is not None:
        return _int(obj["global_step"]), "Lightning global_step"
    if _int(obj.get("global_steps")) is not None and "module" in obj:  # DeepSpeed, no ZeRO
        return _int(obj["global_steps"]), "DeepSpeed global_steps"
    container = _container(obj, located.location)
    for holder in (container, obj):
        if isinstance(holder, dict):
            for k in _RUN_STEP_KEYS:
                if _int(holder.get(k)) is not None:
                    return _int(holder[k]), f"the checkpoint's {k!r} key"
    return None, None


def _container(obj: Any, location: str) -> Any:
    """The dict holding the optimizer state at ``location`` (one level up), or None."""
    from optstate.base.paths import path_keys

    keys = path_keys(location) if location else []
    node = obj
    for k in keys[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return None
    return node if keys else None


def _trainer_state_step(source: Any) -> int | None:
    """``global_step`` of the Trainer's ``trainer_state.json`` in the checkpoint's folder:
    a folder checkpoint (``checkpoint-500/``), or an ``optimizer.pt`` named directly. Not
    beside a plain file: the Trainer also writes one at the top of its output folder, for
    the end of the run, which says nothing about ``step_10.pt`` there."""
    from optstate.io.source import OPTIMIZER_FILE

    folders = [source.path] if source.path.is_dir() else []
    if OPTIMIZER_FILE.fullmatch(source.file.name):
        folders.append(source.file.parent)
    for folder in folders:
        f = folder / TRAINER_STATE
        try:
            if not f.is_file() or f.stat().st_size > _TRAINER_STATE_MAX:
                continue
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and _int(data.get("global_step")) is not None:
            return _int(data["global_step"])
    return None
