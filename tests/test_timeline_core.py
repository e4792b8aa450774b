"""timeline's core: finding a run's checkpoints (each layout, written by real torch), the
record of one checkpoint (inspect's own statistics), the order by recorded step (and its
fallbacks, said), duplicates, unreadable files, and the cache."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from optstate.analysis.inspect import inspect_path
from optstate.analysis.timeline import num, read_record, timeline
from optstate.base.errors import CheckpointError
from optstate.io.run_dir import find_checkpoints, name_step


def train(steps: int, *, opt_cls=torch.optim.Adam, sched: bool = True, every: int = 10,
          seed: int = 0, **opt_kwargs):
    """Yield (step, model, optimizer, scheduler) every ``every`` real steps."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = opt_cls(model.parameters(), lr=0.01, **opt_kwargs)
    sch = torch.optim.lr_scheduler.StepLR(opt, 15, 0.5) if sched else None
    for step in range(1, steps + 1):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        if sch is not None:
            sch.step()
        if step % every == 0:
            yield step, model, opt, sch


def save_files(folder: Path, steps: int = 30, *, name="step_{}.pt", keys=("step",),
               **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for step, model, opt, sch in train(steps, **kw):
        obj = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        if sch is not None:
            obj["scheduler"] = sch.state_dict()
        for k in keys:
            obj[k] = step
        torch.save(obj, folder / name.format(step))
    return folder


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(("name", "step"), [
    ("step_1000.pt", 1000), ("checkpoint-500", 500), ("epoch=3-step=900.ckpt", 900),
    ("global_step2000", 2000), ("iter_0000300", 300), ("model_00040.pt", 40),
    ("step-5.pth", 5), ("last.ckpt", None), ("last-v1.ckpt", None),
    ("epoch=3-step=900-v1.ckpt", 900),
])
def test_the_number_in_a_name(name, step):
    assert name_step(name) == step


def test_a_folder_of_step_files_leaves_model_files_and_others_aside(tmp_path):
    run = save_files(tmp_path / "run")
    torch.save(nn.Linear(2, 2).state_dict(), run / "pytorch_model.bin")
    (run / "notes.txt").write_text("hi")
    (run / "rng_state.pth").write_bytes(b"x")
    found = find_checkpoints([run])
    assert [c.label for c in found.items] == ["step_10.pt", "step_20.pt", "step_30.pt"]
    assert [c.name_step for c in found.items] == [10, 20, 30]
    assert {Path(s["path"]).name for s in found.skipped} == {"pytorch_model.bin",
                                                              "rng_state.pth"}
    c, st = found.items[0], (run / "step_10.pt").stat()
    assert c.identity == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "files": 1}


