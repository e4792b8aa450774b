"""What went wrong along a run: findings over the records of its checkpoints, in run order
(``analysis.timeline`` builds the records; docs/timeline.md lists the codes).

Each finding is ``analysis.findings.finding`` plus where it is in the run: ``checkpoint``
(the index of the record), ``label``, ``param`` (position or None), ``name``, ``entry``
and ``group``. A finding is given once per (code, place), at its first occurrence; where
it goes on, its message says at how many later checkpoints. First occurrence first.

What each code claims, and what keeps it from firing on a healthy run:

- ``nan`` / ``inf``: the first checkpoint at which an entry holds NaN / Inf (it held none
  at the checkpoint before, or it is the first checkpoint).
- ``norm_spike``: an entry's norm is more than ``spike`` times its previous finite norm
  (a signed average's: the largest of its last three, as it may pass near zero when
  gradients change sign; a norm at rounding level against the largest of its kind at that
  checkpoint is noise, not a spike: ``_spikes``).
  Accumulators start at zero and grow at the start of training without anything being
  wrong, so the norms compared are first made comparable: Adam-family ``exp_avg`` /
  ``exp_avg_sq`` / ``max_exp_avg_sq`` are bias-corrected by the recorded optimizer step and
  the group's betas (divided by ``1 - beta**step``, as Adam itself does), so an EMA's
  early growth from 0 is not a spike; any other entry's ratio is divided by the growth of
  the step itself between the two checkpoints (an accumulator from zero, an EMA or a sum,
  grows at most in proportion to the steps it has taken: step 1 -> 20 allows 20x). Second
  moments (averages or sums of squared gradients: ``exp_avg_sq``, Adagrad's ``sum``, ...;
  of squared updates: Adadelta's ``acc_delta``) are compared in gradient (update) units,
  by the square root of their ratio, so one event (gradients x10) gives the same factor in
  ``exp_avg`` and in ``exp_avg_sq``.
- ``lr_off_schedule``: a group's lr is not what the saved scheduler computes at its
  last_epoch (``state.scheduled``; within ``numeric.tolerance.schedule_atol``, the rounding
  of a schedule reached step by step). Only for schedulers whose lr follows from their
  state; the others cannot be checked (their lr is compared with their own last lr).
- ``lr_not_from_scheduler``: a group's lr is not the scheduler's own last lr (set after
  the scheduler's last step).
- ``lr_up`` / ``lr_reset``: only where no saved scheduler accounts for the lr (none is
  saved, or its lr cannot be known): the lr rises after having fallen, or rises more than
  ``spike`` times in one interval after an interval in which it did not rise (a warmup
  rises at every interval from the start), or rises back to its lr at the first checkpoint
  after having fallen below it (falling to it is a decay passing a warmup's value). The
  message says that no scheduler is saved to tell a schedule's restart.
- ``step_repeated``: two checkpoints record the same step (the order key) with different
  states (two branches of one run, or two runs given together): the rows and norm ratios
  mix them, so this comes first at its checkpoint. Where the files' times tell the branches
  apart (``_chains``), the other rules compare within each branch.
- ``step_backwards``: the optimizer's step or the run's step decreases along the order, or
  a checkpoint records an earlier step than one whose name number is smaller (saved
  before it): a resume from an older checkpoint, or a fresh optimizer. Where the
  optimizer's step went back while the run's went on, and the checkpoints before keep
  another optimizer-minus-run difference than those after (``_split``), the counters say
  which side keeps them equal and the files' times (writing order, lost by a copy) only
  corroborate: the earlier checkpoints written last are a loop counter restarted on a
  resume, overwriting them; where the two disagree or the times cannot tell, it says so.
- ``step_skip``: two counters that advanced by the same amount over the interval before
  advance differently, the optimizer's step by more than the run's step, the name number
  or the scheduler's last_epoch. (The optimizer's step advancing *less* is not a finding:
  mixed precision's gradient scaler skips optimizer steps on overflow while the loop and
  often the scheduler go on.) A gap in which all counters agree is nothing.
- ``scheduler_reset``: the scheduler's last_epoch goes back while the optimizer's step (or
  the run's step, or the name number) goes on.
- ``hyperparam_changed``: a group hyperparameter other than lr changes between consecutive
  checkpoints (not ``initial_lr``; not beta1 / momentum under a scheduler that cycles
  momentum; not torch's implementation switches ``foreach``/``fused``/...; not a key that
  changes in two intervals in a row, which moves with the run: a schedule, or an
  optimizer's own running values kept in its groups; not a key that changes in 3 or more
  intervals: a stepwise schedule), or groups are removed (groups added with the others
  unchanged are gradual unfreezing: nothing).
- ``moments_collapsed``: a second moment that was not all zeros becomes all zeros, or its
  fraction of zeros rises by half or more (underflow in a low-precision state, or a reset).
- ``state_lost``: an entry a param held at the checkpoint before is gone, or all per-param
  state is gone (an optimizer that never keeps state, as SGD without momentum, loses
  nothing).
- ``unreadable``: a checkpoint that could not be read.

Works on plain records only (no tensors, no torch).

About 880 lines: one rule per code, each beside the words that keep it from misleading; split,
the rules would only call back into one another's helpers.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

from optstate.analysis.findings import at, finding
from optstate.analysis.timeline_record import num
from optstate.analysis.underflow import SECOND_MOMENTS, SQUARED
from optstate.base.paths import join
from optstate.io.native_tensor import DTYPES, dtype_name
from optstate.numeric.tolerance import schedule_atol, unit_roundoff

# In this order at one checkpoint: what was done to the run (a likely cause) before what
# happened to its state
CODES = ("unreadable", "step_repeated", "step_backwards", "step_skip", "optimizer_stalled",
         "scheduler_reset",
         "lr_not_finite", "lr_off_schedule", "lr_not_from_scheduler", "lr_up", "lr_reset",
         "hyperparam_changed",
         "state_lost", "nan", "inf", "norm_spike", "moments_collapsed")

# Entries that hold squares of gradients (compared in gradient units; checked for collapse)
SQUARE_ENTRIES = frozenset(SQUARED) | frozenset(SECOND_MOMENTS) | {
    "acc_delta",  # Adadelta: a running average of squared updates, not gradients
    "row_var", "col_var", "variance",  # torch's Adafactor
    "exp_avg_sq_row", "exp_avg_sq_col",  # transformers' Adafactor
    "state2"}  # bitsandbytes' second state
# What a squared entry averages, where not squares of gradients (the norm_spike message)
SQUARE_WORDS = {"acc_delta": "a running average of squared updates"}
# How many earlier norms a signed average's spike is measured against (_spikes)
WINDOW = 3
# Adam-family EMAs bias-corrected by beta1 / beta2 (analysis module docstring)
BIAS_CORRECTED = {"exp_avg": 0, "exp_avg_sq": 1, "max_exp_avg_sq": 1}
# Group keys that are not hyperparameters of the run: torch's implementation switches and
# what an LR scheduler writes itself
NOT_HYPERPARAMS = frozenset({"lr", "initial_lr", "foreach", "fused", "capturable",
                             "differentiable", "params", "param_names"})
# A group key that changes in this many intervals of a run or more is a schedule (a
# stepwise weight decay in the loop), not an edit
SCHEDULED_CHANGES = 3
MOMENTUM_CYCLERS = ("OneCycleLR", "CyclicLR")
COUNTER_WORDS = {"run": "the run's step", "optimizer": "the optimizer's step",
                 "scheduler": "the LR scheduler's last_epoch", "name": "the name number"}
# (a, b): a advancing by more than b, after both moved together, is a step_skip
# (the run's step against the name number is not compared: a name may count epochs or be
# written one off, and neither says anything about the optimizer)
SKIP_PAIRS = (("optimizer", "run"), ("optimizer", "name"), ("optimizer", "scheduler"))


def timeline_findings(records: list[dict[str, Any]], *, spike: float,
                      growth: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The findings over ``records`` (in run order), first occurrence first. ``growth``,
    when given, receives per checkpoint index the entry that came nearest to a
    ``norm_spike`` by the rule's own measure (``_spikes``): what the table shows."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[tuple[Any, ...]] = []

    def emit(i: int, code: str, message: str, *, key: Any = None, param: int | None = None,
             name: str | None = None, entry: str | None = None, group: int | None = None,
             where: list[str] | None = None) -> None:
        k = (code, param, entry, group, key)
        if k in seen:
            seen[k]["_later"] += 1
            return
        if where is None:
            where = [at(param, entry)] if param is not None else []
        f = finding(code, message, where, [name] * len(where))
        f.update({"checkpoint": i, "label": records[i]["label"], "param": param,
                  "name": name, "entry": entry, "group": group, "_later": 0})
        seen[k] = f
        order.append(k)

    ok = [i for i, r in enumerate(records) if r.get("error") is None]
    for i, r in enumerate(records):
        if r.get("error") is not None:
            emit(i, "unreadable", f"{r['label']}: could not be read: {r['error']}")
    if ok:
        _first_entries(records, ok[0], emit)
    _name_order(records, ok, emit)
    _repeated(records, ok, emit)
    for chain in _chains(records, ok) or [ok]:
        for k, (prev, cur) in enumerate(zip(chain, chain[1:], strict=False)):
            _counters(records, chain, chain[k - 1] if k else None, prev, cur, emit)
            _entries(records, prev, cur, emit)
        _lrs(records, chain, spike, emit)
        _hyperparams(records, chain, emit)
        _spikes(records, chain, spike, emit, growth)

    out = []
    for k in order:
        f = seen[k]
        n = f.pop("_later")
        if n:
            f["message"] += f" (and at {n} later checkpoint{'s' if n > 1 else ''})"
        out.append(f)
    rank = {c: j for j, c in enumerate(CODES)}
    out.sort(key=lambda f: (f["checkpoint"], rank[f["code"]],
                            -1 if f["param"] is None else f["param"], f["entry"] or "",
                            -1 if f["group"] is None else f["group"]))
    return out


Emit = Callable[..., None]


def _who(p: dict[str, Any]) -> str:
    return p["name"] if p.get("name") else at(p["position"])


def _g(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


def _x(factor: float) -> str:
    """A factor as people read it: ``1.43x``, ``1,000x`` (never ``1e+03x``)."""
    if not math.isfinite(factor):
        return f"{factor}x"
    return f"{factor:,.0f}x" if abs(factor) >= 100 else f"{factor:.3g}x"


def _params(r: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["position"]: p for p in r.get("params") or []}


# ----------------------------------------------------------------------------- steps


def _per_step(records: list[dict[str, Any]], ok: list[int], upto: int, c: str) -> float:
    """How far counter ``c`` moves per optimizer step in this run so far (gradient
    accumulation: a run step counting micro-batches moves N per optimizer step), from the
    first checkpoint with an optimizer step to ``upto``, else that checkpoint's own counts;
    1 where unknown."""
    first = next((records[i] for i in ok if (_counter(records[i], "optimizer") or 0) > 0),
                 records[ok[0]])
    last = records[upto]
    pairs = [(_counter(last, c), _counter(last, "optimizer"), _counter(first, c),
              _counter(first, "optimizer")), (_counter(first, c), _counter(first, "optimizer"),
                                               0, 0)]
    for x1, o1, x0, o0 in pairs:
        if None not in (x1, o1, x0, o0) and o1 > o0 and x1 > x0:  # type: ignore[operator]
            return (x1 - x0) / (o1 - o0)  # type: ignore[operator]
    return 1.0


def _state_frozen(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Every state entry of ``b`` has the statistics it had at ``a`` (and there is one):
    an optimizer that keeps no step counter (SGD) took no step in between."""
    pa, pb = _params(a), _params(b)
    entries = [(p, e) for p in pb.values() for e in (p.get("entries") or {})]
    if not entries or set(pa) != set(pb):
        return False
    for p, entry in entries:
        old = (pa[p["position"]].get("entries") or {}).get(entry)
        new = p["entries"][entry]
        if new.get("nan") or new.get("inf"):  # a NaN state stays NaN as it steps
            return False
        if old is None or any(old.get(k) != new.get(k) for k in ("norm", "max_abs", "nan",
                                                                   "inf", "zeros")):
            return False
    return True


