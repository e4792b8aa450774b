"""``optstate timeline`` on the command line: exit status, the table and findings, --json,
--plot, bad inputs; on real runs (scripts/example_faulty_run.py: a real AdamW training loop
saving every 10 steps, with a NaN gradient and an lr x1000 injected where asked)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from optstate.numeric.tolerance import schedule_atol
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import example_faulty_run
finally:
    sys.path.remove(str(ROOT / "scripts"))

KEYS = ["schema", "run", "order", "checkpoints", "series", "lr", "findings", "spike", "cache",
        "notes"]


def _table(stdout):
    """The checkpoint table's rows, as (findings count or "", label or "… N more")."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("───")) + 1
    rows = []
    for ln in lines[start:]:
        m = re.match(r"^\s*(\d*) (step_\d+\.pt|… \d+ more)", ln)
        if not m:
            break
        rows.append((m.group(1), m.group(2)))
    return rows


def _no_nan(text):
    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """NaN in hidden.weight's gradient at step 40, lr x1000 at step 70; 8 checkpoints."""
    run = tmp_path_factory.mktemp("faulty") / "run"
    example_faulty_run.train(run, steps=80)
    return run


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    run = tmp_path_factory.mktemp("clean") / "run"
    example_faulty_run.train(run, nan_at=None, lr_at=None, steps=50)
    return run