def test_missing_path_and_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoints([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint: looked for torch.save "
                       r"files \(.pt"):
        find_checkpoints([tmp_path / "empty"])


def test_explicit_files_are_taken_as_given(tmp_path):
    run = save_files(tmp_path / "run")
    found = find_checkpoints([run / "step_30.pt", run / "step_10.pt"])
    assert [c.label for c in found.items] == ["step_10.pt", "step_30.pt"]
    assert found.root == run.resolve()


def dcp_save(obj, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process on purpose
        dcp.save(obj, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)


def test_dcp_folders_ordered_by_the_optimizer_step(tmp_path):
    run = tmp_path / "run"
    for step, _, opt, _ in train(20, sched=False):
        dcp_save(opt.state_dict(), run / f"ckpt_{step}")
    report = timeline([run], use_cache=False)
    assert [c["label"] for c in report["checkpoints"]] == ["ckpt_10", "ckpt_20"]
    assert [c["format"] for c in report["checkpoints"]] == ["dcp", "dcp"]
    assert report["order"]["by"] == "optimizer"
    assert [c["step"] for c in report["checkpoints"]] == [10, 20]


def test_hf_trainer_folders_use_trainer_state(tmp_path):
    run = tmp_path / "out"
    for step, model, opt, sch in train(20):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        torch.save(opt.state_dict(), d / "optimizer.pt")
        torch.save(sch.state_dict(), d / "scheduler.pt")
        torch.save(model.state_dict(), d / "pytorch_model.bin")
        (d / "trainer_state.json").write_text(json.dumps(
            {"global_step": step * 2, "epoch": 1.0, "log_history": []}))  # accumulation 2
    report = timeline([run], use_cache=False)
    assert report["order"] == {"by": "run", "source": "the step the run recorded "
                               "(trainer_state.json global_step)"}
    cps = report["checkpoints"]
    assert [(c["label"], c["steps"]["run"], c["steps"]["optimizer"], c["steps"]["scheduler"])
            for c in cps] == [("checkpoint-10", 20, 10, 10), ("checkpoint-20", 40, 20, 20)]
    assert cps[1]["scheduler"]["kind"] == "StepLR"
    assert cps[0]["identity"]["files"] == 4


def lightning_ckpt(step, model, opt, sch):
    return {"epoch": 0, "global_step": step, "pytorch-lightning_version": "2.4.0",
            "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sch.state_dict()]}


def test_lightning_last_ckpt_is_dropped_as_a_duplicate(tmp_path):
    run = tmp_path / "ckpts"
    run.mkdir()
    for step, model, opt, sch in train(20):
        ck = lightning_ckpt(step, model, opt, sch)
        torch.save(ck, run / f"epoch=0-step={step}.ckpt")
    torch.save(ck, run / "last.ckpt")
    report = timeline([run], use_cache=False)
    assert report["run"]["found"] == 3
    assert [c["label"] for c in report["checkpoints"]] == ["epoch=0-step=10.ckpt",
                                                          "epoch=0-step=20.ckpt"]
    assert report["order"]["source"] == "the step the run recorded (Lightning global_step)"
    assert {"code": "duplicate", "message": "last.ckpt holds the same steps and state as "
            "epoch=0-step=20.ckpt: read once, shown as epoch=0-step=20.ckpt"} in report["notes"]


def test_a_rerun_copy_named_v1_is_dropped_not_the_original(tmp_path):
    # a deterministic rerun into the same folder: Lightning writes epoch=0-step=10-v1.ckpt
    # beside the original; '-' sorts before '.', so by name alone the original was dropped
    run = tmp_path / "ckpts"
    run.mkdir()
    for step, model, opt, sch in train(10):
        ck = lightning_ckpt(step, model, opt, sch)
    torch.save(ck, run / "epoch=0-step=10.ckpt")
    torch.save(ck, run / "epoch=0-step=10-v1.ckpt")
    first = (run / "epoch=0-step=10.ckpt").stat()
    os.utime(run / "epoch=0-step=10-v1.ckpt", ns=(first.st_atime_ns, first.st_mtime_ns + 10**9))
    report = timeline([run], use_cache=False)
    assert [c["label"] for c in report["checkpoints"]] == ["epoch=0-step=10.ckpt"]
    assert {"code": "duplicate", "message": "epoch=0-step=10-v1.ckpt holds the same steps "
            "and state as epoch=0-step=10.ckpt: read once, shown as epoch=0-step=10.ckpt"} \
        in report["notes"]


# ----------------------------------------------------------------------------- order


def test_order_by_recorded_step_not_by_name(tmp_path):
    """Names that sort wrongly (a_30 before b_10): the recorded step orders them."""
    run = tmp_path / "run"
    run.mkdir()
    for step, _, opt, _ in train(30, sched=False):
        torch.save(opt.state_dict(), run / f"{'cba'[step // 10 - 1]}_{40 - step}.pt")
    report = timeline([run], use_cache=False)
    assert report["order"] == {"by": "optimizer",
                               "source": "the optimizer's step (state[...]['step'])"}
    assert [c["label"] for c in report["checkpoints"]] == ["c_30.pt", "b_20.pt", "a_10.pt"]


def test_order_by_scheduler_then_by_name_said_so(tmp_path):
    # SGD with momentum keeps no step: the scheduler's last_epoch orders
    run = save_files(tmp_path / "sched", opt_cls=torch.optim.SGD, keys=(), momentum=0.9)
    report = timeline([run], use_cache=False)
    assert report["order"]["by"] == "scheduler"
    assert [c["step"] for c in report["checkpoints"]] == [10, 20, 30]
    # no scheduler either: the names, and the report says so
    run = save_files(tmp_path / "names", opt_cls=torch.optim.SGD, keys=(), sched=False,
                     momentum=0.9, name="model_{:05d}.pt")
    report = timeline([run], use_cache=False)
    assert report["order"] == {"by": "name", "source": "the number in the file names: "
                               "the checkpoints record no step"}
    assert [c["label"] for c in report["checkpoints"]] == ["model_00010.pt", "model_00020.pt",
                                                          "model_00030.pt"]
    assert any(n["code"] == "order_by_name" for n in report["notes"])


# ----------------------------------------------------------------------------- records


def test_record_holds_inspects_numbers(tmp_path):
    run = save_files(tmp_path / "run", weight_decay=0.1)
    found = find_checkpoints([run])
    rec = read_record(found.items[1])
    ins = inspect_path(run / "step_20.pt")
    assert rec["steps"] == {"run": 20, "run_source": "the checkpoint's 'step' key",
                            "optimizer": 20, "scheduler": 20}
    assert rec["kind"] == ins["optimizer"]["kind"] == "Adam"
    assert rec["groups"][0]["lr"] == ins["param_groups"][0]["hyperparams"]["lr"] == 0.005
    assert rec["groups"][0]["params"] == [0, 1, 2, 3]
    assert rec["scheduler"]["last_epoch"] == 20
    n = 0
    for p, q in zip(rec["params"], ins["params"], strict=True):
        assert p["name"] == q["name"]
        assert set(p["entries"]) == {"exp_avg", "exp_avg_sq"}
        for entry, e in p["entries"].items():
            s = q["state"][entry]
            assert e["norm"] == s["norm"] and e["nan"] == s["nan"] and e["zeros"] == s["zeros"]
            assert e["max_abs"] == max(abs(s["min"]), abs(s["max"]))
            n += 1
    assert n == 8
    json.dumps(rec, allow_nan=False)  # plain JSON, no tensor kept


def test_nan_entry_statistics_and_num(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step, _, opt, _ in train(10, sched=False):
        sd = opt.state_dict()
        sd["state"][0]["exp_avg"][0, 0] = float("nan")
        torch.save(sd, run / f"step_{step}.pt")
    rec = read_record(find_checkpoints([run]).items[0])
    e = rec["params"][0]["entries"]["exp_avg"]
    assert e["nan"] == 1 and num(e["norm"]) > 0
    assert num("nan") != num("nan") and num("inf") == float("inf") and num(None) is None
    assert num("x") is None and num(3) == 3.0


def test_an_unreadable_file_is_a_record_not_an_abort(tmp_path):
    run = save_files(tmp_path / "run")
    data = (run / "step_20.pt").read_bytes()
    (run / "step_20.pt").write_bytes(data[: len(data) // 2])
    report = timeline([run], use_cache=False)
    cps = report["checkpoints"]
    assert [c["label"] for c in cps] == ["step_10.pt", "step_20.pt", "step_30.pt"]
    assert cps[1]["error"] and "\n" not in cps[1]["error"] and cps[1]["kind"] is None
    assert report["run"]["read"] == 2
    assert report["series"][0]["norm"][1] is None and report["series"][0]["norm"][2] > 0


def test_series_lr_and_worst(tmp_path):
    run = save_files(tmp_path / "run")
    report = timeline([run], use_cache=False)
    assert len(report["series"]) == 8  # 4 params x (exp_avg, exp_avg_sq)
    s = report["series"][0]
    assert (s["param"], s["name"], s["entry"]) == (0, "0.weight", "exp_avg")
    assert all(x is not None for x in s["norm"])
    assert report["lr"] == [{"group": 0, "lr": [0.01, 0.005, 0.0025],
                             "scheduled_lr": [0.01, 0.005, 0.0025]}]
    w = report["checkpoints"][0]["worst"]
    assert w["ratio"] is None and w["norm"] == max(num(x["norm"][0]) for x in report["series"])
    # then the entry nearest a norm_spike by that rule's own measure (squares by their
    # root, Adam's moments bias-corrected): never above the spike in a clean run
    w = report["checkpoints"][1]["worst"]
    assert 0 < w["ratio"] < report["spike"] and report["findings"] == []


# ----------------------------------------------------------------------------- cache


def read_cache(path: Path) -> dict:
    """A cache file's payload (after its signature line)."""
    return json.loads(path.read_bytes().split(b"\n", 1)[1])


def write_cache(path: Path, data: dict, *, key: bytes | None = None) -> None:
    """``data`` as a cache file signed with this user's key (or ``key``)."""
    from optstate.analysis.timeline_cache import sign, user_key

    path.write_bytes(sign(json.dumps(data).encode(), key or user_key()[0]))


def test_an_interrupted_first_run_keeps_what_it_read(tmp_path, monkeypatch):
    import optstate.analysis.timeline as tl

    run = save_files(tmp_path / "run")
    monkeypatch.setattr(tl, "SAVE_EVERY", 0.0)  # a long run: a save due at every record

    def ctrl_c_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        timeline([run], workers=1, on_progress=ctrl_c_after_two)
    again = timeline([run], workers=1)
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (2, 1)


def test_cache_rereads_only_a_changed_file(tmp_path):
    run = save_files(tmp_path / "run")
    first = timeline([run])
    assert first["cache"] == {"path": str(run.resolve() / ".optstate" / "timeline-cache.json"),
                              "hits": 0, "misses": 3, "note": None}
    again = timeline([run])
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (3, 0)
    assert again["checkpoints"] == first["checkpoints"] and again["series"] == first["series"]
    st = (run / "step_20.pt").stat()
    os.utime(run / "step_20.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    third = timeline([run])
    assert (third["cache"]["hits"], third["cache"]["misses"]) == (2, 1)
    # a file rewritten with other content is read again, and its new numbers shown
    for step, _, opt, sch in train(30, seed=1):
        if step == 30:
            torch.save({"optimizer": opt.state_dict(), "scheduler": sch.state_dict(),
                        "step": step}, run / "step_30.pt")
    fourth = timeline([run])
    assert (fourth["cache"]["hits"], fourth["cache"]["misses"]) == (2, 1)
    assert fourth["series"][0]["norm"][2] != first["series"][0]["norm"][2]


def test_cache_drops_deleted_files_and_ignores_a_corrupt_one(tmp_path):
    run = save_files(tmp_path / "run")
    cache_dir = tmp_path / "cache"
    timeline([run], cache_dir=cache_dir)
    (run / "step_10.pt").unlink()
    timeline([run / "step_20.pt"], cache_dir=cache_dir)  # a rewrite, nothing new read
    entries = read_cache(cache_dir / "timeline-cache.json")["entries"]
    assert sorted(Path(k.split("\n")[0]).name for k in entries) == ["step_20.pt",
                                                                     "step_30.pt"]
    (cache_dir / "timeline-cache.json").write_text("{not json")
    report = timeline([run], cache_dir=cache_dir)
    assert report["cache"]["misses"] == 2
    assert report["cache"]["note"].endswith("was not written by you here: ignored and rebuilt")
    from optstate.analysis.timeline_cache import sign, user_key

    (cache_dir / "timeline-cache.json").write_bytes(sign(b"{not json", user_key()[0]))
    report = timeline([run], cache_dir=cache_dir)
    assert report["cache"]["misses"] == 2 and "could not be read" in report["cache"]["note"]
    assert len(report["checkpoints"]) == 2
    assert timeline([run], cache_dir=cache_dir)["cache"]["hits"] == 2  # rewritten whole


def test_an_unwritable_cache_is_a_note(tmp_path):
    run = save_files(tmp_path / "run", steps=10)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    report = timeline([run], cache_dir=blocker / "sub")
    assert report["cache"]["path"] is None
    assert report["cache"]["note"] == f"no cache: {blocker} is a file, not a folder"
    report = timeline([run], cache_dir=blocker)
    assert report["cache"]["note"] == f"no cache: {blocker} is a file, not a folder"
    report = timeline([run], cache_dir=tmp_path / "nope" / "cache")  # only the last is made
    assert report["cache"]["path"] is None
    assert report["cache"]["note"] == (f"no cache: {tmp_path / 'nope'} does not exist (only "
                                       "the cache folder itself is made)")
    assert not (tmp_path / "nope").exists()
    assert timeline([run], cache_dir=tmp_path / "made")["cache"]["note"] is None
    (run / ".optstate").mkdir()
    (run / ".optstate").chmod(0o500)
    try:
        report = timeline([run])
    finally:
        (run / ".optstate").chmod(0o700)
    if os.geteuid() != 0:  # root writes anyway
        assert report["cache"]["path"] is None
        assert report["cache"]["note"].startswith("no cache written:")
    assert len(report["checkpoints"]) == 1


def test_parallel_reads_give_the_same_report(tmp_path):
    run = save_files(tmp_path / "run", steps=40)
    one = timeline([run], use_cache=False, workers=1)
    seen = []
    two = timeline([run], use_cache=False, workers=2, on_progress=lambda d, t: seen.append((d, t)))
    assert one == two
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_deepspeed_run_folder_gives_its_tag_folders():
    run = FIXTURES / "deepspeed" / "zero2_bf16_ws1_sched" / "checkpoint"
    found = find_checkpoints([run])
    assert [(c.label, c.name_step) for c in found.items] == [("global_step3", 3)]
    report = timeline([run], use_cache=False)
    cp = report["checkpoints"][0]
    assert cp["format"] == "deepspeed" and cp["error"] is None
    assert cp["steps"]["run"] == 3 and cp["steps"]["run_source"] == "DeepSpeed global_steps"


def test_an_fsdp2_rank_folder_is_one_checkpoint():
    found = find_checkpoints([FIXTURES / "fsdp2"])
    assert [c.label for c in found.items] == ["adamw_ws2"]
    rec = read_record(found.items[0])
    assert rec["format"] == "fsdp2-ranks" and rec["error"] is None and rec["params"]


def test_a_file_without_optimizer_state_found_in_a_folder_is_skipped(tmp_path):
    run = save_files(tmp_path / "run", steps=20)
    torch.save({"weights": torch.zeros(3)}, run / "ema.pt")
    report = timeline([run], use_cache=False)
    assert [c["label"] for c in report["checkpoints"]] == ["step_10.pt", "step_20.pt"]
    assert [Path(s["path"]).name for s in report["run"]["skipped"]] == ["ema.pt"]
    assert "no optimizer state" in report["run"]["skipped"][0]["reason"]
    # named on the command line, it is a checkpoint that could not be read
    report = timeline([f"{run}/./ema.pt", run / "step_10.pt"], use_cache=False)
    # (placed by its mtime: it has no number in its name and records no step)
    assert [(c["label"], c["error"] is not None) for c in report["checkpoints"]] == [
        ("step_10.pt", False), ("ema.pt", True)]


def test_links_to_the_newest_checkpoint_are_not_read_twice(tmp_path):
    run = save_files(tmp_path / "run")
    (run / "latest.pt").symlink_to("step_30.pt")
    (run / "latest").symlink_to("step_30.pt")  # not DeepSpeed's 'latest'
    found = find_checkpoints([run])
    assert [c.label for c in found.items] == ["step_10.pt", "step_20.pt", "step_30.pt"]
    assert found.skipped == [{"path": str(run / "latest.pt"),
                              "reason": "a link to step_30.pt, read under that name"}]
    found = find_checkpoints([run / "latest.pt", run / "step_30.pt"])
    assert [c.label for c in found.items] == ["step_30.pt"]
    assert found.notes[0]["code"] == "same_path"


def test_a_cache_of_other_code_or_another_key_is_not_used(tmp_path):
    run = save_files(tmp_path / "run", steps=20)
    timeline([run])
    cache_file = run / ".optstate" / "timeline-cache.json"
    data = read_cache(cache_file)
    data["optstate"] = "0.0.1"
    write_cache(cache_file, data)
    report = timeline([run])
    assert (report["cache"]["hits"], report["cache"]["misses"]) == (0, 2)
    assert report["cache"]["note"] is None  # rebuilt quietly
    assert timeline([run])["cache"]["hits"] == 2
    data = read_cache(cache_file)
    data["code"] = "written by other code"  # e.g. before a fix to a statistic
    write_cache(cache_file, data)
    assert timeline([run])["cache"]["misses"] == 2
    assert timeline([run])["cache"]["hits"] == 2
    assert timeline([run], key="optimizer")["cache"]["misses"] == 2  # another state asked for
    assert timeline([run], use_cache=False)["cache"] == {"path": None, "hits": 0, "misses": 2,
                                                         "note": None}


def test_a_trainer_state_beside_plain_files_is_not_their_step(tmp_path):
    """The Trainer writes trainer_state.json at the top of its output folder at the end:
    it is not the step of plain files saved there."""
    run = save_files(tmp_path / "run", keys=())
    (run / "trainer_state.json").write_text('{"global_step": 999}')
    report = timeline([run], use_cache=False)
    assert report["order"]["by"] == "optimizer"
    assert [c["steps"]["run"] for c in report["checkpoints"]] == [None, None, None]
    # an optimizer.pt named directly reads the one in its own folder
    d = tmp_path / "checkpoint-7"
    d.mkdir()
    (run / "step_10.pt").rename(d / "optimizer.pt")
    (d / "trainer_state.json").write_text('{"global_step": 7}')
    rec = timeline([d / "optimizer.pt"], use_cache=False)["checkpoints"][0]
    assert (rec["steps"]["run"], rec["steps"]["run_source"]) == (
        7, "trainer_state.json global_step")


def test_bad_spike_and_workers_are_config_errors(tmp_path):
    from optstate.base.errors import ConfigError

    run = save_files(tmp_path / "run", steps=10)
    for kw in ({"spike": 1.0}, {"spike": float("nan")}, {"workers": 0}):
        with pytest.raises(ConfigError):
            timeline([run], use_cache=False, **kw)


def test_a_copy_under_another_number_is_not_a_duplicate(tmp_path):
    """step_60.pt holding step_40.pt's exact state is a fault to show (H2's findings say
    which), never dropped; last-v1.ckpt (Lightning's versioned last) is a copy."""
    run = save_files(tmp_path / "run", steps=40)
    (run / "step_60.pt").write_bytes((run / "step_40.pt").read_bytes())
    (run / "last-v1.ckpt").write_bytes((run / "step_40.pt").read_bytes())
    report = timeline([run], use_cache=False)
    labels = [c["label"] for c in report["checkpoints"]]
    assert labels == ["step_10.pt", "step_20.pt", "step_30.pt", "step_40.pt", "step_60.pt"]
    assert [n["message"] for n in report["notes"] if n["code"] == "duplicate"] == [
        "last-v1.ckpt holds the same steps and state as step_40.pt: read once, shown as "
        "step_40.pt"]


def test_a_folder_of_weights_only_is_an_error_not_a_clean_run(tmp_path):
    from optstate.base.errors import NoOptimizerStateError

    run = tmp_path / "weights"
    run.mkdir()
    for step in (10, 20):
        torch.save(nn.Linear(2, 2).state_dict(), run / f"model_{step}.pt")
    with pytest.raises(NoOptimizerStateError, match=r"none of the 2 files found in .* holds "
                       r"an optimizer state \(model_20.pt: "):
        timeline([run], use_cache=False)


def test_order_by_name_when_only_some_record_a_step_says_so(tmp_path):
    run = save_files(tmp_path / "run", opt_cls=torch.optim.SGD, keys=(), sched=False,
                     momentum=0.9)
    obj = torch.load(run / "step_20.pt", weights_only=True)
    obj["step"] = 20
    torch.save(obj, run / "step_20.pt")
    report = timeline([run], use_cache=False)
    assert report["order"] == {"by": "name", "source": "the number in the file names: only 1 "
                               "of the 3 checkpoints read record a step"}


def test_a_step_kept_in_the_group_is_the_optimizers_step(tmp_path):
    """apex's FusedAdam (and DeepSpeed's) count steps in param_groups[i]['step']."""
    run = tmp_path / "run"
    run.mkdir()
    for step, _, opt, _ in train(20, sched=False, opt_cls=torch.optim.SGD, momentum=0.9):
        sd = opt.state_dict()
        sd["param_groups"][0]["step"] = step
        torch.save(sd, run / f"{'ba'[step // 10 - 1]}.pt")
    report = timeline([run], use_cache=False)
    assert report["order"]["by"] == "optimizer"
    assert [(c["label"], c["step"]) for c in report["checkpoints"]] == [("b.pt", 10),
                                                                       ("a.pt", 20)]


def test_trainer_with_deepspeed_folders_are_one_checkpoint_each(tmp_path):
    """The Trainer under DeepSpeed: checkpoint-N/ holds 'latest', global_stepN/ and
    trainer_state.json; each checkpoint-N/ is one checkpoint, its step the Trainer's."""
    import shutil

    src = FIXTURES / "deepspeed" / "zero2_bf16_ws1_sched" / "checkpoint"
    d = tmp_path / "out" / "checkpoint-3"
    shutil.copytree(src, d)
    (d / "trainer_state.json").write_text('{"global_step": 3}')
    shutil.copytree(src, tmp_path / "out" / "tmp-checkpoint-6")  # being written
    report = timeline([tmp_path / "out"], use_cache=False)
    assert [Path(s["path"]).name for s in report["run"]["skipped"]] == ["tmp-checkpoint-6"]
    cp = report["checkpoints"][0]
    assert (cp["label"], cp["format"], cp["steps"]["run"], cp["steps"]["run_source"]) == (
        "checkpoint-3", "deepspeed", 3, "trainer_state.json global_step")


def test_a_file_with_two_optimizer_states_asks_for_key(tmp_path):
    # which optimizer to follow is the user's choice (Lightning's manual optimization with
    # two optimizers), not a fault of the run: one error, not an "unreadable" finding
    run = save_files(tmp_path / "run", steps=20)
    sd = torch.load(run / "step_20.pt", weights_only=True)["optimizer"]
    torch.save({"optimizer_states": [sd, sd]}, run / "step_30.pt")
    from optstate.base.errors import NoOptimizerStateError

    with pytest.raises(NoOptimizerStateError) as e:
        timeline([run], use_cache=False)
    assert "step_30.pt holds 2 optimizer states" in str(e.value)
    assert "once per key" in e.value.hint
    # with key, the one asked for is followed
    torch.save({"optimizer_states": [sd, sd]}, run / "step_20.pt")
    torch.save({"optimizer_states": [sd, sd]}, run / "step_10.pt")
    report = timeline([run], use_cache=False, key="optimizer_states[1]")
    assert [c["error"] for c in report["checkpoints"]] == [None, None, None]


# ------------------------------------------------ issue #20 review: the cache and discovery


def _poisoned(tmp_path, edit, *, key: bytes | None = None):
    """A run, its cache, then the cache's step_20.pt record edited by ``edit`` and the
    file written back signed with ``key`` (None: unsigned, as a stranger's)."""
    run = save_files(tmp_path / "run")
    first = timeline([run])
    cache_file = run / ".optstate" / "timeline-cache.json"
    data = read_cache(cache_file)
    rec = next(v["record"] for v in data["entries"].values()
               if v["record"]["label"] == "step_20.pt")
    edit(rec)
    if key is None:
        cache_file.write_text(json.dumps(data))
    else:
        write_cache(cache_file, data, key=key)
    return run, first


def test_a_cache_not_signed_with_this_users_key_is_ignored_and_rewritten(tmp_path):
    """A stranger's run comes with a cache claiming a NaN and a huge norm at step_20.pt (the
    code digest is anyone's to compute; tar and cp -p keep mtimes): not believed."""
    def lie(rec):
        rec["params"][0]["entries"]["exp_avg"].update(norm=1e6, nan=7)

    for key in (None, b"k" * 32):  # unsigned; signed by another user
        run, first = _poisoned(tmp_path / str(key is None), lie, key=key)
        report = timeline([run])
        assert (report["cache"]["hits"], report["cache"]["misses"]) == (0, 3)
        assert report["cache"]["note"] == (f"the cache {run.resolve()}/.optstate/timeline-"
                                           "cache.json was not written by you here: ignored "
                                           "and rebuilt")
        assert report["findings"] == first["findings"] == []
        assert report["series"] == first["series"]
        again = timeline([run])  # rewritten, signed by this user
        assert (again["cache"]["hits"], again["cache"]["note"]) == (3, None)


def test_a_cache_is_verified_before_it_is_parsed_and_bounded_in_size(tmp_path, monkeypatch):
    import optstate.analysis.timeline_cache as tc

    run = save_files(tmp_path / "run", steps=10)
    cache_file = run / ".optstate" / "timeline-cache.json"
    cache_file.parent.mkdir()
    cache_file.write_bytes(b'{"schema":"optstate.timeline-cache/1","entries":' + b"[" * 200_000
                           + b"]" * 200_000 + b"}")  # deep: never handed to json
    parsed = []
    monkeypatch.setattr(tc.json, "loads", lambda *a, **k: parsed.append(1))
    report = timeline([run])
    assert parsed == [] and "not written by you here" in report["cache"]["note"]
    monkeypatch.undo()
    monkeypatch.setattr(tc, "MAX_BYTES", 100)
    report = timeline([run])
    assert report["cache"]["note"] == f"the cache {cache_file.resolve()} is over 0 MB: not " \
        "read, rebuilt"
    # deep nesting inside a signed payload (our own bug, say): a note, not a crash
    monkeypatch.undo()
    cache_file.write_bytes(tc.sign(b"[" * 200_000 + b"]" * 200_000, tc.user_key()[0]))
    assert "could not be read" in timeline([run])["cache"]["note"]


@pytest.mark.parametrize("edit", [
    lambda r: r.update(params="boom"),
    lambda r: r.update(steps=None),
    lambda r: r["params"][0]["entries"]["exp_avg"].update(norm={"a": 1}),
    lambda r: r["groups"][0].update(index="x"),
    lambda r: r["steps"].update(run="30"),
    lambda r: r["params"][0]["entries"]["exp_avg"].update(nan="many"),
    lambda r: r.pop("error_code"),
    lambda r: r["params"][0]["entries"]["exp_avg"].update(norm="lots"),
], ids=["params", "steps", "norm", "index", "run", "nan", "missing_key", "norm_str"])
def test_a_signed_cache_of_another_shape_is_ignored_not_an_internal_error(tmp_path, edit):
    from optstate.analysis.timeline_cache import user_key

    run, first = _poisoned(tmp_path, edit, key=user_key()[0])
    report = timeline([run])
    assert (report["cache"]["hits"], report["cache"]["misses"]) == (0, 3)
    assert report["cache"]["note"].endswith("holds records not of the shape this version "
                                            "writes: ignored, rebuilt")
    assert report["series"] == first["series"]
    assert timeline([run])["cache"]["hits"] == 3


def test_the_key_is_the_users_own_and_without_it_there_is_no_cache(tmp_path, monkeypatch):
    from optstate.analysis.timeline_cache import key_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    run = save_files(tmp_path / "run", steps=10)
    assert timeline([run])["cache"]["note"] is None
    kp = key_path()
    assert kp == tmp_path / "xdg" / "optstate" / "cache-key"
    assert kp.stat().st_size == 32 and kp.stat().st_mode & 0o777 == 0o600
    assert kp.parent.stat().st_mode & 0o777 == 0o700
    key = kp.read_bytes()
    assert timeline([run])["cache"]["hits"] == 1 and kp.read_bytes() == key  # kept
    kp.chmod(0o644)  # readable by others: not a secret any more
    report = timeline([run])
    assert report["cache"]["path"] is None and "only you can read" in report["cache"]["note"]
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # no folder can hold a key
    report = timeline([run])
    assert report["cache"]["path"] is None
    assert report["cache"]["note"].startswith(f"no cache: its key could not be kept in "
                                              f"{blocker / 'optstate'}")
    assert len(report["checkpoints"]) == 1


def test_an_unreadable_checkpoint_is_not_cached(tmp_path):
    run = save_files(tmp_path / "run")
    good = (run / "step_20.pt").read_bytes()
    (run / "step_20.pt").write_bytes(good[: len(good) // 2])  # being written, say
    st = (run / "step_20.pt").stat()
    first = timeline([run])
    assert first["run"]["read"] == 2
    data = read_cache(run / ".optstate" / "timeline-cache.json")
    assert sorted(v["record"]["label"] for v in data["entries"].values()) == ["step_10.pt",
                                                                               "step_30.pt"]
    again = timeline([run])
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (2, 1)
    (run / "step_20.pt").write_bytes(good)  # finished
    os.utime(run / "step_20.pt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert timeline([run])["run"]["read"] == 3


def test_a_symlink_loop_is_skipped_with_its_reason(tmp_path):
    run = save_files(tmp_path / "run")
    (run / "loop_a.pt").symlink_to("loop_b.pt")
    (run / "loop_b.pt").symlink_to("loop_a.pt")
    (run / "self.pt").symlink_to("self.pt")
    (run / "gone.pt").symlink_to("nowhere.pt")
    found = find_checkpoints([run])
    assert [c.label for c in found.items] == ["step_10.pt", "step_20.pt", "step_30.pt"]
    loop = "a symbolic link that leads back to itself (a loop)"
    assert found.skipped == [
        {"path": str(run / "gone.pt"), "reason": "a symbolic link to nowhere.pt, which does "
         "not exist"},
        {"path": str(run / "loop_a.pt"), "reason": loop},
        {"path": str(run / "loop_b.pt"), "reason": loop},
        {"path": str(run / "self.pt"), "reason": loop}]
    with pytest.raises(CheckpointError, match=r"self.pt is a symbolic link that leads back"):
        find_checkpoints([run / "self.pt"])
    assert len(timeline([run])["checkpoints"]) == 3


def test_the_cache_stays_in_the_run_folder(tmp_path):
    """The run folder is the one named, never where links lead; a symlinked .optstate is
    not followed; files from several folders have no cache beside them."""
    run = save_files(tmp_path / "a" / "b" / "run")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text("not yours")
    (run / "zz_link.pt").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    (run / "step_40.pt").symlink_to(run / "step_30.pt")  # a link in the run: its own name
    found = find_checkpoints([run])
    assert found.root == run.resolve()
    assert [c.label for c in found.items] == ["step_10.pt", "step_20.pt", "step_30.pt",
                                              "zz_link.pt"]
    report = timeline([run])
    assert report["cache"]["path"] == str(run.resolve() / ".optstate" / "timeline-cache.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "elsewhere"]
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["secret.txt"]
    # two files in unrelated folders: no cache at their common ancestor
    other = save_files(tmp_path / "other", steps=10)
    found = find_checkpoints([run / "step_10.pt", other / "step_10.pt"])
    assert found.root is None
    assert [c.label for c in found.items] == [str(run / "step_10.pt"),
                                              str(other / "step_10.pt")]
    report = timeline([run / "step_10.pt", other / "step_10.pt"])
    assert report["cache"]["path"] is None
    assert report["cache"]["note"] == ("no cache: the checkpoints are in several folders "
                                       "(name a cache folder to keep one)")
    assert not (tmp_path / ".optstate").exists()
    cached = timeline([run / "step_10.pt", other / "step_10.pt"], cache_dir=tmp_path / "c")
    assert cached["cache"]["path"] == str(tmp_path / "c" / "timeline-cache.json")
    # .optstate a link to someone's folder: not followed, nothing written there
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.rmtree(other / ".optstate", ignore_errors=True)
    (other / ".optstate").symlink_to(victim)
    report = timeline([other])
    assert report["cache"]["path"] is None
    assert report["cache"]["note"] == (f"no cache: {other.resolve()}/.optstate is a symbolic "
                                       "link, not followed")
    assert list(victim.iterdir()) == []


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_read_again(tmp_path):
    """cp -p, rsync -t, tar x keep the mtime, and two saves can share one clock tick: the
    identity has the inode and the ctime too (which no user can set back)."""
    run = save_files(tmp_path / "run")
    victim = run / "step_20.pt"
    obj = torch.load(victim, weights_only=True)
    torch.save(obj, victim)  # re-saved: the NaN copy below has the same size
    st = victim.stat()
    first = timeline([run])
    assert first["findings"] == []
    for s in obj["optimizer"]["state"].values():
        s["exp_avg"].fill_(float("nan"))
    (tmp_path / "x").mkdir()
    torch.save(obj, tmp_path / "x" / "step_20.pt")  # the zip names its folder by the file
    assert (tmp_path / "x" / "step_20.pt").stat().st_size == st.st_size
    os.replace(tmp_path / "x" / "step_20.pt", victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = timeline([run])
    assert (report["cache"]["hits"], report["cache"]["misses"]) == (2, 1)
    assert any(f["code"] == "nan" and f["label"] == "step_20.pt" for f in report["findings"])
    # the same bytes written in place (same inode), size and mtime kept
    report = timeline([run])
    assert report["cache"]["hits"] == 3
    st = victim.stat()
    victim.write_bytes(victim.read_bytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert timeline([run])["cache"]["misses"] == 1


def test_model_only_trainer_folders_and_an_empty_path_are_said(tmp_path):
    run = tmp_path / "out"
    for n in (10, 20, 100):  # named in step order, not as text (checkpoint-100 last)
        (run / f"checkpoint-{n}").mkdir(parents=True)
        torch.save(nn.Linear(2, 2).state_dict(), run / f"checkpoint-{n}" / "pytorch_model.bin")
        (run / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    with pytest.raises(CheckpointError) as e:
        find_checkpoints([run])
    assert str(e.value) == (f"{run}: 3 checkpoint folders (checkpoint-10, checkpoint-20, ...) "
                            "hold no optimizer state (model weights only: the Trainer's "
                            "save_only_model?)")
    with pytest.raises(CheckpointError, match="an empty path was given"):
        find_checkpoints([""])


def test_an_empty_path_on_the_command_line_is_an_error_not_the_current_folder(run_cli,
                                                                               tmp_path):
    save_files(tmp_path, steps=10)  # a run in the current folder: still not read
    r = run_cli("timeline", "", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.strip().splitlines() == [
        "Error: an empty path was given: name a run folder or checkpoint files ('.' for the "
        "current folder)"]
    assert not (tmp_path / ".optstate").exists()


def test_a_cache_file_that_is_a_link_is_neither_followed_nor_written_through(tmp_path):
    run = save_files(tmp_path / "run", steps=20)
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    (run / ".optstate").mkdir()
    (run / ".optstate" / "timeline-cache.json").symlink_to(precious)
    report = timeline([run])
    assert report["cache"]["note"] == (f"the cache {run.resolve()}/.optstate/timeline-cache."
                                       "json is a symbolic link, not followed: ignored, "
                                       "replaced")
    assert precious.read_text() == "precious\n"
    assert not (run / ".optstate" / "timeline-cache.json").is_symlink()
    assert timeline([run])["cache"]["hits"] == 2


def test_each_reader_has_its_own_cache_records(tmp_path, monkeypatch):
    """R1 F7 (issue #22): a record read natively is not served to an
    ``OPTSTATE_READER=torch`` run (nor a torch one, and its "read with torch" reason, to a
    native run): the reader asked for is part of what a record depends on."""
    run = save_files(tmp_path / "run", steps=20)
    monkeypatch.setenv("OPTSTATE_READER", "native")
    first = timeline([run])
    assert [c["reader"] for c in first["checkpoints"]] == ["native", "native"]
    monkeypatch.setenv("OPTSTATE_READER", "torch")
    report = timeline([run])
    assert (report["cache"]["hits"], report["cache"]["misses"]) == (0, 2)
    assert [(c["reader"], c["reader_note"]) for c in report["checkpoints"]] == [
        ("torch", "OPTSTATE_READER=torch")] * 2
    assert timeline([run])["cache"]["hits"] == 2
    monkeypatch.delenv("OPTSTATE_READER")  # "auto": the native reader, as asked above
    again = timeline([run])
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (2, 0)
    assert [c["reader"] for c in again["checkpoints"]] == ["native", "native"]