def _counter(r: dict[str, Any], c: str) -> int | None:
    v = r.get("name_step") if c == "name" else (r.get("steps") or {}).get(c)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _name_order(records: list[dict[str, Any]], ok: list[int], emit: Emit) -> None:
    """A checkpoint that records an earlier step than one saved before it (by the numbers
    in their names)."""
    by = next((c for c in ("run", "optimizer", "scheduler")
               if all(_counter(records[i], c) is not None for i in ok)), None)
    if by is None:
        return
    # the largest recorded step among checkpoints with a smaller name number: one pass in
    # name order (a run of thousands of checkpoints)
    named = sorted((_counter(records[i], "name"), i) for i in ok
                   if _counter(records[i], "name") is not None)
    best: dict[int, int] = {}  # checkpoint -> the one before it by name with the most steps
    top: int | None = None
    k = 0
    while k < len(named):
        end = k
        while end < len(named) and named[end][0] == named[k][0]:
            end += 1
        same = [i for _, i in named[k:end]]
        if top is not None:
            for i in same:
                best[i] = top
        for i in same:
            if top is None or (_counter(records[i], by), records[i]["label"]) > \
                    (_counter(records[top], by), records[top]["label"]):
                top = i
        k = end
    for i in ok:
        j = best.get(i)
        ri = records[i]
        if j is not None and _counter(records[j], by) > _counter(ri, by):  # type: ignore[operator]
            emit(i, "step_backwards",
                 f"{ri['label']} records {COUNTER_WORDS[by]} {_counter(ri, by)} but "
                 f"{records[j]['label']}, saved before it, records "
                 f"{_counter(records[j], by)}: resumed from an older checkpoint, or a fresh "
                 "optimizer?", key="name")


