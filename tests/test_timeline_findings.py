"""analysis.timeline_findings on records read (analysis.timeline.read_record) from real
torch.save checkpoints of real training loops: each injected fault is found at the right
checkpoint, param (by name) and entry; clean runs of the usual shapes (warmup, cosine,
restarts, one-cycle, several groups, a frozen param, SGD without state, bf16, steps skipped
by a gradient scaler) give no finding."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as L

from optstate.analysis.timeline import order_records
from optstate.analysis.timeline_findings import timeline_findings
from optstate.analysis.timeline_record import read_record
from optstate.io.run_dir import find_checkpoints


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


Hook = Callable[[int, "Run"], None]


class Run:
    """A tiny model trained by a real optimizer; ``train`` saves every ``every`` steps."""

    def __init__(self, folder: Path, make_opt: Callable[[Net], torch.optim.Optimizer],
                 make_sched: Callable[[torch.optim.Optimizer], Any] | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float32,
                 save_step: bool = True) -> None:
        torch.manual_seed(seed)
        self.folder, self.dtype, self.save_step = folder, dtype, save_step
        self.model = Net().to(dtype)
        self.opt = make_opt(self.model)
        self.sched = make_sched(self.opt) if make_sched else None
        self.step = 0
        self.grad_scale = 1.0
        self.skip = False  # a gradient scaler's skipped step: no optimizer.step()

    def one_step(self) -> None:
        x = torch.randn(16, 4, dtype=self.dtype)
        loss = self.model(x).float().pow(2).mean() * self.grad_scale
        self.opt.zero_grad()
        loss.backward()
        if not self.skip:
            self.opt.step()
        if self.sched is not None:
            if isinstance(self.sched, L.ReduceLROnPlateau):
                self.sched.step(loss.item())
            else:
                self.sched.step()

    def train(self, until: int, every: int = 10, hook: Hook | None = None,
              first: bool = False) -> None:
        while self.step < until:
            self.step += 1
            if hook is not None:
                hook(self.step, self)
            self.one_step()
            if self.step % every == 0 or (first and self.step == 1):
                self.save()

    def save(self, name: str | None = None) -> None:
        obj: dict[str, Any] = {"model": self.model.state_dict(),
                               "optimizer": self.opt.state_dict()}
        if self.sched is not None:
            obj["scheduler"] = self.sched.state_dict()
        if self.save_step:
            obj["step"] = self.step
        torch.save(obj, self.folder / (name or f"step_{self.step}.pt"))

    def load(self, name: str, *, optimizer: bool = True, scheduler: bool = True) -> None:
        obj = torch.load(self.folder / name, weights_only=True)
        self.model.load_state_dict(obj["model"])
        if optimizer:
            self.opt.load_state_dict(obj["optimizer"])
        if scheduler and self.sched is not None:
            self.sched.load_state_dict(obj["scheduler"])


def adam(lr: float = 1e-2, **kw: Any) -> Callable[[Net], torch.optim.Optimizer]:
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr, **kw)


def findings(folder: Path, spike: float = 10.0) -> list[dict[str, Any]]:
    records = [read_record(c) for c in find_checkpoints([folder]).items]
    ordered, _, _ = order_records(records)
    return timeline_findings(ordered, spike=spike)


def brief(fs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(f["code"], f["label"], f["name"], f["entry"], f["group"]) for f in fs]


# ----------------------------------------------------------------------------- clean runs


def _warmup_cosine(o: torch.optim.Optimizer) -> Any:
    return L.SequentialLR(o, [L.LinearLR(o, 0.01, total_iters=20),
                              L.CosineAnnealingLR(o, 60)], [20])


def _two_groups_frozen(m: Net) -> torch.optim.Optimizer:
    m.fc1.bias.requires_grad_(False)  # frozen: never gets state
    return torch.optim.AdamW([{"params": [m.fc1.weight, m.fc1.bias], "lr": 1e-2},
                              {"params": m.fc2.parameters(), "lr": 1e-4,
                               "weight_decay": 0.0}])


def _half_per_step(x: float) -> float:
    return 0.5 ** x


def _warmup_lambda(epoch: int) -> float:  # the Trainer's linear warmup + decay shape
    return min((epoch + 1) / 15, max(0.0, (80 - epoch) / 65))


CLEAN: dict[str, dict[str, Any]] = {
    "adam warmup + cosine (SequentialLR)": {"opt": adam(), "sched": _warmup_cosine},
    "adam OneCycleLR cycling beta1": {
        "opt": adam(), "sched": lambda o: L.OneCycleLR(o, 0.05, total_steps=80)},
    "sgd OneCycleLR cycling momentum": {
        "opt": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        "sched": lambda o: L.OneCycleLR(o, 0.05, total_steps=80, three_phase=True)},
    "sgd CyclicLR": {
        "opt": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        "sched": lambda o: L.CyclicLR(o, 0.001, 0.05, step_size_up=7)},
    "adam CosineAnnealingWarmRestarts": {
        "opt": adam(), "sched": lambda o: L.CosineAnnealingWarmRestarts(o, 15, eta_min=1e-5)},
    "two groups, a frozen param, StepLR": {
        "opt": _two_groups_frozen, "sched": lambda o: L.StepLR(o, 20, 0.1)},
    "sgd without momentum (no state)": {
        "opt": lambda m: torch.optim.SGD(m.parameters(), lr=0.1)},
    "adam at steps 1, 10, 20 (EMAs growing from 0)": {"opt": adam(), "first": True},
    "adagrad at steps 1, 10, 20 (a sum growing)": {
        "opt": lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1), "first": True},
    "rmsprop at steps 1, 10, 20 (an EMA without bias correction)": {
        "opt": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3), "first": True},
    "bf16 params with adam": {"opt": adam(), "dtype": torch.bfloat16},
    "LambdaLR warmup (the Trainer's shape)": {
        "opt": adam(), "sched": lambda o: L.LambdaLR(o, _warmup_lambda)},
    "ReduceLROnPlateau": {
        "opt": adam(), "sched": lambda o: L.ReduceLROnPlateau(o, patience=2, factor=0.5)},
    "ExponentialLR, no run step saved": {
        "opt": adam(), "sched": lambda o: L.ExponentialLR(o, 0.97), "save_step": False},
    # a scale_fn function is not saved; its scale_mode is, and tells it from the mode's
    "CyclicLR with its own scale_fn": {
        "opt": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        "sched": lambda o: L.CyclicLR(o, 0.001, 0.05, step_size_up=7,
                                      scale_fn=_half_per_step, scale_mode="iterations")},
    # torch computes tensor lrs in float32: not the float64 formula's last digits
    "adam with a tensor lr, ExponentialLR": {
        "opt": lambda m: torch.optim.Adam(m.parameters(), lr=torch.tensor(1e-2)),
        "sched": lambda o: L.ExponentialLR(o, 0.97)},
}


@pytest.mark.parametrize("case", sorted(CLEAN))
def test_clean_run_gives_no_finding(tmp_path: Path, case: str) -> None:
    c = CLEAN[case]
    run = Run(tmp_path, c["opt"], c.get("sched"), dtype=c.get("dtype", torch.float32),
              save_step=c.get("save_step", True))
    run.train(80 if c.get("sched") else 40, first=c.get("first", False))
    assert brief(findings(tmp_path)) == []


def test_steps_skipped_by_a_gradient_scaler_are_no_finding(tmp_path: Path) -> None:
    """The optimizer's step lags the loop's (a scaler skipped steps on overflow) while the
    scheduler goes on, as in a mixed-precision run."""
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 10, 0.5))

    def skip(step: int, r: Run) -> None:
        r.skip = step in (13, 14, 27)

    run.train(40, hook=skip)
    assert brief(findings(tmp_path)) == []


# ----------------------------------------------------------------------------- faults


def _times_1000_at(step_at: int) -> Hook:
    def hook(step: int, r: Run) -> None:
        if step == step_at:
            r.opt.param_groups[0]["lr"] *= 1000
    return hook


def test_lr_times_1000_under_step_lr_is_off_schedule(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(1e-3), lambda o: L.StepLR(o, 20, 0.5))
    run.train(60, hook=_times_1000_at(35))
    fs = findings(tmp_path)
    assert brief(fs)[0] == ("lr_off_schedule", "step_40.pt", None, None, 0)
    assert "0.25 but its StepLR computes 0.00025 at last_epoch 40 (1,000x)" in fs[0]["message"]
    assert "(and at 2 later checkpoints)" in fs[0]["message"]


def test_a_cyclic_scale_fn_the_state_cannot_tell_is_named_as_a_cause(tmp_path: Path) -> None:
    """A CyclicLR given a scale_fn function and the default "cycle" scale_mode saves the
    same state as a plain triangular one: the finding says it may be that."""
    run = Run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
              lambda o: L.CyclicLR(o, 0.001, 0.05, step_size_up=7, scale_fn=_half_per_step))
    run.train(60)
    fs = findings(tmp_path)
    assert fs and fs[0]["code"] == "lr_off_schedule"
    assert "a scale_fn function of its own, which a CyclicLR does not save" in fs[0]["message"]


def test_lr_times_1000_without_scheduler_is_lr_up(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(1e-3))
    run.train(50, hook=_times_1000_at(35))
    fs = findings(tmp_path)
    assert brief(fs)[0] == ("lr_up", "step_40.pt", None, None, 0)
    assert "0.001 -> 1 since step_30.pt (1,000x > 10x)" in fs[0]["message"]


def test_lr_set_after_the_schedulers_step_is_not_from_it(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(1e-3), lambda o: L.LambdaLR(o, _warmup_lambda))
    run.train(30)
    run.opt.param_groups[0]["lr"] = 0.5  # after the scheduler's step, before the save
    run.save()
    assert brief(findings(tmp_path)) == [
        ("lr_not_from_scheduler", "step_30.pt", None, None, 0)]


def test_nan_from_a_step_in_one_named_param(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())

    def nan_grad(step: int, r: Run) -> None:
        if step == 30:  # the step saved: only fc2.weight's state has it yet
            r.model.fc2.weight.register_hook(lambda g: g * float("nan"))

    run.train(40, hook=nan_grad)
    fs = findings(tmp_path)
    assert brief(fs)[:2] == [("nan", "step_30.pt", "fc2.weight", "exp_avg", 0),
                             ("nan", "step_30.pt", "fc2.weight", "exp_avg_sq", 0)]
    assert fs[0]["where"] == ["state[2].exp_avg"]
    assert "holds 16 NaN of 16 (none at step_20.pt) (and at 1 later checkpoint)" \
        in fs[0]["message"]
    assert all(f["label"] != "step_20.pt" for f in fs)


def test_resume_from_an_older_checkpoint_steps_back(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 20, 0.5))
    run.train(50)
    run.load("step_30.pt")  # the loop counter goes on at 50
    run.train(70)
    fs = findings(tmp_path)
    assert brief(fs) == [("step_backwards", "step_60.pt", None, None, None)]
    assert fs[0]["message"] == (
        "step_60.pt: the optimizer's step went back 50 -> 40 after step_50.pt while the "
        "run's step 50 -> 60, the name number 50 -> 60 went on: the optimizer state not "
        "restored on resume, or restored from an older checkpoint?")


def test_resume_from_an_older_checkpoint_by_the_names_alone(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), save_step=False)  # ordered by the optimizer's step
    run.train(50)
    run.load("step_30.pt")
    run.train(70)
    fs = findings(tmp_path)
    # step_60.pt records step 40 as step_40.pt does (the run went over 40 twice)
    assert brief(fs) == [("step_repeated", "step_60.pt", None, None, None),
                         ("step_backwards", "step_60.pt", None, None, None)]
    assert fs[0]["message"].startswith("step_40.pt and step_60.pt both record step 40 but "
                                       "hold different states")
    assert fs[1]["message"] == (
        "step_60.pt records the optimizer's step 40 but step_50.pt, saved before it, "
        "records 50: resumed from an older checkpoint, or a fresh optimizer?")


def test_scheduler_not_restored_resets(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 20, 0.5))
    run.train(50)
    run.load("step_50.pt", scheduler=False)
    run.sched = L.StepLR(run.opt, 20, 0.5)  # a fresh scheduler on the restored optimizer
    run.train(70)
    fs = findings(tmp_path)
    assert ("scheduler_reset", "step_60.pt", None, None, None) in brief(fs)
    reset = next(f for f in fs if f["code"] == "scheduler_reset")
    assert "last_epoch went back 50 -> 10 after step_50.pt while the optimizer's step " \
        "50 -> 60 went on" in reset["message"]
    assert not any(f["code"] == "step_backwards" for f in fs)


def test_fresh_optimizer_after_a_resume_steps_back(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())
    run.train(50)
    run.load("step_50.pt", optimizer=False)
    run.opt = torch.optim.Adam(run.model.parameters(), lr=1e-2)
    run.train(70)
    fs = findings(tmp_path)
    assert brief(fs) == [("step_backwards", "step_60.pt", None, None, None)]
    assert "the optimizer's step went back 50 -> 10" in fs[0]["message"]


def test_weight_decay_edited_mid_run(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), lambda o: L.CosineAnnealingLR(o, 80))

    def edit(step: int, r: Run) -> None:
        if step == 25:
            r.opt.param_groups[0]["weight_decay"] = 0.1

    run.train(50, hook=edit)
    fs = findings(tmp_path)
    assert brief(fs) == [("hyperparam_changed", "step_30.pt", None, None, 0)]
    assert fs[0]["message"].startswith(
        "step_30.pt: group 0's weight_decay changed 0 -> 0.1 since step_20.pt")
    assert fs[0]["where"] == ["param_groups[0].weight_decay"]


def test_second_moment_zeroed_collapses(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())
    run.train(30)
    run.opt.state[run.model.fc1.weight]["exp_avg_sq"].zero_()
    run.save()
    fs = findings(tmp_path)
    assert brief(fs) == [("moments_collapsed", "step_30.pt", "fc1.weight", "exp_avg_sq", 0)]
    assert "is 100% zeros (was 0% at step_20.pt)" in fs[0]["message"]


def test_gradient_spike(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())

    def spike(step: int, r: Run) -> None:
        r.grad_scale = 1000.0 if 31 <= step <= 35 else 1.0

    run.train(60, hook=spike)
    fs = findings(tmp_path)
    assert fs, "no spike found"
    assert {f["code"] for f in fs} == {"norm_spike"}
    assert {f["label"] for f in fs} == {"step_40.pt"}
    assert ("norm_spike", "step_40.pt", "fc1.weight", "exp_avg", 0) in brief(fs)
    assert ("norm_spike", "step_40.pt", "fc1.weight", "exp_avg_sq", 0) in brief(fs)


def test_a_params_state_lost(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())
    run.train(20)
    del run.opt.state[run.model.fc2.bias]
    run.save()
    fs = findings(tmp_path)
    assert brief(fs) == [("state_lost", "step_20.pt", "fc2.bias", e, 0)
                         for e in ("exp_avg", "exp_avg_sq")]


def test_optimizer_state_from_a_run_further_on_skips(tmp_path: Path) -> None:
    ahead = tmp_path / "ahead"
    ahead.mkdir()
    other = Run(ahead, adam(), save_step=False)
    other.train(50, every=50)
    run = Run(tmp_path, adam(), save_step=False)  # names step_N, the optimizer's own step
    run.train(30)
    run.opt.load_state_dict(torch.load(ahead / "step_50.pt", weights_only=True)["optimizer"])
    run.train(50)
    fs = findings(tmp_path)
    assert brief(fs) == [("step_skip", "step_40.pt", None, None, None)]
    assert "the optimizer's step advanced 30 (30 -> 60) but the name number 10 (30 -> 40) " \
        "since step_30.pt, where both advanced 10 before" in fs[0]["message"]


def test_an_unreadable_checkpoint(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())
    run.train(30)
    data = (tmp_path / "step_20.pt").read_bytes()
    (tmp_path / "step_20.pt").write_bytes(data[: len(data) // 2])
    fs = findings(tmp_path)
    assert brief(fs) == [("unreadable", "step_20.pt", None, None, None)]


class Attention(torch.nn.Module):
    """One attention head: the key's bias gets a zero gradient up to rounding (softmax does
    not see a shift shared by all keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.q(x) @ self.k(x).transpose(1, 2) / 8 ** 0.5
        return self.out(torch.softmax(s, -1) @ self.v(x)).mean(1)


