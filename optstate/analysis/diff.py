"""Compare two optimizer states, structurally and numerically: a pure function that
returns a list of ``Change`` records (plain data) and prints nothing.

What is compared, and the path each difference gets:

- ``param_groups[g]``: a group present in only one state (``added`` / ``removed``);
- ``param_groups[g].KEY``: every hyperparameter (``added``, ``removed``, ``changed``);
- ``state[i]``: a parameter present in only one state, a parameter in another group
  (``moved``) or, when parameters are matched by name, at another position
  (``reordered``), or matched by position, under another name (``renamed``). Matched
  by name, the path is ``state["fc.weight"]``;
- ``state[i].ENTRY``: per-parameter entries (``added``, ``removed``; ``shape``, ``dtype``;
  ``values`` with numeric metrics for tensors; ``changed`` for scalars such as ``step``);
- ``state[k]`` for state under a key no param group lists (compared by key);
- ``scheduler.KEY``: the LR scheduler state, when both sides have one.

Numbers use numpy ``isclose`` semantics, ``|a - b| <= atol + rtol * |b|`` with both
tolerances at once, for tensors and scalars alike (so the relation is not symmetric when
``rtol > 0``; with ``rtol == 0`` diff(b, a) mirrors diff(a, b) exactly). NaN equals NaN
unless ``nan_equal=False``.

Tensors are compared one pair at a time, so with memory-mapped sources only the pair
being compared is paged in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from optstate.base.errors import ConfigError
from optstate.base.paths import bracket, join, path_keys
from optstate.numeric.compare import UncomparableViewsError, compare_tensors, count_unequal
from optstate.numeric.leaves import same_leaf
from optstate.numeric.stats import dtype_name
from optstate.state.report import plain
from optstate.state.view import OptimizerStateView, ParamView

SCHEMA = "optstate.diff/1"

# The kinds a Change can have (documented in the README's diff section).
KINDS = ("added", "removed", "changed", "type", "shape", "dtype", "values", "length",
         "moved", "reordered", "renamed")
# Counted as structural in the summary; "values" and "changed" count as numeric.
STRUCTURAL = frozenset(KINDS) - {"values", "changed"}
# diff(b, a) reports these kinds for what diff(a, b) reports as the key.
MIRROR_KIND = {"added": "removed", "removed": "added"}


@dataclass(frozen=True)
class Change:
    """One difference (or, in ``StateDiff.same``, one item found equal).

    ``before``/``after`` are plain data (JSON-ready) from side a and side b; a ``values``
    change carries ``metrics`` instead (numel, outside, max_abs, max_rel, norm_a, norm_b).
    """

    path: str
    kind: str
    before: Any = None
    after: Any = None
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "before": self.before,
                "after": self.after, "metrics": self.metrics}

    def mirrored(self) -> Change:
        """This change as ``diff(b, a)`` reports it: sides swapped."""
        metrics = self.metrics
        if metrics is not None:
            metrics = {**metrics, "norm_a": metrics.get("norm_b"),
                       "norm_b": metrics.get("norm_a")}
        return Change(self.path, MIRROR_KIND.get(self.kind, self.kind), self.after,
                      self.before, metrics)


@dataclass(frozen=True)
class DiffOptions:
    """How to compare. ``ignore`` names keys (or paths, or path prefixes) to skip;
    ``match`` is ``auto`` (by name when both states carry names), ``position`` or
    ``name``; ``stop_after`` stops at that many differences (``--quiet`` uses 1)."""

    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = True
    ignore: tuple[str, ...] = ()
    match: str = "auto"
    stop_after: int | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (
                    math.isfinite(v) and v >= 0):
                raise ConfigError(f"--{name} must be a finite number >= 0, got {v!r}")
        if self.match not in ("auto", "position", "name"):
            raise ConfigError(f"--match must be auto, position or name, got {self.match!r}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError("stop_after must be at least 1")


@dataclass
class StateDiff:
    """The result of comparing optimizer state a with b."""

    changes: list[Change]
    same: list[Change]  # items compared and found equal (kind "equal")
    ignored: int  # items skipped by --ignore
    matched_by: str  # "position" | "name"
    options: DiffOptions
    groups: tuple[int, int]
    params: tuple[int, int]
    optimizers: tuple[str, str] = ("unknown", "unknown")  # inferred kinds (kind.py)
    complete: bool = True  # False when stop_after cut the comparison short
    notes: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.changes

    def paths(self) -> list[str]:
        return [c.path for c in self.changes]


class _Stop(Exception):
    """Raised inside the walk once ``stop_after`` differences are found."""


# --------------------------------------------------------------------------- scalars


def _is_scalar(v: Any) -> bool:
    """Numbers, bools, None, strings and one-element 0-dim tensors: compared as values."""
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 and not v.is_meta
    return v is None or isinstance(v, (bool, int, float, str))


def _is_atomic(v: Any) -> bool:
    """Scalars, and lists/tuples of scalars (betas, base_lrs): reported as one value."""
    if isinstance(v, (list, tuple)):
        return all(_is_scalar(x) for x in v)
    return _is_scalar(v)


def _number(v: Any) -> Any:
    """A 0-dim tensor as its Python number; other scalars unchanged."""
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


def _category(v: Any) -> str:
    """What counts as 'the same type': int and float are both numbers."""
    if isinstance(v, torch.Tensor):
        return "tensor"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, (list, tuple)):
        return "sequence"
    if v is None:
        return "none"
    return type(v).__name__


def _type_label(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor({dtype_name(v.dtype)})"
    return type(v).__name__


# --------------------------------------------------------------------------- the walk


class _Walk:
    def __init__(self, opts: DiffOptions,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self.opts = opts
        self.changes: list[Change] = []
        self.same: list[Change] = []
        self.ignored = 0
        self.on_progress = on_progress
        self.notes: list[str] = []

    # -- recording

    def skip(self, path: str) -> bool:
        """True (and counted) when --ignore covers ``path``."""
        if self.opts.ignore and _ignored(path, self.opts.ignore):
            self.ignored += 1
            return True
        return False

    def change(self, c: Change) -> None:
        self.changes.append(c)
        if self.opts.stop_after is not None and len(self.changes) >= self.opts.stop_after:
            raise _Stop

    def equal(self, path: str, value: Any = None, metrics: dict[str, Any] | None = None) -> None:
        self.same.append(Change(path, "equal", value, value, metrics))

    # -- values

    def close(self, x: Any, y: Any) -> bool:
        """isclose for two Python scalars (after 0-dim tensors became numbers)."""
        if isinstance(x, complex) or isinstance(y, complex):
            return (isinstance(x, complex) and isinstance(y, complex)
                    and self.close(x.real, y.real) and self.close(x.imag, y.imag))
        if isinstance(x, bool) or isinstance(y, bool) or not (
                isinstance(x, (int, float)) and isinstance(y, (int, float))):
            return type(x) is type(y) and x == y
        if isinstance(x, int) and isinstance(y, int):
            # exact integer arithmetic: float(2**60) == float(2**60 + 1)
            return abs(x - y) <= self.opts.atol + self.opts.rtol * abs(y)
        fx, fy = float(x), float(y)
        if math.isnan(fx) or math.isnan(fy):
            return self.opts.nan_equal and math.isnan(fx) and math.isnan(fy)
        if math.isinf(fx) or math.isinf(fy):
            return fx == fy
        return abs(fx - fy) <= self.opts.atol + self.opts.rtol * abs(fy)

    def compare(self, path: str, a: Any, b: Any) -> None:
        """Compare two values found at the same path on both sides."""
        if self.skip(path):
            return
        if _is_atomic(a) and _is_atomic(b):
            self._atomic(path, a, b)
        elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            self._tensors(path, a, b)
        elif isinstance(a, dict) and isinstance(b, dict):
            self.mapping(path, a, b)
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                self.change(Change(path, "length", len(a), len(b)))
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.compare(join(path, i), x, y)
        elif type(a) is type(b):
            self._other(path, a, b)
        else:
            self.change(Change(path, "type", _type_label(a), _type_label(b)))

    def _other(self, path: str, a: Any, b: Any) -> None:
        """Any other leaf of one type on both sides (a torch.dtype or torch.device, bytes,
        complex, a set, an object only --unsafe loads) is a value: complex numbers within
        atol/rtol part by part, the rest the same as ``leaves.same_leaf`` says (dtypes by
        name, objects by type and fields), never a change of type."""
        if isinstance(a, complex):
            same = self.close(a, b)
        else:
            same = same_leaf(a, b, strides=False)
        if same:
            self.equal(path, value(a))
        else:
            self.change(Change(path, "changed", value(a), value(b)))

    def mapping(self, path: str, a: dict[Any, Any], b: dict[Any, Any]) -> None:
        for k in _union(a, b):
            p = join(path, k)
            if k not in b:
                if not self.skip(p):
                    self.change(Change(p, "removed", brief(a[k]), None))
            elif k not in a:
                if not self.skip(p):
                    self.change(Change(p, "added", None, brief(b[k])))
            else:
                self.compare(p, a[k], b[k])

    def _atomic(self, path: str, a: Any, b: Any) -> None:
        seq_a, seq_b = isinstance(a, (list, tuple)), isinstance(b, (list, tuple))
        if seq_a != seq_b:
            self.change(Change(path, "type", _type_label(a), _type_label(b)))
            return
        xs = [_number(v) for v in a] if seq_a else [_number(a)]
        ys = [_number(v) for v in b] if seq_b else [_number(b)]
        pa, pb = value(a), value(b)
        ta, tb = (a if seq_a else [a]), (b if seq_b else [b])
        differs = False
        if len(xs) == len(ys):
            for va, vb in zip(ta, tb, strict=True):
                if va is None or vb is None:
                    continue  # None against a value is a changed value, not a type
                if _category(va) != _category(vb):
                    self.change(Change(path, "type", _type_label(va), _type_label(vb)))
                    differs = True
                    break
                if (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
                        and va.dtype != vb.dtype):
                    self.change(Change(path, "dtype", dtype_name(va.dtype),
                                       dtype_name(vb.dtype)))
                    differs = True
                    break
        if len(xs) != len(ys) or not all(self.close(x, y) for x, y in zip(xs, ys, strict=True)):
            self.change(Change(path, "changed", pa, pb))
            differs = True
        if not differs:
            self.equal(path, pa)

    def _tensors(self, path: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.shape != b.shape:
            self.change(Change(path, "shape", list(a.shape), list(b.shape)))
            return
        dtype_changed = a.dtype != b.dtype
        if dtype_changed:
            self.change(Change(path, "dtype", dtype_name(a.dtype), dtype_name(b.dtype)))
        if a.is_meta or b.is_meta:
            self.notes.append(f"{path}: tensor data not available (meta tensor); not compared")
            return
        # sparse COO, CSR, CSC, BSR...: compared as the dense tensors they stand for
        x = a.to_dense() if a.layout != torch.strided else a
        y = b.to_dense() if b.layout != torch.strided else b
        try:  # views repeating stored elements: over their storage (optstate/numeric/compare.py)
            cmp = compare_tensors(x, y, atol=self.opts.atol, rtol=self.opts.rtol,
                                  nan_equal=self.opts.nan_equal)
        except UncomparableViewsError as e:
            raise UncomparableViewsError(f"{path}: {e.message}", hint=e.hint) from None
        outside = cmp.n_outside
        if (outside == 0 and self.opts.atol == 0 and self.opts.rtol == 0
                and not x.is_floating_point() and not y.is_floating_point()
                and not x.is_complex() and not y.is_complex()):
            # integers beyond 2**53 collapse in float64 (isclose's arithmetic); exact
            # mode must still see them differ
            outside = count_unequal(x, y)
        metrics = {"numel": a.numel(), "outside": outside, "max_abs": plain(cmp.max_abs),
                   "max_rel": plain(cmp.max_rel), "norm_a": plain(cmp.norm_a),
                   "norm_b": plain(cmp.norm_b)}
        if cmp.view is not None:  # compared over storage: stored pairs, "over", "view"
            metrics.update({k: v for k, v in cmp.to_dict().items()
                            if k in ("stored", "over", "view")})
        if outside:
            self.change(Change(path, "values", metrics=metrics))
        elif not dtype_changed:
            self.equal(path, None, metrics)


def _union(a: dict[Any, Any], b: dict[Any, Any]) -> list[Any]:
    """Keys of a in order, then keys only b has."""
    return [*a, *(k for k in b if k not in a)]


def _keys(path: str) -> tuple[Any, ...]:
    try:
        return path_keys(path)
    except ConfigError:  # every path here is printed by paths.join; never happens
        return ()


def _names(path: str) -> set[str]:
    """The names in a path: its string keys (``lr``, ``exp_avg``, ``scheduler``) and
    parameter names (``fc.weight`` in ``state["fc.weight"]``), not indices."""
    return {k for k in _keys(path) if isinstance(k, str)}


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    """``--ignore KEY`` covers a path when KEY is one of its names (``lr``, ``exp_avg``,
    ``scheduler``, a parameter name), the path itself, or a prefix of it
    (``param_groups[1]``)."""
    names = _names(path)
    for pat in patterns:
        if pat in names or path == pat or path.startswith((pat + ".", pat + "[")):
            return True
    return False


def brief(v: Any) -> Any:
    """A short plain description of a value that exists on one side only."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        return {"shape": list(v.shape), "dtype": dtype_name(v.dtype)}
    if isinstance(v, dict):
        return {str(k): brief(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) and not _is_atomic(v):
        return [brief(x) for x in v]
    return value(v)


def value(v: Any) -> Any:
    """A scalar (or list of scalars) as plain data for before/after. Unlike ``plain``,
    NaN and infinities stay visible, as the strings "nan", "inf", "-inf": a change from
    NaN to Inf must not read null -> null."""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_meta:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [value(x) for x in v]
    return plain(v)


def _param_brief(p: ParamView) -> dict[str, Any]:
    return {"group": p.group, "name": p.name,
            "state": {str(k): brief(v) for k, v in p.state.items()}}


def _tensor_bytes(p: ParamView) -> int:
    return sum(v.numel() * v.element_size() for v in p.state.values()
               if isinstance(v, torch.Tensor) and not v.is_meta)


# --------------------------------------------------------------------------- optimizer state


def _pairs(va: OptimizerStateView, vb: OptimizerStateView, by_name: bool
           ) -> Iterator[tuple[str, ParamView | None, ParamView | None]]:
    """Matched parameters as (path, param in a, param in b)."""
    if by_name:
        a = {p.name: p for p in va.params}
        b = {p.name: p for p in vb.params}
        for n in _union(a, b):
            yield bracket("state", n), a.get(n), b.get(n)
        return
    for i in range(max(va.n_params, vb.n_params)):
        yield (join("state", i), va.params[i] if i < va.n_params else None,
               vb.params[i] if i < vb.n_params else None)


def _names_usable(view: OptimizerStateView) -> bool:
    names = [p.name for p in view.params]
    return all(n is not None for n in names) and len(set(names)) == len(names)


def diff_states(a: dict[str, Any], b: dict[str, Any], options: DiffOptions | None = None, *,
                scheduler_a: dict[str, Any] | None = None,
                scheduler_b: dict[str, Any] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> StateDiff:
    """Compare optimizer state ``a`` with ``b`` (two ``optimizer.state_dict()`` dicts),
    and their scheduler states when both are given. ``on_progress(done, total)`` is called
    in bytes of tensor data after each parameter."""
    opts = options or DiffOptions()
    va, vb = OptimizerStateView.from_state_dict(a), OptimizerStateView.from_state_dict(b)
    both_named = _names_usable(va) and _names_usable(vb) and bool(va.params or vb.params)
    if opts.match == "name" and not both_named:
        raise ConfigError(
            "--match name needs parameter names in both states (param_groups[*].param_names,"
            " unique)",
            hint="torch >= 2.6 saves them when the optimizer is built from "
            "model.named_parameters(); use --match position otherwise",
        )
    by_name = opts.match == "name" or (opts.match == "auto" and both_named)
    w = _Walk(opts, on_progress)
    complete = True
    try:
        _walk_groups(w, va, vb)
        _walk_params(w, va, vb, by_name)
        _walk_orphans(w, va, vb)
        if scheduler_a is not None and scheduler_b is not None:
            w.compare("scheduler", scheduler_a, scheduler_b)
    except _Stop:
        complete = False
    kinds = (_kind(va), _kind(vb))
    if kinds[0] != kinds[1] and "unknown" not in kinds:
        w.notes.append(f"a holds {kinds[0]} state, b holds {kinds[1]} state")
    if va.orphan_keys or vb.orphan_keys:
        w.notes.append("some state belongs to no param group (load_state_dict drops it): "
                       f"a has {len(va.orphan_keys)}, b has {len(vb.orphan_keys)}")
    return StateDiff(w.changes, w.same, w.ignored, "name" if by_name else "position", opts,
                     (len(va.groups), len(vb.groups)), (va.n_params, vb.n_params), kinds,
                     complete, w.notes)


def _kind(view: OptimizerStateView) -> str:
    """The torch.optim class that most likely wrote this state (or "unknown")."""
    from optstate.state.kind import infer_kind

    entries = {str(k) for p in view.params for k in p.state}
    return infer_kind([g.hyperparams for g in view.groups], entries).kind


def _walk_groups(w: _Walk, va: OptimizerStateView, vb: OptimizerStateView) -> None:
    for gi in range(max(len(va.groups), len(vb.groups))):
        path = join("param_groups", gi)
        ga = va.groups[gi] if gi < len(va.groups) else None
        gb = vb.groups[gi] if gi < len(vb.groups) else None
        if w.skip(path):
            continue
        if ga is None or gb is None:
            g = ga or gb
            assert g is not None
            desc = {"params": len(g.param_keys),
                    "hyperparams": {k: brief(v) for k, v in g.hyperparams.items()}}
            w.change(Change(path, "added", None, desc) if ga is None
                     else Change(path, "removed", desc, None))
            continue
        w.mapping(path, ga.hyperparams, gb.hyperparams)


def _walk_params(w: _Walk, va: OptimizerStateView, vb: OptimizerStateView,
                 by_name: bool) -> None:
    pairs = list(_pairs(va, vb, by_name))
    sizes = ([sum(_tensor_bytes(p) for p in (pa, pb) if p is not None) for _, pa, pb in pairs]
             if w.on_progress is not None else [0] * len(pairs))
    total, done = sum(sizes), 0
    for (path, pa, pb), size in zip(pairs, sizes, strict=True):
        if not w.skip(path):
            if pa is None:
                assert pb is not None
                w.change(Change(path, "added", None, _param_brief(pb)))
            elif pb is None:
                w.change(Change(path, "removed", _param_brief(pa), None))
            else:
                if by_name and pa.position != pb.position:
                    w.change(Change(path, "reordered", pa.position, pb.position))
                if not by_name and pa.name and pb.name and pa.name != pb.name:
                    w.change(Change(path, "renamed", pa.name, pb.name))
                if pa.group != pb.group:
                    w.change(Change(path, "moved", pa.group, pb.group))
                w.mapping(path, pa.state, pb.state)
        done += size
        if w.on_progress is not None:
            w.on_progress(done, total)


def _walk_orphans(w: _Walk, va: OptimizerStateView, vb: OptimizerStateView) -> None:
    """State kept under keys no param group lists, compared by key."""
    a = {k: va.raw["state"][k] for k in va.orphan_keys}
    b = {k: vb.raw["state"][k] for k in vb.orphan_keys}
    for k in _union(a, b):
        path = join("state", k)
        if w.skip(path):
            continue
        if k in a and k in b:
            w.compare(path, a[k], b[k])
        else:
            side = a if k in a else b
            desc = {"group": None, "name": None, "state": brief(side[k])}
            w.change(Change(path, "removed", desc, None) if k in a
                     else Change(path, "added", None, desc))


# --------------------------------------------------------------------------- sources


@dataclass
class DiffSide:
    """Where one side's optimizer state was found."""

    path: str  # what the user named
    file: str  # the file read (optimizer.pt inside a Hugging Face folder, ...)
    location: str
    scheduler_location: str | None
    bytes: int
    format: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "file": self.file, "location": self.location,
                "scheduler_location": self.scheduler_location, "bytes": self.bytes,
                "format": self.format}


def diff_files(path_a: Any, path_b: Any, options: DiffOptions | None = None, *,
               key_a: str | None = None, key_b: str | None = None, unsafe: bool = False,
               on_progress: Callable[[int, int], None] | None = None,
               ) -> tuple[StateDiff, DiffSide, DiffSide]:
    """Open two checkpoints (files or folders, memory-mapped where the format allows),
    locate the optimizer state in each, and compare them."""
    from optstate.io.source import open_source
    from optstate.state.locate import locate

    src_a = open_source(path_a, unsafe=unsafe)
    src_b = open_source(path_b, unsafe=unsafe)
    loc_a, loc_b = locate(src_a, key_a), locate(src_b, key_b)
    sides = tuple(
        DiffSide(str(s.path), str(s.file), loc.location, loc.scheduler_location, s.bytes,
                 s.format)
        for s, loc in ((src_a, loc_a), (src_b, loc_b))
    )
    result = diff_states(loc_a.state, loc_b.state, options, scheduler_a=loc_a.scheduler,
                         scheduler_b=loc_b.scheduler, on_progress=on_progress)
    if (loc_a.scheduler is None) != (loc_b.scheduler is None):
        which, other = ("a", loc_a) if loc_a.scheduler is not None else ("b", loc_b)
        result.notes.append(f"only {which} has a scheduler state ({other.scheduler_location}); "
                            "not compared")
    return result, sides[0], sides[1]


# --------------------------------------------------------------------------- report


def diff_report(result: StateDiff, side_a: DiffSide | None = None,
                side_b: DiffSide | None = None, *, verbose: bool = False,
                max_diffs: int | None = None) -> dict[str, Any]:
    """The plain-data report (schema ``optstate.diff/1``) both views render."""
    shown = result.changes if max_diffs is None else result.changes[:max_diffs]
    structural = sum(c.kind in STRUCTURAL for c in result.changes)
    opts = result.options
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "equal": result.equal,
        "complete": result.complete,
        "a": side_a.to_dict() if side_a else None,
        "b": side_b.to_dict() if side_b else None,
        "options": {"atol": opts.atol, "rtol": opts.rtol, "nan_equal": opts.nan_equal,
                    "ignore": list(opts.ignore), "match": result.matched_by},
        "optimizer": list(result.optimizers),
        "groups": list(result.groups),
        "params": list(result.params),
        "counts": {"differences": len(result.changes),
                   "structural": structural, "numeric": len(result.changes) - structural,
                   "equal": len(result.same), "ignored": result.ignored},
        "changes": [c.to_dict() for c in shown],
        "omitted": len(result.changes) - len(shown),
        "by_entry": by_entry(result),
        "notes": list(result.notes),
    }
    if verbose:
        report["same"] = [c.to_dict() for c in result.same]
    hint = ignore_hint(result)
    if hint:
        report["hint"] = hint
    return report