def _order_by(records: list[dict[str, Any]], ok: list[int]) -> str | None:
    """The counter the records are ordered by (as ``analysis.timeline.order_records``)."""
    return next((c for c in ("run", "optimizer", "scheduler", "name")
                 if all(_counter(records[i], c) is not None for i in ok)), None)


def _repeated(records: list[dict[str, Any]], ok: list[int], emit: Emit) -> None:
    """step_repeated: two checkpoints record the same step (the order key) with different
    states (those with the same state were dropped as duplicates before): two branches of
    one run, or two runs, interleaved in the order."""
    by = _order_by(records, ok)
    if by is None:
        return
    for prev, cur in zip(ok, ok[1:], strict=False):
        a, b = records[prev], records[cur]
        v = _counter(b, by)
        if v is None or _counter(a, by) != v:
            continue
        emit(cur, "step_repeated",
             f"{a['label']} and {b['label']} both record step {v} but hold different "
             f"states: the run went over step {v} twice (resumed from an older checkpoint, "
             "or two runs given together?); the rows and norm ratios mix the two")


def _chains(records: list[dict[str, Any]], ok: list[int]) -> list[list[int]] | None:
    """Where checkpoints record the same step (step_repeated), the branches (or runs) they
    belong to, each in run order, so that counters, lrs and norms are compared within
    one: by writing order (the files' times), a branch goes on while its step rises, and
    one that starts at a step already gone over begins where the branch it left had
    reached the step before (its last checkpoint before that step, written before it).
    None where no step repeats, or the times cannot tell (a copy gives one time to all, or
    one tick to two checkpoints of one step, or interleaves the branches): then everything
    is one run, and the step_repeated finding says the rows mix."""
    by = _order_by(records, ok)
    if by is None:
        return None
    key = {i: _counter(records[i], by) for i in ok}
    if len(set(key.values())) == len(ok):
        return None
    mt = {i: (records[i].get("identity") or {}).get("mtime_ns") for i in ok}
    if not all(isinstance(v, int) for v in mt.values()):
        return None
    for i in ok:
        if any(j != i and key[j] == key[i] and mt[j] == mt[i] for j in ok):
            return None
    chains: list[list[int]] = []
    for i in sorted(ok, key=lambda i: (mt[i], key[i])):
        if chains and key[i] > key[chains[-1][-1]]:  # type: ignore[operator]
            chains[-1].append(i)
        else:
            chains.append([i])
    # as many branches as a step is gone over at most: else the times interleave them (a
    # copy made in name order) and cannot tell
    if len(chains) != max(list(key.values()).count(v) for v in set(key.values())):
        return None
    out = [chains[0]]
    for n, chain in enumerate(chains[1:], 1):
        before = [i for c in chains[:n] for i in c
                  if key[i] < key[chain[0]] and mt[i] < mt[chain[0]]]  # type: ignore[operator]
        head = max(before, key=lambda i: (key[i], mt[i])) if before else None
        out.append(sorted(([head] if head is not None else []) + chain))
    return out


