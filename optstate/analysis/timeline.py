"""``timeline``: the checkpoints of one run in, one report over all of them out
(schema ``optstate.timeline/1``; docs/timeline.md documents it).

Each checkpoint is read once into a small record (``read_record``): its steps, lr per group
(and the lr its saved scheduler computes), and per parameter and entry the statistics
``inspect`` computes, from the same code (``analysis.inspect.inspect_source``); no tensor is
kept. Records are cached beside the run (``timeline_cache``), read in parallel over files
(threads: the statistics' kernels release the GIL), ordered by the step they record (the
run's step, else the optimizer's, else the scheduler's; the number in the name only when
the files record none, and the report says so), and handed to ``timeline_findings``.

Floats that are not finite are stored as the strings ``"nan"``, ``"inf"`` and ``"-inf"``
(JSON has no NaN); ``num`` reads any number of the report back as a float or None.

About 450 lines on purpose: the record's shape is made here and read here (ordering,
duplicates, series, lr, worst entries), and the two halves are checked against each other
by reading them together.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from optstate.base.errors import NoOptimizerStateError, OptstateError
from optstate.io.run_dir import Candidate, find_checkpoints

SCHEMA = "optstate.timeline/1"
TRAINER_STATE = "trainer_state.json"
_TRAINER_STATE_MAX = 64 * 2**20  # bytes: a Trainer's log history, never a whole disk
_RUN_STEP_KEYS = ("step", "global_step", "iteration")

ORDER_SOURCES = {
    "run": "the step the run recorded ({})",
    "optimizer": "the optimizer's step (state[...]['step'])",
    "scheduler": "the LR scheduler's last_epoch",
    "name": "the number in the file names: the checkpoints record no step",
    "mtime": "the files' modification times: the checkpoints record no step and their "
             "names hold no number",
}
ENTRY_FIELDS = ("norm", "max_abs", "nan", "inf", "zeros")


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


def _json_float(x: Any) -> Any:
    """A float for JSON: non-finite ones as strings (module docstring)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


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
    return {"label": c.label, "path": str(c.path), "format": None,
            "identity": dict(c.identity), "name_step": c.name_step,
            "steps": {"run": None, "run_source": None, "optimizer": None, "scheduler": None},
            "kind": None, "groups": [], "scheduler": None, "params": [], "warnings": [],
            "error": None, "error_code": None}


def read_record(candidate: Candidate, *, key: str | None = None,
                unsafe: bool = False) -> dict[str, Any]:
    """One checkpoint's record (module docstring; docs/timeline.md). A checkpoint that
    cannot be read gives a record with ``error`` (one line), never an exception."""
    from optstate.analysis.inspect import inspect_source
    from optstate.io.source import open_source
    from optstate.state.locate import locate

    rec = _empty_record(candidate)
    try:
        source = open_source(candidate.path, unsafe=unsafe)
        report = inspect_source(source, key=key, stats=True)
        located = locate(source, key)  # the raw scheduler state (inspect keeps its report)
        rec["steps"]["run"], rec["steps"]["run_source"] = _run_step(source, located)
        sched_state, raw_groups = located.scheduler, located.state.get("param_groups")
        del source, located
    except NoOptimizerStateError as e:
        rec["error"], rec["error_code"] = str(e).splitlines()[0], "no_optimizer_state"
        return rec
    except OptstateError as e:
        rec["error"], rec["error_code"] = str(e).splitlines()[0], "unreadable"
        return rec
    rec["format"] = report["file"]["format"]
    rec["kind"] = report["optimizer"].get("kind")
    positions: dict[int, list[int]] = {}
    for p in report["params"]:
        positions.setdefault(p["group"], []).append(p["position"])
    rec["groups"] = [{"index": g["index"], "lr": _json_float(num(g["hyperparams"].get("lr"))),
                      "hyperparams": g["hyperparams"], "params": positions.get(g["index"], [])}
                     for g in report["param_groups"]]
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
    rec["steps"]["optimizer"] = max(known) if known else None
    rec["scheduler"] = _scheduler(report["scheduler"], sched_state, raw_groups)
    if rec["scheduler"] is not None:
        rec["steps"]["scheduler"] = _int(rec["scheduler"]["last_epoch"])
    rec["warnings"] = [{"code": w["code"], "message": w["message"]} for w in report["warnings"]]
    return rec


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    """inspect's statistics of one tensor entry, as the record keeps them."""
    lo, hi = e.get("min"), e.get("max")
    max_abs = max(abs(lo), abs(hi)) if lo is not None and hi is not None else None
    return {"shape": e["shape"], "dtype": e["dtype"], "numel": e["numel"],
            "norm": _json_float(e.get("norm")), "max_abs": _json_float(max_abs),
            "nan": e.get("nan", 0), "inf": e.get("inf", 0), "zeros": e.get("zeros")}


