"""Which model tensor each optimizer slot is, from order and shape alone (pure Python).

An optimizer built from ``model.parameters()`` (or a filtered ``named_parameters()``)
holds each group's params as a subsequence of the model's tensors, in the model's order;
tensors it does not hold (frozen params, buffers) are skipped, and groups never share a
tensor. ``align_ordered`` finds every assignment that keeps to this rule and names a slot
only when all of them give it the same tensor; ``align_by_shape`` is for a model whose
order is unknown (safetensors sorts by name) and names only what a unique shape pins.

Example: ``align_ordered([[(3, 4), (3,)]], [Candidate("fc.weight", (3, 4)), ...])``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass

from optstate.base.values import format_shape

Shape = tuple[int, ...]
Slots = list[list[Shape | None]]


@dataclass(frozen=True)
class Candidate:
    name: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()


@dataclass
class Alignment:
    slots: list[list[Candidate | None]]  # per group, per slot: the candidate when certain
    options: dict[tuple[int, int], list[Candidate]]  # (group, slot) -> what a None slot could be
    reason: str | None  # one sentence on why some slots are None (None when all named)
    by_order: bool = False  # names rest on the order too (align_ordered, no fallback)


class _ShapesOnly(Exception):
    """The ordered search cannot be done; its argument says why, for the reason."""


def align_ordered(slots: Slots, candidates: list[Candidate] | list[list[Candidate]], *,
                  max_states: int = 200_000) -> Alignment:
    """Name each slot whose model tensor every in-order assignment agrees on.

    Each group's slots are a subsequence of the candidates (one list for all groups, or
    one list per group), groups are disjoint, a slot shape None fits any candidate.
    Example: ``align_ordered([[(2,), None]], [Candidate("a", (2,)), Candidate("b", (5,))])``.
    """
    slots = _norm_slots(slots)
    lists = _group_lists(slots, candidates)
    try:
        if lists is None:
            found = _ordered_shared(slots, [_norm(c) for c in candidates], max_states)
        else:
            found = _ordered_per_group(slots, lists, max_states)
        found.by_order = True
        return found
    except _ShapesOnly as stop:
        found = align_by_shape(slots, candidates)
        if found.options:
            found.reason = (f"{stop.args[0]}, so only params with a unique shape are named "
                            f"({_params(len(found.options))} left unnamed)")
        return found


def align_by_shape(slots: Slots, candidates: list[Candidate] | list[list[Candidate]]) -> Alignment:
    """Name a slot only when its shape is unique among the candidates and among the slots.

    With one candidate list per group, uniqueness is per group. For a model whose order is
    unknown. Example: ``align_by_shape([[(3, 4)]], [Candidate("fc.weight", (3, 4))])``.
    """
    slots = _norm_slots(slots)
    lists = _group_lists(slots, candidates)
    if lists is None:
        shared = [_norm(c) for c in candidates]
        lists = [shared] * len(slots)
        slot_count = Counter(s for group in slots for s in group)
    else:
        slot_count = None
    out: list[list[Candidate | None]] = [[None] * len(group) for group in slots]
    options: dict[tuple[int, int], list[Candidate]] = {}
    by_name: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for g, group in enumerate(slots):
        counts = slot_count if slot_count is not None else Counter(group)
        by_shape: dict[Shape, list[Candidate]] = defaultdict(list)
        for c in lists[g]:
            by_shape[c.shape].append(c)
        for i, shape in enumerate(group):
            fits = list(lists[g]) if shape is None else by_shape.get(shape, [])
            if shape is not None and len(fits) == 1 and counts[shape] == 1:
                out[g][i] = fits[0]
                by_name[fits[0].name].append((g, i))
            else:
                options[(g, i)] = fits
    for places in by_name.values():  # one tensor pinned by two groups' lists: neither is sure
        if len(places) > 1:
            for g, i in places:
                options[(g, i)] = [out[g][i]]
                out[g][i] = None
    return Alignment(out, options, _shape_reason(slots, out, options))


# --- ordered: one group at a time (one list, or per-group lists that share nothing) ---

def _ordered_per_group(slots: Slots, lists: list[list[Candidate]], max_states: int) -> Alignment:
    names = [[c.name for c in lst] for lst in lists]
    if len({n for group_names in names for n in group_names}) == sum(map(len, names)):
        # no tensor in two lists: the groups cannot compete, so each is aligned alone
        windows = []
        for g, group in enumerate(slots):
            found = _one_group(group, lists[g])
            if isinstance(found, _Stuck):
                return _impossible(slots, g, found)
            windows.append(found)
        spare = any(len(lst) > len(group) for lst, group in zip(lists, slots, strict=True))
        return _finish(slots, [[[lists[g][j] for j in w] for w in ws]
                               for g, ws in enumerate(windows)], spare)
    merged = _merge_orders(names)
    if merged is None:
        raise _ShapesOnly("the groups' lists of model tensors are in different orders")
    first = {}
    for lst in lists:
        for c in lst:
            first.setdefault(c.name, c)
    union = [first[n] for n in merged]
    member = [set(group_names) for group_names in names]
    allowed = [tuple(g for g, inside in enumerate(member) if n in inside) for n in merged]
    return _joint(slots, union, allowed, max_states)


def _ordered_shared(slots: Slots, cands: list[Candidate], max_states: int) -> Alignment:
    busy = [g for g, group in enumerate(slots) if group]
    if len(busy) <= 1:
        windows: list[list[list[int]]] = [[] for _ in slots]
        for g in busy:
            found = _one_group(slots[g], cands)
            if isinstance(found, _Stuck):
                return _impossible(slots, g, found)
            windows[g] = found
        spare = len(cands) > sum(len(group) for group in slots)
        return _finish(slots, [[[cands[j] for j in w] for w in ws] for ws in windows], spare)
    return _joint(slots, cands, [tuple(range(len(slots)))] * len(cands), max_states)


@dataclass(frozen=True)
class _Stuck:
    slot: int  # the first slot that no candidate left fits
    after: str | None  # the candidate the slots before it took last


def _one_group(group: list[Shape | None], cands: list[Candidate]) -> list[list[int]] | _Stuck:
    """Every candidate index each slot can take (ascending), or where placing stops."""
    n, size = len(group), len(cands)
    at: dict[Shape, list[int]] = defaultdict(list)
    for j, c in enumerate(cands):
        at[c.shape].append(j)
    # earliest[i]: the first index slot i can take with slots 0..i-1 placed before it
    earliest, j = [], -1
    for i, shape in enumerate(group):
        if shape is None:
            j = j + 1 if j + 1 < size else size
        else:
            pos = at.get(shape, [])
            k = bisect_right(pos, j)
            j = pos[k] if k < len(pos) else size
        if j >= size:
            return _Stuck(i, cands[earliest[-1]].name if earliest else None)
        earliest.append(j)
    latest, j = [0] * n, size
    for i in range(n - 1, -1, -1):
        shape = group[i]
        if shape is None:
            j -= 1
        else:
            pos = at[shape]
            j = pos[bisect_left(pos, j) - 1]
        latest[i] = j
    out = []
    for i, shape in enumerate(group):
        lo, hi = earliest[i], latest[i]
        if shape is None:
            out.append(list(range(lo, hi + 1)))
        else:
            pos = at[shape]
            out.append(pos[bisect_left(pos, lo):bisect_right(pos, hi)])
    return out


# --- ordered: groups sharing candidates, searched together ---

def _joint(slots: Slots, cands: list[Candidate], allowed: list[tuple[int, ...]],
           max_states: int) -> Alignment:
    """Forward over candidates, states = next slot of each group; keep what reaches the end."""
    k, size = len(slots), len(cands)
    sizes = tuple(len(group) for group in slots)

    def fits(g: int, i: int, j: int) -> bool:
        shape = slots[g][i]
        return shape is None or shape == cands[j].shape

    # latest[g][i]: the last index slot i of group g can take with its own later slots after it
    latest = []
    for g, group in enumerate(slots):
        row, j = [0] * len(group), size
        for i in range(len(group) - 1, -1, -1):
            j -= 1
            while j >= 0 and not (g in allowed[j] and fits(g, i, j)):
                j -= 1
            if j < 0:
                return _impossible_joint(slots, cands, allowed, g)
            row[i] = j
        latest.append(row)
    total = sum(sizes)

    def alive(state: tuple[int, ...], j: int) -> bool:
        if total - sum(state) > size - j:
            return False
        return all(state[g] == sizes[g] or latest[g][state[g]] >= j for g in range(k))

    def moves(state: tuple[int, ...], j: int):
        yield None, state
        for g in allowed[j]:
            i = state[g]
            if i < sizes[g] and fits(g, i, j):
                yield (g, i), state[:g] + (i + 1,) + state[g + 1:]

    layers: list[set[tuple[int, ...]]] = [{(0,) * k}]
    count = 1
    for j in range(size):
        nxt = set()
        for state in layers[j]:
            for _, after in moves(state, j):
                if after not in nxt and alive(after, j + 1):
                    nxt.add(after)
        count += len(nxt)
        if count > max_states:
            raise _ShapesOnly("the model has too many same-shaped tensors to align in order")
        layers.append(nxt)
    good = {sizes} & layers[size]
    possible: dict[tuple[int, int], set[int]] = defaultdict(set)
    for j in range(size - 1, -1, -1):
        back = set()
        for state in layers[j]:
            for slot, after in moves(state, j):
                if after in good:
                    back.add(state)
                    if slot is not None:
                        possible[slot].add(j)
        good = back
    if not good:
        return _impossible_joint(slots, cands, allowed, None)
    return _finish(slots, [[[cands[j] for j in sorted(possible[(g, i)])]
                            for i in range(len(group))] for g, group in enumerate(slots)],
                   size > total)


def _merge_orders(lists: list[list[str]]) -> list[str] | None:
    """One order of all names that keeps every list's order (first seen first), or None."""
    after: dict[str, set[str]] = defaultdict(set)
    before_count: dict[str, int] = {}
    rank: dict[str, int] = {}
    for lst in lists:
        for n in lst:
            rank.setdefault(n, len(rank))
            before_count.setdefault(n, 0)
        for a, b in zip(lst, lst[1:], strict=False):
            if b not in after[a]:
                after[a].add(b)
                before_count[b] += 1
    ready = sorted((n for n, c in before_count.items() if c == 0), key=rank.__getitem__)
    out: list[str] = []
    while ready:
        n = ready.pop(0)
        out.append(n)
        for m in after[n]:
            before_count[m] -= 1
            if before_count[m] == 0:
                ready.append(m)
        ready.sort(key=rank.__getitem__)
    return out if len(out) == len(rank) else None