def _labels(records: list[dict[str, Any]], idx: list[int]) -> str:
    names = [records[i]["label"] for i in idx]
    return ", ".join(names) if len(names) <= 4 else \
        f"{names[0]}, {names[1]}, ..., {names[-1]} ({len(names)} checkpoints)"


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


def _relation(d: int) -> str:
    return ("the optimizer's step equal to the run's step" if d == 0 else
            f"the optimizer's step {abs(d)} {'ahead of' if d > 0 else 'behind'} the run's step")


def _split(records: list[dict[str, Any]], ok: list[int], cur: int) -> tuple[int, str] | None:
    """Where the optimizer's step went back at ``cur`` while the run's step went on: whether
    the checkpoints before ``cur`` are the odd ones, written later (a loop counter that
    restarted on a resume overwrote the first checkpoints), rather than those from ``cur``
    on. The counters say which side keeps optimizer step == run step; the files' times
    (writing order; a copy resets them) only corroborate. None: the usual message (the
    side from ``cur`` on is the odd one)."""
    left = [i for i in ok if i < cur]
    right = [i for i in ok if i >= cur]

    def rel(i: int) -> int | None:
        o, r = _counter(records[i], "optimizer"), _counter(records[i], "run")
        return None if o is None or r is None else o - r

    dl, dr = {rel(i) for i in left}, {rel(i) for i in right}
    if len(dl) != 1 or len(dr) != 1 or None in dl | dr or dl == dr:
        return None
    (x,), (y,) = dl, dr
    counters = "left" if y == 0 else "right" if x == 0 else None

    def mtime(i: int) -> int | None:
        v = (records[i].get("identity") or {}).get("mtime_ns")
        return v if isinstance(v, int) else None

    ml, mr = [mtime(i) for i in left], [mtime(i) for i in right]
    times = None
    if None not in ml and None not in mr:
        times = "left" if min(ml) > max(mr) else "right" if min(mr) > max(ml) else None  # type: ignore[type-var]
    if counters == "right" and times != "left":
        return None
    if counters == "left" and times == "left":
        last = max(right, key=lambda i: (mtime(i) or 0, i))  # (a file system's coarse times)
        return left[0], (
            f"{_labels(records, left)} record optimizer steps "
            f"{_span([_counter(records[i], 'optimizer') for i in left])} "  # type: ignore[misc]
            f"{'ahead of' if x > 0 else 'behind'} their run steps "
            f"{_span([_counter(records[i], 'run') for i in left])} (the other "  # type: ignore[misc]
            f"checkpoints: {'equal' if y == 0 else _relation(y)}), and were written after "
            f"{records[last]['label']}: the loop counter restarted on a resume, overwriting "
            "the first checkpoints?")
    b = records[cur]
    return cur, (
        f"{b['label']}: the counters disagree from {b['label']} on: "
        f"{records[left[0]]['label']} .. {records[left[-1]]['label']} record {_relation(x)}, "
        f"{records[right[0]]['label']} .. {records[right[-1]]['label']} "
        f"{'equal to it' if y == 0 else _relation(y)}; timeline cannot tell which is right "
        "(the files' times do not say which were written last): a loop counter restarted on "
        "a resume, or the optimizer state not restored?")