def test_converging_run_whose_first_moments_pass_near_zero_is_clean(tmp_path: Path) -> None:
    """Converging, out.bias's exp_avg falls 0.0096 -> 0.00088 -> 0.012 (its gradients change
    sign): measured against its last three norms that is no spike; k.bias's state is
    rounding noise (its gradient is ~1e-11), never a spike."""
    torch.manual_seed(1)
    model = Attention()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(1, 101):
        loss = (model(torch.randn(4, 5, 8)) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "step": step}, tmp_path / f"step_{step}.pt")
    assert brief(findings(tmp_path)) == []
    # the table's growth column is that rule's measure (a reviewer saw x322 beside "clean"):
    # a raw norm over the norm before passes the spike here, the measure never does
    records, _, _ = order_records([read_record(c)
                                   for c in find_checkpoints([tmp_path]).items])
    grown: dict[int, dict[str, Any]] = {}
    timeline_findings(records, spike=10.0, growth=grown)
    assert grown and max(g["ratio"] for g in grown.values()) < 10.0
    raw = [e2["norm"] / e1["norm"] for a, b in zip(records, records[1:], strict=False)
           for p1, p2 in zip(a["params"], b["params"], strict=True)
           for (k, e1), e2 in zip(p1["entries"].items(), p2["entries"].values(), strict=True)
           if e1["norm"]]
    assert max(raw) > 10.0


