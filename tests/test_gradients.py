"""Synthetic gradient sources: the gradients they write and the losses they report."""

from __future__ import annotations

import pytest
import torch

from optstate.sim.gradients import SOURCES, accumulate, make_source


def _params():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(2, 2, generator=gen, requires_grad=True),
            torch.randn(4, generator=gen, requires_grad=True)]


def test_sources_are_the_documented_five():
    assert list(SOURCES) == ["constant", "normal", "quadratic", "rosenbrock", "none"]


def test_constant_is_value_everywhere():
    params = _params()
    grads = make_source("constant", 2.5).gradients(params, 0)
    assert [torch.equal(g, torch.full_like(p, 2.5)) for g, p in zip(grads, params,
                                                                    strict=True)] == [True] * 2
    assert make_source("constant", 2.5).loss(params) == pytest.approx(
        2.5 * float(sum(p.detach().sum() for p in params)), rel=1e-6)


def test_quadratic_is_w_minus_target_exactly():
    params = _params()
    grads = make_source("quadratic", 0.5).gradients(params, 0)
    for g, p in zip(grads, params, strict=True):
        assert torch.equal(g, p.detach() - 0.5)
    expected = sum(0.5 * float(((p.detach().double() - 0.5) ** 2).sum()) for p in params)
    assert make_source("quadratic", 0.5).loss(params) == pytest.approx(expected, rel=1e-6)


def test_rosenbrock_matches_the_textbook_gradient():
    x, y = -1.5, 2.0
    params = [torch.tensor([x, y], requires_grad=True)]
    (g,) = make_source("rosenbrock").gradients(params, 0)
    gx = -2 * (1 - x) - 400 * x * (y - x * x)
    gy = 200 * (y - x * x)
    assert g.tolist() == pytest.approx([gx, gy], rel=1e-6)
    assert make_source("rosenbrock").loss(params) == (1 - x) ** 2 + 100 * (y - x * x) ** 2
    assert make_source("rosenbrock").loss([torch.ones(2)]) == 0.0


def test_rosenbrock_pairs_consecutive_elements_across_params():
    a = torch.tensor([0.0], requires_grad=True)
    b = torch.tensor([0.0, 1.0, 1.0], requires_grad=True)
    # pairs (0, 0) and (1, 1): loss 1 + 0
    assert make_source("rosenbrock").loss([a, b]) == 1.0
    ga, gb = make_source("rosenbrock").gradients([a, b], 0)
    assert ga.tolist() == [-2.0] and gb.tolist() == [0.0, 0.0, 0.0]


def test_normal_is_seeded_per_step():
    params = _params()
    src = make_source("normal", seed=4)
    first = src.gradients(params, 3)
    again = make_source("normal", seed=4).gradients(params, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other_step = src.gradients(params, 4)
    assert not torch.equal(first[0], other_step[0])
    other_seed = make_source("normal", seed=5).gradients(params, 3)
    assert not torch.equal(first[0], other_seed[0])
    assert src.loss(params) is None


def test_none_gives_no_gradient():
    params = _params()
    assert make_source("none").gradients(params, 0) is None
    accumulate(params, None)
    assert all(p.grad is None for p in params)


def test_accumulate_follows_autograd():
    p = torch.zeros(3, requires_grad=True)
    accumulate([p], [torch.ones(3)])
    assert torch.equal(p.grad, torch.ones(3))
    accumulate([p], [torch.full((3,), 2.0)])
    assert torch.equal(p.grad, torch.full((3,), 3.0))
    # the same two gradients through autograd
    q = torch.zeros(3, requires_grad=True)
    q.sum().backward()
    (2 * q).sum().backward()
    assert torch.equal(q.grad, p.grad)


def test_accumulate_sparse():
    p = torch.zeros(2, 2, requires_grad=True)
    accumulate([p], [torch.ones(2, 2)], sparse=True)
    assert p.grad.is_sparse
    assert torch.equal(p.grad.to_dense(), torch.ones(2, 2))


def test_gradients_leave_no_graph_and_do_not_touch_grad():
    params = _params()
    grads = make_source("rosenbrock").gradients(params, 0)
    assert all(not g.requires_grad for g in grads)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("n_params", [1, 2])
def test_fill_grads_is_accumulate_of_gradients_bit_for_bit(name, n_params):
    # fill_grads (simulate's per-step path: loss() then backward() on the same forward)
    # leaves in .grad exactly what accumulate(gradients()) leaves, on empty and on
    # existing .grad (--zero-grad never), and the loss keeps sum()'s value.
    runs = []
    for fast in (True, False):
        params = _params()[:n_params]
        source = make_source(name, 0.75, seed=3)
        losses = []
        for step in range(3):
            losses.append(source.loss(params))
            if fast:
                source.fill_grads(params, step)
            else:
                accumulate(params, source.gradients(params, step))
            with torch.no_grad():
                for p in params:
                    p.mul_(0.5)
        runs.append((losses, [None if p.grad is None else p.grad.clone() for p in params]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert [repr(x) for x in loss_a] == [repr(x) for x in loss_b]
    assert [g is None for g in grads_a] == [g is None for g in grads_b]
    for a, b in zip(grads_a, grads_b, strict=True):
        assert a is None or (torch.equal(a, b) and a.dtype == b.dtype)
    if name in ("constant", "quadratic"):
        assert grads_a[0] is not None and loss_a[0] is not None