def test_a_clean_run_exits_0_and_says_so(cli, clean):
    r = cli("timeline", clean, "--no-cache", env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"run       {clean}"
    assert lines[1] == "found     5 checkpoints, 5 read"
    assert lines[2] == "order     by the step the run recorded (the checkpoint's 'step' key)"
    assert _table(r.stdout) == [("", f"step_{s}.pt") for s in (10, 20, 30, 40, 50)]
    assert lines[-1] == "no findings: 5 checkpoints look clean (norm spikes over 10x)"
    assert "findings" not in lines and r.stderr == ""


def test_a_faulty_run_exits_1_with_each_finding_at_its_checkpoint(cli, faulty):
    r = cli("timeline", faulty, "--no-cache", env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.stderr
    out = r.stdout.splitlines()
    # the rows with findings carry their count: hidden.weight's exp_avg and exp_avg_sq at
    # 40, every other entry at 50 (the NaN spread through the loss), both groups' lr at 70
    counts = {label: n for n, label in _table(r.stdout) if n}
    assert counts == {"step_40.pt": "2", "step_50.pt": "10", "step_70.pt": "2"}
    findings = out[out.index("findings") + 1:-1]
    assert findings[0].startswith("nan step_40.pt: hidden.weight exp_avg holds 1 NaN")
    assert findings[1].startswith("nan step_40.pt: hidden.weight exp_avg_sq holds 1 NaN")
    off = [ln for ln in findings if ln.startswith("lr_off_schedule")]
    assert [ln.split()[1] for ln in off] == ["step_70.pt:", "step_70.pt:"]
    assert out[-1].startswith("14 findings at 3 of 8 checkpoints; the first at step_40.pt (nan)")


def test_json_is_the_whole_report(cli, faulty):
    r = cli("timeline", faulty, "--json", "--no-cache")
    assert r.exit_code == 1, r.stderr
    report = _no_nan(r.stdout)
    assert list(report) == KEYS
    assert report["schema"] == "optstate.timeline/1"
    assert [c["label"] for c in report["checkpoints"]] == [
        f"step_{s}.pt" for s in range(10, 90, 10)]
    assert [c["step"] for c in report["checkpoints"]] == list(range(10, 90, 10))
    # 6 params x (exp_avg, exp_avg_sq), one value per checkpoint in every series
    assert len(report["series"]) == 12
    assert all(len(s["norm"]) == 8 for s in report["series"])
    hidden = next(s for s in report["series"]
                  if (s["name"], s["entry"]) == ("hidden.weight", "exp_avg"))
    assert hidden["nan"][:4] == [0, 0, 0, 1]
    first = report["findings"][0]
    assert (first["code"], first["label"], first["name"], first["entry"]) == (
        "nan", "step_40.pt", "hidden.weight", "exp_avg")
    lr = report["lr"][0]
    want = 1000 * lr["scheduled_lr"][6]  # step 70: the chained lr x1000, up to its rounding
    assert abs(lr["lr"][6] - want) <= schedule_atol(70, want)
    assert report["cache"]["path"] is None


@pytest.mark.parametrize(("args", "error"), [
    (["nope"], "Error: nope does not exist"),
    (["{empty}"], "Error: {empty} holds no checkpoint: "),
    (["{run}", "--spike", "0.5"], "Error: --spike 0.5: a finite factor above 1"),
    (["{run}", "--spike", "1"], "Error: --spike 1.0: a finite factor above 1"),
    (["{run}", "--spike", "inf"], "Error: --spike inf: a finite factor above 1"),
    (["{run}", "--workers", "1000"], "Error: --workers 1000: 1 to 64 files read at once"),
    (["{run}", "--workers", "0"], "Error: --workers 0: 1 to 64 files read at once"),
    (["{run}", "--max-rows", "-1"], "Error: --max-rows must be 0 or more, got -1"),
    (["{run}", "--plot", "{run}/x.bmp"], "Error: cannot tell the picture format"),
])
def test_bad_input_is_one_error_line_and_exit_2(cli, clean, tmp_path, monkeypatch, args,
                                                error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    names = {"empty": tmp_path / "empty", "run": clean}
    r = cli("timeline", *[a.format(**names) for a in args])
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.splitlines()[0].startswith(error.format(**names)), r.stderr
    assert len([ln for ln in r.stderr.splitlines() if not ln.startswith("Hint:")]) == 1


def test_the_cache_is_beside_the_run_unless_told(cli, clean, tmp_path):
    r = cli("timeline", clean, "--json")
    cache = json.loads(r.stdout)["cache"]
    assert cache["path"] == str(clean / ".optstate" / "timeline-cache.json")
    again = json.loads(cli("timeline", clean, "--json").stdout)["cache"]
    assert (again["hits"], again["misses"]) == (5, 0)
    elsewhere = json.loads(cli("timeline", clean, "--json", "--cache", tmp_path).stdout)
    assert elsewhere["cache"]["path"].startswith(str(tmp_path))
    assert elsewhere["cache"]["misses"] == 5


def test_long_runs_show_first_last_and_every_row_with_a_finding(cli, faulty):
    r = cli("timeline", faulty, "--max-rows", "5", "--no-cache", env={"COLUMNS": "200"})
    assert r.exit_code == 1
    # the first and the last, then the rows with findings (40, 50, 70); what is left out
    # is counted where it is
    assert [label for _, label in _table(r.stdout)] == [
        "step_10.pt", "… 2 more", "step_40.pt", "step_50.pt", "… 1 more", "step_70.pt",
        "step_80.pt"]
    # and the first 5 findings: one fault seen in many entries at one checkpoint (the NaN
    # spreading to every param at step_50) is one block, its first finding whole and the
    # others by place (a line saying torch read a file the native reader left is no finding)
    out = [ln for ln in r.stdout.splitlines() if not ln.startswith("read with torch: ")]
    listed = [ln for ln in out[out.index("findings") + 1:-1]
              if not ln.startswith(" ") or ln.startswith("  the same")]  # not wrapped lines
    assert [ln.split()[:2] for ln in listed] == [["nan", "step_40.pt:"]] * 2 + [
        ["nan", "step_50.pt:"], ["the", "same"]] + [["lr_off_schedule", "step_70.pt:"]] * 2
    assert listed[3].startswith("  the same in 9 more entries: embed.weight (exp_avg_sq), ")
    # embed.weight is named first by position: which param the NaN reached first between
    # step_40 and step_50 cannot be told, and the block says so
    assert "which came first cannot be told from them" in " ".join(r.stdout.split())
    r = cli("timeline", faulty, "--max-rows", "3", "--no-cache", env={"COLUMNS": "200"})
    out = [ln for ln in r.stdout.splitlines() if not ln.startswith("read with torch: ")]
    assert out[-2] == "… 2 more findings (--max-rows 0 shows all; --json has all)"
    # room for two more: from both ends inwards (the second, the one before last, which
    # is in already, the third)
    r = cli("timeline", faulty, "--max-rows", "7", "--no-cache", env={"COLUMNS": "200"})
    assert [label for _, label in _table(r.stdout)] == [
        "step_10.pt", "step_20.pt", "step_30.pt", "step_40.pt", "step_50.pt", "… 1 more",
        "step_70.pt", "step_80.pt"]
    r = cli("timeline", faulty, "--max-rows", "2", "--no-cache", env={"COLUMNS": "200"})
    assert [label for _, label in _table(r.stdout)] == [
        "step_10.pt", "… 6 more", "step_80.pt"]
    everything = cli("timeline", faulty, "--max-rows", "0", "--no-cache",
                     env={"COLUMNS": "200"})
    assert len(_table(everything.stdout)) == 8


def test_names_from_files_cannot_drive_the_terminal(cli, tmp_path):
    import torch

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([{"params": [("evil\x1b[2J", p)]}], lr=0.1)
    for step in (1, 2):
        p.grad = torch.full((2,), float("nan") if step == 2 else 1.0)
        opt.step()
        torch.save(opt.state_dict(), tmp_path / f"step_{step}.pt")
    r = cli("timeline", tmp_path, "--no-cache", env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "\x1b" not in r.stdout and "evil\\x1b[2J" in r.stdout


def test_the_api_is_the_json(cli, clean):
    import optstate

    report = optstate.timeline(clean, use_cache=False)
    assert report == _no_nan(cli("timeline", clean, "--json", "--no-cache").stdout)
    with pytest.raises(optstate.OptstateError, match=r"^spike=1: a finite factor above 1"):
        optstate.timeline(clean, spike=1)


def test_plot_writes_the_picture_and_keeps_an_existing_file(cli, faulty, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run.png"
    r = cli("timeline", faulty, "--plot", out, "--no-cache")
    assert r.exit_code == 1, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = out.read_bytes()
    r = cli("timeline", faulty, "--plot", out)
    assert r.exit_code == 2 and r.stderr.startswith(f"Error: {out} already exists")
    r = cli("timeline", faulty, "--plot", out, "--force", "--json")
    assert r.exit_code == 1 and _no_nan(r.stdout)["schema"] == "optstate.timeline/1"
    assert out.read_bytes() == first  # the same run, the same bytes


def test_long_names_are_cut_at_their_start_to_keep_the_table(cli, tmp_path):
    import torch

    name = "model.encoder.layers.11.self_attention.query_key_value.weight"
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [(name, p)]}], lr=0.1)
    for step in (1, 2):
        p.grad = torch.full((3,), float(step))
        opt.step()
        torch.save(opt.state_dict(), tmp_path / f"step_{step}.pt")
    wide = cli("timeline", tmp_path, "--no-cache", env={"COLUMNS": "200"})
    assert f" {name}.exp_avg" in wide.stdout  # whole where it fits
    narrow = cli("timeline", tmp_path, "--no-cache", env={"COLUMNS": "80"})
    assert narrow.exit_code == 0
    rows = narrow.stdout.splitlines()
    rule = next(i for i, ln in enumerate(rows) if ln.startswith("───"))
    assert max(len(ln) for ln in rows[rule - 1:rule + 3]) <= 80
    cells = [ln.split()[-1] for ln in rows[rule + 1:rule + 3]]
    assert all(c.startswith("…") and len(c) >= 24 for c in cells)
    for c in cells:  # the end of the place, whole
        assert any(f"{name}.{e}".endswith(c[1:]) for e in ("exp_avg", "exp_avg_sq")), c


def test_an_unreadable_checkpoint_is_a_row_and_a_finding(cli, clean, tmp_path):
    for s in (10, 20, 30):
        (tmp_path / f"step_{s}.pt").write_bytes((clean / f"step_{s}.pt").read_bytes())
    damaged = tmp_path / "step_20.pt"
    damaged.write_bytes(damaged.read_bytes()[:500])
    r = cli("timeline", tmp_path, "--no-cache", env={"COLUMNS": "100"})
    assert r.exit_code == 1
    row = next(ln for ln in r.stdout.splitlines() if " step_20.pt " in ln)
    assert row.split() == ["1", "step_20.pt", "–", "–", "unreadable"]  # no counts, no norms
    findings = r.stdout.splitlines()
    first = findings[findings.index("findings") + 1]
    assert first.startswith("unreadable step_20.pt: could not be read:")
    assert "found     3 checkpoints, 2 read" in r.stdout


def test_a_broken_cache_is_said_and_rebuilt(cli, clean, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    for s in (10, 20):
        (run / f"step_{s}.pt").write_bytes((clean / f"step_{s}.pt").read_bytes())
    (run / ".optstate").mkdir()
    (run / ".optstate" / "timeline-cache.json").write_text("{not json")
    r = cli("timeline", "run", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[3] == "cache     0 from the cache, 2 read (run/.optstate/timeline-cache.json)"
    end = next(i for i, ln in enumerate(lines) if ln.startswith("checkpoints"))
    note = " ".join(ln.strip() for ln in lines[4:end])
    assert lines[4].startswith("          the cache ")  # under the header's value column
    assert note == (f"the cache {run.resolve()}/.optstate/timeline-cache.json was not "
                    "written by you here: ignored and rebuilt")
    r = cli("timeline", "run", env={"COLUMNS": "200"})
    assert r.stdout.splitlines()[3] == (
        "cache     2 from the cache, 0 read (run/.optstate/timeline-cache.json)")


def test_docs_name_every_field_the_report_has(faulty, tmp_path):
    """docs/timeline.md documents the schema: every key the report, a checkpoint, a
    series, an lr row, a finding and the cache's record hold is named there, and every
    finding code."""
    import optstate
    from optstate.analysis.timeline_findings import CODES

    docs = (ROOT / "docs" / "timeline.md").read_text()
    report = optstate.timeline(faulty, cache_dir=tmp_path)
    c = report["checkpoints"][6]  # step_70.pt: a scheduler, findings
    keys = {*report, *report["run"], *report["order"], *report["cache"], *c, *c["steps"],
            *c["identity"], *c["groups"][0], *c["scheduler"], *report["series"][0],
            *report["lr"][0], *report["findings"][0], *report["checkpoints"][0]["worst"]}
    cached = json.loads((tmp_path / "timeline-cache.json").read_bytes().split(b"\n", 1)[1])
    record = next(iter(cached["entries"].values()))["record"]
    entry = next(iter(record["params"][0]["entries"].values()))
    keys |= {*record, *record["params"][0], *entry}
    code = " ".join(re.findall(r"`([^`]*)`", docs))  # what the docs write as code
    missing = sorted(k for k in keys if not re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)",
                                                       code))
    assert not missing, f"docs/timeline.md does not name {missing}"
    assert not [code for code in CODES if f"`{code}`" not in docs]


def test_many_files_given_one_by_one_are_one_header_line(cli, clean):
    files = [clean / f"step_{s}.pt" for s in (10, 20, 30, 40, 50)]
    r = cli("timeline", *files, "--no-cache", env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        f"run       {files[0]}, {files[1]}, …, {files[4]} (5 paths)")
    assert len(_table(r.stdout)) == 5


def test_one_checkpoint_is_said_in_the_singular(cli, clean):
    r = cli("timeline", clean / "step_10.pt", "--no-cache")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "no findings: 1 checkpoint looks clean (norm spikes over 10x)")


def _adamw_run(run, at30=None, *, sched=True, steps=50):
    """A real AdamW loop (StepLR if ``sched``) saving every 10 steps; ``at30(opt)`` edits
    the optimizer before step 30."""
    import torch

    run.mkdir()
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sch = torch.optim.lr_scheduler.StepLR(opt, 100) if sched else None
    x = torch.randn(8, 4)
    for step in range(1, steps + 1):
        if step == 30 and at30 is not None:
            at30(opt)
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
        if sch is not None:
            sch.step()
        if step % 10 == 0:
            saved = {"optimizer": opt.state_dict(), "step": step}
            if sch is not None:
                saved["scheduler"] = sch.state_dict()
            torch.save(saved, run / f"step_{step}.pt")
    return run


def test_a_non_finite_lr_or_hyperparameter_is_kept_not_dropped(cli, tmp_path):
    """An lr set to inf by hand (a StepLR stepping on) and an eps set to NaN: the record
    holds "inf" / "nan" (docs/timeline.md), not null; the table shows them."""
    def lr_inf(opt):
        opt.param_groups[0]["lr"] = float("inf")

    def eps_nan(opt):
        opt.param_groups[0]["eps"] = float("nan")

    run = _adamw_run(tmp_path / "lr", lr_inf)
    r = cli("timeline", run, "--json", "--no-cache")
    report = _no_nan(r.stdout)
    assert report["lr"][0]["lr"] == [0.001, 0.001, "inf", "inf", "inf"]
    c = report["checkpoints"][2]
    assert c["groups"][0]["lr"] == "inf" and c["groups"][0]["hyperparams"]["lr"] == "inf"
    assert c["scheduler"]["last_lr"] == ["inf"] and c["scheduler"]["base_lrs"] == [0.001]
    assert report["checkpoints"][0]["groups"][0]["hyperparams"]["lr"] == 0.001
    r = cli("timeline", run, "--no-cache", env={"COLUMNS": "200"})
    row = next(ln for ln in r.stdout.splitlines() if " step_30.pt " in ln)
    cells = row.split()
    at = cells.index("step_30.pt")  # after the findings count, where there is one
    assert cells[at + 1:at + 4] == ["30", "inf", "0.001"], row  # lr, the scheduler's lr

    report = _no_nan(cli("timeline", _adamw_run(tmp_path / "eps", eps_nan, sched=False),
                         "--json", "--no-cache").stdout)
    eps = [c["groups"][0]["hyperparams"]["eps"] for c in report["checkpoints"]]
    assert eps == [1e-08, 1e-08, "nan", "nan", "nan"]
    changed = [f for f in report["findings"] if f["code"] == "hyperparam_changed"]
    assert changed and "null" not in changed[0]["message"], changed


def _sgd_norm_from(run, first):
    """A float64 SGD-momentum run whose momentum buffer is ``first`` at step 10 and 1e10
    from step 20 on."""
    import torch

    run.mkdir()
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    for step, g in ((10, first), (20, 1e10), (30, 1e10)):
        p.grad = torch.full_like(p, 1.0)
        opt.step()
        opt.state[p]["momentum_buffer"].fill_(g)
        torch.save({"optimizer": opt.state_dict(), "step": step}, run / f"step_{step}.pt")
    return run


def test_a_growth_factor_that_overflows_is_valid_json_and_a_norm_from_0_is_no_factor(
        cli, tmp_path):
    run = _sgd_norm_from(tmp_path / "subnormal", 1e-310)  # 2e10 / 2e-310 overflows
    r = cli("timeline", run, "--json", "--no-cache")
    assert r.exit_code == 1, r.stderr
    report = _no_nan(r.stdout)
    worst = report["checkpoints"][1]["worst"]
    assert (worst["entry"], worst["ratio"], worst["norm"]) == ("momentum_buffer", "inf", 2e10)
    r = cli("timeline", run, "--no-cache", env={"COLUMNS": "200"})
    row = next(ln for ln in r.stdout.splitlines() if " step_20.pt " in ln)
    assert "×inf" in row.split()

    run = _sgd_norm_from(tmp_path / "zero", 0.0)
    report = _no_nan(cli("timeline", run, "--json", "--no-cache").stdout)
    assert report["checkpoints"][1]["worst"]["ratio"] is None
    r = cli("timeline", run, "--no-cache", env={"COLUMNS": "200"})
    row = next(ln for ln in r.stdout.splitlines() if " step_20.pt " in ln)
    assert "from 0" in row and "×" not in row, row


def test_json_that_cannot_be_written_is_one_error_line(cli, clean, monkeypatch):
    """Whatever fails while the answer is made (here: JSON refusing a NaN that slipped
    through) is one Error line, exit 2, never a traceback."""
    import optstate.analysis.timeline as core

    real = core.build_report

    def with_a_nan(*a, **kw):
        report = real(*a, **kw)
        report["spike"] = float("nan")
        return report

    monkeypatch.setattr(core, "build_report", with_a_nan)
    r = cli("timeline", clean, "--json", "--no-cache")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: internal error: ValueError: Out of range float")


def test_the_verdict_names_the_spike_factor_as_given(cli, clean):
    for spike in ("12.0000001", "1000000.5", "20"):
        r = cli("timeline", clean, "--no-cache", "--spike", spike)
        assert r.stdout.splitlines()[-1].endswith(f"(norm spikes over {spike}x)"), r.stdout


def test_a_cache_not_written_still_says_what_came_from_it(clean, tmp_path):
    """The cache is read (4 hits, 1 changed checkpoint read) but cannot be written (a
    file size limit): the header says both."""
    import os
    import resource
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    for s in (10, 20, 30, 40, 50):
        (run / f"step_{s}.pt").write_bytes((clean / f"step_{s}.pt").read_bytes())

    def optstate(limit=None):
        def fsize():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "optstate", "timeline", str(run)],
                              capture_output=True, text=True, env=env, cwd=tmp_path,
                              preexec_fn=fsize if limit else None, timeout=120)

    assert optstate().returncode == 0
    os.utime(run / "step_50.pt")  # changed: the cache must be rewritten
    r = optstate(limit=1000)  # bytes: the cache is larger
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[3] == "cache     4 from the cache, 1 read", lines
    note = lines[4].strip()
    assert note.startswith("no cache written: ") and "File too large" in note, lines


