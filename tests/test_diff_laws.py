"""Laws of diff, checked by hypothesis on states of real torch optimizers:
diff(a, a) is empty, and diff(b, a) reports the same paths as diff(a, b), sides swapped."""

from __future__ import annotations

import copy
import math
from collections import Counter

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.diff import Change, DiffOptions, diff_states

OPTIMIZERS = {
    "SGD": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9),
    "Adam": lambda groups, lr: torch.optim.Adam(groups, lr=lr),
    "AdamW": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "RMSprop": lambda groups, lr: torch.optim.RMSprop(groups, lr=lr, centered=True),
    "Adagrad": lambda groups, lr: torch.optim.Adagrad(groups, lr=lr),
}

shapes = st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
                  min_size=1, max_size=3)
runs = st.fixed_dictionaries({
    "optimizer": st.sampled_from(sorted(OPTIMIZERS)),
    "groups": st.lists(shapes, min_size=1, max_size=2),
    "lrs": st.lists(st.sampled_from([0.1, 0.01, 0.5]), min_size=2, max_size=2),
    "steps": st.integers(0, 3),
    "seed": st.integers(0, 3),
    "nan_at": st.none() | st.integers(0, 5),
    "named": st.booleans(),  # param_names in the groups: params matched by name
    "reverse": st.booleans(),  # the first group lists its params in reverse order
})


def build_state(run: dict) -> dict:
    """A real optimizer, stepped on seeded gradients; optionally one NaN in its state."""
    g = torch.Generator().manual_seed(run["seed"])
    groups, created = [], []
    for gi, group_shapes in enumerate(run["groups"]):
        ps: list = [torch.randn(s, generator=g).requires_grad_(True) for s in group_shapes]
        created += ps
        if run["named"]:
            ps = [(f"g{gi}.p{i}", p) for i, p in enumerate(ps)]
        if run["reverse"] and gi == 0:
            ps.reverse()
        groups.append({"params": ps, "lr": run["lrs"][gi % 2]})
    opt = OPTIMIZERS[run["optimizer"]](groups, 0.1)
    for _ in range(run["steps"]):
        for p in created:  # creation order: the same gradients whatever the group order
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    tensors = [t for st_ in sd["state"].values() for t in st_.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]
    if run["nan_at"] is not None and tensors:
        tensors[run["nan_at"] % len(tensors)].view(-1)[0] = math.nan
    return sd


def mutated(run: dict, draw) -> dict:  # noqa: ANN001 - hypothesis draw
    """b: usually a's run with one thing changed, so a and b share most structure."""
    field = draw(st.sampled_from(["steps", "seed", "lrs", "groups", "optimizer", "nan_at",
                                  "named", "reverse", "same"]))
    if field == "same":
        return dict(run)
    return {**run, field: draw(runs)[field]}


pairs = st.data()
tolerances = st.fixed_dictionaries({
    "atol": st.sampled_from([0.0, 1e-6, 0.05, 1.0]),
    "nan_equal": st.booleans(),
})

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _key(c: Change) -> tuple:
    """A change without max_rel (relative to b by definition, so not symmetric)."""
    m = None if c.metrics is None else tuple(sorted(
        (k, v) for k, v in c.metrics.items() if k != "max_rel"))
    return (c.path, c.kind, repr(c.before), repr(c.after), m)


@SETTINGS
@given(run=runs, tol=tolerances)
def test_diff_of_a_state_with_itself_is_empty(run, tol):
    a = build_state(run)
    opts = DiffOptions(**tol)
    has_nan = any(bool(torch.isnan(t).any()) for st_ in a["state"].values()
                  for t in st_.values() if isinstance(t, torch.Tensor))
    if tol["nan_equal"] or not has_nan:
        assert diff_states(a, a, opts).changes == []
        assert diff_states(a, copy.deepcopy(a), opts).changes == []
    else:
        # with --nan-differs a NaN differs even from itself: only 'values' changes
        assert {c.kind for c in diff_states(a, a, opts).changes} <= {"values"}


@SETTINGS
@given(run=runs, tol=tolerances, data=pairs)
def test_diff_b_a_mirrors_diff_a_b(run, tol, data):
    a = build_state(run)
    b = build_state(mutated(run, data.draw))
    opts = DiffOptions(**tol)  # rtol = 0: isclose is symmetric
    ab = diff_states(a, b, opts)
    ba = diff_states(b, a, opts)
    assert sorted(ab.paths()) == sorted(ba.paths())
    assert Counter(_key(c.mirrored()) for c in ab.changes) == Counter(_key(c) for c in
                                                                      ba.changes)
    assert ab.equal == ba.equal
    assert len(ab.same) == len(ba.same)
