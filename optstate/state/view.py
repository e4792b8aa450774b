"""Read-only views over an optimizer ``state_dict``: groups, parameters, state entries.

``Optimizer.state_dict()`` keys per-parameter state by position (0..n-1, in group
order) since torch 1.6; older torch keyed it by ``id(param)``. Both are exposed by
position here, which is also how ``load_state_dict`` matches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.state.packed import unpack_state

# Keys of a param group that are bookkeeping, not hyperparameters.
GROUP_META_KEYS = ("params", "param_names")


@dataclass
class GroupView:
    index: int
    hyperparams: dict[str, Any]
    param_keys: list[Any]  # the keys used in state_dict["state"] (positions or legacy ids)
    names: list[str] | None


@dataclass
class ParamView:
    position: int  # 0..n-1 in group order: how load_state_dict matches params
    key: Any  # the key in state_dict["state"] (== position unless legacy ids)
    group: int
    name: str | None
    state: dict[str, Any]  # empty when the param has no state yet
    # Where ``name`` came from (``names.NAME_SOURCES``); None while the param is unnamed.
    name_source: str | None = None
    aliases: tuple[str, ...] = ()  # other names of the same (tied) parameter
    # The parameter's shape in the model it was named from (names.name_params), when known.
    model_shape: tuple[int, ...] | None = None
    # The state as stored, when ``state`` had to be unpacked from it (8-bit, DTensor,
    # nested: ``packed.unpack_state``), and how each unpacked entry is stored.
    raw_state: dict[str, Any] | None = None
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class OptimizerStateView:
    raw: dict[str, Any]
    groups: list[GroupView]
    params: list[ParamView]
    orphan_keys: list[Any] = field(default_factory=list)  # state keys in no group
    legacy_ids: bool = False  # keyed by id(param), torch < 1.6
    naming: Any = None  # names.Naming once names.name_params has run

    @classmethod
    def from_state_dict(cls, sd: Any,
                        extra: dict[tuple[int, int], dict[str, Any]] | None = None,
                        ) -> OptimizerStateView:
        """Validate the basic shape of ``sd`` and build the views. ``extra``: a wrapper's
        per-param entries by (group, index in group) (``locate.wrapper_entries``: Lookahead's
        ``lookahead_state.slow_params``), joined to each param's entries, stored as
        ``{"format": "wrapper", "from": [place in the file]}``."""
        if not isinstance(sd, dict) or "param_groups" not in sd or "state" not in sd:
            raise CheckpointError("malformed optimizer state: it needs 'state' and 'param_groups'")
        raw_groups, raw_state = sd["param_groups"], sd["state"]
        if not isinstance(raw_groups, list) or not isinstance(raw_state, dict):
            raise CheckpointError(
                "malformed optimizer state: 'param_groups' must be a list and 'state' a dict"
            )
        groups: list[GroupView] = []
        params: list[ParamView] = []
        all_keys: list[Any] = []
        for gi, g in enumerate(raw_groups):
            if not isinstance(g, dict) or not isinstance(g.get("params"), list):
                raise CheckpointError(
                    f"malformed optimizer state: param_groups[{gi}] has no 'params' list"
                )
            names = g.get("param_names")
            if not (isinstance(names, list) and len(names) == len(g["params"])
                    and all(isinstance(n, str) for n in names)):
                names = None
            hyper = {k: v for k, v in g.items() if k not in GROUP_META_KEYS}
            groups.append(GroupView(gi, hyper, list(g["params"]), names))
            for j, key in enumerate(g["params"]):
                pos = len(all_keys)
                all_keys.append(key)
                try:
                    st = raw_state.get(key, {})
                except TypeError:  # an unhashable key (a list): built by hand or damaged
                    raise CheckpointError(
                        f"malformed optimizer state: param_groups[{gi}]['params'][{j}] is a "
                        f"{type(key).__name__}, not a parameter id"
                    ) from None
                if not isinstance(st, dict):
                    raise CheckpointError(
                        f"malformed optimizer state: state[{key!r}] is a "
                        f"{type(st).__name__}, not a dict"
                    )
                # get_optimizer_state_dict (FSDP, DCP) keys state by parameter name.
                name = names[j] if names else (key if isinstance(key, str) else None)
                source = ("param_names" if names else "dcp") if name is not None else None
                entries, stored = unpack_state(st)
                if extra and isinstance(extra.get((gi, j)), dict):
                    entries, stored = dict(entries), dict(stored)
                    for entry, (where, value) in extra[(gi, j)].items():
                        entries[entry] = value
                        stored[entry] = {"format": "wrapper", "from": [where]}
                params.append(ParamView(pos, key, gi, name, entries, source,
                                        raw_state=st if stored else None, stored=stored))
        known = set()
        for k in all_keys:
            try:
                known.add(k)
            except TypeError:
                raise CheckpointError(
                    f"malformed optimizer state: parameter key {k!r} is not hashable"
                ) from None
        orphans = [k for k in raw_state if k not in known]
        legacy = bool(all_keys) and all_keys != list(range(len(all_keys))) and all(
            isinstance(k, int) and k > 2**16 for k in all_keys
        )
        return cls(sd, groups, params, orphans, legacy)

    @property
    def n_params(self) -> int:
        return len(self.params)

    def hyperparameter_names(self) -> list[str]:
        """Every hyperparameter name across groups, in first-seen order."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for k in g.hyperparams:
                seen.setdefault(k, None)
        return list(seen)