def _counters(records: list[dict[str, Any]], ok: list[int], before_prev: int | None,
              prev: int, cur: int, emit: Emit) -> None:
    a, b = records[prev], records[cur]
    d = {c: (None if _counter(a, c) is None or _counter(b, c) is None
             else _counter(b, c) - _counter(a, c))  # type: ignore[operator]
         for c in COUNTER_WORDS}
    went_on = [c for c in ("optimizer", "run", "name") if (d[c] or 0) > 0]

    def moves(cs: list[str]) -> str:
        return ", ".join(f"{COUNTER_WORDS[c]} {_counter(a, c)} -> {_counter(b, c)}"
                         for c in cs)

    for c in ("optimizer", "run"):
        if d[c] is not None and d[c] < 0:
            others = [o for o in went_on if o != c]
            split = _split(records, ok, cur) if c == "optimizer" and (d["run"] or 0) > 0 \
                else None
            if split is not None:
                emit(split[0], "step_backwards", split[1], key=c)
                continue
            cause = ("the optimizer state not restored on resume, or restored from an older "
                     "checkpoint?" if c == "optimizer" and others else
                     "resumed from an older checkpoint?")
            emit(cur, "step_backwards",
                 f"{b['label']}: {COUNTER_WORDS[c]} went back {_counter(a, c)} -> "
                 f"{_counter(b, c)} after {a['label']}"
                 + (f" while {moves(others)} went on" if others else "") + f": {cause}",
                 key=c)
    # the scheduler went back while the steps it follows went on (the optimizer's, where
    # it records one: when that went back too, it is step_backwards above)
    ref = ["optimizer"] if d["optimizer"] is not None else [c for c in went_on if c != "optimizer"]
    went_on = [c for c in ref if (d[c] or 0) > 0]
    if d["scheduler"] is not None and d["scheduler"] < 0:
        if went_on:
            emit(cur, "scheduler_reset",
                 f"{b['label']}: the LR scheduler's last_epoch went back "
                 f"{_counter(a, 'scheduler')} -> {_counter(b, 'scheduler')} after "
                 f"{a['label']} while {moves(went_on[:1])} went on: the scheduler's state "
                 "not restored on resume?")
        elif d["optimizer"] is None and d["run"] is None:
            emit(cur, "step_backwards",
                 f"{b['label']}: the LR scheduler's last_epoch went back "
                 f"{_counter(a, 'scheduler')} -> {_counter(b, 'scheduler')} after "
                 f"{a['label']}: resumed from an older checkpoint?", key="scheduler")
    # optimizer_stalled: the run went on and the optimizer did not step at all (a gradient
    # scaler skips a step on inf/NaN gradients; skipping every one leaves the state frozen)
    drivers = [c for c in ("run", "scheduler") if (d[c] or 0) > 0]
    if not drivers and d["run"] is None and d["scheduler"] is None and (d["name"] or 0) > 0:
        drivers = ["name"]
    if d["optimizer"] == 0:  # more than two optimizer steps' worth of the run went by
        drivers = [c for c in drivers if d[c] >= 2 * _per_step(records, ok, prev, c)]
    if drivers and (d["optimizer"] == 0 or d["optimizer"] is None and _state_frozen(a, b)):
        held = (f"the optimizer's step stayed at {_counter(b, 'optimizer')}"
                if d["optimizer"] == 0 else "every optimizer state entry is unchanged")
        emit(cur, "optimizer_stalled",
             f"{b['label']}: {held} since {a['label']} while {moves(drivers)}: no optimizer "
             "step in the interval (a gradient scaler skipping every step on inf/NaN "
             "gradients, or every param frozen?)", key="stalled")
    # step_skip: counters that moved together over the interval before move apart now
    if before_prev is None:
        return
    before = records[before_prev]
    for x, y in SKIP_PAIRS:
        px, py = _counter(before, x), _counter(before, y)
        if px is None or py is None or d[x] is None or d[y] is None:
            continue
        dx0, dy0 = _counter(a, x) - px, _counter(a, y) - py  # type: ignore[operator]
        if dx0 == dy0 > 0 and d[x] > d[y] >= 0:
            emit(cur, "step_skip",
                 f"{b['label']}: {COUNTER_WORDS[x]} advanced {d[x]} "
                 f"({_counter(a, x)} -> {_counter(b, x)}) but {COUNTER_WORDS[y]} {d[y]} "
                 f"({_counter(a, y)} -> {_counter(b, y)}) since {a['label']}, where both "
                 f"advanced {dx0} before: resumed from another checkpoint, or steps taken "
                 "twice?", key=(x, y))


# ----------------------------------------------------------------------------- entries


def _betas(r: dict[str, Any], group: int | None) -> list[float | None] | None:
    for g in r.get("groups") or []:
        if g.get("index") == group:
            b = (g.get("hyperparams") or {}).get("betas")
            if isinstance(b, (list, tuple)) and len(b) >= 2:
                return [num(b[0]), num(b[1])]
    return None


def _step_of(r: dict[str, Any]) -> int | None:
    """The count of steps behind the state (the optimizer's, else the run's, else the
    scheduler's, else the name number)."""
    for c in ("optimizer", "run", "scheduler", "name"):
        v = _counter(r, c)
        if v is not None:
            return v
    return None


def _comparable(r: dict[str, Any], p: dict[str, Any], entry: str,
                norm: float) -> tuple[float, str]:
    """The norm made comparable across steps (module docstring), and how."""
    leaf = entry.rsplit(".", 1)[-1]
    which = BIAS_CORRECTED.get(leaf)
    betas = _betas(r, p.get("group"))
    step = _counter(r, "optimizer")
    if which is not None and betas is not None and step and betas[which] is not None \
            and 0 <= betas[which] < 1:  # type: ignore[operator]
        return norm / (1.0 - betas[which] ** step), "bias-corrected"  # type: ignore[operator]
    return norm, ""


def _entries(records: list[dict[str, Any]], prev: int, cur: int, emit: Emit) -> None:
    a, b = records[prev], records[cur]
    pa, pb = _params(a), _params(b)
    had = sum(1 for p in pa.values() if p.get("entries"))
    has = sum(1 for p in pb.values() if p.get("entries"))
    if had and not has:
        emit(cur, "state_lost",
             f"{b['label']}: no param has optimizer state, where {a['label']} held state "
             f"for {had}: a fresh optimizer, or its state not loaded?")
        return
    for pos, p in pa.items():
        q = pb.get(pos)
        for entry, e in (p.get("entries") or {}).items():
            f = (q.get("entries") or {}).get(entry) if q is not None else None
            who = _who(q or p)
            kw = {"param": pos, "name": (q or p).get("name"), "entry": entry,
                  "group": (q or p).get("group")}
            if f is None:
                emit(cur, "state_lost",
                     f"{b['label']}: {who} {entry} is gone (held at {a['label']}): a fresh "
                     "optimizer, or its state not loaded?", **kw)
                continue
            _nonfinite(cur, b, a, who, entry, e, f, emit, kw)
            _collapse(cur, a, b, who, entry, e, f, emit, kw)
    for pos, q in pb.items():  # entries new here (a param unfrozen mid-run) start bad too
        old = (pa.get(pos) or {}).get("entries") or {}
        for entry, f in (q.get("entries") or {}).items():
            if entry not in old:
                kw = {"param": pos, "name": q.get("name"), "entry": entry,
                      "group": q.get("group")}
                _nonfinite(cur, b, a, _who(q), entry, None, f, emit, kw)