def test_inf_from_a_step_in_one_named_param(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())

    def inf_grad(step: int, r: Run) -> None:
        if step == 30:
            r.model.fc1.bias.register_hook(lambda g: g + float("inf"))

    run.train(30, hook=inf_grad)
    fs = findings(tmp_path)
    assert brief(fs) == [("inf", "step_30.pt", "fc1.bias", "exp_avg", 0),
                         ("inf", "step_30.pt", "fc1.bias", "exp_avg_sq", 0)]
    assert "holds 8 Inf of 8 (none at step_20.pt)" in fs[0]["message"]


def test_lr_back_to_the_first_without_scheduler_is_a_reset(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(1e-2))

    def lr(step: int, r: Run) -> None:
        if step in (25, 45):
            r.opt.param_groups[0]["lr"] = 1e-3 if step == 25 else 1e-2

    run.train(60, hook=lr)
    fs = findings(tmp_path)
    assert brief(fs) == [("lr_reset", "step_50.pt", None, None, 0)]
    assert fs[0]["message"] == (
        "step_50.pt: group 0's lr rose back to 0.01, the lr at step_10.pt, the first "
        "checkpoint (from 0.001 at step_40.pt): a resume that lost the scheduler, or the "
        "optimizer rebuilt from its config? (no LR scheduler is saved to say whether the "
        "schedule does this)")


