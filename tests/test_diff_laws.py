"""Laws of diff, checked by hypothesis on states of real torch optimizers:
diff(a, a) is empty, and diff(b, a) reports the same paths as diff(a, b), sides swapped."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optstate.analysis.diff import Change, DiffOptions, diff_states

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


# --------------------------------------------------------------------------- any readable X
# diff X X finds nothing for every state torch.load(weights_only=True) returns, whatever
# its leaves: dtypes, devices, lists of dtypes (timm's AdafactorBigVision, Kron), NaN,
# complex numbers, empty and 0-d tensors.

_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
           torch.int8, torch.bool, torch.complex64]
_leaf_atoms = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**63, 2**63 - 1),
    st.booleans(), st.none(), st.text(max_size=4),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.sampled_from(_DTYPES),
    st.sampled_from([torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")]),
    st.sampled_from([torch.strided, torch.sparse_coo]),
)
_leaves = st.recursive(_leaf_atoms, lambda inner: st.lists(inner, max_size=3)
                       | st.lists(inner, max_size=3).map(tuple), max_leaves=6)


@st.composite
def _tensors(draw):  # noqa: ANN001, ANN202
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.sampled_from([(), (0,), (3,), (2, 2), (0, 3)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=g).bool()
    elif dtype in (torch.int64, torch.int8):
        t = torch.randint(-100, 100, shape, generator=g).to(dtype)
    else:
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        if t.numel() and draw(st.booleans()):
            t.view(-1)[0] = math.nan
    return t


@st.composite
def _states(draw):  # noqa: ANN001, ANN202
    n_groups = draw(st.integers(1, 2))
    groups, state, i = [], {}, 0
    for _ in range(n_groups):
        n = draw(st.integers(0, 2))
        names = st.text(min_size=1, max_size=8).filter(lambda k: k != "params")
        hyper = draw(st.dictionaries(names, _leaves, max_size=4))
        groups.append({**hyper, "params": list(range(i, i + n))})
        for p in range(i, i + n):
            state[p] = draw(st.dictionaries(st.text(min_size=1, max_size=8),
                                            _tensors() | _leaves, max_size=3))
        i += n
    return {"state": state, "param_groups": groups}


def _reload(obj, tmp_path):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    return path, torch.load(path, weights_only=True), torch.load(path, weights_only=True)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sd=_states())
def test_diff_of_any_readable_state_with_itself_is_empty(sd, tmp_path, cli):
    path, a, b = _reload(sd, tmp_path)
    assert diff_states(a, a).changes == []
    assert diff_states(a, b).changes == []
    assert diff_states(sd, a).changes == []
    r = cli("diff", path, path, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["counts"]["differences"] == 0


def test_list_of_dtypes_like_timm_and_kron(tmp_path, cli):
    """A real AdamW state with what timm's AdafactorBigVision / pytorch-optimizer's Kron
    keep beside it: dtypes in the groups (one a list) and a device."""
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0].update(momentum_dtype=torch.bfloat16,
                                 precond_dtypes=[torch.float32, torch.bfloat16],
                                 device=torch.device("cpu"))
    sd["state"][0]["dtypes"] = [torch.float32, torch.float32]
    path = tmp_path / "kron.pt"
    torch.save(sd, path)
    r = cli("diff", path, path)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "no differences" in r.stdout
    # a real difference in such a value is a changed value, not a change of type
    sd["param_groups"][0]["precond_dtypes"] = [torch.float32, torch.float16]
    other = tmp_path / "other.pt"
    torch.save(sd, other)
    r = cli("diff", path, other, "--json")
    assert r.exit_code == 1
    changes = json.loads(r.stdout)["changes"]
    assert [(c["path"], c["kind"], c["before"], c["after"]) for c in changes] == [
        ("param_groups[0].precond_dtypes[1]", "changed", "torch.bfloat16", "torch.float16")]
