"""One leaf equality (optstate/leaves.py) for diff, set and convert."""

from __future__ import annotations

import argparse
import math

import torch

from optstate.leaves import same_leaf, same_tensor


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