def test_a_group_added_mid_run_is_gradual_unfreezing(tmp_path: Path) -> None:
    """add_param_group with the existing group unchanged: no finding (a removed group is:
    test_a_group_removed_mid_run)."""

    def opt(m: Net) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.fc1.parameters(), lr=1e-2)

    run = Run(tmp_path, opt)

    def add(step: int, r: Run) -> None:
        if step == 25:
            r.opt.add_param_group({"params": r.model.fc2.parameters()})

    run.train(40, hook=add)
    assert brief(findings(tmp_path)) == []


def test_a_hyperparameter_scheduled_by_the_training_code_is_no_edit(tmp_path: Path) -> None:
    """weight decay moved every step by the loop (a DINO-style schedule), as Prodigy's d or a
    schedule-free optimizer's weight_sum move in their groups: not an edit."""
    run = Run(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))

    def wd(step: int, r: Run) -> None:
        r.opt.param_groups[0]["weight_decay"] = 0.04 + 0.36 * step / 50

    run.train(50, hook=wd)
    assert brief(findings(tmp_path)) == []


def test_adafactor_variance_zeroed_collapses(tmp_path: Path) -> None:
    """torch's Adafactor keeps its second moments as row_var / col_var / variance."""
    run = Run(tmp_path, lambda m: torch.optim.Adafactor(m.parameters(), lr=1e-2))
    run.train(30)
    assert brief(findings(tmp_path)) == []
    run.opt.state[run.model.fc2.bias]["variance"].zero_()
    run.save()
    assert brief(findings(tmp_path)) == [
        ("moments_collapsed", "step_30.pt", "fc2.bias", "variance", 0)]


