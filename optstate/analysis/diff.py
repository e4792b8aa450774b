"""Compare two optimizer states, structurally and numerically: a pure function that
returns a list of ``Change`` records (plain data) and prints nothing. How two values
compare (tolerances, NaN, tensors) is ``diff_walk.py``; the plain-data report the views
render is ``diff_report.py``.

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

Beside the state, DeepSpeed's run facts and fp32 master weights are compared into notes
(``master_weights.deepspeed_diff_notes``). About 400 lines on purpose: pairing, walking
and opening the two sides are one comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from optstate.analysis.diff_walk import Change, DiffOptions, Stop, Walk, brief, union
from optstate.base.errors import CheckpointError, ConfigError, option
from optstate.base.paths import bracket, join
from optstate.base.suggest import did_you_mean
from optstate.io.native_tensor import is_tensor
from optstate.state.lowbit import BNB_AS_TORCH_NOTE, bnb_as_torch, bnb_torch_names
from optstate.state.view import OptimizerStateView, ParamView


@dataclass
class StateDiff:
    """The result of comparing optimizer state a with b."""

    changes: list[Change]
    same: list[Change]  # items compared and found equal (kind "equal")
    ignored: int  # items skipped by options.ignore
    matched_by: str  # "position" | "name"
    options: DiffOptions
    groups: tuple[int, int]
    params: tuple[int, int]
    optimizers: tuple[str, str] = ("unknown", "unknown")  # inferred kinds (kind.py)
    complete: bool = True  # False when stop_after cut the comparison short
    notes: list[str] = field(default_factory=list)
    naming: tuple[Any, Any] = (None, None)  # state.names.Naming of a and of b
    compared_params: int | None = None  # params compared (options.params selects some)

    @property
    def equal(self) -> bool:
        return not self.changes

    def paths(self) -> list[str]:
        return [c.path for c in self.changes]


def _param_brief(p: ParamView) -> dict[str, Any]:
    return {"group": p.group, "name": p.name,
            "state": {str(k): brief(v) for k, v in p.state.items()}}


def _tensor_bytes(p: ParamView) -> int:
    return sum(v.numel() * v.element_size() for v in p.state.values()
               if is_tensor(v) and not v.is_meta)


def _pairs(va: OptimizerStateView, vb: OptimizerStateView, by_name: bool
           ) -> Iterator[tuple[str, ParamView | None, ParamView | None]]:
    """Matched parameters as (path, param in a, param in b)."""
    if by_name:
        a = {p.name: p for p in va.params}
        b = {p.name: p for p in vb.params}
        for n in union(a, b):
            yield bracket("state", n), a.get(n), b.get(n)
        return
    for i in range(max(va.n_params, vb.n_params)):
        yield (join("state", i), va.params[i] if i < va.n_params else None,
               vb.params[i] if i < vb.n_params else None)


# Names a checkpoint carries itself; only these can pair params (a model's names are labels).
CHECKPOINT_NAME_SOURCES = ("param_names", "dcp", "deepspeed")


def _names_usable(view: OptimizerStateView) -> bool:
    """Every param named by the checkpoint itself, each name once: params can be paired by
    name. Names derived from a model (``state.names``) only label positions, which is how
    ``load_state_dict`` pairs them."""
    names = [p.name for p in view.params]
    return (all(n is not None for n in names) and len(set(names)) == len(names)
            and all(p.name_source in CHECKPOINT_NAME_SOURCES for p in view.params))


def pair_label(pa: ParamView | None, pb: ParamView | None) -> tuple[str | None, str | None]:
    """(name, name_source) of a matched pair: the name when the sides that have one agree
    (the first named side's source), else (None, None): two names for one position are a
    ``renamed`` change, not a label."""
    named = [p for p in (pa, pb) if p is not None and p.name is not None]
    if not named or any(p.name != named[0].name for p in named):
        return None, None
    return named[0].name, named[0].name_source


def _names_of(p: ParamView | None) -> tuple[str, ...]:
    return () if p is None or p.name is None else (p.name, *p.aliases)


def select_pairs(pairs: list[tuple[str, ParamView | None, ParamView | None]],
                 patterns: tuple[str, ...], views: tuple[OptimizerStateView, ...]
                 ) -> list[tuple[str, ParamView | None, ParamView | None]]:
    """The pairs ``patterns`` select: a glob (``fnmatch``, case-sensitive) matching a name
    or alias on either side, or a position. A pattern that selects nothing is an error."""
    if not patterns:
        return pairs
    keep: set[int] = set()
    for pat in patterns:
        hits = {i for i, (_, pa, pb) in enumerate(pairs)
                if any(fnmatchcase(n, pat) for n in (*_names_of(pa), *_names_of(pb)))}
        if not hits and pat.strip().lstrip("-").isdigit():
            n = int(pat)
            hits = {i for i, (_, pa, pb) in enumerate(pairs)
                    if any(p is not None and p.position == n for p in (pa, pb))}
        if not hits:
            raise _no_match(pat, pairs, views)
        keep |= hits
    return [pair for i, pair in enumerate(pairs) if i in keep]


def _no_match(pat: str, pairs: list[tuple[str, ParamView | None, ParamView | None]],
              views: tuple[OptimizerStateView, ...]) -> ConfigError:
    names = list(dict.fromkeys(n for _, pa, pb in pairs for n in (*_names_of(pa),
                                                                   *_names_of(pb))))
    n = max(v.n_params for v in views)
    where = f"positions 0..{n - 1}" if n else "no params"
    if names:
        return ConfigError(
            f"{option('params', [pat], shown=repr(pat))}: no parameter of a or b has a name "
            f"it matches{did_you_mean(pat, names)}",
            hint=f"names here come from {_sources_words(views)}; or give a position ({where})")
    return ConfigError(
        f"{option('params', [pat], shown=repr(pat))}: neither checkpoint names its params, "
        f"so only a position selects one ({where})",
        hint=f"{option('model')} FILE names them from the model's state_dict")


def _sources_words(views: tuple[OptimizerStateView, ...]) -> str:
    words = []
    for side, v in zip("ab", views, strict=True):
        src = getattr(v.naming, "source", None)
        words.append(f"{src} ({side})" if src else f"nowhere ({side}: unnamed)")
    return ", ".join(words)


def diff_states(a: dict[str, Any], b: dict[str, Any], options: DiffOptions | None = None, *,
                scheduler_a: dict[str, Any] | None = None,
                scheduler_b: dict[str, Any] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> StateDiff:
    """Compare optimizer state ``a`` with ``b`` (two ``optimizer.state_dict()`` dicts),
    and their scheduler states when both are given. ``on_progress(done, total)`` is called
    in bytes of tensor data after each parameter. Params are named from the states alone
    (``param_names``, DCP keys); ``diff_views`` takes views named otherwise."""
    va, vb = OptimizerStateView.from_state_dict(a), OptimizerStateView.from_state_dict(b)
    return diff_views(va, vb, options, scheduler_a=scheduler_a, scheduler_b=scheduler_b,
                      on_progress=on_progress)


def diff_views(va: OptimizerStateView, vb: OptimizerStateView,
               options: DiffOptions | None = None, *,
               scheduler_a: dict[str, Any] | None = None,
               scheduler_b: dict[str, Any] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> StateDiff:
    """``diff_states`` over two views, named already (``state.names.name_params``; a view
    not named yet is named from its state alone)."""
    from optstate.state.names import name_params

    opts = options or DiffOptions()
    _same_slices(va, vb)
    for v in (va, vb):
        if v.naming is None:
            name_params(v)
    both_named = _names_usable(va) and _names_usable(vb) and bool(va.params or vb.params)
    if opts.match == "name" and not both_named:
        raise ConfigError(
            f"{option('match', 'name')} needs parameter names in both states "
            "(param_groups[*].param_names, unique)",
            hint="torch >= 2.6 saves them when the optimizer is built from "
            f"model.named_parameters(); use {option('match', 'position')} otherwise "
            "(names from a model label params matched by position)",
        )
    by_name = opts.match == "name" or (opts.match == "auto" and both_named)
    pairs = list(_pairs(va, vb, by_name))
    selected = select_pairs(pairs, opts.params, (va, vb))
    w = Walk(opts, on_progress)
    complete = True
    guesses = (_guess(va), _guess(vb))
    if (as_torch := bnb_as_torch(*guesses)) is not None:  # state.lowbit
        w.notes.append(f"{'ab'[as_torch]}'s {BNB_AS_TORCH_NOTE}")
    try:
        _walk_groups(w, va, vb)
        _walk_params(w, selected, by_name, as_torch)
        _walk_orphans(w, va, vb)
        if scheduler_a is not None and scheduler_b is not None:
            w.compare("scheduler", scheduler_a, scheduler_b)
    except Stop:
        complete = False
    kinds = (guesses[0].kind, guesses[1].kind)
    if kinds[0] != kinds[1] and "unknown" not in kinds:
        w.notes.append(f"a holds {kinds[0]} state, b holds {kinds[1]} state")
    if va.orphan_keys or vb.orphan_keys:
        w.notes.append("some state belongs to no param group (load_state_dict drops it): "
                       f"a has {len(va.orphan_keys)}, b has {len(vb.orphan_keys)}")
    if opts.params:
        w.notes.append(f"{len(selected)} of {len(pairs)} params compared "
                       f"({option('params', list(opts.params))}); every group's "
                       "hyperparameters too")
    w.notes.extend(_naming_notes(va, vb, by_name))
    return StateDiff(w.changes, w.same, w.ignored, "name" if by_name else "position", opts,
                     (len(va.groups), len(vb.groups)), (va.n_params, vb.n_params), kinds,
                     complete, w.notes, (va.naming, vb.naming), len(selected))


def _shards(view: OptimizerStateView) -> tuple[str, str] | None:
    """(whose shard, layout) when the state's entries are FSDP2 DTensor shards
    (``ParamView.stored``); None for a whole state."""
    shards = [d for p in view.params for d in p.stored.values() if d.get("format") == "dtensor"]
    if not shards:
        return None
    ranks = sorted({d["rank"] for d in shards if "rank" in d})
    who = f"rank {', '.join(map(str, ranks))}'s shard" if ranks else "one rank's shard"
    layouts = sorted({f"{', '.join(d.get('placements') or ['?'])} on a {d.get('mesh', '?')} "
                      "device mesh" for d in shards})
    return who, "; ".join(layouts)


def _same_slices(va: OptimizerStateView, vb: OptimizerStateView) -> None:
    """Refuse to compare different slices of the same params as one tensor: two FSDP2
    ranks' files, or one rank's file and a whole state (R1: rows 0:8 against 8:16)."""
    a, b = _shards(va), _shards(vb)
    if a is None and b is None or a is not None and b is not None and a[0] == b[0]:
        return
    wa = f"{a[0]} ({a[1]})" if a else "a whole state"
    wb = f"{b[0]} ({b[1]})" if b else "a whole state"
    raise CheckpointError(
        f"a is {wa}, b is {wb}: different slices of the same params (FSDP2 DTensors), not "
        "two states to compare entry by entry",
        hint="give the same rank of two checkpoints, or the two folders of all rank files "
        "(each read as the whole state)")


def _naming_notes(va: OptimizerStateView, vb: OptimizerStateView, by_name: bool) -> list[str]:
    """Say when the names shown are labels of one side only, or derived from a model."""
    if by_name:
        return []
    na, nb = (sum(p.name is not None for p in v.params) for v in (va, vb))
    if na and not nb or nb and not na:
        named, other = ("a", "b") if na else ("b", "a")
        return [f"names come from {named} only ({other} has none): {other}'s params are "
                "the ones at the same positions, as load_state_dict pairs them"]
    return []


def _guess(view: OptimizerStateView) -> Any:
    """The optimizer that most likely wrote this state (``state.kind.KindGuess``)."""
    from optstate.state.kind import infer_kind, stored_formats

    entries = {str(k) for p in view.params for k in p.state}
    return infer_kind([g.hyperparams for g in view.groups], entries, stored_formats(view))


def _walk_groups(w: Walk, va: OptimizerStateView, vb: OptimizerStateView) -> None:
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


def _walk_params(w: Walk, pairs: list[tuple[str, ParamView | None, ParamView | None]],
                 by_name: bool, as_torch: int | None = None) -> None:
    sizes = ([sum(_tensor_bytes(p) for p in (pa, pb) if p is not None) for _, pa, pb in pairs]
             if w.on_progress is not None else [0] * len(pairs))
    total, done = sum(sizes), 0
    for (path, pa, pb), size in zip(pairs, sizes, strict=True):
        w.label = pair_label(pa, pb)
        if not w.skip(path) and not _ignored_name(w, pa, pb):
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
                w.mapping(path, bnb_torch_names(pa.state) if as_torch == 0 else pa.state,
                          bnb_torch_names(pb.state) if as_torch == 1 else pb.state,
                          entries=True)
        w.label = (None, None)
        done += size
        if w.on_progress is not None:
            w.on_progress(done, total)


def _ignored_name(w: Walk, pa: ParamView | None, pb: ParamView | None) -> bool:
    """``ignore`` names a param matched by position by its (derived) name or an alias."""
    if {*_names_of(pa), *_names_of(pb)} & set(w.opts.ignore):
        w.ignored += 1
        return True
    return False


def _walk_orphans(w: Walk, va: OptimizerStateView, vb: OptimizerStateView) -> None:
    """State kept under keys no param group lists, compared by key."""
    a = {k: va.raw["state"][k] for k in va.orphan_keys}
    b = {k: vb.raw["state"][k] for k in vb.orphan_keys}
    for k in union(a, b):
        path = join("state", k)
        if w.opts.params and not any(fnmatchcase(str(k), pat) for pat in w.opts.params):
            continue  # options.params selects params; an orphan only by its key
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

    path: str  # what the user named (a URL without credentials: remote.display)
    file: str  # the file read (optimizer.pt inside a Hugging Face folder, ...)
    location: str
    scheduler_location: str | None
    bytes: int
    format: str
    # what was read (analysis.inspect.read_info): bytes_read, bytes_total, requests,
    # retries; bytes_read/requests/retries None for a local (memory-mapped) source;
    # reader ("native" | "torch") and reader_note (why torch read it)
    read: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "file": self.file, "location": self.location,
                "scheduler_location": self.scheduler_location, "bytes": self.bytes,
                "format": self.format, **self.read}


def diff_files(path_a: Any, path_b: Any, options: DiffOptions | None = None, *,
               key_a: str | None = None, key_b: str | None = None, unsafe: bool = False,
               model: Any = None, on_progress: Callable[[int, int], None] | None = None,
               workers: int = 1) -> tuple[StateDiff, DiffSide, DiffSide]:
    """Open two checkpoints (files or folders, memory-mapped where the format allows),
    locate the optimizer state in each, name each side's params (``state.names``: from the
    checkpoint, a model beside it, or ``model``, one model file for both sides) and
    compare them. The tensor comparisons are split over ``workers`` processes, or over the
    torchrun ranks this process is one of (``analysis/ranks.py``): the same result."""
    from optstate.analysis.inspect import read_info
    from optstate.analysis.master_weights import deepspeed_diff_notes
    from optstate.analysis.ranks import ranked
    from optstate.io.remote import display
    from optstate.io.source import open_source
    from optstate.state.locate import locate
    from optstate.state.names import name_params

    src_a = open_source(path_a, unsafe=unsafe, reader="auto")  # without torch if it can
    src_b = open_source(path_b, unsafe=unsafe, reader="auto")
    loc_a, loc_b = locate(src_a, key_a), locate(src_b, key_b)
    views = []
    for s, loc in ((src_a, loc_a), (src_b, loc_b)):
        view = OptimizerStateView.from_state_dict(loc.state, loc.extra)  # + a wrapper's
        name_params(view, s, loc, model_file=model)
        views.append(view)
    opts = options or DiffOptions()
    job = {"command": "diff", "path_a": str(path_a), "path_b": str(path_b), "key_a": key_a,
           "key_b": key_b, "unsafe": unsafe, "model": None if model is None else str(model),
           "options": {**asdict(opts), "ignore": list(opts.ignore),
                       "params": list(opts.params)}}
    result = ranked(lambda: diff_views(views[0], views[1], opts,
                                       scheduler_a=loc_a.scheduler,
                                       scheduler_b=loc_b.scheduler, on_progress=on_progress),
                    workers=workers, job=job, sources=(src_a, src_b))
    sides = tuple(  # after the comparison: what it read is counted
        DiffSide(display(s.path), display(s.file), loc.location, loc.scheduler_location,
                 s.bytes, s.format, read_info(s))
        for s, loc in ((src_a, loc_a), (src_b, loc_b))
    )
    if (loc_a.scheduler is None) != (loc_b.scheduler is None):
        which, other = ("a", loc_a) if loc_a.scheduler is not None else ("b", loc_b)
        result.notes.append(f"only {which} has a scheduler state ({other.scheduler_location}); "
                            "not compared")
    result.notes += deepspeed_diff_notes(src_a.obj, src_b.obj)  # analysis.master_weights
    return result, sides[0], sides[1]
