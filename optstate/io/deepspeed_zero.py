"""ZeRO's flat fp32 partitions, per rank, back into per-parameter tensors (``io.deepspeed``).

``reassemble`` returns, in the order of the model states' ``param_shapes`` (the order of the
flat vectors), one dict per trainable param: ``name``, ``shape``, ``group`` (the base
optimizer's param group), ``state`` (every entry of the base optimizer's state: flat ones
cut to the param and shaped like it, 0-d ones such as ``step`` copied per param) and
``fp32`` (the master weights); and the base optimizer's param groups without ``params``.
The arithmetic is DeepSpeed's (see ``io/deepspeed.py``); every count is checked and a
mismatch is one CheckpointError, never a guess.

The per-param tensors are ``LazyTensor``s over the rank files' memory-mapped flat vectors:
a param's pieces are cut out and joined only when its numbers are looked at (statistics,
a comparison, a copy), so ``inspect --no-stats`` reads no tensor data and a large
checkpoint is never held twice in memory.
"""

from __future__ import annotations

from typing import Any

from optstate.base.errors import CheckpointError


def reassemble(stage: int, world: int, states: list[dict[str, Any]],
               param_shapes: list[Any], files: list[str]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if stage == 3:
        return _zero3(world, states, param_shapes, files)
    return _zero12(world, states, param_shapes, files)


def _shapes(group: Any, where: str) -> list[tuple[str, tuple[int, ...]]]:
    if not isinstance(group, dict):
        raise CheckpointError(f"{where}: param_shapes holds a {type(group).__name__}, not a dict")
    out = []
    for name, shape in group.items():
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: the shape of {name!r} is {shape!r}") from None
        if any(d < 0 for d in dims):
            raise CheckpointError(f"{where}: the shape of {name!r} is {dims}")
        out.append((str(name), dims))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _hyper(group: Any, where: str) -> dict[str, Any]:
    if not isinstance(group, dict):
        raise CheckpointError(f"{where}: a param group is a {type(group).__name__}")
    return {k: v for k, v in group.items() if k != "params"}


def _flat(t: Any, where: str) -> Any:
    import torch

    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise CheckpointError(f"{where} is not a flat (1-d) tensor")
    return t


def _split_entries(entry: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """An entry dict's 0-d (or non-tensor) values, and the names of its flat ones."""
    import torch

    scalars: dict[str, Any] = {}
    flat: list[str] = []
    for k, v in entry.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            _flat(v, f"{where}[{k!r}]")
            flat.append(k)
        else:
            scalars[k] = v
    return scalars, flat


def _zero12(world: int, states: list[dict[str, Any]], param_shapes: list[Any],
            files: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:

    base0 = states[0].get("base_optimizer_state")
    if isinstance(base0, list):
        raise CheckpointError(f"{files[0]} is an elastic ZeRO checkpoint: its base optimizer's "
                              "param groups (hyperparameters) are not saved; optstate does not "
                              "read this layout")
    groups_out: list[dict[str, Any]] = []
    params: list[dict[str, Any]] = []
    n_groups = len(param_shapes)
    for r, st in enumerate(states):
        fp32 = st.get("single_partition_of_fp32_groups")
        base = st.get("base_optimizer_state")
        if not isinstance(fp32, list) or len(fp32) != n_groups or not isinstance(base, dict):
            raise CheckpointError(f"{files[r]}: expected {n_groups} flat fp32 partitions "
                                  "(single_partition_of_fp32_groups) and the base optimizer's "
                                  "state_dict, as param_shapes lists")
    for g in range(n_groups):
        shapes = _shapes(param_shapes[g], f"param_shapes[{g}]")
        pieces: dict[str, list[Any]] = {"fp32": []}
        scalars: dict[str, Any] = {}
        order: list[Any] = []
        hyper: dict[str, Any] | None = None
        for r, st in enumerate(states):
            base = st["base_optimizer_state"]
            pgs = base.get("param_groups")
            if not isinstance(pgs, list) or len(pgs) != n_groups:
                raise CheckpointError(f"{files[r]}: the base optimizer has "
                                      f"{len(pgs) if isinstance(pgs, list) else 'no'} param "
                                      f"groups, param_shapes {n_groups}")
            if hyper is None:
                hyper = _hyper(pgs[g], files[r])
            ids = pgs[g].get("params") if isinstance(pgs[g], dict) else None
            if not isinstance(ids, list) or len(ids) != 1:
                raise CheckpointError(f"{files[r]}: param group {g} of the base optimizer holds "
                                      f"{ids!r}, not the one flat partition ZeRO gives it")
            fp32 = _flat(st["single_partition_of_fp32_groups"][g],
                         f"{files[r]}: single_partition_of_fp32_groups[{g}]")
            entry = (base.get("state") or {}).get(ids[0], {})
            if not isinstance(entry, dict):
                raise CheckpointError(f"{files[r]}: base optimizer state {ids[0]} is not a dict")
            sc, flat = _split_entries(entry, f"{files[r]}: base optimizer state[{ids[0]}]")
            if r == 0:
                scalars, order = sc, list(entry)
                for k in flat:
                    pieces[k] = []
            elif set(flat) != set(pieces) - {"fp32"}:
                raise CheckpointError(f"{files[r]}: group {g} has state entries {sorted(flat)}, "
                                      f"rank 0's {sorted(set(pieces) - {'fp32'})}")
            else:
                _same_scalars(scalars, sc, files, r, f"group {g}")
            pieces["fp32"].append(fp32)
            for k in flat:  # saved with the group's padding; the fp32 partition without it
                v = entry[k]
                if v.numel() < fp32.numel():
                    raise CheckpointError(f"{files[r]}: {k} of group {g} has {v.numel()} "
                                          f"elements, its fp32 partition {fp32.numel()}")
                pieces[k].append(v[:fp32.numel()])
        pads = states[0].get("param_alignment_paddings")
        pads_g = pads[g] if isinstance(pads, list) and g < len(pads) else None
        if pads_g is not None and (not isinstance(pads_g, list) or len(pads_g) != len(shapes)
                                   or not all(type(x) is int and x >= 0 for x in pads_g)):
            raise CheckpointError(f"{files[0]}: param_alignment_paddings[{g}] does not list one "
                                  f"padding (a count) per param ({len(shapes)})")
        offset = 0
        total = sum(v.numel() for v in pieces["fp32"])
        placed: list[tuple[str, int, int]] = []  # name, offset in the group, numel
        for i, (name, shape) in enumerate(shapes):
            n = _numel(shape)
            if offset + n > total:
                raise CheckpointError(f"param_shapes[{g}] needs more elements than the "
                                      f"{world} rank file(s) hold for group {g} ({total}): "
                                      "files of another run mixed in, or a layout optstate "
                                      "does not know")
            params.append(_param(name, shape, len(groups_out), scalars,
                                 {k: _segments(v, offset, n) for k, v in pieces.items()}, order,
                                 {k: v[0].dtype for k, v in pieces.items()}))
            placed.append((name, offset, n))
            offset += n + (pads_g[i] if pads_g is not None else 0)
        # Files without param_alignment_paddings (older DeepSpeed versions) may keep up to
        # 2 * world_size elements of alignment padding at the group's end: zero_to_fp32
        # accepts both counts rounded up to that alignment, and so does this
        align = 2 * world if pads_g is None else 1
        if -(-offset // align) != -(-total // align):
            raise CheckpointError(f"group {g}: param_shapes account for {offset} elements, the "
                                  f"rank files hold {total}; a layout optstate does not know")
        _check_slices(states, g, placed, [v.numel() for v in pieces["fp32"]], files)
        groups_out.append(hyper or {})
    return params, groups_out


def _address(v: Any) -> tuple[Any, Any]:
    """A ``fragment_address``'s (numel, start): an ``io.inert`` stand-in, or DeepSpeed's own
    namedtuple when loaded with unsafe=True."""
    get = getattr(v, "get", None)
    if callable(get):
        return get("numel"), get("start")
    return getattr(v, "numel", None), getattr(v, "start", None)


def _check_slices(states: list[dict[str, Any]], g: int, placed: list[tuple[str, int, int]],
                  sizes: list[int], files: list[str]) -> None:
    """Each ZeRO 1/2 rank file names what its partition holds (``param_slice_mappings``:
    per group, param name -> where in the partition its piece starts and how long it is).
    Those must be the pieces param_shapes puts in that rank's partition: a file that is
    another rank's (or another run's) is refused, never read as this rank's. Files without
    the mappings (older DeepSpeed) are not checked this way."""
    start = 0
    for r, st in enumerate(states):
        maps = st.get("param_slice_mappings")
        end = start + sizes[r]
        if isinstance(maps, list) and g < len(maps) and isinstance(maps[g], dict):
            want = {name: (min(o + n, end) - max(o, start), max(o, start) - start)
                    for name, o, n in placed if max(o, start) < min(o + n, end)}
            have = {str(k): _address(v) for k, v in maps[g].items()}
            if have != want:
                names = ", ".join(list(have)[:3]) + (" ..." if len(have) > 3 else "")
                raise CheckpointError(
                    f"{files[r]} does not hold rank {r}'s partition of group {g}: its "
                    f"param_slice_mappings name {names or 'nothing'}, param_shapes put "
                    f"{', '.join(list(want)[:3]) or 'nothing'}{' ...' if len(want) > 3 else ''} "
                    "there (another rank's or another run's file?)")
        start = end


def _zero3(world: int, states: list[dict[str, Any]], param_shapes: list[Any],
           files: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:

    n_sub = len(param_shapes)
    inner0 = states[0].get("optimizer_state_dict")
    if not isinstance(inner0, dict) or not isinstance(inner0.get("param_groups"), list):
        raise CheckpointError(f"{files[0]}: no base optimizer state_dict (optimizer_state_dict)")
    # sub-group j is the base optimizer's param j (DeepSpeed appends each sub-group's flat
    # partition to its group in order); which group holds it comes from its params lists
    group_of: dict[int, int] = {}
    groups_out = []
    for g, pg in enumerate(inner0["param_groups"]):
        groups_out.append(_hyper(pg, files[0]))
        for j in (pg.get("params") or []):
            group_of[j] = g
    if set(group_of) != set(range(n_sub)) or any(type(j) is not int for j in group_of):
        raise CheckpointError(f"{files[0]}: the base optimizer's params "
                              f"({str(list(group_of))[:60]}) are not the {n_sub} sub-groups "
                              "param_shapes lists")
    params: list[dict[str, Any]] = []
    for j in range(n_sub):
        shapes = _shapes(param_shapes[j], f"param_shapes[{j}]")
        vectors: list[dict[str, Any]] = []  # per rank: fp32 and flat entries
        scalars: dict[str, Any] = {}
        order: list[Any] = []
        for r, st in enumerate(states):
            flat_groups = st.get("fp32_flat_groups")
            inner = st.get("optimizer_state_dict")
            if (not isinstance(flat_groups, list) or len(flat_groups) != n_sub
                    or not isinstance(inner, dict)):
                raise CheckpointError(f"{files[r]}: expected {n_sub} flat fp32 partitions "
                                      "(fp32_flat_groups), as param_shapes lists")
            fp32 = _flat(flat_groups[j], f"{files[r]}: fp32_flat_groups[{j}]")
            entry = (inner.get("state") or {}).get(j, {})
            if not isinstance(entry, dict):
                raise CheckpointError(f"{files[r]}: base optimizer state {j} is not a dict")
            sc, flat = _split_entries(entry, f"{files[r]}: base optimizer state[{j}]")
            if r == 0:
                scalars, order = sc, list(entry)
            else:
                _same_scalars(scalars, sc, files, r, f"sub-group {j}")
            vec = {"fp32": fp32}
            for k in flat:
                if entry[k].numel() != fp32.numel():
                    raise CheckpointError(f"{files[r]}: {k} of sub-group {j} has "
                                          f"{entry[k].numel()} elements, its fp32 partition "
                                          f"{fp32.numel()}")
                vec[k] = entry[k]
            if vectors and set(vec) != set(vectors[0]):
                raise CheckpointError(f"{files[r]}: sub-group {j} has state entries "
                                      f"{sorted(vec)}, rank 0's {sorted(vectors[0])}")
            vectors.append(vec)
        offset = 0
        stored = vectors[0]["fp32"].numel()
        for name, shape in shapes:
            n = _numel(shape)
            part = -(-n // world)
            if offset + part > stored:
                raise CheckpointError(f"param_shapes[{j}] needs more elements than each rank "
                                      f"file holds for sub-group {j} ({stored}): files of "
                                      "another run mixed in, or a layout optstate does not know")
            whole = {k: [(vec[k], offset, part) for vec in vectors] for k in vectors[0]}
            params.append(_param(name, shape, group_of[j], scalars, whole, order,
                                 {k: v.dtype for k, v in vectors[0].items()}))
            offset += part
        if offset != stored:
            raise CheckpointError(f"sub-group {j}: param_shapes account for {offset} elements "
                                  f"per rank, the rank files hold {stored}; a layout optstate "
                                  "does not know")
    return params, groups_out


def _same_scalars(first: dict[str, Any], other: dict[str, Any], files: list[str], r: int,
                  where: str) -> None:
    """Every rank stepped the same: a rank whose ``step`` (or other 0-d entry) differs
    from rank 0's was saved at another time; its numbers are not put beside rank 0's."""
    import torch

    for k, v in first.items():
        w = other.get(k)
        same = (torch.equal(v, w) if isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor)
                else type(v) is type(w) and v == w)
        if not same:
            raise CheckpointError(f"{files[r]}: {k} of {where} is {_brief(w)}, rank 0's "
                                  f"{_brief(v)}: rank files of different steps mixed")


def _brief(v: Any) -> str:
    import torch

    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return repr(v.item())
    return repr(v)[:40]


# (tensor, start, length): one piece of a param in one rank's flat vector
Segment = tuple[Any, int, int]


def _segments(vectors: list[Any], offset: int, n: int) -> list[Segment]:
    """Where elements ``offset .. offset + n`` of the ranks' vectors, one after the other,
    lie (ZeRO 1/2: a param may span two ranks' partitions)."""
    out: list[Segment] = []
    start = 0
    for v in vectors:
        end = start + v.numel()
        lo, hi = max(offset, start), min(offset + n, end)
        if lo < hi:
            out.append((v, lo - start, hi - lo))
        start = end
    return out


def _lazy(segments: list[Segment], shape: tuple[int, ...], entry: str, dtype: Any) -> Any:
    """The param's tensor: its pieces joined, cut to its size (ZeRO 3 pads the last
    rank's piece) and shaped; a fresh tensor, never a view of a whole rank file."""
    from optstate.io.lazy import LazyTensor

    n = _numel(shape)

    def load() -> Any:
        import torch

        if not segments:  # a param with no elements
            return torch.empty(shape, dtype=dtype)
        parts = [v.narrow(0, s, ln) for v, s, ln in segments]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        return flat[:n].clone().reshape(shape)

    return LazyTensor(shape, dtype, load, info={"deepspeed": entry})


def _param(name: str, shape: tuple[int, ...], group: int, scalars: dict[str, Any],
           flat: dict[str, list[Segment]], order: list[Any],
           dtypes: dict[str, Any]) -> dict[str, Any]:
    """One param: its flat entries as lazy tensors shaped like it, its 0-d entries copied
    (torch.optim keeps one ``step`` per param)."""
    import torch

    state: dict[str, Any] = {}
    for k in order:  # the base optimizer's order (step, exp_avg, exp_avg_sq)
        if k in scalars:
            v = scalars[k]
            state[k] = v.clone() if isinstance(v, torch.Tensor) else v
        else:
            state[k] = _lazy(flat[k], shape, k, dtypes[k])
    return {"name": name, "shape": shape, "group": group, "state": state,
            "fp32": _lazy(flat["fp32"], shape, "fp32", dtypes["fp32"])}
