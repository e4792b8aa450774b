"""``timeline``: the checkpoints of one run in, one report over all of them out
(schema ``optstate.timeline/1``; docs/timeline.md documents it).

Each checkpoint is read once into a small record (``timeline_record.read_record``: inspect's
statistics, no tensor kept). Records are cached beside the run (``timeline_cache``), read
in parallel over files (threads: the statistics' kernels release the GIL), ordered by the
step they record (the run's step, else the optimizer's, else the scheduler's; the number in
the name only when the files record none, and the report says so), and handed to
``timeline_findings``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from optstate.analysis.timeline_findings import timeline_findings
from optstate.analysis.timeline_record import json_safe, num, read_record
from optstate.io.run_dir import find_checkpoints

__all__ = ["SCHEMA", "build_report", "num", "read_record", "timeline"]

SCHEMA = "optstate.timeline/1"

ORDER_SOURCES = {
    "run": "the step the run recorded ({})",
    "optimizer": "the optimizer's step (state[...]['step'])",
    "scheduler": "the LR scheduler's last_epoch",
    "name": "the number in the file names: the checkpoints record no step",
    "mtime": "the files' modification times: the checkpoints record no step and their "
             "names hold no number",
}
ENTRY_FIELDS = ("norm", "max_abs", "nan", "inf", "zeros")
STEP_COUNTERS = ("run", "optimizer", "scheduler")  # what may order the run, first first
MAX_WORKERS = 64  # files read at once at most: each holds a file open and its tensors
SAVE_EVERY = 10.0  # seconds: the cache is written this often while checkpoints are read


def timeline(paths: list[str] | list[Path], *, spike: float = 10.0,
             cache_dir: str | Path | None = None, use_cache: bool = True,
             workers: int | None = None, key: str | None = None, unsafe: bool = False,
             on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The report over the checkpoints of one run (module docstring)."""
    from optstate.analysis.timeline_cache import TimelineCache
    from optstate.base.errors import ConfigError, option

    if not (isinstance(spike, (int, float)) and math.isfinite(spike) and spike > 1):
        raise ConfigError(f"{option('spike', spike)}: a finite factor above 1 (10: a norm "
                          "ten times the last one)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise ConfigError(f"{option('workers', workers)}: 1 to {MAX_WORKERS} files read at "
                          "once")
    found = find_checkpoints(list(paths))  # as given: an empty one is an error, not "."
    cache = TimelineCache.open(found.root, cache_dir, use_cache=use_cache, key=key,
                               unsafe=unsafe)
    records: list[dict[str, Any] | None] = [cache.get(c) for c in found.items]
    missing = [i for i, r in enumerate(records) if r is None]
    total, done = len(found.items), len(found.items) - len(missing)
    if on_progress is not None and done:
        on_progress(done, total)
    n_workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(missing) or 1))

    # the newest file, if it fails to read, may be one the run is still writing
    newest = max(range(total), key=lambda i: found.items[i].mtime_ns, default=None)

    def read(i: int) -> dict[str, Any]:
        return read_record(found.items[i], key=key, unsafe=unsafe, newest=i == newest)

    saved_at = time.monotonic()

    def got(i: int, rec: dict[str, Any]) -> None:
        nonlocal done
        records[i] = rec
        nonlocal saved_at
        if not (i == newest and rec["error"] is not None):  # read again next time
            cache.put(found.items[i], rec)
        if time.monotonic() - saved_at >= SAVE_EVERY:  # an interrupted first run of a long
            cache.save()  # run keeps what it read: the rerun reads only the rest
            saved_at = time.monotonic()
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    if n_workers == 1:
        for i in missing:
            got(i, read(i))
    else:
        pool = ThreadPoolExecutor(max_workers=n_workers)
        try:
            futures = {pool.submit(read, i): i for i in missing}
            for fut in as_completed(futures):
                got(futures[fut], fut.result())
        finally:  # Ctrl-C or an error: the checkpoints not yet begun are not read
            pool.shutdown(wait=True, cancel_futures=True)
    cache.save()
    return build_report(found, [r for r in records if r is not None], spike=spike,
                        cache=cache.summary(), paths=[str(p) for p in paths])


