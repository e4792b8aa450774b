"""Honest warnings about all-zero buffers: a second moment that underflowed is not a
gradient that was zero. Every state here comes from real torch training."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from optstate.analysis.inspect import inspect_path

SUBNORMAL_F32 = torch.finfo(torch.float32).tiny * torch.finfo(torch.float32).eps  # 2**-149


def _warnings(path, code=None):
    report = inspect_path(path)
    found = report["warnings"]
    return [w for w in found if w["code"] == code] if code else found


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """The issue's run: 100 Linear(16, 16) layers, AdamW in fp32, three steps. The
    gradients of the first layers are ~1e-27: their squares (times 1 - beta2) are below
    fp32's smallest subnormal, so exp_avg_sq is exactly 0 there while exp_avg is not."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(100)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 16)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    path = tmp_path_factory.mktemp("deep") / "deep.pt"
    sd = opt.state_dict()
    torch.save({"model": model.state_dict(), "optimizer": sd}, path)
    return path, sd


def test_deep_stack_underflow_is_not_called_zero_gradients(deep):
    path, sd = deep
    whole = [i for i, s in sd["state"].items()
             if not s["exp_avg_sq"].any() and s["exp_avg"].any()]
    assert len(whole) >= 10  # the reproduction holds: many first layers
    counts = {i: int(((s["exp_avg"] != 0) & (s["exp_avg_sq"] == 0)).sum())
              for i, s in sd["state"].items()}
    underflowed = [i for i, n in counts.items() if n]  # whole, and some partly
    partly = [i for i in underflowed if i not in whole]
    assert partly  # deeper layers: some elements only
    assert not _warnings(path, "zero_buffer")
    (w,) = _warnings(path, "second_moment_underflow")
    assert w["where"] == [f"state[{i}].exp_avg_sq" for i in underflowed]
    msg = w["message"]
    assert f"{len(underflowed)} params" in msg
    i = partly[0]
    # named from the model state_dict beside the state (named_parameters of the Sequential)
    name = f"{i // 2}.{('weight', 'bias')[i % 2]}"
    assert f"{name} (group 0, param {i}): {counts[i]:,} of " \
        f"{sd['state'][i]['exp_avg'].numel():,} elements" in msg
    assert "0.weight (group 0, param 0)" in msg
    assert "underflow" in msg and "was zero" not in msg
    assert "lr·m̂/eps" in msg and "m̂ = exp_avg/(1 - beta1^step)" in msg
    # the bound it quotes is lr * max|m̂| / eps over those params, from the state itself
    g = sd["param_groups"][0]
    def max_m(s):  # over the underflowed elements
        return float(s["exp_avg"][(s["exp_avg"] != 0) & (s["exp_avg_sq"] == 0)].abs().max())

    bound = max(g["lr"] * max_m(sd["state"][i])
                / (1 - g["betas"][0] ** float(sd["state"][i]["step"])) / g["eps"]
                for i in underflowed)
    quoted = float(re.search(r"at most ([0-9.e+-]+) per element", msg).group(1))
    assert math.isclose(quoted, bound, rel_tol=1e-3)
    assert "weight decay" in msg  # AdamW's decoupled decay still applies


def test_the_quoted_step_is_the_step_torch_takes(deep):
    """For a param whose exp_avg_sq underflowed, AdamW's next update is lr·m̂/eps (plus
    decoupled decay): checked on a zero param, where the tiny step is representable."""
    _, sd = deep
    i = next(i for i, s in sd["state"].items()
             if not s["exp_avg_sq"].any() and s["exp_avg"].any())
    st = sd["state"][i]
    p = torch.nn.Parameter(torch.zeros_like(st["exp_avg"]))
    opt = torch.optim.AdamW([p], lr=1e-3)
    opt.load_state_dict({"state": {0: {k: v.clone() for k, v in st.items()}},
                         "param_groups": [{**sd["param_groups"][0], "params": [0]}]})
    p.grad = st["exp_avg"].clone()  # a gradient as tiny as this layer's
    opt.step()
    new = opt.state_dict()["state"][0]
    assert not new["exp_avg_sq"].any()  # still underflowed
    g = sd["param_groups"][0]
    m_hat = new["exp_avg"] / (1 - g["betas"][0] ** float(new["step"]))
    torch.testing.assert_close(p.detach(), -g["lr"] * m_hat / g["eps"], rtol=1e-6, atol=0)


def _tiny_and_zero(tmp_path, name, make, grads, named=False):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make([("w", p)] if named else [p])
    for _ in range(2):
        p.grad = torch.tensor(grads)
        opt.step()
    path = tmp_path / f"{name}.pt"
    torch.save(opt.state_dict(), path)
    return path, opt.state_dict()