def test_a_checkpoint_still_being_written_is_not_called_damaged(cli, clean, tmp_path):
    import os
    import time

    for s in (10, 20):
        (tmp_path / f"step_{s}.pt").write_bytes((clean / f"step_{s}.pt").read_bytes())
    old = time.time() - 3600
    for s in (10, 20):
        os.utime(tmp_path / f"step_{s}.pt", (old, old))
    live = tmp_path / "step_30.pt"  # the newest, a moment ago, cut short: being written
    live.write_bytes((clean / "step_30.pt").read_bytes()[:1000])
    report = _no_nan(cli("timeline", tmp_path, "--json", "--no-cache").stdout)
    error = report["checkpoints"][2]["error"]
    assert "may still be being written" in error and "run again once it is complete" in error
    assert "re-copy" not in error
    os.utime(live, (old + 60, old + 60))  # the same file, an hour old: damaged
    report = _no_nan(cli("timeline", tmp_path, "--json", "--no-cache").stdout)
    error = report["checkpoints"][2]["error"]
    assert "damaged" in error and "being written" not in error
    # not the newest: damaged, however recent
    os.utime(live, (old, old))
    os.utime(tmp_path / "step_20.pt")
    report = _no_nan(cli("timeline", tmp_path, "--json", "--no-cache").stdout)
    assert "being written" not in report["checkpoints"][2]["error"]