def build_report(found: Any, records: list[dict[str, Any]], *, spike: float,
                 cache: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Order, deduplicate and summarise the records (module docstring)."""
    notes = list(found.notes)
    skipped = list(found.skipped)
    kept = []
    named = {str(Path(p)) for p in paths}
    for r in records:  # a file found in a folder that holds no optimizer state: passed over
        if r["error_code"] == "no_optimizer_state" and r["path"] not in named:
            skipped.append({"path": r["path"], "reason": r["error"]})
        else:
            kept.append(r)
    several = next((r for r in kept if r["error_code"] == "several_states"), None)
    if several is not None:  # which one to follow is the user's choice, not a fault
        from optstate.base.errors import NoOptimizerStateError, option

        raise NoOptimizerStateError(
            several["error"],
            hint=f"timeline follows one optimizer state at a time: run it once per {option('key')}")
    if not kept:  # an empty report would read as a clean run
        from optstate.base.errors import NoOptimizerStateError

        n = len(records)
        raise NoOptimizerStateError(
            f"none of the {n} file{'s' * (n != 1)} found in {', '.join(paths)} holds an "
            f"optimizer state ({Path(skipped[-1]['path']).name}: {skipped[-1]['reason']})",
            hint="give the checkpoints that hold optimizer.state_dict()")
    ordered, by, source = order_records(kept)
    ordered, dropped = drop_duplicates(ordered)
    notes += dropped
    if by == "name":
        notes.append({"code": "order_by_name", "message": f"ordered by {source}"})
    growth: dict[int, dict[str, Any]] = {}
    findings = timeline_findings(ordered, spike=spike, growth=growth)
    checkpoints = []
    series = build_series(ordered)
    for i, r in enumerate(ordered):
        row = {k: v for k, v in r.items() if k != "params"}
        row["index"] = i
        row["step"] = order_key(r, by)
        row["worst"] = _worst(series, i, growth.get(i))
        row["findings"] = sum(1 for f in findings if f.get("checkpoint") == i)
        checkpoints.append(row)
    return json_safe({  # every number JSON can hold: non-finite ones as strings
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
    })


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
    by = next((b for b in STEP_COUNTERS if ok
               and all(r["steps"][b] is not None for r in ok)), None)
    if by is None:
        by = "name" if all(r["name_step"] is not None for r in records) else "mtime"
    if by == "run":
        used = sorted({r["steps"]["run_source"] for r in ok})
        source = ORDER_SOURCES["run"].format(", ".join(used))
    else:
        source = ORDER_SOURCES[by]
    some = max((sum(1 for r in ok if r["steps"][b] is not None) for b in STEP_COUNTERS),
               default=0)
    if by in ("name", "mtime") and some:  # not "record no step": some do, not all
        source = source.replace("the checkpoints record no step",
                                f"only {some} of the {len(ok)} checkpoints read record a step")

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
    """Records that hold the same steps and the same statistics as another, where the
    names do not say they are different checkpoints (Lightning's ``last.ckpt`` beside
    ``epoch=3-step=900.ckpt``: one name has no number, or both the same number): the one
    without a number in its name (else the one written later, else the later name) is
    dropped, with a note.
    ``step_60.pt`` holding exactly ``step_40.pt``'s state (a deterministic replay after a
    resume from an older checkpoint) is kept: that is a fault to report, not a copy."""
    seen: dict[str, list[int]] = {}
    drop: set[int] = set()
    notes = []
    for i, r in enumerate(records):
        if r["error"] is not None:
            continue
        c = _content(r)
        twin = next((j for j in seen.get(c, []) if j not in drop and _same_name_step(
            records[j], r)), None)
        seen.setdefault(c, []).append(i)
        if twin is None:
            continue
        a, b = records[twin], r
        if (a["name_step"] is None) != (b["name_step"] is None):
            b_loses = b["name_step"] is None
        else:  # the copy is the one written later (Lightning's -v1 beside the original)
            b_loses = (b["identity"]["mtime_ns"], b["label"]) > \
                (a["identity"]["mtime_ns"], a["label"])
        loser, keep = (b, a) if b_loses else (a, b)
        drop.add(i if b_loses else twin)
        notes.append({"code": "duplicate", "message": f"{loser['label']} holds the same steps "
                      f"and state as {keep['label']}: read once, shown as {keep['label']}"})
    return [r for i, r in enumerate(records) if i not in drop], notes


def _same_name_step(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the names allow two records to be one checkpoint saved twice."""
    return a["name_step"] is None or b["name_step"] is None or a["name_step"] == b["name_step"]


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


def _worst(series: list[dict[str, Any]], i: int,
           grown: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry that came nearest to a norm_spike at checkpoint ``i``, with the factor
    that rule compares with the spike (``timeline_findings._spikes``: bias-corrected,
    squares by their root, a signed average against the largest of its last norms,
    rounding-level norms left out): so the table never shows a growth the findings do
    not judge. Where nothing can be compared (the first checkpoint), the largest norm."""
    if grown is not None:
        return {k: v for k, v in grown.items() if not k.startswith("_")}
    worst = None
    for s in series:
        norm = num(s["norm"][i])
        if norm is not None and math.isfinite(norm) and (worst is None or norm > worst["norm"]):
            worst = {"param": s["param"], "name": s["name"], "entry": s["entry"],
                     "norm": norm, "ratio": None}
    return worst