def test_nan_already_at_the_first_checkpoint(tmp_path: Path) -> None:
    run = Run(tmp_path, adam())

    def nan_grad(step: int, r: Run) -> None:
        if step == 10:
            r.model.fc1.bias.register_hook(lambda g: g * float("nan"))

    run.train(10, hook=nan_grad)
    fs = findings(tmp_path)
    assert brief(fs) == [("nan", "step_10.pt", "fc1.bias", "exp_avg", 0),
                         ("nan", "step_10.pt", "fc1.bias", "exp_avg_sq", 0)]
    assert fs[0]["message"] == ("step_10.pt: fc1.bias exp_avg holds 8 NaN of 8 (already at "
                                "the first checkpoint)")


# ----------------------------------------------------------------------------- review (s6)


def test_lr_falling_to_its_value_at_the_first_checkpoint_is_no_reset(tmp_path: Path) -> None:
    """A warmup + linear decay set in the loop, no scheduler saved: the decay passes the lr
    the warmup had at the first checkpoint. Only a rise back to it is a reset."""
    run = Run(tmp_path, adam(1e-2))

    def tri(step: int, r: Run) -> None:
        r.opt.param_groups[0]["lr"] = 1e-2 * (step / 50 if step <= 50 else (100 - step) / 50)

    run.train(100, hook=tri)
    assert brief(findings(tmp_path)) == []


