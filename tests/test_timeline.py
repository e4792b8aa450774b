"""``optstate timeline`` end to end on real training loops with injected faults (issue #20).

Each test trains a tiny ``nn.Module`` with real ``loss.backward()`` and a real torch
optimizer (and scheduler), saving ``{"model", "optimizer", "scheduler", "step"}`` as
``step_{i}.pt`` every ``EVERY`` steps, the way a training script does; a fault is injected
into the loop (an lr edited by hand, a NaN gradient in one named parameter, a resume from an
older checkpoint), then ``optstate timeline DIR --json`` runs through the CLI. Every
assertion is on the finding's code, checkpoint label, parameter name and entry, derived from
the loop's own parameters (which step, which parameter), never from the statistics' values.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

EVERY = 10
STEPS = 60
LR = (1e-2, 5e-3)  # group 0 (fc1), group 1 (fc2)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def names() -> list[str]:
    """The model's parameter names in the optimizer's order (fc1's group, then fc2's)."""
    return [n for n, _ in Net().named_parameters()]


def make_optimizer(kind: str, net: Net) -> torch.optim.Optimizer:
    groups = [{"params": list(net.fc1.parameters()), "lr": LR[0]},
              {"params": list(net.fc2.parameters()), "lr": LR[1]}]
    if kind == "adam":
        return torch.optim.Adam(groups)
    if kind == "adamw":
        return torch.optim.AdamW(groups, weight_decay=0.01)
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    raise ValueError(kind)


def make_scheduler(kind: str | None, opt: torch.optim.Optimizer, steps: int):
    s = torch.optim.lr_scheduler
    if kind is None:
        return None
    if kind == "step":
        return s.StepLR(opt, step_size=20, gamma=0.5)
    if kind == "cosine":
        return s.CosineAnnealingLR(opt, T_max=steps)
    if kind == "restarts":  # the lr goes back up at every restart: by design, not a fault
        return s.CosineAnnealingWarmRestarts(opt, T_0=15)
    if kind == "onecycle":  # warmup up, then down; cycles Adam's beta1 too
        return s.OneCycleLR(opt, max_lr=[10 * lr for lr in LR], total_steps=steps + 10)
    if kind == "warmup":  # LambdaLR: the scheduled lr cannot be computed from the file
        return s.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 25) * 0.98 ** max(0, e - 25))
    if kind == "expwarmup":  # LambdaLR from 1e-4x: the lr grows ~21x between checkpoints
        return s.LambdaLR(opt, lambda e: 1e-4 ** max(0.0, 1 - e / 30))
    if kind == "plateau":  # halves the lr when the loss stalls; nothing to compute it from
        return s.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    raise ValueError(kind)


@dataclass
class Run:
    folder: Path
    labels: list[str] = field(default_factory=list)  # step_10.pt ... in the order saved


def train(folder: Path, *, steps: int = STEPS, optimizer: str = "adam",
          scheduler: str | None = "step", lr_times: tuple[int, int, float] | None = None,
          nan_from: tuple[int, str] | None = None, resume: tuple[int, int] | None = None,
          edits: tuple[tuple[int, int, str, float], ...] = (),
          grad_times: tuple[int, str, float] | None = None,
          restore: tuple[str, ...] = ("model", "optimizer", "scheduler"),
          resume_from: Path | None = None,
          save_step: bool = True, start: int = 1, seed: int = 0, every: int = EVERY,
          accum: int = 1) -> Run:
    """Train ``Net`` for steps ``start..steps`` on mini-batches, saving ``step_{i}.pt``
    after step i when i is a multiple of ``every``; with ``accum`` > 1 a step is a
    micro-batch and the optimizer steps every ``accum`` of them (gradient accumulation).

    Faults: ``lr_times=(step, group, factor)`` multiplies that group's lr by hand before
    that step; ``edits=((step, group, hyperparameter, value), ...)`` set a group's
    hyperparameter by hand before that step; ``nan_from=(step, name)`` writes a NaN into
    that parameter's gradient from that step on; ``grad_times=(step, name, factor)``
    scales that parameter's gradient at that one step (a bad batch);
    ``resume=(at, older)`` after saving step ``at`` loads ``step_{older}.pt`` (of the
    folder ``resume_from``, else this run's) back into the parts named in ``restore``
    (the others start afresh: a new optimizer, a new scheduler) while the loop counter
    goes on (the data generator is not restored, as a real data loader's is usually not).
    ``start > 1`` continues from ``step_{start-1}.pt`` in the folder (a correct resume).
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = Net()
    opt = make_optimizer(optimizer, net)
    sched = make_scheduler(scheduler, opt, steps)
    data = torch.Generator().manual_seed(seed + 1)
    w_true = torch.randn(4, 2, generator=data)
    if start > 1:
        load(folder / f"step_{start - 1}.pt", net, opt, sched)
        for _ in range(start - 1):  # the data the earlier steps used
            torch.randn(16, 4, generator=data)
    run = Run(folder)
    params = dict(net.named_parameters())
    for i in range(start, steps + 1):
        if lr_times is not None and i == lr_times[0]:
            opt.param_groups[lr_times[1]]["lr"] *= lr_times[2]
        for at, group, hyper, value in edits:
            if i == at:
                opt.param_groups[group][hyper] = value
        x = torch.randn(16, 4, generator=data)
        loss = (net(x) - torch.sin(x @ w_true)).pow(2).mean() / accum
        loss.backward()
        if nan_from is not None and i >= nan_from[0]:
            params[nan_from[1]].grad.view(-1)[0] = float("nan")
        if grad_times is not None and i == grad_times[0]:
            params[grad_times[1]].grad.mul_(grad_times[2])
        if i % accum == 0:
            opt.step()
            opt.zero_grad()
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(loss.item())
            elif sched is not None:
                sched.step()
        if i % every == 0:
            label = f"step_{i}.pt"
            ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict()}
            if sched is not None:
                ckpt["scheduler"] = sched.state_dict()
            if save_step:
                ckpt["step"] = i
            torch.save(ckpt, folder / label)
            run.labels.append(label)
        if resume is not None and i == resume[0]:
            if "optimizer" not in restore:
                opt = make_optimizer(optimizer, net)
            if "scheduler" not in restore or "optimizer" not in restore:
                sched = make_scheduler(scheduler, opt, steps)
            load((resume_from or folder) / f"step_{resume[1]}.pt", net, opt, sched, restore)
    return run


def load(path: Path, net: Net, opt, sched,
         parts: tuple[str, ...] = ("model", "optimizer", "scheduler")) -> None:
    ckpt = torch.load(path, weights_only=True)
    if "model" in parts:
        net.load_state_dict(ckpt["model"])
    if "optimizer" in parts:
        opt.load_state_dict(ckpt["optimizer"])
    if sched is not None and "scheduler" in parts:
        sched.load_state_dict(ckpt["scheduler"])


def timeline(cli, *args, code: int | None = None) -> dict:
    r = cli("timeline", *args, "--json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    report = json.loads(r.stdout)
    assert r.exit_code == (1 if report["findings"] else 0)
    if code is not None:
        assert r.exit_code == code, report["findings"]
    return report


def found(report: dict, code: str, **where) -> list[dict]:
    return [f for f in report["findings"]
            if f["code"] == code and all(f.get(k) == v for k, v in where.items())]


def labels_from(report: dict, label: str) -> set[str]:
    """The labels of the checkpoints at and after ``label`` in the report's order."""
    order = [c["label"] for c in report["checkpoints"]]
    return set(order[order.index(label):])


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize("scheduler", ["step", None])
def test_lr_edited_by_hand_is_found_at_the_next_checkpoint(cli, tmp_path, scheduler):
    """lr x1000 in group 0 before step 35: the first checkpoint that holds it is
    step_40.pt; group 1, untouched, has no lr finding; nothing is reported before."""
    run = train(tmp_path, scheduler=scheduler, lr_times=(35, 0, 1000.0))
    report = timeline(cli, run.folder, code=1)
    assert [c["label"] for c in report["checkpoints"]] == run.labels
    # with a StepLR the lr is checked against what the saved scheduler computes; without
    # one, the rise itself is the finding
    codes = {"lr_off_schedule"} if scheduler else {"lr_up"}
    lr = [f for f in report["findings"] if f["code"].startswith("lr_")]
    assert {f["code"] for f in lr} == codes, lr
    assert [(f["label"], f["group"]) for f in lr] == [("step_40.pt", 0)], lr
    assert all(f["label"] in labels_from(report, "step_40.pt") for f in report["findings"])
    row = report["lr"][0]
    assert row["group"] == 0
    i40 = run.labels.index("step_40.pt")
    assert row["lr"][i40] > 100 * row["lr"][i40 - 1]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_nan_from_a_step_in_one_named_param(cli, tmp_path, optimizer):
    """A NaN gradient in fc2.weight from step 40: its state has NaN first at step_40.pt;
    the other params turn NaN through the forward pass only from step 41, so their first
    NaN is at step_50.pt (each NaN reported where it was not there before)."""
    target = "fc2.weight"
    run = train(tmp_path, optimizer=optimizer, nan_from=(40, target))
    report = timeline(cli, run.folder, code=1)
    entries = ["exp_avg", "exp_avg_sq"] if optimizer == "adam" else ["momentum_buffer"]
    position = names().index(target)
    for entry in entries:
        hits = found(report, "nan", name=target, entry=entry)
        assert [(f["label"], f["param"], f["group"]) for f in hits] == [
            ("step_40.pt", position, 1)], report["findings"]
        assert target in hits[0]["message"] and entry in hits[0]["message"]
    first = report["findings"][0]
    assert (first["code"], first["label"], first["name"]) == ("nan", "step_40.pt", target)
    for name in names():
        if name != target:
            hits = found(report, "nan", name=name)
            assert hits and {f["label"] for f in hits} == {"step_50.pt"}, (name, hits)
    assert not [f for f in report["findings"]
                if f["label"] not in labels_from(report, "step_40.pt")]
    series = [s for s in report["series"] if s["name"] == target and s["entry"] == entries[0]]
    assert len(series) == 1
    i40 = run.labels.index("step_40.pt")
    assert series[0]["nan"][i40 - 1] == 0 and series[0]["nan"][i40] > 0


def test_lr_set_back_to_the_first_by_hand(cli, tmp_path):
    """No scheduler; the script halves both groups' lr before step 21, then (a resume that
    re-applies its command line) sets them back to the first before step 31: the lr
    returns to the run's first lr at step_40.pt, in each group."""
    edits = tuple((at, g, "lr", LR[g] * f) for at, f in ((21, 0.5), (31, 1.0)) for g in (0, 1))
    run = train(tmp_path, scheduler=None, edits=edits)
    report = timeline(cli, run.folder, code=1)
    lr = [f for f in report["findings"] if f["code"].startswith("lr_")]
    assert {(f["code"], f["label"], f["group"]) for f in lr} == {
        ("lr_reset", "step_40.pt", 0), ("lr_reset", "step_40.pt", 1)}, lr
    assert all(f["label"] in labels_from(report, "step_40.pt") for f in report["findings"])


def test_hyperparameter_edited_mid_run(cli, tmp_path):
    """weight_decay of group 1 set by hand before step 25: found at step_30.pt, group 1."""
    run = train(tmp_path, optimizer="adamw", edits=((25, 1, "weight_decay", 0.5),))
    report = timeline(cli, run.folder, code=1)
    hits = found(report, "hyperparam_changed")
    assert [(f["label"], f["group"]) for f in hits] == [("step_30.pt", 1)], report["findings"]
    assert "weight_decay" in hits[0]["message"]
    assert all(f["label"] in labels_from(report, "step_30.pt") for f in report["findings"])


@pytest.mark.parametrize("optimizer,entry", [("adam", "exp_avg"), ("sgd", "momentum_buffer")])
def test_one_bad_batch_is_a_norm_spike_in_that_param(cli, tmp_path, optimizer, entry):
    """fc1.bias's gradient x1e4 at step 45 (one bad batch): its first moment / momentum
    at step_50.pt is far above its own history; the spike is reported there, named."""
    target = "fc1.bias"
    run = train(tmp_path, optimizer=optimizer, grad_times=(45, target, 1e4))
    report = timeline(cli, run.folder, code=1)
    hits = found(report, "norm_spike", name=target, entry=entry)
    assert [(f["label"], f["param"]) for f in hits] == [
        ("step_50.pt", names().index(target))], report["findings"]
    assert target in hits[0]["message"] and entry in hits[0]["message"]
    assert all(f["label"] in labels_from(report, "step_50.pt") for f in report["findings"])


def test_resume_from_an_older_checkpoint_with_the_loop_counter_going_on(cli, tmp_path):
    """After step 50 the script loads step_30.pt and goes on counting: step_60.pt records
    run step 60 but the optimizer's step 40, below step_50.pt's 50."""
    run = train(tmp_path, resume=(50, 30))
    report = timeline(cli, run.folder, code=1)
    assert report["order"]["by"] == "run"
    assert [c["label"] for c in report["checkpoints"]] == run.labels
    hits = found(report, "step_backwards")
    assert hits and hits[0]["label"] == "step_60.pt", report["findings"]
    assert not [f for f in report["findings"] if f["label"] != "step_60.pt"]
    c60 = report["checkpoints"][run.labels.index("step_60.pt")]
    assert c60["steps"]["optimizer"] == 40 and c60["steps"]["run"] == 60


def test_resume_without_a_run_step_disagrees_with_the_names(cli, tmp_path):
    """The same resume in files that record no run step: ordered by the optimizer's step,
    step_60.pt (step 40) comes before step_50.pt (step 50), against the names."""
    run = train(tmp_path, resume=(50, 30), save_step=False)
    report = timeline(cli, run.folder, code=1)
    assert report["order"]["by"] == "optimizer"
    hits = found(report, "step_backwards")
    assert hits and hits[0]["label"] == "step_60.pt", report["findings"]


def test_deterministic_resume_is_not_hidden_as_a_duplicate(cli, tmp_path):
    """Full-batch training replays exactly: after loading step_30.pt, step_60.pt holds the
    very same state as step_40.pt. Its name still says 60: that is the fault to report,
    never a duplicate to drop silently."""
    run = train(tmp_path, save_step=False)
    # the exact replay: step_60.pt holds what step_40.pt holds
    torch.save(torch.load(tmp_path / "step_40.pt", weights_only=True), tmp_path / "step_60.pt")
    report = timeline(cli, run.folder, code=1)
    assert found(report, "step_backwards", label="step_60.pt"), report


def test_resume_from_another_runs_later_checkpoint(cli, tmp_path):
    """At step 30 the script resumes from another run's step_60.pt: the optimizer's step
    jumps 30 -> 70 while the run's step goes 30 -> 40, where both moved together before."""
    train(tmp_path / "other", seed=5)
    run = train(tmp_path / "run", resume=(30, 60), resume_from=tmp_path / "other")
    report = timeline(cli, run.folder, code=1)
    hits = found(report, "step_skip")
    assert hits and {f["label"] for f in hits} == {"step_40.pt"}, report["findings"]
    assert all(f["label"] in labels_from(report, "step_40.pt") for f in report["findings"])


def test_resume_that_forgot_the_scheduler(cli, tmp_path):
    """A resume at step 30 that restores model and optimizer but builds a new StepLR: the
    scheduler's last_epoch starts again while the optimizer's step goes on."""
    run = train(tmp_path, resume=(30, 30), restore=("model", "optimizer"))
    report = timeline(cli, run.folder, code=1)
    hits = found(report, "scheduler_reset")
    assert [f["label"] for f in hits] == ["step_40.pt"], report["findings"]
    assert all(f["label"] in labels_from(report, "step_40.pt") for f in report["findings"])


def test_resume_that_lost_the_optimizer_state(cli, tmp_path):
    """A resume at step 30 that loads only the model: a new Adam (and StepLR) count from
    0 again, so step_40.pt's optimizer step (10) is below step_30.pt's (30)."""
    run = train(tmp_path, resume=(30, 30), restore=("model",))
    report = timeline(cli, run.folder, code=1)
    assert found(report, "step_backwards", label="step_40.pt"), report["findings"]
    assert all(f["label"] in labels_from(report, "step_40.pt") for f in report["findings"])


def test_correct_resume_is_clean(cli, tmp_path):
    """Stopped after step_30.pt and resumed from it in a new process (model, optimizer,
    scheduler and data position restored): nothing to report."""
    train(tmp_path, steps=30)
    run = train(tmp_path, start=31)
    report = timeline(cli, run.folder, code=0)
    assert len(report["checkpoints"]) == STEPS // EVERY


# ------------------------------------------------------------------------- clean runs


@pytest.mark.parametrize("optimizer,scheduler", [
    ("adam", "step"), ("adamw", None), ("sgd", "cosine"), ("adam", "restarts"),
    ("adam", "onecycle"), ("sgd", "warmup"), ("adam", "expwarmup"), ("adamw", "plateau"),
])
def test_clean_run_has_no_finding(cli, tmp_path, optimizer, scheduler):
    """Healthy runs, including schedules whose lr goes up by design (warm restarts, one
    cycle, a warmup lambda), exit 0 with no finding."""
    run = train(tmp_path, optimizer=optimizer, scheduler=scheduler)
    report = timeline(cli, run.folder, code=0)
    assert report["findings"] == []
    assert [c["label"] for c in report["checkpoints"]] == run.labels
    assert report["order"]["by"] == "run"
    assert [c["step"] for c in report["checkpoints"]] == list(range(EVERY, STEPS + 1, EVERY))
    assert report["run"]["found"] == report["run"]["read"] == len(run.labels)
    assert {s["name"] for s in report["series"]} == set(names())


@pytest.mark.parametrize("every,accum", [(1, 1), (12, 4)])
def test_clean_run_saved_every_step_or_accumulating(cli, tmp_path, every, accum):
    """Adam saved after every step from step 1 (its moments' growth from 0 is by design,
    not a spike), and a loop accumulating 4 micro-batches per optimizer step whose 'step'
    counts micro-batches (the run's step goes 12 per checkpoint, the optimizer's 3):
    counters that move at a steady ratio are not a skip."""
    run = train(tmp_path, steps=36, every=every, accum=accum)
    report = timeline(cli, run.folder, code=0)
    assert [c["label"] for c in report["checkpoints"]] == run.labels
    steps = [c["steps"] for c in report["checkpoints"]]
    assert [s["optimizer"] * accum for s in steps] == [s["run"] for s in steps]


# ------------------------------------------------------------------------------ cache


def _cache(report: dict) -> tuple[int, int]:
    return report["cache"]["hits"], report["cache"]["misses"]


def test_cache_reads_only_what_changed(cli, tmp_path):
    """First run reads all; a rerun reads none; a file garbled in place with its size and
    mtime kept is read again (its ctime moved); a new checkpoint is the only one read; a
    file rewritten (new mtime) is read again."""
    run = train(tmp_path)
    n = len(run.labels)
    first = timeline(cli, run.folder, code=0)
    assert _cache(first) == (0, n)
    assert first["cache"]["path"] and Path(first["cache"]["path"]).is_file()
    second = timeline(cli, run.folder, code=0)
    assert _cache(second) == (n, 0)
    assert second["checkpoints"] == first["checkpoints"]

    victim = run.folder / "step_30.pt"
    st, original = victim.stat(), victim.read_bytes()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    garbled = timeline(cli, run.folder, code=1)
    assert _cache(garbled) == (n - 1, 1)
    assert found(garbled, "unreadable", label="step_30.pt")

    # a real fault this time: step_30.pt rewritten with a NaN in its state, new mtime
    ckpt = torch.load(io.BytesIO(original), weights_only=True)
    ckpt["optimizer"]["state"][0]["exp_avg"].view(-1)[0] = float("nan")
    torch.save(ckpt, victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    train(tmp_path, steps=STEPS + EVERY, start=STEPS + 1)  # appends step_70.pt
    third = timeline(cli, run.folder, code=1)
    assert _cache(third) == (n - 1, 2)
    assert third["run"]["read"] == n + 1
    assert found(third, "nan", label="step_30.pt", name=names()[0], entry="exp_avg")

    fourth = timeline(cli, run.folder, code=1)
    assert _cache(fourth) == (n + 1, 0)


def test_cache_dir_elsewhere_and_unwritable(cli, tmp_path):
    """``--cache DIR`` keeps the run folder untouched; a cache that cannot be written
    (a file where its folder should be) is a note, never an error."""
    run = train(tmp_path / "run", steps=30)
    cache = tmp_path / "cache"
    a = timeline(cli, run.folder, "--cache", cache, code=0)
    assert not (run.folder / ".optstate").exists()
    assert Path(a["cache"]["path"]).is_relative_to(cache)
    assert _cache(timeline(cli, run.folder, "--cache", cache)) == (len(run.labels), 0)

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    b = timeline(cli, run.folder, "--cache", blocker, code=0)
    assert b["cache"]["note"]
    assert b["checkpoints"] == a["checkpoints"]


# ------------------------------------------------------------------------------- plot


def test_plot_writes_an_image(cli, tmp_path):
    pytest.importorskip("matplotlib")
    run = train(tmp_path / "run", lr_times=(35, 0, 1000.0))
    out = tmp_path / "timeline.png"
    r = cli("timeline", run.folder, "--plot", out)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step_40.pt" in r.stdout
