"""One leaf equality (optstate/numeric/leaves.py) for diff, set and convert."""

from __future__ import annotations

import argparse
import math

import torch

from optstate.numeric.leaves import same_leaf, same_tensor


def test_torch_value_types_compare_by_what_they_name():
    assert same_leaf(torch.float32, torch.float32)
    assert not same_leaf(torch.float32, torch.bfloat16)
    assert same_leaf(torch.device("cuda", 0), torch.device("cuda:0"))
    assert not same_leaf(torch.device("cpu"), torch.device("meta"))
    assert same_leaf([torch.float32, torch.bfloat16], [torch.float32, torch.bfloat16])
    assert not same_leaf([torch.float32], (torch.float32,))  # list vs tuple
    assert same_leaf(torch.strided, torch.strided)
    assert same_leaf(torch.Size([2, 3]), torch.Size([2, 3]))


def test_numbers_are_the_same_as_saved():
    assert same_leaf(math.nan, float("nan"))
    assert not same_leaf(0.0, -0.0)
    assert not same_leaf(1, 1.0) and not same_leaf(True, 1)
    assert same_leaf(complex(1, math.nan), complex(1, math.nan))
    assert same_leaf([1, None, "a", (2.5, math.inf)], [1, None, "a", (2.5, math.inf)])


def test_objects_compare_by_type_and_fields():
    class Plain:  # no __eq__: two loads of one object are still the same value
        def __init__(self, x):
            self.x = x

    class Slotted:
        __slots__ = ("x",)

        def __init__(self, x):
            self.x = x

    assert same_leaf(Plain(torch.ones(2)), Plain(torch.ones(2)))
    assert not same_leaf(Plain(1), Plain(2))
    assert same_leaf(Slotted(math.nan), Slotted(math.nan))
    assert not same_leaf(Plain(1), Slotted(1))
    assert same_leaf(argparse.Namespace(lr=0.1), argparse.Namespace(lr=0.1))


def test_tensors_bit_for_bit():
    a = torch.tensor([0.0, 1.0, math.nan])
    assert same_leaf(a, a.clone())
    assert not same_leaf(a, torch.tensor([-0.0, 1.0, math.nan]))
    assert not same_leaf(a, a.tolist())
    t = torch.zeros(3, 2).t()
    assert not same_tensor(torch.zeros(2, 3), t)  # strides differ
    assert same_tensor(torch.zeros(2, 3), t, strides=False)
    assert same_tensor(torch.empty(0, 3), torch.empty(0, 3))
    assert same_tensor(torch.tensor(math.nan, dtype=torch.bfloat16),
                       torch.tensor(math.nan, dtype=torch.bfloat16))
    assert same_tensor(torch.tensor([1 + 2j]), torch.tensor([1 + 2j]))


def _reloaded(t):
    import io

    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_sparse_tensors_bit_for_bit():
    """torch.equal has no sparse kernel: same_tensor raised NotImplementedError, so set on
    a checkpoint holding a sparse state entry ended in 'internal error'."""
    dense = torch.tensor([[float("nan"), 0.0], [0.0, -0.0], [2.5, 0.0]])
    uncoalesced = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1], [1, 1, 0]]),
                                          torch.tensor([1.0, 2.0, 3.0]), (3, 2))
    for t in (dense.to_sparse(), uncoalesced, dense.to_sparse_csr(), dense.to_sparse_csc(),
              dense.to_sparse_bsr((1, 1))):
        assert same_tensor(t, _reloaded(t)) and same_leaf(t, _reloaded(t))
        assert same_leaf({"sp": [t]}, {"sp": [_reloaded(t)]})
    a = dense.to_sparse()
    changed = torch.sparse_coo_tensor(a._indices(), a._values().clone().index_fill_(0,
                                      torch.tensor([1]), 3.5), a.shape)
    assert not same_tensor(a, changed)
    assert not same_tensor(a, a.to_dense().to_sparse_csr())  # another layout
    assert not same_tensor(uncoalesced, uncoalesced.coalesce())  # other stored entries


def test_set_on_a_checkpoint_with_a_sparse_state_entry(cli, tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3, 2)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["rows"] = torch.randn(3, 2).to_sparse()
    src, out = tmp_path / "sparse.pt", tmp_path / "out.pt"
    torch.save(sd, src)
    r = cli("set", src, "-o", out, "--lr", "0.5")
    assert r.exit_code == 0, r.stderr
    back = torch.load(out, weights_only=True)
    assert back["param_groups"][0]["lr"] == 0.5
    assert same_tensor(back["state"][0]["rows"], sd["state"][0]["rows"])
