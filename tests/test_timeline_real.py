"""``timeline`` on whole runs written by the real libraries (tests/fixtures/runs/).

Each run was trained by transformers.Trainer, Lightning, DeepSpeed (ZeRO-2) or a plain loop
saving with torch.distributed.checkpoint, every 10 steps (scripts/fixtures/make_runs.py);
its ``expected.json`` holds what the library itself recorded per checkpoint (the step, the
scheduler's counter, the lr per group), the names ``model.named_parameters()`` gives, and
for the two runs with an injected fault (an lr x1000, a NaN grad in one named parameter)
where that fault first shows in the saved files. No framework is imported here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from optstate.analysis.timeline import timeline
from optstate.analysis.timeline_record import num
from optstate.numeric.tolerance import schedule_atol, sum_rtol

RUNS_DIR = Path(__file__).resolve().parent / "fixtures" / "runs"
RUNS = sorted(p.name for p in RUNS_DIR.iterdir() if (p / "expected.json").is_file())
EXPECTED = {r: json.loads((RUNS_DIR / r / "expected.json").read_text()) for r in RUNS}
CLEAN = [r for r in RUNS if EXPECTED[r]["fault"] is None]
FAULTY = [r for r in RUNS if EXPECTED[r]["fault"] is not None]
# the counter each library's scheduler keeps, as the generator read it from the saved files
SCHEDULER_COUNTER = ("saved_scheduler_last_epoch", "saved_scheduler_last_batch_iteration",
                     "live_scheduler_last_epoch")

_reports: dict[str, dict[str, Any]] = {}


@pytest.fixture
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The timeline report of one run, computed once (the cache kept out of the fixtures)."""
    def get(run: str) -> dict[str, Any]:
        if run not in _reports:
            cache = tmp_path_factory.mktemp(f"cache_{run}")
            _reports[run] = timeline([RUNS_DIR / run], cache_dir=cache)
        return _reports[run]
    return get


def kept(run: str) -> list[dict[str, Any]]:
    """The expected checkpoints in training order, duplicates (last.ckpt) left out."""
    dup = {d["label"] for d in EXPECTED[run]["duplicates"]}
    return sorted((c for c in EXPECTED[run]["checkpoints"] if c["label"] not in dup),
                  key=lambda c: c["step"])


def by_position(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["param"]: s for s in rep["series"]}


def findings_computed(rep: dict[str, Any]) -> None:
    # until analysis.timeline_findings lands the report says "findings not computed"
    pytest.importorskip("optstate.analysis.timeline_findings")
    assert not [n for n in rep["notes"] if n["code"] == "no_findings"], rep["notes"]


def test_fixtures_hold_both_faults_and_every_layout() -> None:
    assert set(RUNS) == {"hf_trainer", "hf_trainer_lr_fault", "hf_trainer_restarts",
                         "lightning", "lightning_nan", "lightning_epoch_sched",
                         "lightning_onecycle", "lightning_resume_older", "deepspeed",
                         "deepspeed_fp16", "deepspeed_resume_lost", "dcp"}
    assert {EXPECTED[r]["fault"]["code"] for r in FAULTY} == {
        "lr_not_from_scheduler", "nan", "step_backwards", "step_repeated"}


@pytest.mark.parametrize("run", RUNS)
def test_every_checkpoint_found_and_read(run: str, report) -> None:
    rep = report(run)
    assert rep["schema"] == "optstate.timeline/1"
    assert rep["run"]["found"] == len(EXPECTED[run]["checkpoints"])
    assert rep["run"]["read"] == rep["run"]["found"]
    assert rep["run"]["skipped"] == []
    assert [c["error"] for c in rep["checkpoints"]] == [None] * len(kept(run))


@pytest.mark.parametrize("run", RUNS)
def test_order_is_the_step_the_library_records(run: str, report) -> None:
    rep, exp = report(run), EXPECTED[run]
    assert rep["order"]["by"] == exp["order_by"]
    assert exp["run_source"] in rep["order"]["source"]
    # (checkpoints recording the same step, as a resumed run's "-v1" files, in either order:
    # their mtimes do not survive a copy or a git checkout)
    assert sorted((c["step"], c["label"]) for c in rep["checkpoints"]) == sorted(
        (c["step"], c["label"]) for c in kept(run))
    assert [c["step"] for c in rep["checkpoints"]] == [c["step"] for c in kept(run)]
    assert [c["steps"]["run"] for c in rep["checkpoints"]] == [c["step"] for c in kept(run)]
    assert {c["steps"]["run_source"] for c in rep["checkpoints"]} == {exp["run_source"]}


@pytest.mark.parametrize("run", RUNS)
def test_optimizer_and_scheduler_counters_are_the_saved_ones(run: str, report) -> None:
    rep = report(run)
    want_opt = [c["live_optimizer_step"] for c in kept(run)]
    assert [[c["steps"]["optimizer"]] for c in rep["checkpoints"]] == want_opt
    want_sched = [next(c[k] for k in SCHEDULER_COUNTER if k in c) for c in kept(run)]
    assert [c["steps"]["scheduler"] for c in rep["checkpoints"]] == want_sched