def _first_entries(records: list[dict[str, Any]], i: int, emit: Emit) -> None:
    """NaN / Inf already at the first checkpoint."""
    r = records[i]
    for p in (r.get("params") or []):
        for entry, e in (p.get("entries") or {}).items():
            kw = {"param": p["position"], "name": p.get("name"), "entry": entry,
                  "group": p.get("group")}
            _nonfinite(i, r, None, _who(p), entry, None, e, emit, kw)


def _nonfinite(i: int, b: dict[str, Any], a: dict[str, Any] | None, who: str, entry: str,
               e: dict[str, Any] | None, f: dict[str, Any], emit: Emit,
               kw: dict[str, Any]) -> None:
    for code, word in (("nan", "NaN"), ("inf", "Inf")):
        n = f.get(code) or 0
        if n > 0:
            before = (e.get(code) or 0) if e is not None else 0
            tail = ("already at the first checkpoint" if a is None else
                    f"new since {a['label']}: not held there" if e is None else
                    f"none at {a['label']}" if not before else f"{before} at {a['label']}")
            emit(i, code,
                 f"{b['label']}: {who} {entry} holds {n} {word} of {f.get('numel')} "
                 f"({tail})", **kw)


def _units(entry: str, norm: float) -> float:
    """A norm in gradient units: a second moment's by its square root (module docstring)."""
    return math.sqrt(norm) if entry.rsplit(".", 1)[-1] in SQUARE_ENTRIES else norm


@functools.lru_cache(maxsize=64)
def _rounding(dtype: Any) -> float:
    """The spacing of a state dtype's numbers relative to 1 (float32's when not known)."""
    dt = DTYPES.get(dtype_name(dtype))
    return 2.0 * unit_roundoff(dt.name if dt is not None and dt.is_floating_point
                               else "float32")


def _spikes(records: list[dict[str, Any]], ok: list[int], spike: float, emit: Emit,
            growth: dict[int, dict[str, Any]] | None = None) -> None:
    """norm_spike over the run (module docstring). The reference of a signed average
    (exp_avg, a momentum) is the largest of its last WINDOW comparable norms: such an
    average passes near zero when gradients change sign (a converging run), and climbing
    back from there is not a spike. A second moment cannot cancel: its reference is the
    norm before. A norm at rounding level against the largest norm of its kind at the same
    checkpoint (the state of a param whose gradient is zero up to rounding, as an attention
    key's bias) is noise, never a spike."""
    sink = growth
    hist: dict[tuple[int, str], list[tuple[int, float, float]]] = {}
    for i in ok:
        r = records[i]
        params = r.get("params") or []
        largest: dict[str, float] = {}
        values = []
        for p in params:
            for entry, e in (p.get("entries") or {}).items():
                n = num(e.get("norm"))
                if n is None or not math.isfinite(n):
                    continue
                c, how = _comparable(r, p, entry, n)
                u = _units(entry, c)
                leaf = entry.rsplit(".", 1)[-1]
                largest[leaf] = max(largest.get(leaf, 0.0), u)
                values.append((p, entry, e, n, u, how, _units(entry, n)))
        step = _step_of(r)
        for p, entry, e, n, u, how, raw in values:
            key = (p["position"], entry)
            past = hist.setdefault(key, [])
            leaf = entry.rsplit(".", 1)[-1]
            squared = leaf in SQUARE_ENTRIES
            ref = past[-1:] if squared else past[-WINDOW:]
            past.append((i, n, u, how, raw))
            if u <= _rounding(e.get("dtype")) * largest[leaf]:
                continue
            if how and any(not x[3] for x in ref):  # corrected only if all are: else none
                how, u = "", raw
                ref = [(x[0], x[1], x[4], "", x[4]) for x in ref]
            ref = [x for x in ref if x[2] > 0]
            if not ref:
                continue
            j, n0, u0, _, _ = max(ref, key=lambda x: x[2])
            s0 = _step_of(records[j])
            allowed = step / s0 if not how and step and s0 and step > s0 > 0 else 1.0
            factor = u / u0
            if sink is not None and factor / allowed > sink.get(i, {}).get("_score", 0.0):
                sink[i] = {"param": p["position"], "name": p.get("name"), "entry": entry,
                           "norm": n, "ratio": factor, "_score": factor / allowed}
            if factor > spike * allowed:
                units = f" ({SQUARE_WORDS.get(leaf, 'squares of gradients')}: compared by " \
                    "the square root)" if squared else ""
                corr = f", {how} by step and betas" if how else (
                    f", allowing {allowed:.3g}x for the steps taken" if allowed > 1 else "")
                biggest = "" if squared or len(ref) == 1 else ", its largest of the last " \
                    f"{len(ref)}"
                emit(i, "norm_spike",
                     f"{r['label']}: {_who(p)} {entry} norm {_g(n0)} at "
                     f"{records[j]['label']}{biggest} -> {_g(n)}: {_x(factor)} > "
                     f"{spike:g}x{units}{corr}",
                     param=p["position"], name=p.get("name"), entry=entry,
                     group=p.get("group"))