def by_entry(result: StateDiff) -> list[dict[str, Any]]:
    """Per state entry name (``exp_avg``, ``step``, ...): over how many params it was
    compared, in how many it differs, elements outside tolerance / compared, max |a-b|.
    The overview for large models, where every parameter changes after a step."""
    rows: dict[str, dict[str, Any]] = {}
    for differs, items in ((True, result.changes), (False, result.same)):
        for c in items:
            keys = _keys(c.path)
            if len(keys) != 3 or keys[0] != "state" or not isinstance(keys[2], str):
                continue
            row = rows.setdefault(keys[2], {"entry": keys[2], "compared": 0,
                                               "differ": 0, "outside": 0, "numel": 0,
                                               "max_abs": None})
            row["compared"] += 1
            row["differ"] += differs
            if c.metrics is not None:
                row["outside"] += c.metrics["outside"]
                # elements compared: a view's stored pairs when compared over its storage
                row["numel"] += c.metrics.get("stored", c.metrics["numel"])
                if differs and c.metrics["max_abs"] is not None:
                    row["max_abs"] = max(row["max_abs"] or 0.0, c.metrics["max_abs"])
    return list(rows.values())


# Group keys torch versions add or drop; differences here are rarely interesting.
VERSION_KEYS = ("foreach", "fused", "differentiable", "capturable", "maximize",
                "decoupled_weight_decay")


def ignore_hint(result: StateDiff) -> str | None:
    """Suggest --ignore when some differences are only torch-version bookkeeping keys
    (not when the two states come from different optimizers: then they are expected)."""
    if result.optimizers[0] != result.optimizers[1]:
        return None
    keys = sorted({_keys(c.path)[-1] for c in result.changes
                   if c.path.startswith("param_groups[") and c.kind in ("added", "removed")
                   and _keys(c.path)[-1] in VERSION_KEYS})
    if not keys:
        return None
    return ("keys that differ between torch versions: "
            + " ".join(f"--ignore {k}" for k in keys))
