"""Comparing two values found at the same path: the walk ``diff`` runs over two optimizer
states, and the ``Change`` records it writes (plain data).

Numbers use numpy ``isclose`` semantics, ``|a - b| <= atol + rtol * |b|`` with both
tolerances at once, for tensors and scalars alike (so the relation is not symmetric when
``rtol > 0``; with ``rtol == 0`` diff(b, a) mirrors diff(a, b) exactly). NaN equals NaN
unless ``nan_equal=False``. Tensors are compared one pair at a time, so with
memory-mapped sources only the pair being compared is paged in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from optstate.base.errors import ConfigError, option
from optstate.base.paths import join, path_keys
from optstate.io.native_tensor import NativeDevice, NativeDtype, as_torch, is_native, is_tensor
from optstate.numeric.compare import UncomparableViewsError, compare_tensors, count_unequal
from optstate.numeric.leaves import same_leaf
from optstate.numeric.pair_kernel import NONFINITE_KINDS
from optstate.numeric.stats import dtype_name, is_strided
from optstate.state.nested import join_entry
from optstate.state.report import plain

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
    change carries ``metrics`` instead (numel, outside, max_abs, max_rel, norm_a, norm_b, and
    the pairs outside for a NaN or Inf: nan_a_only, nan_b_only, inf_a_only, inf_b_only,
    nan_both).
    ``name``/``name_source`` label a change under ``state[...]`` with its parameter's name
    when known (``state.names``); a label, not part of what differs, so not compared.
    """

    path: str
    kind: str
    before: Any = None
    after: Any = None
    metrics: dict[str, Any] | None = None
    name: str | None = field(default=None, compare=False)
    name_source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "kind": self.kind, "before": self.before,
             "after": self.after, "metrics": self.metrics}
        if keys_of(self.path)[:1] == ("state",):  # a parameter's change: always labelled
            d["name"] = self.name
            d["name_source"] = self.name_source
        return d

    def mirrored(self) -> Change:
        """This change as ``diff(b, a)`` reports it: sides swapped."""
        metrics = self.metrics
        if metrics is not None:
            metrics = {**metrics, "norm_a": metrics.get("norm_b"),
                       "norm_b": metrics.get("norm_a")}
            for x, y in (("nan_a_only", "nan_b_only"), ("inf_a_only", "inf_b_only")):
                if x in metrics:
                    metrics[x], metrics[y] = metrics[y], metrics[x]
        return Change(self.path, MIRROR_KIND.get(self.kind, self.kind), self.after,
                      self.before, metrics, self.name, self.name_source)