def test_every_unreadable_checkpoint_is_named_with_its_reason(cli, clean, tmp_path):
    """Many unreadable files are one finding (its first, "and at N later"); the view
    lists each one's label and reason under the findings (--max-rows of them)."""
    import os

    for s in (10, 20, 30, 40, 50):
        (tmp_path / f"step_{s}.pt").write_bytes((clean / f"step_{s}.pt").read_bytes())
    (tmp_path / "step_15.pt").write_text("not a checkpoint\n")
    (tmp_path / "step_25.pt").write_bytes((clean / "step_20.pt").read_bytes()[:700])
    (tmp_path / "step_35.pt").write_bytes(b"")
    for f in tmp_path.iterdir():
        os.utime(f, (1e9, 1e9))  # long written
    r = cli("timeline", tmp_path, "--no-cache", env={"COLUMNS": "300"})
    assert r.exit_code == 1
    out = r.stdout.splitlines()
    at = out.index("unreadable checkpoints: 3")
    listed = out[at + 1:at + 4]
    assert [ln.split()[0] for ln in listed] == ["step_15.pt:", "step_25.pt:", "step_35.pt:"]
    assert "text file" in listed[0] and "damaged" in listed[1], listed
    r = cli("timeline", tmp_path, "--no-cache", "--max-rows", "2", env={"COLUMNS": "300"})
    out = r.stdout.splitlines()
    at = out.index("unreadable checkpoints: 3")
    assert [ln.split()[0] for ln in out[at + 1:at + 4]] == [
        "step_15.pt:", "step_25.pt:", "…"]
    assert out[at + 3] == "  … 1 more (--max-rows 0 shows all; --json has all)"