def test_loop_counter_restarted_on_a_resume_blames_the_overwriting_checkpoints(
        tmp_path: Path) -> None:
    """Model, optimizer and scheduler restored at step 50, the loop counter restarts at 1:
    step_10..30 are overwritten with optimizer steps 60..80; step_40 / step_50 are intact."""
    run = Run(tmp_path, adam(), lambda o: L.CosineAnnealingLR(o, 100))
    run.train(50)
    time.sleep(0.02)  # the restart takes a while (file times are coarse)
    run.load("step_50.pt")
    run.step = 0
    run.train(30)
    fs = findings(tmp_path)
    assert brief(fs) == [("step_backwards", "step_10.pt", None, None, None)]
    assert fs[0]["message"] == (
        "step_10.pt, step_20.pt, step_30.pt record optimizer steps 60..80 ahead of their run "
        "steps 10..30 (the other checkpoints: equal), and were written after step_50.pt: "
        "the loop counter restarted on a resume, overwriting the first checkpoints?")


def test_loop_counter_restart_without_a_writing_order_cannot_tell(tmp_path: Path) -> None:
    """The same run copied (every file the same mtime): the counters disagree, and which
    side is right cannot be told."""
    import os

    run = Run(tmp_path, adam())
    run.train(50)
    run.load("step_50.pt")
    run.step = 0
    run.train(30)
    for f in tmp_path.iterdir():
        os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    fs = findings(tmp_path)
    assert brief(fs) == [("step_backwards", "step_40.pt", None, None, None)]
    assert fs[0]["message"].startswith(
        "step_40.pt: the counters disagree from step_40.pt on: step_10.pt .. step_30.pt "
        "record the optimizer's step 50 ahead of the run's step, step_40.pt .. step_50.pt "
        "equal to it;")
    assert "cannot tell which is right" in fs[0]["message"]


def test_two_branches_of_one_run_are_step_repeated(tmp_path: Path) -> None:
    """Resumed from step_20.pt with another seed, the branch saved beside the first one as
    -v1 (as Lightning names it): both record steps 30..50 with different states."""
    run = Run(tmp_path, adam())
    run.train(50)
    run.load("step_20.pt")
    run.step = 20
    torch.manual_seed(7)  # another seed: other batches
    while run.step < 50:
        run.step += 1
        run.one_step()
        if run.step % 10 == 0:
            run.save(f"step_{run.step}-v1.pt")
    fs = findings(tmp_path)
    assert brief(fs)[0] == ("step_repeated", "step_30-v1.pt", None, None, None)
    assert fs[0]["message"] == (
        "step_30.pt and step_30-v1.pt both record step 30 but hold different states: the "
        "run went over step 30 twice (resumed from an older checkpoint, or two runs given "
        "together?); the rows and norm ratios mix the two (and at 2 later checkpoints)")