@dataclass(frozen=True)
class DiffOptions:
    """How to compare. ``ignore`` names keys (or paths, or path prefixes) to skip;
    ``match`` is ``auto`` (by name when both states carry names), ``position`` or
    ``name``; ``stop_after`` stops at that many differences (1: is there any?); ``params``
    keeps only the params whose name or alias a glob matches, or at a position given as a
    number (empty: every param; hyperparameters are always compared)."""

    atol: float = 0.0
    rtol: float = 0.0
    nan_equal: bool = True
    ignore: tuple[str, ...] = ()
    match: str = "auto"
    stop_after: int | None = None
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (
                    math.isfinite(v) and v >= 0):
                raise ConfigError(f"{option(name)} must be a finite number >= 0, got {v!r}")
        if self.match not in ("auto", "position", "name"):
            raise ConfigError(f"{option('match')} must be auto, position or name, got "
                              f"{self.match!r}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError("stop_after must be at least 1")
        # a position may come as an int from Python: params=[0, "fc.*"]
        object.__setattr__(self, "params", tuple(str(p) for p in self.params))


class Stop(Exception):
    """Raised inside the walk once ``stop_after`` differences are found."""


# --------------------------------------------------------------------------- scalars


def _is_scalar(v: Any) -> bool:
    """Numbers, bools, None, strings and one-element 0-dim tensors: compared as values."""
    if is_tensor(v):
        return v.dim() == 0 and not v.is_meta
    return v is None or isinstance(v, (bool, int, float, str))


def _is_atomic(v: Any) -> bool:
    """Scalars, and lists/tuples of scalars (betas, base_lrs): reported as one value."""
    if isinstance(v, (list, tuple)):
        return all(_is_scalar(x) for x in v)
    return _is_scalar(v)


def _number(v: Any) -> Any:
    """A 0-dim tensor as its Python number; other scalars unchanged."""
    if is_tensor(v):
        return v.item()
    return v


def _category(v: Any) -> str:
    """What counts as 'the same type': int and float are both numbers."""
    if is_tensor(v):
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


def _read_alike(a: Any, b: Any) -> bool:
    """One value as each reader gives it: a torch.dtype and the native reader's
    ``NativeDtype``, a torch.device and its ``NativeDevice`` (compared by name)."""
    kinds = {type(v).__name__ if isinstance(v, (NativeDtype, NativeDevice)) else
             f"{type(v).__module__}.{type(v).__name__}" for v in (a, b)}
    return kinds in ({"torch.dtype", "NativeDtype"}, {"torch.device", "NativeDevice"})


def _type_label(v: Any) -> str:
    if is_tensor(v):
        return f"tensor({dtype_name(v.dtype)})"
    return type(v).__name__


# --------------------------------------------------------------------------- the walk


class Walk:
    """Compares values under ``opts``, recording each ``Change`` (and each item found
    equal) in order; raises ``Stop`` once ``stop_after`` differences are recorded."""

    def __init__(self, opts: DiffOptions,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self.opts = opts
        self.changes: list[Change] = []
        self.same: list[Change] = []
        self.ignored = 0
        self.on_progress = on_progress
        self.notes: list[str] = []
        # (name, name_source) of the parameter being compared: every record gets it
        self.label: tuple[str | None, str | None] = (None, None)

    # -- recording

    def skip(self, path: str) -> bool:
        """True (and counted) when ``opts.ignore`` covers ``path``."""
        if self.opts.ignore and _ignored(path, self.opts.ignore):
            self.ignored += 1
            return True
        return False

    def _labelled(self, c: Change) -> Change:
        if self.label[0] is None or c.name is not None:
            return c
        return replace(c, name=self.label[0], name_source=self.label[1])

    def change(self, c: Change) -> None:
        self.changes.append(self._labelled(c))
        if self.opts.stop_after is not None and len(self.changes) >= self.opts.stop_after:
            raise Stop

    def equal(self, path: str, value: Any = None, metrics: dict[str, Any] | None = None) -> None:
        self.same.append(self._labelled(Change(path, "equal", value, value, metrics)))

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
        elif is_tensor(a) and is_tensor(b):
            self._tensors(path, a, b)
        elif isinstance(a, dict) and isinstance(b, dict):
            self.mapping(path, a, b)
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                self.change(Change(path, "length", len(a), len(b)))
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.compare(join(path, i), x, y)
        elif type(a) is type(b) or _read_alike(a, b):
            self._other(path, a, b)
        else:
            self.change(Change(path, "type", _type_label(a), _type_label(b)))

    def _other(self, path: str, a: Any, b: Any) -> None:
        """Any other leaf of one type on both sides (a torch.dtype or torch.device, bytes,
        complex, a set, an object only an unsafe load gives) is a value: complex numbers within
        atol/rtol part by part, the rest the same as ``leaves.same_leaf`` says (dtypes by
        name, objects by type and fields), never a change of type."""
        if isinstance(a, complex):
            same = self.close(a, b)
        elif type(a) is not type(b):  # _read_alike: the names they stand for
            same = dtype_name(a) == dtype_name(b)
        else:
            same = same_leaf(a, b, strides=False)
        if same:
            self.equal(path, value(a))
        else:
            self.change(Change(path, "changed", value(a), value(b)))

    def mapping(self, path: str, a: dict[Any, Any], b: dict[Any, Any],
                entries: bool = False) -> None:
        """``entries``: a and b are params' entries (``ParamView.state``), whose nested
        names are paths (``state.nested.join_entry``)."""
        for k in union(a, b):
            p = join_entry(path, k) if entries else join(path, k)
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
                if (is_tensor(va) and is_tensor(vb)
                        and dtype_name(va.dtype) != dtype_name(vb.dtype)):
                    self.change(Change(path, "dtype", dtype_name(va.dtype),
                                       dtype_name(vb.dtype)))
                    differs = True
                    break
        if len(xs) != len(ys) or not all(self.close(x, y) for x, y in zip(xs, ys, strict=True)):
            self.change(Change(path, "changed", pa, pb))
            differs = True
        if not differs:
            self.equal(path, pa)

    def _tensors(self, path: str, a: Any, b: Any) -> None:
        if tuple(a.shape) != tuple(b.shape):
            self.change(Change(path, "shape", list(a.shape), list(b.shape)))
            return
        # by name: a NativeTensor's dtype (io.native_tensor) against a torch tensor's
        dtype_changed = dtype_name(a.dtype) != dtype_name(b.dtype)
        if dtype_changed:
            self.change(Change(path, "dtype", dtype_name(a.dtype), dtype_name(b.dtype)))
        if a.is_meta or b.is_meta:
            self.notes.append(f"{path}: tensor data not available (meta tensor); not compared")
            return
        # sparse COO, CSR, CSC, BSR...: compared as the dense tensors they stand for
        if is_native(a) != is_native(b):  # one side read by torch (an old file): both so
            a, b = as_torch(a), as_torch(b)
        x = a if is_strided(a) else a.to_dense()
        y = b if is_strided(b) else b.to_dense()
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
                   "norm_b": plain(cmp.norm_b),
                   # why pairs are outside that the maxima (finite pairs) do not show
                   **{k: getattr(cmp, k) for k in NONFINITE_KINDS}}
        if cmp.view is not None:  # compared over storage: stored pairs, "over", "view"
            metrics.update({k: v for k, v in cmp.to_dict().items()
                            if k in ("stored", "over", "view")})
        if outside:
            self.change(Change(path, "values", metrics=metrics))
        elif not dtype_changed:
            self.equal(path, None, metrics)


def union(a: dict[Any, Any], b: dict[Any, Any]) -> list[Any]:
    """Keys of a in order, then keys only b has."""
    return [*a, *(k for k in b if k not in a)]


def keys_of(path: str) -> tuple[Any, ...]:
    """The keys of a path this walk printed (``paths.path_keys``)."""
    try:
        return path_keys(path)
    except ConfigError:  # every path here is printed by paths.join; never happens
        return ()


def _names(path: str) -> set[str]:
    """The names in a path: its string keys (``lr``, ``exp_avg``, ``scheduler``) and
    parameter names (``fc.weight`` in ``state["fc.weight"]``), not indices."""
    return {k for k in keys_of(path) if isinstance(k, str)}


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    """An ``ignore`` pattern KEY covers a path when KEY is one of its names (``lr``, ``exp_avg``,
    ``scheduler``, a parameter name), the path itself, or a prefix of it
    (``param_groups[1]``)."""
    names = _names(path)
    for pat in patterns:
        if pat in names or path == pat or path.startswith((pat + ".", pat + "[")):
            return True
    return False


def brief(v: Any) -> Any:
    """A short plain description of a value that exists on one side only."""
    if is_tensor(v) and v.dim() > 0:
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
    if is_tensor(v) and v.dim() == 0 and not v.is_meta:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [value(x) for x in v]
    return plain(v)