@pytest.mark.parametrize("run", RUNS)
def test_lr_per_group_is_the_lr_the_optimizer_held(run: str, report) -> None:
    rep = report(run)
    want = [c.get("saved_lr", c["live_lr"]) for c in kept(run)]
    assert [[g["lr"] for g in c["groups"]] for c in rep["checkpoints"]] == want
    for g, line in enumerate(rep["lr"]):
        assert line["group"] == g
        assert [num(x) for x in line["lr"]] == [lrs[g] for lrs in want]


@pytest.mark.parametrize("run", RUNS)
def test_names_are_named_parameters_in_their_groups(run: str, report) -> None:
    rep, exp = report(run), EXPECTED[run]
    series = by_position(rep)
    order = [n for group in exp["param_groups"] for n in group]
    assert [series[i]["name"] for i in sorted(series)] == order
    assert sorted(order) == sorted(exp["named_parameters"])
    for g, names in enumerate(exp["param_groups"]):
        assert [s["name"] for s in series.values() if s["group"] == g] == names
    # every param has its Adam moments at every checkpoint (a norm is null also where every
    # value is NaN, as after lightning_nan's fault: presence is read from the counts)
    for s in rep["series"]:
        assert None not in s["nan"], (s["name"], s["entry"])


def test_lightning_last_ckpt_is_a_duplicate_of_the_step_50_file(report) -> None:
    for run in ("lightning", "lightning_nan", "lightning_epoch_sched", "lightning_onecycle",
                "lightning_resume_older"):
        rep = report(run)
        (dup,) = EXPECTED[run]["duplicates"]
        assert "last.ckpt" not in [c["label"] for c in rep["checkpoints"]]
        notes = [n["message"] for n in rep["notes"] if n["code"] == "duplicate"]
        assert len(notes) == 1 and dup["label"] in notes[0] and dup["same_as"] in notes[0]


def test_scheduled_lr_is_the_schedulers_own_where_torch_can_compute_it(report) -> None:
    """StepLR (Lightning) and CosineAnnealingLR (DCP) are recomputed from their saved
    state; the Trainer's LambdaLR and DeepSpeed's WarmupDecayLR cannot be, and say why."""
    for run in ("lightning", "lightning_epoch_sched", "lightning_onecycle", "dcp"):
        for c, want in zip(report(run)["checkpoints"], kept(run), strict=True):
            lr = want.get("saved_lr", want["live_lr"])
            got, base = c["scheduler"]["scheduled_lr"], c["scheduler"]["base_lrs"]
            epoch = c["scheduler"]["last_epoch"]  # the run's lr reached step by step
            assert len(got) == len(lr) and all(
                abs(x - y) <= schedule_atol(epoch, max(abs(x), abs(y), abs(b)))
                for x, y, b in zip(lr, got, base, strict=True))
    for run in ("hf_trainer", "hf_trainer_restarts", "deepspeed", "deepspeed_fp16",
                "deepspeed_resume_lost"):
        for c in report(run)["checkpoints"]:
            assert c["scheduler"]["scheduled_lr"] is None
            assert c["scheduler"]["scheduled_reason"]


def test_counters_that_legitimately_move_apart_are_no_finding(report) -> None:
    """fp16 DeepSpeed skips overflowing steps (global_steps +10, the optimizer's step +7 to
    +9); a per-epoch scheduler with gradient accumulation moves by 0 or 1 while the step
    moves by 10. Both are how these libraries count, not a resume gone wrong."""
    fp16 = [c["steps"] for c in report("deepspeed_fp16")["checkpoints"]]
    gaps = {b["run"] - a["run"] - (b["optimizer"] - a["optimizer"])
            for a, b in zip(fp16, fp16[1:], strict=False)}
    assert len(gaps) > 1 and 0 not in gaps  # uneven skips, in every interval
    epoch = [c["steps"]["scheduler"] for c in report("lightning_epoch_sched")["checkpoints"]]
    assert epoch == [0, 1, 2, 3, 3]
    for run in ("deepspeed_fp16", "lightning_epoch_sched"):
        rep = report(run)
        findings_computed(rep)
        assert not [f for f in rep["findings"] if f["code"].startswith(("step_", "scheduler_"))]


def test_lr_and_betas_that_move_by_their_schedule_are_no_finding(report) -> None:
    """The Trainer's cosine with hard restarts raises the lr after it fell (a LambdaLR:
    its lr cannot be recomputed, only compared with its own last lr); OneCycleLR moves the
    lr and Adam's beta1 at every step."""
    lrs = [c["groups"][0]["lr"] for c in report("hf_trainer_restarts")["checkpoints"]]
    assert any(lrs[i - 1] > lrs[i] < lrs[i + 1] for i in range(1, len(lrs) - 1))  # fell, rose
    betas = [c["saved_betas"][0][0] for c in kept("lightning_onecycle")]
    assert len(set(betas)) == len(betas)
    for run in ("hf_trainer_restarts", "lightning_onecycle"):
        rep = report(run)
        findings_computed(rep)
        assert rep["findings"] == [], [f["message"] for f in rep["findings"]]


