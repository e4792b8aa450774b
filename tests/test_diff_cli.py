"""``optstate diff`` on the command line: output, JSON schema, exit status, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests import hostile_corpus as hc


def _sgd_files(folder):
    """a.pt: SGD(momentum) after one step; b.pt: lr 0.1 -> 0.2 and one more step."""
    ps = [torch.ones(2, 2, requires_grad=True), torch.ones(3, requires_grad=True)]
    opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), folder / "a.pt")
    opt.param_groups[0]["lr"] = 0.2
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), folder / "b.pt")


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _sgd_files(tmp_path)
    return tmp_path


HEAD = ("a: a.pt · SGD · 1 group, 2 params\n"
        "b: {b} · SGD · 1 group, 2 params\n"
        "compared: exact · NaN = NaN · params matched by position\n")


def test_identical_files_exit_0_with_one_summary_line(cli, files):
    r = cli("diff", "a.pt", "a.pt")
    assert r.exit_code == 0
    assert r.stdout == HEAD.format(b="a.pt") + "no differences: 11 items equal\n"
    assert r.stderr == ""


def test_differences_exit_1_with_tables(cli, files):
    r = cli("diff", "a.pt", "b.pt")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[:3] == HEAD.format(b="b.pt").splitlines()
    assert lines[-1] == "3 differences: 0 structural, 3 numeric; 8 items equal"
    row = next(ln for ln in lines if "param_groups[0].lr" in ln)
    assert row.split("│")[1:5] == [" param_groups[0].lr ", " changed ", " 0.1 ", " 0.2 "]
    # momentum_buffer after 1 step is 1 everywhere, after 2 steps 0.9 + 1 = 1.9
    row = next(ln for ln in lines if "state[1].momentum_buffer" in ln)
    assert [c.strip() for c in row.split("│")[1:7]] == [
        "state[1].momentum_buffer", "3/3", "0.9", "0.4737", "1.732", "3.291"]


def test_quiet_prints_nothing(cli, files):
    for other, code in (("a.pt", 0), ("b.pt", 1)):
        r = cli("diff", "-q", "a.pt", other)
        assert (r.exit_code, r.stdout, r.stderr) == (code, "", "")


def test_json_schema_and_paths(cli, files):
    r = cli("diff", "--json", "a.pt", "b.pt")
    assert r.exit_code == 1
    rep = json.loads(r.stdout)
    assert rep["schema"] == "optstate.diff/1"
    assert rep["equal"] is False and rep["complete"] is True
    size = (files / "a.pt").stat().st_size
    assert rep["a"] == {"path": "a.pt", "file": "a.pt", "location": "", "scheduler_location": None,
                        "bytes": size, "format": "zip",
                        # what was read: a local file is memory-mapped, not counted
                        "bytes_read": None, "bytes_total": size, "requests": None,
                        "retries": None, "reader": "native", "reader_note": None}
    assert [(c["path"], c["kind"]) for c in rep["changes"]] == [
        ("param_groups[0].lr", "changed"), ("state[0].momentum_buffer", "values"),
        ("state[1].momentum_buffer", "values")]
    assert rep["changes"][0] == {"path": "param_groups[0].lr", "kind": "changed",
                                 "before": 0.1, "after": 0.2, "metrics": None}
    m = rep["changes"][1]["metrics"]
    x, y = torch.ones(4, dtype=torch.float64), torch.full((4,), 1.9).double()
    assert m == {"numel": 4, "outside": 4, "max_abs": float((x - y).abs().max()),
                 "max_rel": float(((x - y).abs() / y).max()), "norm_a": float(x.norm()),
                 "norm_b": float(y.norm()), "nan_a_only": 0, "nan_b_only": 0,
                 "inf_a_only": 0, "inf_b_only": 0, "nan_both": 0}
    assert rep["counts"] == {"differences": 3, "structural": 0, "numeric": 3, "equal": 8,
                             "ignored": 0}
    assert rep["optimizer"] == ["SGD", "SGD"]
    assert rep["omitted"] == 0 and "same" not in rep


def test_json_verbose_lists_equal_items(cli, files):
    rep = json.loads(cli("diff", "--json", "-v", "a.pt", "a.pt").stdout)
    assert rep["equal"] is True and rep["changes"] == []
    paths = [c["path"] for c in rep["same"]]
    assert paths[0] == "param_groups[0].lr" and paths[-2:] == [
        "state[0].momentum_buffer", "state[1].momentum_buffer"]
    assert len(paths) == 11


def test_verbose_human_view_lists_equal_items(cli, files):
    r = cli("diff", "-v", "a.pt", "a.pt")
    assert r.exit_code == 0
    assert "param_groups[0].nesterov" in r.stdout
    assert "state[0].momentum_buffer" in r.stdout


def test_max_diffs_caps_the_listing(cli, files):
    rep = json.loads(cli("diff", "--json", "--max-diffs", "1", "a.pt", "b.pt").stdout)
    assert len(rep["changes"]) == 1 and rep["omitted"] == 2
    r = cli("diff", "--max-diffs", "1", "a.pt", "b.pt")
    lines = r.stdout.splitlines()
    assert "… 2 more differences not listed (--max-diffs N lists more, --json all)" in lines
    assert not any("state[" in ln for ln in lines)  # only param_groups[0].lr is listed
    row = next(ln for ln in lines if ln.startswith("│ momentum_buffer"))
    assert [c.strip() for c in row.split("│")[1:5]] == ["momentum_buffer", "2/2", "7/7", "0.9"]


def test_tolerances_and_ignore_from_the_command_line(cli, files):
    # buffers differ by 0.9 (b = 1.9): inside atol 0.5 + rtol 0.25 * 1.9 = 0.975
    assert cli("diff", "-q", "--ignore", "lr", "--atol", "0.5", "--rtol", "0.25", "a.pt",
               "b.pt").exit_code == 0
    assert cli("diff", "-q", "--ignore", "lr", "--atol", "0.5", "a.pt", "b.pt").exit_code == 1
    assert cli("diff", "-q", "--ignore", "lr", "--rtol", "0.25", "a.pt", "b.pt").exit_code == 1
    rep = json.loads(cli("diff", "--json", "--ignore", "momentum_buffer", "--ignore", "lr",
                         "a.pt", "b.pt").stdout)
    assert rep["equal"] is True and rep["counts"]["ignored"] == 3
    assert rep["options"]["ignore"] == ["momentum_buffer", "lr"]


def test_nan_differs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = {"state": {0: {"buf": torch.tensor([1.0, math.nan])}},
          "param_groups": [{"params": [0], "lr": 0.1}]}
    torch.save(sd, "a.pt")
    torch.save(sd, "b.pt")
    assert cli("diff", "-q", "a.pt", "b.pt").exit_code == 0
    r = cli("diff", "--json", "--nan-differs", "a.pt", "b.pt")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["changes"][0]["metrics"]["outside"] == 1


def test_key_per_side(cli, files):
    a = torch.load(files / "a.pt", weights_only=True)
    b = torch.load(files / "b.pt", weights_only=True)
    torch.save({"optimizer_states": [b, a], "epoch": 3}, "lightning.ckpt")
    r = cli("diff", "a.pt", "lightning.ckpt")
    assert r.exit_code == 2
    # the wording is locate's (owned by inspect); diff passes it through as one line
    assert r.stderr.startswith("Error: lightning.ckpt holds 2 optimizer states")
    assert "Hint: pick one with --key" in r.stderr
    assert cli("diff", "-q", "a.pt", "lightning.ckpt", "--key-b",
               "optimizer_states[1]").exit_code == 0
    assert cli("diff", "-q", "a.pt", "lightning.ckpt", "--key-b",
               "optimizer_states[0]").exit_code == 1
    rep = json.loads(cli("diff", "--json", "lightning.ckpt", "lightning.ckpt", "--key-a",
                         "optimizer_states[0]", "--key-b", "optimizer_states[1]").stdout)
    assert rep["a"]["location"] == "optimizer_states[0]"
    assert rep["b"]["location"] == "optimizer_states[1]"
    assert rep["changes"][0]["before"] == 0.2
    # --key applies to both sides
    assert cli("diff", "-q", "lightning.ckpt", "lightning.ckpt", "--key",
               "optimizer_states[1]").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (("a.pt", "missing.pt"), "Error: missing.pt does not exist"),
    (("-q", "--json", "a.pt", "b.pt"),
     "Error: --quiet prints nothing; it cannot be combined with --json"),
    (("--atol", "-1", "a.pt", "b.pt"), "Error: --atol must be a finite number >= 0, got -1.0"),
    (("--max-diffs", "-1", "a.pt", "b.pt"), "Error: --max-diffs must be 0 or more, got -1"),
    (("--match", "name", "a.pt", "b.pt"),
     "Error: --match name needs parameter names in both states "
     "(param_groups[*].param_names, unique)"),
])
def test_bad_input_is_one_error_line_and_exit_2(cli, files, args, message):
    r = cli("diff", *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.splitlines()[0] == message
    assert "Traceback" not in r.stderr


def test_not_an_optimizer_state_is_exit_2(cli, files):
    torch.save({"w": torch.zeros(2)}, "model.pt")
    r = cli("diff", "a.pt", "model.pt")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0].startswith("Error: model.pt holds a model state_dict")


def test_hint_for_torch_version_keys_goes_to_stderr(cli, files):
    sd = torch.load(files / "a.pt", weights_only=True)
    del sd["param_groups"][0]["foreach"]
    torch.save(sd, "old.pt")
    r = cli("diff", "a.pt", "old.pt")
    assert r.exit_code == 1
    assert r.stderr == "Hint: keys that differ between torch versions: --ignore foreach\n"
    assert cli("diff", "-q", "--ignore", "foreach", "a.pt", "old.pt").exit_code == 0


def test_scheduler_difference_and_note(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = torch.optim.SGD([torch.ones(2, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, "a.pt")
    torch.save({"optimizer": opt.state_dict(), "scheduler": {**sched.state_dict(),
                                                             "last_epoch": 7}}, "b.pt")
    torch.save(opt.state_dict(), "bare.pt")
    rep = json.loads(cli("diff", "--json", "a.pt", "b.pt").stdout)
    assert [(c["path"], c["before"], c["after"]) for c in rep["changes"]] == [
        ("scheduler.last_epoch", 0, 7)]
    r = cli("diff", "a.pt", "bare.pt")
    assert r.exit_code == 0
    assert "note: only a has a scheduler state (scheduler); not compared" in r.stdout


def test_unsafe_warns(cli, files):
    r = cli("diff", "--unsafe", "a.pt", "a.pt")
    assert r.exit_code == 0
    assert r.stderr.startswith("WARNING: --unsafe")


def test_help_teaches(cli):
    r = cli("diff", "--help")
    assert r.exit_code == 0
    assert "Compare two optimizer checkpoints" in r.stdout
    assert "optstate diff -q step1000.pt step2000.pt && echo same" in r.stdout


@pytest.mark.slow  # one real process (imports torch): exit status as a shell sees it
def test_exit_status_in_a_real_process(run_cli, files):
    r = run_cli("diff", "-q", "a.pt", "b.pt", cwd=files)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "")


def test_same_state_across_formats_is_equal(cli, files):
    """A torch.save file, the same state in a Hugging Face folder and as a DCP folder."""
    hf = files / "checkpoint-10"
    hf.mkdir()
    (hf / "optimizer.pt").write_bytes((files / "a.pt").read_bytes())
    r = cli("diff", "a.pt", "checkpoint-10")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[1] == "b: checkpoint-10 (optimizer.pt) · SGD · 1 group, 2 params"
    rep = json.loads(cli("diff", "--json", "a.pt", "checkpoint-10").stdout)
    assert (rep["b"]["path"], rep["b"]["file"]) == ("checkpoint-10",
                                                    str(Path("checkpoint-10/optimizer.pt")))
    assert cli("convert", "a.pt", "a_dcp").exit_code == 0
    rep = json.loads(cli("diff", "--json", "a_dcp", "a.pt").stdout)
    assert rep["equal"] is True and rep["counts"]["equal"] == 11
    assert cli("diff", "-q", "a_dcp", "b.pt").exit_code == 1


def test_many_differences_are_summarised_per_entry(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ps = [torch.zeros(2, requires_grad=True) for _ in range(30)]
    opt = torch.optim.Adam(ps, lr=0.1)
    for step in range(2):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        torch.save(opt.state_dict(), f"s{step}.pt")
    r = cli("diff", "s0.pt", "s1.pt")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert sum("│ state[" in ln for ln in lines) == 50  # HUMAN_ROWS of 90 differences
    assert "… 40 more differences not listed (--max-diffs N lists more, --json all)" in lines
    entry_rows = [[c.strip() for c in ln.split("│")[1:5]] for ln in lines
                  if ln.startswith("│ exp_avg") or ln.startswith("│ step")]
    # Adam, constant gradient 1: exp_avg 0.1 -> 0.19, exp_avg_sq 0.001 -> 0.001999
    assert entry_rows == [["step", "30/30", "–", "–"], ["exp_avg", "30/30", "60/60", "0.09"],
                          ["exp_avg_sq", "30/30", "60/60", "0.000999"]]
    assert lines[-1] == "90 differences: 0 structural, 90 numeric; 11 items equal"
    rep = json.loads(cli("diff", "--json", "s0.pt", "s1.pt").stdout)
    assert len(rep["changes"]) == 90 and rep["omitted"] == 0
    a = torch.load("s0.pt", weights_only=True)["state"]
    b = torch.load("s1.pt", weights_only=True)["state"]
    max_abs = max(float((a[i]["exp_avg"].double() - b[i]["exp_avg"].double()).abs().max())
                  for i in range(30))
    assert rep["by_entry"][1] == {"entry": "exp_avg", "compared": 30, "differ": 30,
                                  "outside": 60, "numel": 60, "max_abs": max_abs,
                                  "nan_a_only": 0, "nan_b_only": 0, "inf_a_only": 0,
                                  "inf_b_only": 0, "nan_both": 0}
    assert len(cli("diff", "-v", "s0.pt", "s1.pt").stdout.splitlines()) > 100


def test_different_optimizers_fit_80_columns_with_whole_paths(cli, files):
    ps = [torch.ones(2, 2, requires_grad=True), torch.ones(3, requires_grad=True)]
    opt = torch.optim.AdamW(ps, lr=0.1)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), "adamw.pt")
    r = cli("diff", "-v", "a.pt", "adamw.pt")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert "│ param_groups[0].decoupled_weight_decay │ added " in r.stdout
    assert "note: a holds SGD state, b holds AdamW state" in lines


# The ODD corpus cases torch loads but optstate refuses as malformed (one Error line).
_ODD_REFUSED = {"group_not_dict", "params_not_list", "state_not_dict", "unhashable_param"}


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: quantized/CSR are deprecated/beta
@pytest.mark.parametrize("name", sorted(hc.ODD))
def test_odd_state_against_itself_is_equal(cli, name, tmp_path):
    """diff(a, a) is empty for every odd state that loads, including hyperparameters of
    type bytes, complex or set (once reported as a change of type bytes -> bytes)."""
    p = hc.ODD[name](tmp_path)
    r = cli("diff", "--json", p, p)
    if name in _ODD_REFUSED:
        assert r.exit_code == 2 and "malformed optimizer state" in r.stderr, r.stderr
        return
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["changes"] == []


@pytest.mark.parametrize(("key", "a", "b", "shown"), [
    ("x", b"\xff\x00", b"\xff\x01", ["b'\\xff\\x00'", "b'\\xff\\x01'"]),
    ("c", complex(1, 2), complex(1, 3), ["(1+2j)", "(1+3j)"]),
    ("s", {1, 2}, {1, 3}, ["{1, 2}", "{1, 3}"]),
])
def test_odd_hyperparameter_change_is_a_changed_value(cli, tmp_path, key, a, b, shown):
    for name, v in (("a.pt", a), ("b.pt", b)):
        sd = hc.adamw_state()
        sd["param_groups"][0][key] = v
        torch.save(sd, tmp_path / name)
    r = cli("diff", "--json", tmp_path / "a.pt", tmp_path / "b.pt")
    assert r.exit_code == 1
    [c] = json.loads(r.stdout)["changes"]
    assert (c["path"], c["kind"]) == (f"param_groups[0].{key}", "changed")
    assert [c["before"], c["after"]] == shown


def test_complex_hyperparameter_within_tolerance_is_equal(cli, tmp_path):
    for name, v in (("a.pt", complex(1, 2)), ("b.pt", complex(1, 2.05))):
        sd = hc.adamw_state()
        sd["param_groups"][0]["c"] = v
        torch.save(sd, tmp_path / name)
    args = ("diff", "-q", tmp_path / "a.pt", tmp_path / "b.pt")
    assert cli(*args).exit_code == 1
    assert cli(*args, "--atol", "0.1").exit_code == 0


def test_key_error_names_the_file_it_applies_to(cli, files):
    """--key applies to both files: the error says which one has nothing there."""
    sd = torch.load("a.pt", weights_only=True)
    torch.save({"optimizer": sd}, "wrapped.pt")
    r = cli("diff", "wrapped.pt", "a.pt", "--key", "optimizer")
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == "Error: --key 'optimizer': nothing at 'optimizer' in a.pt"
    assert cli("diff", "wrapped.pt", "a.pt", "--key-a", "optimizer").exit_code == 0