def test_two_runs_given_together_are_step_repeated(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Run(tmp_path / "a", adam()).train(30)
    Run(tmp_path / "b", adam(1e-3), seed=1).train(30)
    records = [read_record(c) for c in
               find_checkpoints([tmp_path / "a", tmp_path / "b"]).items]
    ordered, _, _ = order_records(records)
    fs = timeline_findings(ordered, spike=10.0)
    a, b = (str(tmp_path / x / "step_10.pt") for x in "ab")
    assert fs[0]["code"] == "step_repeated" and fs[0]["label"] == b
    assert fs[0]["message"].startswith(f"{a} and {b} both record step 10 but hold different")
    # each run's lr and norms compared within the run (by writing order: a, then b), not
    # a's lr 0.01 against b's 0.001 (an lr_reset that is not)
    assert [f["code"] for f in fs] == ["step_repeated"], [f["message"] for f in fs]


def test_a_weight_decay_stepped_every_30_steps_is_a_schedule(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))

    def wd(step: int, r: Run) -> None:
        r.opt.param_groups[0]["weight_decay"] = 0.01 * (1 + step // 30)

    run.train(100, hook=wd)
    assert brief(findings(tmp_path)) == []


def test_a_group_removed_mid_run(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda m: torch.optim.Adam(
        [{"params": m.fc1.parameters()}, {"params": m.fc2.parameters()}], lr=1e-2))

    def remove(step: int, r: Run) -> None:
        if step == 25:  # fc2 frozen by dropping its group (and its state)
            for q in r.opt.param_groups.pop()["params"]:
                r.opt.state.pop(q, None)

    run.train(40, hook=remove)
    fs = [f for f in findings(tmp_path) if f["code"] == "hyperparam_changed"]
    assert brief(fs) == [("hyperparam_changed", "step_30.pt", None, None, None)]
    assert fs[0]["message"].startswith("step_30.pt: 1 param groups where step_20.pt had 2")


def test_every_finding_has_names_parallel_to_where(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 20, 0.5))
    run.train(50, hook=_times_1000_at(35))
    fs = findings(tmp_path)
    assert fs and all(len(f["names"]) == len(f["where"]) for f in fs)
    assert fs[0]["code"] == "lr_off_schedule" and fs[0]["names"] == [None]


def test_adadelta_acc_delta_spike_is_worded_as_squared_updates(tmp_path: Path) -> None:
    run = Run(tmp_path, lambda m: torch.optim.Adadelta(m.parameters(), lr=1.0))

    def big(step: int, r: Run) -> None:
        if step == 45:  # the squared updates of fc1.weight blown up (as by a bad step)
            r.opt.state[r.model.fc1.weight]["acc_delta"].mul_(1e6)

    run.train(50, hook=big)
    fs = [f for f in findings(tmp_path) if f["entry"] == "acc_delta"]  # (the big update
    assert brief(fs) == [("norm_spike", "step_50.pt", "fc1.weight", "acc_delta", 0)]  # spikes
    # square_avg too: right)
    assert "a running average of squared updates" in fs[0]["message"]
    assert "square of gradients" not in fs[0]["message"]


def test_branches_whose_file_times_interleave_are_one_run_with_the_warning(
        tmp_path: Path) -> None:
    """Two branches copied in name order (file times interleaving them): which checkpoint
    belongs to which branch cannot be told; the step_repeated warning stays first."""
    import os

    run = Run(tmp_path, adam())
    run.train(50)
    run.load("step_20.pt")
    run.step = 20
    torch.manual_seed(7)
    while run.step < 50:
        run.step += 1
        run.one_step()
        if run.step % 10 == 0:
            run.save(f"step_{run.step}-v1.pt")
    for n, f in enumerate(sorted(tmp_path.iterdir())):
        t = 1_700_000_000_000_000_000 + n * 10**9
        os.utime(f, ns=(t, t))
    fs = findings(tmp_path)
    assert fs[0]["code"] == "step_repeated"
    assert fs[0]["label"] in ("step_30.pt", "step_30-v1.pt")


def test_nan_in_an_entry_new_at_a_checkpoint(tmp_path: Path) -> None:
    # fc2 is frozen (no state) until step 25, then unfrozen with a NaN gradient: its state
    # is new at step_25.pt and NaN from its first step (a reviewer's run gave "clean")
    run = Run(tmp_path, adam())
    run.model.fc2.requires_grad_(False)

    def unfreeze(step: int, r: Run) -> None:
        if step == 25:
            r.model.fc2.weight.requires_grad_(True)
            r.model.fc2.weight.register_hook(lambda g: g * float("nan"))

    run.train(30, every=5, hook=unfreeze)
    fs = findings(tmp_path)  # at step_25.pt only fc2.weight has stepped with it
    assert brief(fs)[:2] == [("nan", "step_25.pt", "fc2.weight", "exp_avg", 0),
                             ("nan", "step_25.pt", "fc2.weight", "exp_avg_sq", 0)]
    assert "holds 16 NaN of 16 (new since step_20.pt: not held there)" in fs[0]["message"]