def test_partial_underflow_counts_elements_and_names_the_param(tmp_path):
    # element 0: a tiny gradient (exp_avg != 0, exp_avg_sq == 0); element 1 a normal one;
    # element 2 none at all (both 0: not an underflow)
    path, _ = _tiny_and_zero(tmp_path, "partial", lambda ps: torch.optim.Adam(ps, lr=0.1),
                             [1e-25, 1.0, 0.0], named=True)
    (w,) = _warnings(path, "second_moment_underflow")
    assert w["where"] == ["state[0].exp_avg_sq"]
    assert "1 of 3 elements" in w["message"]
    assert "w (group 0, param 0)" in w["message"]
    assert not _warnings(path, "zero_buffer")
    assert "weight decay" not in w["message"]  # Adam, weight_decay 0


def test_all_zero_buffers_still_mean_no_gradient(tmp_path):
    path, _ = _tiny_and_zero(tmp_path, "zero", lambda ps: torch.optim.AdamW(ps, lr=0.1),
                             [0.0, 0.0, 0.0])
    (w,) = _warnings(path, "zero_buffer")
    assert w["where"] == ["state[0].exp_avg", "state[0].exp_avg_sq"]
    assert "every gradient these params got was zero" in w["message"]
    assert not _warnings(path, "second_moment_underflow")


def test_rmsprop_centered_underflow_uses_grad_avg(tmp_path):
    path, sd = _tiny_and_zero(
        tmp_path, "rms", lambda ps: torch.optim.RMSprop(ps, lr=0.01, centered=True),
        [1e-25, 1e-25, 1e-25])
    assert not sd["state"][0]["square_avg"].any() and sd["state"][0]["grad_avg"].all()
    (w,) = _warnings(path, "second_moment_underflow")
    assert w["where"] == ["state[0].square_avg"]
    assert "square_avg is exactly 0 where grad_avg is not" in w["message"]
    assert "lr·grad/eps" in w["message"]
    assert not _warnings(path, "zero_buffer")


def test_adagrad_says_it_cannot_tell_zero_from_underflow(tmp_path):
    path, sd = _tiny_and_zero(tmp_path, "adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.1),
                              [1e-25, 1e-25, 1e-25])
    assert not sd["state"][0]["sum"].any()
    (w,) = _warnings(path, "zero_buffer")
    assert w["where"] == ["state[0].sum"]
    assert "or so small that their squares underflow" in w["message"]
    assert "no first moment" in w["message"]


def test_adamax_exp_inf_never_underflows(tmp_path):
    # exp_inf = max(beta2 * exp_inf, |grad| + eps): |grad|, not grad², and never below eps
    path, sd = _tiny_and_zero(tmp_path, "adamax", lambda ps: torch.optim.Adamax(ps, lr=0.1),
                              [1e-25, 1e-25, 1e-25])
    assert sd["state"][0]["exp_inf"].all()
    assert not _warnings(path, "second_moment_underflow")
    assert not _warnings(path, "zero_buffer")


def test_cli_shows_the_underflow_warning(deep, cli):
    path, _ = deep
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    codes = [w["code"] for w in json.loads(r.stdout)["warnings"]]
    assert "second_moment_underflow" in codes and "zero_buffer" not in codes


def test_adagrad_state_of_a_never_stepped_param_is_not_called_zero_gradients(tmp_path):
    """Adagrad creates its state (sum = initial_accumulator_value, step 0) when it is
    built: a frozen first layer keeps that state, all zeros, and was reported as 'every
    gradient these params got was zero'. They got no gradient at all (step 0)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path / "frozen_adagrad.pt"
    torch.save(opt.state_dict(), path)
    assert not _warnings(path, "zero_buffer")
    (w,) = _warnings(path, "param_never_stepped")
    assert w["where"] == ["state[0].step", "state[1].step"]
    assert "never got a gradient" in w["message"] and "step 0" in w["message"]
    # zero gradients that did reach step() are still called that
    opt2 = torch.optim.Adagrad(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt2.step()
    torch.save(opt2.state_dict(), path)
    (z,) = _warnings(path, "zero_buffer")
    assert "every gradient these params got was zero" in z["message"]
    assert not _warnings(path, "param_never_stepped")


def _names_of(w):
    """A finding's ``names``, checked to run beside its ``where``."""
    assert len(w["names"]) == len(w["where"])
    return w["names"]