# --- results and reasons ---

def _finish(slots: Slots, possible: list[list[list[Candidate]]], spare: bool) -> Alignment:
    """Name the slots with one possible candidate; ``spare``: the optimizer skips some."""
    out: list[list[Candidate | None]] = []
    options: dict[tuple[int, int], list[Candidate]] = {}
    for g, group in enumerate(possible):
        row: list[Candidate | None] = []
        for i, fits in enumerate(group):
            if len(fits) == 1:
                row.append(fits[0])
            else:
                row.append(None)
                options[(g, i)] = fits
        out.append(row)
    if not options:
        return Alignment(out, options, None)
    (g, i), fits = min(options.items())
    shown = " or ".join(f"'{c.name}'" for c in fits[:3]) + (" or others" if len(fits) > 3 else "")
    blind = sum(1 for g2, i2 in options if slots[g2][i2] is None)
    whys = ["which tensors the optimizer leaves out"] if spare else []
    if sum(1 for group in slots if group) > 1:
        whys.append("which group takes which")
    why = " or ".join(whys) or "the order"
    reason = (f"{_params(len(options), 'fit')} more than one same-shaped model tensor in order, "
              f"since {why} is not certain (param {_offset(slots, g) + i} could be {shown})")
    if blind:
        verb = "holds" if blind == 1 else "hold"
        reason += f"; {blind} of them {verb} no state, so the shape is unknown"
    return Alignment(out, options, reason)