def test_hf_trainer_norms_agree_with_torch(report) -> None:
    """optimizer.pt is a plain state_dict: every norm and max |x| the timeline shows is
    the one torch computes on the saved tensor."""
    rep = report("hf_trainer")
    series = {(s["param"], s["entry"]): s for s in rep["series"]}
    for i, c in enumerate(rep["checkpoints"]):
        sd = torch.load(RUNS_DIR / "hf_trainer" / c["label"] / "optimizer.pt",
                        weights_only=True, map_location="cpu")
        for pos, st in sd["state"].items():
            for entry in ("exp_avg", "exp_avg_sq"):
                t = st[entry].double()
                s = series[(pos, entry)]
                assert num(s["norm"][i]) == pytest.approx(
                    float(t.norm()), rel=sum_rtol(t.numel()), abs=1e-300)
                assert num(s["max_abs"][i]) == float(t.abs().max())
                assert s["nan"][i] == 0 and s["inf"][i] == 0


def test_lightning_nan_shows_first_in_the_param_it_was_written_into(report) -> None:
    """The NaN grad reaches encoder.2.weight's moments at epoch=1-step=30.ckpt and the
    other params' only at the next checkpoint (the generator found the same in the files)."""
    rep, fault = report("lightning_nan"), EXPECTED["lightning_nan"]["fault"]
    labels = [c["label"] for c in rep["checkpoints"]]
    at = labels.index(fault["label"])
    for s in rep["series"]:
        first = next((i for i, n in enumerate(s["nan"]) if n), None)
        if s["name"] == fault["name"] and s["entry"] in fault["entries"]:
            assert first == at, (s["entry"], s["nan"])
        else:
            assert first is None or first > at, (s["name"], s["entry"], s["nan"])


@pytest.mark.parametrize("run", CLEAN)
def test_clean_real_run_has_no_finding(run: str, report) -> None:
    rep = report(run)
    findings_computed(rep)
    assert rep["findings"] == [], [f["message"] for f in rep["findings"]]


@pytest.mark.parametrize("run", FAULTY)
def test_injected_fault_found_where_it_first_shows(run: str, report) -> None:
    rep, fault = report(run), EXPECTED[run]["fault"]
    findings_computed(rep)
    labels = [c["label"] for c in rep["checkpoints"]]
    # a checkpoint that records the same step as another (a second branch of the run): the
    # finding may sit on either of the two, and names both
    where = [fault["label"], *([fault["same_step_as"]] if "same_step_as" in fault else [])]
    at = min(labels.index(w) for w in where)
    hits = [f for f in rep["findings"] if f["code"] == fault["code"]
            and (fault["name"] is None or f["name"] == fault["name"])
            and (fault["entry"] is None or f["entry"] == fault["entry"])
            and (fault["group"] is None or f["group"] == fault["group"])]
    assert hits, [(f["code"], f["label"], f["name"], f["entry"]) for f in rep["findings"]]
    assert hits[0]["label"] in where and hits[0]["checkpoint"] == labels.index(hits[0]["label"])
    if fault["name"] is not None:
        assert fault["name"] in hits[0]["message"]
    assert all(w in hits[0]["message"] for w in where), hits[0]["message"]
    # nothing before the fault; at the fault, nothing about another parameter
    assert all(f["checkpoint"] >= at for f in rep["findings"]), rep["findings"][0]
    others = [f for f in rep["findings"] if f["checkpoint"] == at and f["name"] is not None
              and f["name"] != fault["name"]]
    assert others == [], [f["message"] for f in others]
    # the first findings of the report are about the fault
    assert rep["findings"][0]["checkpoint"] in [labels.index(w) for w in where]
    assert rep["checkpoints"][hits[0]["checkpoint"]]["findings"] >= 1
    assert math.isfinite(rep["spike"])


@pytest.mark.parametrize("run", RUNS)
def test_command_exit_status_and_json_on_real_runs(run: str, cli, tmp_path: Path) -> None:
    """Exit 1 on the runs with a fault, 0 on the clean ones; --json is the same report
    (the cache in tmp_path, never beside the fixtures)."""
    pytest.importorskip("optstate.analysis.timeline_findings")
    res = cli("timeline", RUNS_DIR / run, "--json", "--cache", tmp_path)
    assert res.exit_code == (1 if run in FAULTY else 0), res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert rep["schema"] == "optstate.timeline/1"
    assert sorted(c["label"] for c in rep["checkpoints"]) == sorted(
        c["label"] for c in kept(run))
    if run in FAULTY:
        fault = EXPECTED[run]["fault"]
        assert rep["findings"][0]["label"] in (fault["label"], fault.get("same_step_as"))
    assert list(tmp_path.iterdir()), "the cache went elsewhere"