def test_an_lr_that_becomes_inf_is_found(tmp_path: Path) -> None:
    # kept as "inf" by the record; under StepLR the chained lr stays inf, and the scheduler's
    # own last lr agrees with it: only the lr itself says so (a reviewer's run gave no lr
    # finding)
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 20, 0.5))

    def blow_up(step: int, r: Run) -> None:
        if step == 25:
            r.opt.param_groups[0]["lr"] = float("inf")

    run.train(40, hook=blow_up)
    fs = [f for f in findings(tmp_path) if f["code"].startswith("lr")]
    assert brief(fs) == [("lr_not_finite", "step_30.pt", None, None, 0)]
    assert fs[0]["message"].startswith(
        "step_30.pt: group 0's lr is inf (0.005 at step_20.pt): every update")


def test_an_optimizer_that_stops_stepping_is_stalled(tmp_path: Path) -> None:
    # a gradient scaler that finds inf/NaN gradients at every step from 41 on skips every
    # optimizer.step() while the loop and its scheduler go on (a reviewer's bf16 run: "clean")
    run = Run(tmp_path, adam(), lambda o: L.StepLR(o, 20, 0.5))

    def overflow(step: int, r: Run) -> None:
        r.skip = step > 40

    run.train(60, hook=overflow)
    fs = findings(tmp_path)
    assert brief(fs) == [("optimizer_stalled", "step_50.pt", None, None, None)]
    assert fs[0]["message"].startswith(
        "step_50.pt: the optimizer's step stayed at 40 since step_40.pt while the run's step "
        "40 -> 50, the LR scheduler's last_epoch 40 -> 50: no optimizer step")
    assert fs[0]["message"].endswith("(and at 1 later checkpoint)")


def test_sgd_without_a_step_counter_that_stops_stepping_is_stalled(tmp_path: Path) -> None:
    # no step anywhere (SGD keeps none, no scheduler, no step key): the state unchanged
    run = Run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
              save_step=False)

    def overflow(step: int, r: Run) -> None:
        r.skip = step > 20

    run.train(40, hook=overflow)
    fs = findings(tmp_path)
    assert brief(fs) == [("optimizer_stalled", "step_30.pt", None, None, None)]
    assert "every optimizer state entry is unchanged since step_20.pt while the name " \
        "number 20 -> 30" in fs[0]["message"]


def test_sgd_whose_state_is_nan_is_not_called_stalled(tmp_path: Path) -> None:
    # a NaN momentum stays NaN as SGD goes on stepping: its statistics repeat, not a stall
    run = Run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
              save_step=False)

    def nan_grad(step: int, r: Run) -> None:
        if step == 15:
            for p in r.model.parameters():
                p.register_hook(lambda g: g * float("nan"))

    run.train(40, hook=nan_grad)
    assert {f["code"] for f in findings(tmp_path)} == {"nan"}


def test_a_fresh_optimizer_under_a_restored_scheduler_is_said_so(tmp_path: Path) -> None:
    run = Run(tmp_path, adam(), lambda o: L.MultiStepLR(o, [20, 40], 0.1))
    run.train(50)
    state = run.sched.state_dict()
    run.opt = adam()(run.model)  # rebuilt at its base lr; the scheduler's state restored
    run.sched = L.MultiStepLR(run.opt, [20, 40], 0.1)
    run.sched.load_state_dict(state)
    run.train(60)
    off = [f for f in findings(tmp_path) if f["code"] == "lr_off_schedule"]
    assert brief(off) == [("lr_off_schedule", "step_60.pt", None, None, 0)]
    assert "the lr is its base lr: the optimizer rebuilt fresh on resume while the " \
        "scheduler's state was restored?" in off[0]["message"]


def test_accumulation_longer_than_the_save_interval_is_not_stalled(tmp_path: Path) -> None:
    # the step key counts micro-batches, the optimizer steps every 16 of them, the loop
    # saves every 10: some intervals hold no optimizer step, by design
    run = Run(tmp_path, adam())

    def accumulate(step: int, r: Run) -> None:
        r.skip = step % 16 != 0

    run.train(80, hook=accumulate)
    assert [f["code"] for f in findings(tmp_path)] == []