# State entries that have the parameter's own shape (torch.optim, transformers,
# bitsandbytes' 8-bit states), in order of preference.
FULL_SIZE_ENTRIES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
                     "square_avg", "sum", "acc_delta", "exp_inf", "ax", "prev", "step_size",
                     "grad_avg", "variance", "state1", "state2", "momentum")


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype"):
        return None
    return tuple(int(n) for n in shape)


def slot_shape(state: dict[str, Any],
               stored: dict[str, dict[str, Any]] | None = None) -> tuple[int, ...] | None:
    """The param's shape as its state entries show it; None when they cannot tell.

    An entry known to be full-size (``exp_avg``, ``momentum_buffer``, ...) gives it; a
    factored second moment gives it from its two factors (torch's Adafactor ``row_var``
    (..., R, 1) and ``col_var`` (..., 1, C); transformers' ``exp_avg_sq_row`` (..., R) and
    ``exp_avg_sq_col`` (..., C)); else every tensor entry of one shape (0-d ones aside)
    gives that shape. An empty or scalar-only state gives None (it fits any tensor).
    ``stored`` (``ParamView.stored``): an entry that is a shard of a larger tensor (FSDP2's
    DTensor) counts with its global shape, one holding moments stacked on its first
    dimension (``stacked``: AdEMAMix8bit's ``state1``) with one moment's.
    """
    shapes = {str(k): s for k, v in state.items() if (s := _shape(v)) is not None}
    for k, d in (stored or {}).items():  # a shard (DTensor) stands for its global shape
        if k in shapes and isinstance(d.get("global_shape"), list):
            shapes[k] = tuple(int(n) for n in d["global_shape"])
        elif k in shapes and d.get("stacked"):  # k moments on dim 0 (AdEMAMix8bit's state1)
            shapes[k] = shapes[k][1:]
    for key in FULL_SIZE_ENTRIES:
        if key in shapes:
            return shapes[key]
    row, col = shapes.get("row_var"), shapes.get("col_var")
    if row and col and len(row) == len(col) >= 2:
        return row[:-1] + col[-1:]
    row, col = shapes.get("exp_avg_sq_row"), shapes.get("exp_avg_sq_col")
    if row and col and len(row) == len(col) >= 1:
        return row + col[-1:]
    distinct = {s for s in shapes.values() if len(s) > 0}
    return distinct.pop() if len(distinct) == 1 else None