def test_json_warnings_name_their_params_beside_where(deep, cli):
    """``--json`` warnings carry ``names`` parallel to ``where`` (the name of each place's
    param, null where unknown), not only inside the message; ``where`` is unchanged."""
    path, sd = deep
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    (w,) = [w for w in json.loads(r.stdout)["warnings"]
            if w["code"] == "second_moment_underflow"]
    positions = [int(x[len("state["):x.index("]")]) for x in w["where"]]
    assert w["where"] == [f"state[{i}].exp_avg_sq" for i in positions]
    # the names torch gives those positions: named_parameters() of the Sequential
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(100)])
    torch_names = [n for n, _ in model.named_parameters()]
    assert _names_of(w) == [torch_names[i] for i in positions]


def test_warning_names_for_nan_frozen_and_unnamed_states(tmp_path):
    """NaN (values), a param without state (structure) and step_mismatch name each place by
    the model's names; the same state saved alone has null names, never guessed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3),
                                torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        if step == 2:
            model[1].requires_grad_(False)  # no grad at the last step: its step stays 2
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    sd = opt.state_dict()
    sd["state"][4]["exp_avg"][0, 0] = float("nan")  # 2.weight: a NaN got in
    del sd["state"][5]  # 2.bias: no state
    names = [n for n, _ in model.named_parameters()]
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": sd},
               tmp_path / "named.pt")
    torch.save(sd, tmp_path / "alone.pt")
    by_code = {w["code"]: w for w in _warnings(tmp_path / "named.pt")}
    assert by_code["nan"]["where"] == ["state[4].exp_avg"]
    assert _names_of(by_code["nan"]) == [names[4]] == ["2.weight"]
    assert by_code["param_without_state"]["where"] == ["state[5]"]
    assert _names_of(by_code["param_without_state"]) == [names[5]]
    steps = by_code["step_mismatch"]
    assert _names_of(steps) == [names[int(x[6:x.index("]")])] for x in steps["where"]]
    alone = {w["code"]: w for w in _warnings(tmp_path / "alone.pt")}
    assert alone["nan"]["where"] == ["state[4].exp_avg"]
    assert _names_of(alone["nan"]) == [None]
    assert _names_of(alone["param_without_state"]) == [None]


# ------------------------------------------- factored state and zeros by design (issue #19)

THIRD_PARTY = __import__("pathlib").Path(__file__).parent / "fixtures" / "third_party"


def _edited(tmp_path, folder, edit):
    """A copy of a real third-party state with one edit (the library wrote the rest)."""
    sd = torch.load(THIRD_PARTY / folder / "optimizer.pt", weights_only=True)
    edit(sd)
    path = tmp_path / f"{folder}.pt"
    torch.save(sd, path)
    return path


def test_sm3_zero_momentum_buffer_is_a_finding_once_momentum_is_on(tmp_path):
    # With momentum=0 SM3 never writes its momentum_buffer (a note says so); with
    # momentum=0.9 an all-zero one is the usual zero_buffer finding again.
    def momentum_on(sd):
        sd["param_groups"][0]["momentum"] = 0.9

    path = _edited(tmp_path, "pytorch-optimizer_sm3", momentum_on)
    zero = _warnings(path, "zero_buffer")
    assert len(zero) == 1 and zero[0]["where"] == [f"state[{i}].momentum_buffer"
                                                   for i in range(4)]
    assert "zero_by_design" not in {n["code"] for n in inspect_path(path)["notes"]}


def test_a_torch_optimizers_buffer_in_a_factored_shape_is_a_mismatch(deep, tmp_path):
    # AdamW's exp_avg_sq must follow the param's shape: a row-shaped one is not "factored"
    # (that is only for optimizers whose recorded signature factors it).
    _, sd = deep
    sd = {"state": {k: dict(v) for k, v in sd["state"].items()},
          "param_groups": sd["param_groups"]}
    sd["state"][0]["exp_avg_sq"] = torch.zeros(16, 1)
    path = tmp_path / "row.pt"
    torch.save(sd, path)
    found = _warnings(path, "shape_mismatch")
    assert [w["where"] for w in found] == [["state[0]"]]
    assert "factored_state" not in {n["code"] for n in inspect_path(path)["notes"]}


def test_shampoo_preconditioners_are_described_not_warned():
    report = inspect_path(THIRD_PARTY / "pytorch-optimizer_shampoo" / "optimizer.pt")
    assert "shape_mismatch" not in {w["code"] for w in report["warnings"]}
    note = next(n for n in report["notes"] if n["code"] == "factored_state")
    assert note["message"].startswith("pytorch-optimizer Shampoo keeps state factored")
    assert "pre_cond_1 gram_cols (20, 20)" in note["message"]
