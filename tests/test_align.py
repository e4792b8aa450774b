"""state.align: naming optimizer slots from order and shape (issue #18).

Hand-made cases, a property test against a brute-force enumerator of every in-order
assignment, and real torch models whose named_parameters() is the truth.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from optstate.state.align import Alignment, Candidate, align_by_shape, align_ordered
from optstate.state.names import slot_shape


def C(name, *shape, aliases=()):
    return Candidate(name, tuple(shape), tuple(aliases))


def names(found: Alignment):
    return [[c.name if c is not None else None for c in group] for group in found.slots]


def option_names(found: Alignment):
    return {key: [c.name for c in fits] for key, fits in found.options.items()}


# --- hand-made: ordered ---

def test_identity_names_every_slot():
    cands = [C("a", 3, 4), C("b", 4), C("c", 3, 4), C("d", 4)]
    found = align_ordered([[(3, 4), (4,), (3, 4), (4,)]], cands)
    assert names(found) == [["a", "b", "c", "d"]]
    assert found.options == {} and found.reason is None


def test_a_skipped_buffer_is_stepped_over():
    cands = [C("conv.weight", 8, 3), C("bn.running_mean", 5), C("fc.weight", 5, 8), C("fc.bias", 5)]
    found = align_ordered([[(8, 3), (5, 8), (5,)]], cands)
    assert names(found) == [["conv.weight", "fc.weight", "fc.bias"]]
    assert found.reason is None


def test_a_skip_that_could_be_either_of_two_same_shaped_tensors_names_neither():
    cands = [C("a", 5), C("b", 5), C("c", 2)]
    found = align_ordered([[(5,), (2,)]], cands)
    assert names(found) == [[None, "c"]]
    assert option_names(found) == {(0, 0): ["a", "b"]}
    assert "1 param fits more than one same-shaped model tensor" in found.reason
    assert "param 0 could be 'a' or 'b'" in found.reason
    assert "group" not in found.reason  # one group: no "which group takes which"


def test_a_tied_alias_is_passed_through():
    emb = C("emb.weight", 10, 4, aliases=("lm_head.weight",))
    found = align_ordered([[(10, 4), (4,)]], [emb, C("norm.weight", 4)])
    assert found.slots[0][0] is emb
    assert found.slots[0][0].aliases == ("lm_head.weight",)


def test_two_groups_interleaved_are_told_apart_by_shape():
    cands = [C("l1.weight", 4, 3), C("l1.bias", 4), C("l2.weight", 2, 4), C("l2.bias", 2)]
    found = align_ordered([[(4, 3), (2, 4)], [(4,), (2,)]], cands)
    assert names(found) == [["l1.weight", "l2.weight"], ["l1.bias", "l2.bias"]]
    assert found.reason is None


def test_two_groups_whose_same_shaped_slots_could_swap_name_neither():
    cands = [C("a", 3), C("b", 3), C("w", 2, 2)]
    found = align_ordered([[(3,), (2, 2)], [(3,)]], cands)
    assert names(found) == [[None, "w"], [None]]
    assert option_names(found) == {(0, 0): ["a", "b"], (1, 0): ["a", "b"]}
    assert "2 params" in found.reason and "which group takes which" in found.reason


def test_a_slot_without_state_fits_any_tensor_but_only_where_order_allows():
    cands = [C("a", 3), C("b", 7), C("c", 3)]
    found = align_ordered([[(3,), None, (3,)]], cands)
    assert names(found) == [["a", "b", "c"]]
    found = align_ordered([[(3,), None]], cands)
    assert names(found) == [["a", None]]
    assert option_names(found) == {(0, 1): ["b", "c"]}
    assert "1 of them holds no state, so the shape is unknown" in found.reason


def test_no_alignment_names_nothing_and_says_which_param_stops_it():
    cands = [C("a", 3), C("b", 4)]
    found = align_ordered([[(4,), (3,)]], cands)
    assert names(found) == [[None, None]]
    assert found.options == {(0, 0): [], (0, 1): []}
    assert found.reason == ("the optimizer's shapes do not line up with the model's in order: "
                            "param 1 (shape 3) has no model tensor of that shape left after 'b'")


def test_no_alignment_across_groups_says_which_shape_is_short():
    found = align_ordered([[(3,)], [(3,)]], [C("a", 3), C("b", 2)])
    assert names(found) == [[None], [None]]
    assert found.reason == ("the optimizer's shapes do not line up with the model's in order: "
                            "it has 2 params of shape 3 and the model 1")


def test_per_group_lists_keep_each_group_to_its_own_tensors():
    decay = [C("l1.weight", 4, 4), C("l2.weight", 4, 4)]
    no_decay = [C("l1.bias", 4), C("norm.weight", 4), C("l2.bias", 4)]
    found = align_ordered([[(4, 4), (4, 4)], [(4,), (4,), (4,)]], [decay, no_decay])
    assert names(found) == [["l1.weight", "l2.weight"], ["l1.bias", "norm.weight", "l2.bias"]]
    # one fewer no-decay slot: which of three it skipped is unknown, except at the ends
    found = align_ordered([[(4, 4), (4, 4)], [(4,), (4,)]], [decay, no_decay])
    assert names(found)[0] == ["l1.weight", "l2.weight"]
    assert names(found)[1] == [None, None]
    assert option_names(found) == {(1, 0): ["l1.bias", "norm.weight"],
                                   (1, 1): ["norm.weight", "l2.bias"]}


def test_overlapping_per_group_lists_cannot_both_take_one_tensor():
    found = align_ordered([[(3,)], [(3,)]], [[C("a", 3), C("b", 3)], [C("b", 3)]])
    assert names(found) == [["a"], ["b"]]


def test_per_group_lists_in_conflicting_orders_fall_back_to_shapes():
    found = align_ordered([[(3,), (2,)], [(3,), (2,)]],
                          [[C("a", 3), C("b", 2)], [C("b", 2), C("a", 3)]])
    assert found.reason.startswith("the groups' lists of model tensors are in different orders")


def test_a_search_over_max_states_falls_back_to_unique_shapes():
    cands = [C(f"w{i}", 3) for i in range(6)] + [C("head", 9)]
    found = align_ordered([[(3,)] * 2 + [(9,)], [(3,)] * 2], cands, max_states=10)
    assert names(found) == [[None, None, "head"], [None, None]]
    assert found.reason == ("the model has too many same-shaped tensors to align in order, so "
                            "only params with a unique shape are named (4 params left unnamed)")
    assert align_ordered([[(3,)] * 2 + [(9,)], [(3,)] * 2], cands).reason.startswith(
        "4 params fit more than one")
    # names from the fallback rest on shapes alone: the caller must not say "by order"
    assert found.by_order is False
    assert align_ordered([[(3,)] * 2 + [(9,)], [(3,)] * 2], cands).by_order is True


def trainer_style(dims, frozen):
    """Per layer weight and proj (decay), bias and norm (no decay); frozen layers skipped."""
    cands, decay, no_decay = [], ([], []), ([], [])
    for layer, d in enumerate(dims):
        cands += [C(f"l{layer}.weight", d, d), C(f"l{layer}.bias", d),
                  C(f"l{layer}.proj", d, 2 * d), C(f"l{layer}.norm", d)]
        if layer not in frozen:
            decay[0].extend([(d, d), (d, 2 * d)])
            decay[1].extend([f"l{layer}.weight", f"l{layer}.proj"])
            no_decay[0].extend([(d,), (d,)])
            no_decay[1].extend([f"l{layer}.bias", f"l{layer}.norm"])
    return cands, [decay[0], no_decay[0]], [decay[1], no_decay[1]]


def test_two_interleaved_groups_of_200_align_within_the_default_state_limit():
    # the layers' widths cycle, so the shapes say which three layers are frozen
    cands, slots, truth = trainer_style([8 + layer % 3 for layer in range(100)], (3, 50, 97))
    found = align_ordered(slots, cands)
    assert names(found) == truth and found.reason is None
    # equal widths: which layers are frozen is unknown, yet the search stays in order
    cands, slots, truth = trainer_style([8] * 100, (3, 50, 97))
    found = align_ordered(slots, cands)
    assert found.reason.startswith("388 params fit more than one same-shaped model tensor")
    for g, group in enumerate(truth):
        for i, name in enumerate(group):
            assert name in [c.name for c in found.options[(g, i)]]


# --- hand-made: by shape ---

def test_by_shape_names_unique_shapes_only():
    cands = [C("a.weight", 3, 3), C("b.weight", 3, 3), C("head.weight", 9, 3), C("head.bias", 9)]
    found = align_by_shape([[(9, 3), (3, 3)], [(9,), (3, 3), None]], cands)
    assert names(found) == [["head.weight", None], ["head.bias", None, None]]
    assert option_names(found)[(0, 1)] == ["a.weight", "b.weight"]
    assert len(found.options[(1, 2)]) == 4
    assert found.reason == ("2 params share a shape with other tensors of the model and the "
                            "model gives no order; 1 param holds no state, so the shape is "
                            "unknown")


def test_by_shape_with_one_slot_and_two_tensors_of_a_shape_names_nothing():
    found = align_by_shape([[(3,)]], [C("a", 3), C("b", 3)])
    assert names(found) == [[None]]


def test_by_shape_per_group_and_a_shape_no_tensor_has():
    found = align_by_shape([[(3,)], [(3,), (5,)]], [[C("a", 3)], [C("b", 3)]])
    assert names(found) == [["a"], ["b", None]]
    assert found.options == {(1, 1): []}
    assert found.reason == "1 param has a shape no model tensor has"


def test_by_shape_per_group_lists_pinning_one_tensor_twice_name_neither():
    found = align_by_shape([[(3,)], [(3,)]], [[C("a", 3)], [C("a", 3)]])
    assert names(found) == [[None], [None]]


# --- property: against every in-order assignment ---

SHAPES = [(2,), (3,), (2, 2)]


def brute_force(slots, lists):
    """Every assignment: each group an increasing choice from its list, disjoint names."""
    per_group = []
    for group, lst in zip(slots, lists, strict=True):
        choices = [combo for combo in itertools.combinations(range(len(lst)), len(group))
                   if all(s is None or s == lst[j].shape
                          for s, j in zip(group, combo, strict=True))]
        per_group.append([[lst[j].name for j in combo] for combo in choices])
    seen = {}
    for pick in itertools.product(*per_group):
        flat = [n for group in pick for n in group]
        if len(set(flat)) != len(flat):
            continue
        for g, group in enumerate(pick):
            for i, name in enumerate(group):
                seen.setdefault((g, i), set()).add(name)
    return seen


@st.composite
def instances(draw):
    base = [Candidate(f"t{j}", draw(st.sampled_from(SHAPES)))
            for j in range(draw(st.integers(0, 6)))]
    k = draw(st.integers(1, 2))
    slots = [draw(st.lists(st.sampled_from([*SHAPES, None]), max_size=3)) for _ in range(k)]
    if draw(st.booleans()):
        return slots, base, [base] * k
    lists = [[c for c in base if draw(st.booleans())] for _ in range(k)]
    return slots, lists, lists


_T0, _T1, _T2 = Candidate("t0", (3,)), Candidate("t1", (3,)), Candidate("t2", (2,))


@settings(max_examples=400, deadline=None)
@given(instances())
@example(([[(3,)], [(3,)]], [[_T0, _T1], [_T1]], [[_T0, _T1], [_T1]]))  # lists overlap
@example(([[(3,), None], [(3,)]], [_T0, _T2, _T1], [[_T0, _T2, _T1]] * 2))  # shared, may swap
def test_ordered_agrees_with_brute_force(instance):
    slots, candidates, lists = instance
    found = align_ordered(slots, candidates)
    truth = brute_force(slots, lists)
    for g, group in enumerate(slots):
        for i in range(len(group)):
            possible = truth.get((g, i), set())
            got = found.slots[g][i]
            if len(possible) == 1:
                assert got is not None and got.name == next(iter(possible)), (g, i)
            else:
                assert got is None, (g, i)
                assert {c.name for c in found.options[(g, i)]} == possible, (g, i)
    assert (found.reason is None) == all(c is not None for group in found.slots for c in group)


# --- real torch models: named_parameters() is the truth ---

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.head = nn.Linear(10, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.relu(self.fc(x.mean(dim=(2, 3)))))


class TwinHeadCNN(SmallCNN):
    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(10, 10)  # registered last: a twin of head, after it in order

    def forward(self, x):
        return self.fc2(super().forward(x))


def trained(model, groups, steps=2):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        opt.step()
    return opt.state_dict()


def slots_of(sd):
    return [[slot_shape(sd["state"].get(p, {})) for p in group["params"]]
            for group in sd["param_groups"]]


def model_candidates(model):
    return [Candidate(n, tuple(t.shape)) for n, t in model.state_dict().items()
            if not n.endswith(BUFFERS)]


def test_a_real_cnn_with_batchnorm_and_two_groups_is_named_as_torch_names_it():
    torch.manual_seed(0)
    model = SmallCNN()
    named = list(model.named_parameters())
    decay = [n for n, p in named if p.ndim > 1]
    no_decay = [n for n, p in named if p.ndim <= 1]
    params = dict(named)
    sd = trained(model, [{"params": [params[n] for n in decay], "weight_decay": 0.01},
                         {"params": [params[n] for n in no_decay], "weight_decay": 0.0}])
    found = align_ordered(slots_of(sd), model_candidates(model))
    assert names(found) == [decay, no_decay]
    assert found.reason is None


def test_a_real_model_with_a_frozen_twin_layer_leaves_the_tie_unnamed():
    torch.manual_seed(0)
    model = TwinHeadCNN()
    for p in model.head.parameters():
        p.requires_grad_(False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    sd = trained(model, [p for p in model.parameters() if p.requires_grad])
    found = align_ordered(slots_of(sd), model_candidates(model))
    got, n = names(found)[0], len(trainable)
    # before fc.bias all is named; then the frozen head and its twin fc2 cannot be told
    # apart: fc.bias could even be head.bias if fc2 took the last two slots
    assert got[:-3] == trainable[:-3] and trainable[-3:] == ["fc.bias", "fc2.weight", "fc2.bias"]
    assert got[-3:] == [None, None, None]
    assert option_names(found) == {(0, n - 3): ["fc.bias", "head.bias"],
                                   (0, n - 2): ["head.weight", "fc2.weight"],
                                   (0, n - 1): ["head.bias", "fc2.bias"]}
    assert found.reason.startswith("3 params fit more than one same-shaped model tensor")


def test_a_real_param_without_state_is_placed_by_order():
    torch.manual_seed(0)
    model = SmallCNN()
    model.unused = nn.Linear(10, 3)  # no grad reaches it: AdamW keeps no state for it
    model.tail = nn.Linear(3, 3)
    sd = trained(model, model.parameters())
    shapes = slots_of(sd)
    assert shapes[0][-4:] == [None, None, None, None]  # unused.*, tail.*: no state
    found = align_ordered(shapes, model_candidates(model))
    assert names(found) == [[n for n, _ in model.named_parameters()]]


@pytest.mark.parametrize("aligner", [align_ordered, align_by_shape])
def test_empty_inputs(aligner):
    assert names(aligner([], [])) == []
    assert names(aligner([[]], [C("a", 1)])) == [[]]