def _collapse(i: int, a: dict[str, Any], b: dict[str, Any], who: str, entry: str,
              e: dict[str, Any], f: dict[str, Any], emit: Emit, kw: dict[str, Any]) -> None:
    if entry.rsplit(".", 1)[-1] not in SQUARE_ENTRIES:
        return
    za, zb = num(e.get("zeros")), num(f.get("zeros"))
    if za is None or zb is None or za >= 1.0:
        return
    if zb >= 1.0 or zb - za >= 0.5:
        emit(i, "moments_collapsed",
             f"{b['label']}: {who} {entry} is {zb:.0%} zeros (was {za:.0%} at {a['label']}): "
             f"{'all' if zb >= 1.0 else 'most'} of the second moment gone: underflow in a "
             "low-precision state, or reset by hand?", **kw)


# ----------------------------------------------------------------------------- lr


def _close(x: float, y: float, steps: int, base: float | None) -> bool:
    scale = max(abs(x), abs(y), abs(base or 0.0))
    return abs(x - y) <= schedule_atol(steps, scale)


def _listed(values: Any, g: int) -> float | None:
    return num(values[g]) if isinstance(values, list) and g < len(values) else None


def _accounted(r: dict[str, Any], g: int, lr: float) -> bool:
    """Whether a saved scheduler accounts for this lr (it is its last lr or its computed
    lr at last_epoch)."""
    s = r.get("scheduler")
    if not s:
        return False
    for v in (_listed(s.get("last_lr"), g), _listed(s.get("scheduled_lr"), g)):
        if v is not None and _close(lr, v, int(s.get("last_epoch") or 0),
                                    _listed(s.get("base_lrs"), g)):
            return True
    return False


class _LrHistory:
    """One group's lr along the run so far (what lr_up / lr_reset look at)."""

    def __init__(self, i: int, lr: float) -> None:
        self.first = lr
        self.first_at = i
        self.last: tuple[int, float] = (i, lr)
        self.before_last: float | None = None
        self.before_last_at: int | None = None
        self.third_last: float | None = None
        self.moved = False  # an lr after the first, before the last, differed from the first
        self.fell = False  # the lr fell in an interval before the last one

    def add(self, i: int, lr: float) -> None:
        _, prev = self.last
        if self.before_last is not None:
            self.moved = self.moved or not _close(prev, self.first, 0, None)
            self.fell = self.fell or (prev < self.before_last
                                      and not _close(prev, self.before_last, 0, None))
        self.third_last = self.before_last
        self.before_last, self.before_last_at = prev, self.last[0]
        self.last = (i, lr)


def _lrs(records: list[dict[str, Any]], ok: list[int], spike: float, emit: Emit) -> None:
    hists: dict[Any, _LrHistory] = {}
    for i in ok:
        r = records[i]
        for grp in r.get("groups") or []:
            g = grp.get("index")
            lr = num(grp.get("lr"))
            if lr is None:
                continue
            if not math.isfinite(lr):  # no history or schedule compares with it
                last_ok = hists.get(g)
                was = (f" ({_g(last_ok.last[1])} at {records[last_ok.last[0]]['label']})"
                       if last_ok is not None else "")
                emit(i, "lr_not_finite",
                     f"{r['label']}: group {g}'s lr is {lr}{was}: every update of its params "
                     "is NaN or Inf from here; set by hand, or a scheduler's factor "
                     "overflowed?", group=g, where=[join(join("param_groups", g), "lr")])
                continue
            h = hists.get(g)
            if h is None:
                hists[g] = _LrHistory(i, lr)
            else:
                h.add(i, lr)
            _lr(records, i, g, lr, h, spike, emit)


def _lr(records: list[dict[str, Any]], i: int, g: Any, lr: float, h: _LrHistory | None,
        spike: float, emit: Emit) -> None:
    r = records[i]
    s = r.get("scheduler") or None
    kw = {"group": g, "where": [join(join("param_groups", g), "lr")]}
    if s:
        epoch = int(s.get("last_epoch") or 0)
        base = _listed(s.get("base_lrs"), g)
        last = _listed(s.get("last_lr"), g)
        sched = _listed(s.get("scheduled_lr"), g)
        if last is not None and not _close(lr, last, 0, base):
            emit(i, "lr_not_from_scheduler",
                 f"{r['label']}: group {g}'s lr is {_g(lr)} but its {s.get('kind')}'s "
                 f"last lr is {_g(last)} ({_x(lr / last if last else math.inf)}): the lr "
                 "changed after the scheduler's last step (by hand, or by other code)?", **kw)
            return
        if sched is not None and not _close(lr, sched, epoch, base):
            fresh = base is not None and _close(lr, base, 0, None)
            emit(i, "lr_off_schedule",
                 f"{r['label']}: group {g}'s lr is {_g(lr)} but its {s.get('kind')} "
                 f"computes {_g(sched)} at last_epoch {epoch} "
                 f"({_x(lr / sched if sched else math.inf)}): "
                 + ("the lr is its base lr: the optimizer rebuilt fresh on resume while the "
                    "scheduler's state was restored?" if fresh else
                    "the lr changed by hand or by other code (another scheduler?), or the "
                    "scheduler restored with other settings?"
                    + (" (or a scale_fn function of its own, which a CyclicLR does not "
                       "save)" if s.get("kind") == "CyclicLR" else "")), **kw)
            return
    if h is None or h.before_last is None or _accounted(r, g, lr):
        return
    # no saved scheduler accounts for the lr: its history alone
    prev, now, first = h.before_last, lr, h.first
    at_prev = records[h.before_last_at]["label"] if h.before_last_at is not None else "?"
    why = ("no LR scheduler is saved to say whether the schedule does this"
           if not s else f"the saved {s.get('kind')}'s lr cannot be computed here")
    # a rise back to the first lr (a decay passing the lr a warmup had at the first
    # checkpoint falls to it: no reset)
    if h.moved and _close(now, first, 0, None) and prev < first \
            and not _close(prev, first, 0, None):
        emit(i, "lr_reset",
             f"{r['label']}: group {g}'s lr rose back to {_g(first)}, the lr at "
             f"{records[h.first_at]['label']}, the first checkpoint (from {_g(prev)} at "
             f"{at_prev}): a resume that lost the scheduler, or the optimizer rebuilt from "
             f"its config? ({why})", **kw)
        return
    if now <= prev or _close(now, prev, 0, None):
        return
    if h.fell:
        emit(i, "lr_up",
             f"{r['label']}: group {g}'s lr rose {_g(prev)} -> {_g(now)} since {at_prev} "
             f"after having fallen: a scheduler restored wrongly, or the lr set by hand? "
             f"({why}: restarts and cycles rise too)", **kw)
        return
    # the interval before: a warmup rises at every interval from the start
    if h.third_last is None:
        return
    rose_before = prev > h.third_last and not _close(prev, h.third_last, 0, None)
    if prev > 0 and now > spike * prev and not rose_before:
        emit(i, "lr_up",
             f"{r['label']}: group {g}'s lr rose {_g(prev)} -> {_g(now)} since {at_prev} "
             f"({_x(now / prev)} > {spike:g}x): the lr set by hand? ({why})", **kw)