def _impossible(slots: Slots, g: int, stuck: _Stuck) -> Alignment:
    after = f" after '{stuck.after}'" if stuck.after else ""
    shape = slots[g][stuck.slot]
    what = "no model tensor" if shape is None else "no model tensor of that shape"
    return _nothing(slots, f"the optimizer's shapes do not line up with the model's in order: "
                           f"param {_offset(slots, g) + stuck.slot} (shape {_shape_text(shape)}) "
                           f"has {what} left{after}")


def _impossible_joint(slots: Slots, cands: list[Candidate], allowed: list[tuple[int, ...]],
                      group: int | None) -> Alignment:
    if group is not None:
        own = [c for c, groups in zip(cands, allowed, strict=True) if group in groups]
        found = _one_group(slots[group], own)
        if isinstance(found, _Stuck):
            return _impossible(slots, group, found)
    need = Counter(s for g in slots for s in g if s is not None)
    have = Counter(c.shape for c in cands)
    short = next((s for s in need if need[s] > have[s]), None)
    if short is not None:
        return _nothing(slots, f"the optimizer's shapes do not line up with the model's in order: "
                               f"it has {_params(need[short])} of shape {_shape_text(short)} and "
                               f"the model {have[short]}")
    return _nothing(slots, "the optimizer's shapes do not line up with the model's in order: "
                           "its groups cannot all be placed in the model's order at once")