def _scheduler(rep: dict[str, Any] | None, state: dict[str, Any] | None,
               raw_groups: Any) -> dict[str, Any] | None:
    if rep is None:
        return None
    last_epoch = rep.get("last_epoch")
    if last_epoch is None and isinstance(state, dict):  # DeepSpeed's own schedulers
        last_epoch = _int(state.get("last_batch_iteration"))
    out = {"kind": rep["kind"], "last_epoch": last_epoch, "last_lr": rep.get("last_lr"),
           "base_lrs": rep.get("base_lrs"), "settings": rep.get("settings", {}),
           "scheduled_lr": None, "scheduled_reason": "not computed"}
    groups = raw_groups if isinstance(raw_groups, list) else []
    try:
        from optstate.sim.scheduled import scheduled_lrs
    except ImportError:  # sim.scheduled not there yet
        return out
    if isinstance(state, dict):
        plain_groups = [{k: v for k, v in g.items() if k != "params"} for g in groups
                        if isinstance(g, dict)]
        lrs, reason = scheduled_lrs(state, len(groups), groups=plain_groups)
        out["scheduled_lr"] = [_json_float(x) for x in lrs] if lrs is not None else None
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
    """``global_step`` of the Trainer's ``trainer_state.json`` beside the checkpoint."""
    folders = [source.path] if source.path.is_dir() else []
    folders += [source.file.parent if source.file.is_file() else source.file.parent,
                source.path.parent if source.path.is_file() else source.path]
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


# ----------------------------------------------------------------------------- the run