# ----------------------------------------------------------------------------- groups


def _cycled(r: dict[str, Any]) -> bool:
    """Whether the saved scheduler may move beta1 / momentum itself."""
    s = r.get("scheduler") or {}
    if s.get("kind") == "DeepSpeed scheduler":
        return True  # its OneCycle cycles momentum, and its settings are not saved
    return s.get("kind") in MOMENTUM_CYCLERS and bool((s.get("settings") or {}).get(
        "cycle_momentum", True))


def _hyper(r: dict[str, Any], g: dict[str, Any]) -> dict[str, str]:
    h = dict(g.get("hyperparams") or {})
    if _cycled(r):
        h.pop("momentum", None)
        if isinstance(h.get("betas"), (list, tuple)):
            h["betas"] = list(h["betas"])[1:]
    return {k: json.dumps(v, sort_keys=True) for k, v in h.items()
            if k not in NOT_HYPERPARAMS}


def _hyperparams(records: list[dict[str, Any]], ok: list[int], emit: Emit) -> None:
    """hyperparam_changed. A key that changes in two intervals in a row moves with the run
    (a weight-decay or momentum schedule in the training code; Prodigy's ``d``, a
    schedule-free optimizer's ``weight_sum``, which such optimizers keep in their groups),
    as does one that changes in SCHEDULED_CHANGES intervals or more (a stepwise schedule):
    that is not an edit, and is not reported; one or two changes between intervals without
    one are. Groups added with the others unchanged (gradual unfreezing) are not reported;
    groups removed are."""
    pairs = list(zip(ok, ok[1:], strict=False))
    changes: list[dict[tuple[Any, str], tuple[str, str]]] = []
    for prev, cur in pairs:
        a, b = records[prev], records[cur]
        ga = {g.get("index"): g for g in a.get("groups") or []}
        gb = {g.get("index"): g for g in b.get("groups") or []}
        found: dict[tuple[Any, str], tuple[str, str]] = {}
        # groups added with the others unchanged (their params the same): gradual unfreezing
        # by add_param_group, not a finding; groups removed, or the others changed, are
        added = set(ga) < set(gb) and all(
            ga[g].get("params") == gb[g].get("params") for g in ga)
        if ga and gb and set(ga) != set(gb) and not added:
            emit(cur, "hyperparam_changed",
                 f"{b['label']}: {len(gb)} param groups where {a['label']} had {len(ga)}: "
                 "groups removed or rebuilt (a model part frozen, a new optimizer?)",
                 key="groups", where=["param_groups"])
        elif ga and gb and _cycled(a) == _cycled(b):
            for g in set(ga) & set(gb):
                ha, hb = _hyper(a, ga[g]), _hyper(b, gb[g])
                for key in set(ha) | set(hb):
                    if ha.get(key) != hb.get(key):
                        found[(g, key)] = (ha.get(key, "absent"), hb.get(key, "absent"))
        changes.append(found)
    times: dict[tuple[Any, str], int] = {}
    for found in changes:
        for k in found:
            times[k] = times.get(k, 0) + 1
    for t, (prev, cur) in enumerate(pairs):
        for (g, key), (old, new) in sorted(changes[t].items(), key=lambda x: (
                -1 if x[0][0] is None else x[0][0], x[0][1])):
            if times[(g, key)] >= SCHEDULED_CHANGES or \
                    (t > 0 and (g, key) in changes[t - 1]) or \
                    (t + 1 < len(changes) and (g, key) in changes[t + 1]):
                continue
            emit(cur, "hyperparam_changed",
                 f"{records[cur]['label']}: group {g}'s {key} changed {old} -> {new} since "
                 f"{records[prev]['label']}: edited mid-run, or resumed with another "
                 "config?", group=g, key=key, where=[join(join("param_groups", g), key)])