def _nothing(slots: Slots, reason: str) -> Alignment:
    options = {(g, i): [] for g, group in enumerate(slots) for i in range(len(group))}
    return Alignment([[None] * len(group) for group in slots], options, reason)


def _shape_reason(slots: Slots, out: list[list[Candidate | None]],
                  options: dict[tuple[int, int], list[Candidate]]) -> str | None:
    if not options:
        return None
    blind = sum(1 for g, i in options if slots[g][i] is None)
    missing = sum(1 for (g, i), fits in options.items() if slots[g][i] is not None and not fits)
    shared = len(options) - blind - missing
    parts = []
    if shared:
        parts.append(f"{_params(shared, 'share')} a shape with other tensors of the model "
                     f"and the model gives no order")
    if missing:
        parts.append(f"{_params(missing, 'have')} a shape no model tensor has")
    if blind:
        parts.append(f"{_params(blind, 'hold')} no state, so the shape is unknown")
    return "; ".join(parts)


# --- small helpers ---

def _norm(c: Candidate) -> Candidate:
    shape = tuple(int(d) for d in c.shape)
    return c if shape == c.shape and type(c.shape) is tuple else Candidate(c.name, shape, c.aliases)


def _norm_slots(slots: Slots) -> Slots:
    return [[None if s is None else tuple(int(d) for d in s) for s in group] for group in slots]


def _group_lists(slots: Slots, candidates) -> list[list[Candidate]] | None:
    """Per-group lists (normalised), or None for one shared list."""
    if not candidates or isinstance(candidates[0], Candidate):
        return None
    if len(candidates) != len(slots):
        raise ValueError(f"{len(candidates)} candidate lists for {len(slots)} groups")
    return [[_norm(c) for c in lst] for lst in candidates]


def _offset(slots: Slots, g: int) -> int:
    return sum(len(group) for group in slots[:g])


def _params(n: int, verb: str = "") -> str:
    """'1 param fits', '2 params fit' (the verb in its plural form; 'have' -> 'has')."""
    if n != 1:
        return f"{n} params {verb}".rstrip()
    return f"1 param {'has' if verb == 'have' else verb + 's' if verb else ''}".rstrip()


def _shape_text(shape: Shape | None) -> str:
    return "unknown" if shape is None else format_shape(shape)