def timeline(paths: list[str] | list[Path], *, spike: float = 10.0,
             cache_dir: str | Path | None = None, use_cache: bool = True,
             workers: int | None = None, key: str | None = None, unsafe: bool = False,
             on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The report over the checkpoints of one run (module docstring)."""
    from optstate.analysis.timeline_cache import TimelineCache
    from optstate.base.errors import ConfigError, option

    if not (isinstance(spike, (int, float)) and math.isfinite(spike) and spike > 1):
        raise ConfigError(f"{option('spike', spike)}: a factor above 1 (10: a norm ten "
                          "times the last one)")
    found = find_checkpoints([Path(p) for p in paths])
    cache = TimelineCache.open(found.root, cache_dir, use_cache=use_cache, key=key,
                               unsafe=unsafe)
    records: list[dict[str, Any] | None] = [cache.get(c) for c in found.items]
    missing = [i for i, r in enumerate(records) if r is None]
    total, done = len(found.items), len(found.items) - len(missing)
    if on_progress is not None and done:
        on_progress(done, total)
    n_workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(missing) or 1))
    if n_workers == 1:
        for i in missing:
            records[i] = read_record(found.items[i], key=key, unsafe=unsafe)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = {pool.submit(read_record, found.items[i], key=key, unsafe=unsafe): i
                       for i in missing}
            for fut in as_completed(futures):
                records[futures[fut]] = fut.result()
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
    for i in missing:
        cache.put(found.items[i], records[i])
    cache.save()
    return build_report(found, [r for r in records if r is not None], spike=spike,
                        cache=cache.summary(), paths=[str(p) for p in paths])


def build_report(found: Any, records: list[dict[str, Any]], *, spike: float,
                 cache: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Order, deduplicate and summarise the records (module docstring)."""
    notes = list(found.notes)
    skipped = list(found.skipped)
    kept = []
    for r in records:  # a file found in a folder that holds no optimizer state: passed over
        if r["error_code"] == "no_optimizer_state" and r["path"] not in paths:
            skipped.append({"path": r["path"], "reason": r["error"]})
        else:
            kept.append(r)
    ordered, by, source = order_records(kept)
    ordered, dropped = drop_duplicates(ordered)
    notes += dropped
    if by == "name":
        notes.append({"code": "order_by_name", "message": f"ordered by {source}"})
    findings = _findings(ordered, spike, notes)
    checkpoints = []
    series = build_series(ordered)
    for i, r in enumerate(ordered):
        row = {k: v for k, v in r.items() if k != "params"}
        row["index"] = i
        row["step"] = order_key(r, by)
        row["worst"] = _worst(series, i)
        row["findings"] = sum(1 for f in findings if f.get("checkpoint") == i)
        checkpoints.append(row)
    return {
        "schema": SCHEMA,
        "run": {"paths": paths, "found": len(found.items),
                "read": sum(1 for r in kept if r["error"] is None), "skipped": skipped},
        "order": {"by": by, "source": source},
        "checkpoints": checkpoints,
        "series": series,
        "lr": build_lr(ordered),
        "findings": findings,
        "spike": spike,
        "cache": cache,
        "notes": notes,
    }


def _findings(records: list[dict[str, Any]], spike: float,
              notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        from optstate.analysis.timeline_findings import timeline_findings
    except ImportError:  # analysis.timeline_findings not there yet
        notes.append({"code": "no_findings", "message": "findings not computed"})
        return []
    return timeline_findings(records, spike=spike)


def order_key(r: dict[str, Any], by: str) -> int | None:
    if by in ("run", "optimizer", "scheduler"):
        return r["steps"][by]
    if by == "name":
        return r["name_step"]
    return None


def order_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str, str]:
    """The records in run order, what orders them ("run", "optimizer", "scheduler",
    "name", "mtime") and that in words. Unreadable records go where their name number
    (else mtime) puts them among the rest."""
    ok = [r for r in records if r["error"] is None]
    bad = [r for r in records if r["error"] is not None]
    by = next((b for b in ("run", "optimizer", "scheduler") if ok
               and all(r["steps"][b] is not None for r in ok)), None)
    if by is None:
        by = "name" if all(r["name_step"] is not None for r in records) else "mtime"
    if by == "run":
        used = sorted({r["steps"]["run_source"] for r in ok})
        source = ORDER_SOURCES["run"].format(", ".join(used))
    else:
        source = ORDER_SOURCES[by]

    def tie(r: dict[str, Any]) -> tuple[Any, ...]:
        ns = r["name_step"]
        return (ns is None, ns if ns is not None else 0, r["identity"]["mtime_ns"], r["label"])

    if by == "mtime":
        ordered = sorted(ok, key=lambda r: (r["identity"]["mtime_ns"], r["label"]))
    else:
        ordered = sorted(ok, key=lambda r: (order_key(r, by), *tie(r)))
    for r in sorted(bad, key=tie):
        at = len(ordered)
        for j, o in enumerate(ordered):
            if _before(r, o):
                at = j
                break
        ordered.insert(at, r)
    return ordered, by, source


def _before(r: dict[str, Any], o: dict[str, Any]) -> bool:
    if r["name_step"] is not None and o["name_step"] is not None:
        return bool(r["name_step"] < o["name_step"])
    return bool(r["identity"]["mtime_ns"] < o["identity"]["mtime_ns"])


def _content(r: dict[str, Any]) -> str:
    return json.dumps([r["steps"], r["kind"], r["groups"], r["scheduler"], r["params"]],
                      sort_keys=True)


def drop_duplicates(records: list[dict[str, Any]],
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records that hold the same steps and the same statistics as another (Lightning's
    ``last.ckpt`` beside ``epoch=3-step=900.ckpt``): one is kept, the one without a number
    in its name (else the later name) dropped, with a note."""
    seen: dict[str, int] = {}
    drop: set[int] = set()
    notes = []
    for i, r in enumerate(records):
        if r["error"] is not None:
            continue
        c = _content(r)
        if c not in seen:
            seen[c] = i
            continue
        j = seen[c]
        a, b = records[j], r
        if (a["name_step"] is None) != (b["name_step"] is None):
            b_loses = b["name_step"] is None
        else:
            b_loses = b["label"] > a["label"]
        loser, keep = (b, a) if b_loses else (a, b)
        drop.add(i if b_loses else j)
        seen[c] = j if b_loses else i
        notes.append({"code": "duplicate", "message": f"{loser['label']} holds the same steps "
                      f"and state as {keep['label']}: read once, shown as {keep['label']}"})
    return [r for i, r in enumerate(records) if i not in drop], notes


def build_series(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One series per (param, entry): its statistics at each checkpoint (None where absent)."""
    n = len(records)
    series: dict[tuple[int, str], dict[str, Any]] = {}
    for i, r in enumerate(records):
        for p in r["params"]:
            for entry, e in p["entries"].items():
                s = series.get((p["position"], entry))
                if s is None:
                    s = series[(p["position"], entry)] = {
                        "param": p["position"], "name": None, "group": p["group"],
                        "entry": entry, **{f: [None] * n for f in ENTRY_FIELDS}}
                s["name"] = p["name"] or s["name"]
                s["group"] = p["group"]
                for f in ENTRY_FIELDS:
                    s[f][i] = e[f]
    return [series[k] for k in sorted(series)]


def build_lr(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lr per group at each checkpoint, and the lr its scheduler computes there."""
    n = len(records)
    out: dict[int, dict[str, Any]] = {}
    for i, r in enumerate(records):
        sched = r["scheduler"] or {}
        scheduled = sched.get("scheduled_lr") or []
        for g in r["groups"]:
            s = out.setdefault(g["index"], {"group": g["index"], "lr": [None] * n,
                                            "scheduled_lr": [None] * n})
            s["lr"][i] = g["lr"]
            if g["index"] < len(scheduled):
                s["scheduled_lr"][i] = scheduled[g["index"]]
    return [out[k] for k in sorted(out)]


def _worst(series: list[dict[str, Any]], i: int) -> dict[str, Any] | None:
    """The entry whose norm grew most since the checkpoint before (the largest norm at
    the first, or where nothing can be compared)."""
    best: tuple[float, float] | None = None
    worst = None
    for s in series:
        norm = num(s["norm"][i])
        if norm is None or not math.isfinite(norm):
            continue
        prev = num(s["norm"][i - 1]) if i > 0 else None
        ratio = norm / prev if prev is not None and math.isfinite(prev) and prev > 0 else None
        score = (1.0 if ratio is not None else 0.0, ratio if ratio is not None else norm)
        if best is None or score > best:
            best = score
            worst = {"param": s["param"], "name": s["name"], "entry": s["entry"],
                     "norm": norm, "ratio": ratio}
    return worst
