"""``optstate inspect`` through the real CLI: JSON read back with json.loads, exact values."""

from __future__ import annotations

import json

import pytest
import torch

from optstate.numeric.tolerance import sum_rtol
from tests.conftest import ROOT
from tests.optim_states import state_dict_of, stepped_optimizer


def _tutorial_checkpoint(tmp_path):
    opt, params = stepped_optimizer("Adam", steps=3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    opt.zero_grad()
    sum(p.sum() for p in params).backward()
    opt.step()
    sched.step()
    path = tmp_path / "model.tar"
    torch.save({"epoch": 4, "model_state_dict": {"w": params[0].detach()},
                "optimizer_state_dict": opt.state_dict(), "loss": 0.5,
                "scheduler": sched.state_dict()}, path)
    return path, opt.state_dict()


def test_json_document_with_exact_values(cli, tmp_path):
    path, sd = _tutorial_checkpoint(tmp_path)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["schema"] == "optstate.inspect/1"
    assert doc["file"]["path"] == str(path)
    assert doc["file"]["format"] == "zip"
    assert doc["file"]["bytes"] == path.stat().st_size
    assert doc["location"] == "optimizer_state_dict"
    assert doc["optimizer"]["kind"] == "Adam"
    assert doc["param_groups"][0]["params"] == [0, 1]
    assert doc["param_groups"][0]["hyperparams"]["betas"] == [0.9, 0.999]
    assert doc["param_groups"][0]["hyperparams"]["lr"] == sd["param_groups"][0]["lr"]
    for p in doc["params"]:
        raw = sd["state"][p["id"]]
        assert p["state"]["step"] == {"value": 4.0, "dtype": "float32"}
        for entry in ("exp_avg", "exp_avg_sq"):
            t, rep = raw[entry], p["state"][entry]
            assert rep["shape"] == list(t.shape)
            assert rep["min"] == float(t.min()) and rep["max"] == float(t.max())
            assert abs(rep["norm"] - float(t.double().norm())) <= sum_rtol(t.numel()) * rep["norm"]
            assert (rep["nan"], rep["inf"], rep["zeros"]) == (0, 0, 0.0)
    assert doc["scheduler"]["kind"] == "ExponentialLR"
    assert doc["scheduler"]["location"] == "scheduler"
    assert doc["scheduler"]["last_epoch"] == 1
    assert doc["scheduler"]["last_lr"] == [sd["param_groups"][0]["lr"]]
    assert doc["totals"]["bytes_by_dtype"] == {"float32": 4 * (12 + 4) * 2 + 4 * 2}
    assert doc["warnings"] == []


def test_human_view(cli, tmp_path):
    path, _ = _tutorial_checkpoint(tmp_path)
    r = cli("inspect", path)
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    assert lines[0] == f"file      {path}"
    assert lines[1] == "format    torch.save zip (torch >= 1.6)"
    assert lines[3] == "found at  optimizer_state_dict"
    assert lines[4].startswith("optimizer Adam  confidence high:")
    for text in ("param_groups", "hyperparameter", "exp_avg_sq", "statistics", "mean|x|",
                 "totals: 1 group, 2 params (2 with state), 4 state tensors + 2 scalars",
                 "scheduler ExponentialLR at scheduler: last_epoch 1"):
        assert text in out, text


def test_human_view_shows_warnings_and_values(cli, tmp_path):
    sd = state_dict_of("SGD", steps=1)
    sd["state"][1]["momentum_buffer"][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    r = cli("inspect", tmp_path / "nan.pt", "--values", "--param", "1")
    assert r.exit_code == 0
    assert "warning [nan] NaN in state[1].momentum_buffer (1 NaN)" in r.stdout
    assert "state[1].momentum_buffer = [nan" not in r.stdout
    assert "state[1].momentum_buffer = [–, " in r.stdout  # NaN shown as –, count above
    json.loads(cli("inspect", tmp_path / "nan.pt", "--json").stdout)  # still valid JSON


def _groups_checkpoint(tmp_path, n_groups):
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(n_groups)]
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1 * (i + 1)} for i, p in enumerate(params)],
                          momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "g.pt")
    return tmp_path / "g.pt"


def test_groups_that_differ_are_marked_without_colour(cli, tmp_path):
    out = cli("inspect", _groups_checkpoint(tmp_path, 2)).stdout
    lr_row = next(line for line in out.splitlines() if "lr *" in line)
    assert lr_row.split("│")[2:4] == [" 0.1     ", " 0.2     "]
    assert "* differs between groups" in out
    assert "momentum *" not in out


def test_many_groups_one_row_each_with_only_what_differs(cli, tmp_path):
    out = cli("inspect", _groups_checkpoint(tmp_path, 6)).stdout
    assert ("6 groups: columns show the hyperparameters that differ; same in every group: "
            "momentum=0.9, dampening=0,") in " ".join(out.split())  # rich wraps at 80
    rows = [line.split("│")[1:4] for line in out.splitlines() if line.startswith("│")]
    assert [r[2].strip() for r in rows[:6]] == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6"]


def test_no_stats_json_has_structure_only(cli, tmp_path):
    torch.save(state_dict_of("Adagrad"), tmp_path / "a.pt")
    r = cli("inspect", tmp_path / "a.pt", "--no-stats", "--json")
    doc = json.loads(r.stdout)
    assert doc["stats"] is False
    assert doc["params"][0]["state"]["sum"] == {"shape": [3, 4], "dtype": "float32",
                                                "numel": 12, "bytes": 48}
    human = cli("inspect", tmp_path / "a.pt", "--no-stats").stdout
    assert "statistics" not in human
    assert "--no-stats: structure only" in human


def test_group_and_param_focus(cli, tmp_path):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    (a.sum() + b.sum()).backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "g.pt")
    doc = json.loads(cli("inspect", tmp_path / "g.pt", "--group", "1", "--json").stdout)
    assert [p["position"] for p in doc["params"]] == [1]
    assert doc["selection"] == {"params": [1], "groups": [1]}
    r = cli("inspect", tmp_path / "g.pt", "--param", "5")
    assert r.exit_code == 2
    assert r.stderr == ("Error: --param 5: the state has 2 parameters (positions 0..1)\n")
    assert r.stdout == ""


def test_several_optimizer_states_are_listed_and_key_picks(cli, tmp_path):
    ckpt = {"pytorch-lightning_version": "2.4.0", "epoch": 1, "state_dict": {},
            "optimizer_states": [state_dict_of("SGD"), state_dict_of("RMSprop")],
            "lr_schedulers": []}
    path = tmp_path / "gan.ckpt"
    torch.save(ckpt, path)
    r = cli("inspect", path)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == (
        f"Error: {path} holds 2 optimizer states: optimizer_states[0] (SGD, 1 group, 2 params); "
        "optimizer_states[1] (RMSprop, 1 group, 2 params)\n"
        "Hint: pick one with --key, e.g. --key 'optimizer_states[0]'\n")
    doc = json.loads(cli("inspect", path, "--key", "optimizer_states[1]", "--json").stdout)
    assert doc["location"] == "optimizer_states[1]"
    assert doc["locations"] == ["optimizer_states[0]", "optimizer_states[1]"]
    assert doc["optimizer"]["kind"] == "RMSprop"


def test_model_only_file_exit_2_says_what_it_holds(cli, tmp_path):
    torch.save({f"layer{i}.weight": torch.zeros(3) for i in range(4)}, tmp_path / "m.pt")
    r = cli("inspect", tmp_path / "m.pt", "--json")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.splitlines()[0] == (
        f"Error: {tmp_path / 'm.pt'} holds a model state_dict with 4 tensors (12 elements); "
        "no optimizer state found")


def test_hf_folder(cli, tmp_path):
    folder = tmp_path / "checkpoint-20"
    folder.mkdir()
    opt, _ = stepped_optimizer("AdamW")
    sched = torch.optim.lr_scheduler.LinearLR(opt, total_iters=10)
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    doc = json.loads(cli("inspect", folder, "--json").stdout)
    assert doc["file"]["read"] == str(folder / "optimizer.pt")
    assert doc["file"]["siblings"] == {"scheduler": str(folder / "scheduler.pt")}
    assert doc["optimizer"]["kind"] == "AdamW"
    assert doc["scheduler"]["kind"] == "LinearLR"
    assert doc["scheduler"]["location"] == "scheduler.pt"
    lines = cli("inspect", folder).stdout.splitlines()
    assert lines[:2] == [f"file      {folder}",
                         "read      optimizer.pt (+ scheduler.pt: scheduler)"]
    assert lines[4] == "found at  optimizer.pt (the whole file)"


def test_errors_are_one_line_without_traceback(run_cli, tmp_path):
    r = run_cli("inspect", "/nonexistent/ckpt.pkl")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == "Error: /nonexistent/ckpt.pkl does not exist\n"


def test_not_a_checkpoint(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = cli("inspect", tmp_path / "notes.txt", "--json")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"Error: {tmp_path / 'notes.txt'} is a text file, not a torch.save file\n"


def test_unsafe_warns_loudly(cli, tmp_path):
    torch.save(state_dict_of("SGD"), tmp_path / "s.pt")
    r = cli("inspect", tmp_path / "s.pt", "--unsafe", "--json")
    assert r.exit_code == 0
    assert r.stderr.startswith("WARNING: --unsafe: loading with full pickle")
    assert json.loads(r.stdout)["optimizer"]["kind"] == "SGD"


def test_help_teaches(cli):
    r = cli("inspect", "--help")
    assert r.exit_code == 0
    assert "Show what an optimizer checkpoint holds" in r.stdout
    assert "Example: optstate inspect sgd.pkl" in r.stdout
    for flag in ("--key", "--param", "--group", "--values", "--no-stats", "--json", "--unsafe"):
        assert flag in r.stdout


def test_human_view_caps_params_and_json_keeps_all(cli, tmp_path):
    params = [torch.nn.Parameter(torch.full((2,), float(i))) for i in range(7)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "p.pt")
    out = " ".join(cli("inspect", tmp_path / "p.pt", "--max-params", "3").stdout.split())
    assert "… 4 more params not shown (--max-params 0 shows all;" in out
    assert "totals: 1 group, 7 params (7 with state)" in out
    full = cli("inspect", tmp_path / "p.pt", "--max-params", "0").stdout
    assert "more params not shown" not in full
    rows = [ln.split()[0] for ln in full.splitlines() if " momentum_buffer " in ln]
    assert rows == ["0", "1", "2", "3", "4", "5", "6"] * 2  # structure and statistics
    doc = json.loads(cli("inspect", tmp_path / "p.pt", "--max-params", "3", "--json").stdout)
    assert len(doc["params"]) == 7


def test_json_schema_keys_are_stable(cli, tmp_path):
    """The documented top-level and per-entry keys (README, "inspect"): scripts rely on them."""
    torch.save(state_dict_of("Adam"), tmp_path / "a.pt")
    doc = json.loads(cli("inspect", tmp_path / "a.pt", "--json").stdout)
    assert list(doc) == ["schema", "file", "location", "locations", "optimizer", "legacy_ids",
                         "stats", "selection", "naming", "param_groups", "params", "totals",
                         "scheduler", "warnings", "notes"]
    assert list(doc["file"]) == ["path", "read", "format", "bytes", "bytes_read", "bytes_total",
                                 "requests", "retries", "reader", "reader_note"]
    assert list(doc["optimizer"]) == ["kind", "confidence", "reason", "candidates",
                                      "hyperparams", "state_keys", "foreign", "library",
                                      "import_path", "wrapper", "inner", "closest", "differs"]
    assert list(doc["param_groups"][0]) == ["index", "params", "hyperparams", "n_params",
                                            "names"]
    assert list(doc["params"][0]) == ["id", "position", "group", "name", "name_source",
                                      "aliases", "state", "stored"]
    assert list(doc["naming"]) == ["source", "named", "total", "model", "matched", "reason",
                                   "notes"]
    assert list(doc["params"][0]["state"]["exp_avg"]) == [
        "shape", "dtype", "numel", "bytes", "norm", "min", "max", "mean", "mean_abs", "nan",
        "inf", "zeros"]
    assert list(doc["totals"]) == ["groups", "params", "params_with_state", "state_tensors",
                                   "state_scalars", "numel", "bytes", "bytes_by_dtype",
                                   "bytes_stored", "bytes_stored_by_format",
                                   "orphan_state_keys", "low_bit"]


def test_legacy_ids_shown_beside_positions(cli, tmp_path):
    sd = state_dict_of("SGD", steps=1)
    ids = [140234567890123, 140234567890555]
    torch.save({"state": {ids[i]: v for i, v in sd["state"].items()},
                "param_groups": [{**sd["param_groups"][0], "params": ids}]},
               tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    out = cli("inspect", tmp_path / "old.pth", "--no-stats").stdout
    assert "format    torch.save legacy pickle (torch < 1.6)" in out
    rows = [ln.split() for ln in out.splitlines() if " momentum_buffer " in ln]
    assert rows == [["0", str(ids[0]), "momentum_buffer", "3x4", "float32", "12", "48"],
                    ["1", str(ids[1]), "momentum_buffer", "4", "float32", "4", "16"]]
    assert "note [legacy_ids] state is keyed by id(param) (torch < 1.6)" in out


def test_values_of_lbfgs_history_items(cli, tmp_path):
    sd = state_dict_of("LBFGS", steps=2)
    torch.save(sd, tmp_path / "l.pt")
    out = cli("inspect", tmp_path / "l.pt", "--values").stdout
    assert "state[0].old_dirs[0] = [" in out
    doc = json.loads(cli("inspect", tmp_path / "l.pt", "--values", "--json").stdout)
    first = doc["params"][0]["state"]["old_dirs"]["items"][0]
    assert first["values"] == sd["state"][0]["old_dirs"][0].tolist()


def test_values_written_as_simulate_writes_them(cli, tmp_path):
    """A tensor's values read [[a, b], [c, d]] in inspect as in simulate (not as tuples,
    which is how a hyperparameter's list is written)."""
    path = tmp_path / "sgd.pt"
    sim = cli("simulate", "--lr", "0.1", "--momentum", "0.9", "--save", path,
              env={"COLUMNS": "120"})
    expected = "[[6.51321, 6.51321], [6.51321, 6.51321]]"
    assert f"momentum_buffer │ 2x2   │ {expected}" in sim.stdout
    out = cli("inspect", path, "--values").stdout
    assert f"state[0].momentum_buffer = {expected}\n" in out


_HEADER_KEYS = ("file", "read", "format", "size", "found at", "optimizer", "names")


def _header_rows(stdout: str, columns: int) -> list[tuple[str, str]]:
    """The header's lines (up to the param_groups table) as (key, value) pairs; a line
    that continues the value above has key ''. Every line must be one of the two: a key
    line has its value at column 10, a continuation line hangs under column 10 (less deep
    only for a word too long for the value column, which then stays whole)."""
    rows = []
    for line in stdout.split("param_groups")[0].splitlines():
        assert len(line) <= columns, line
        key = line[:10].strip()
        if key in _HEADER_KEYS and (line == key or line[:10] == key.ljust(10)):
            value = line[10:]  # empty: the first word fits a line, not the value column
            assert not value.startswith(" "), line
            rows.append((key, value))
            continue
        value = line.lstrip(" ")
        indent = len(line) - len(value)
        # never back to column 0, unless one word fills the whole line
        assert rows and value and (indent or max(map(len, value.split())) >= columns), line
        assert indent == 10 or max(map(len, value.split())) > columns - 10, line
        rows.append(("", value))
    return rows


@pytest.mark.parametrize("columns", [80, 60, 44])
@pytest.mark.parametrize("path", [
    "sample_checkpoints/tutorial_cnn.pt",
    "tests/fixtures/hf_lightning/hf_trainer_bert_mlm/checkpoint-3",
])
def test_header_wraps_under_the_value_column(cli, columns, path, monkeypatch):
    """Long header values (optimizer reason, names and their note) wrap with a hanging
    indent of 10 columns, never back to column 0, at any width; no word is lost. (The path
    is given relative to the repository: an absolute one is as long as the checkout's
    folder, and a path word nearly as wide as the console must hang less deep.)"""
    if "hf_" in path:
        pytest.importorskip("transformers")
    monkeypatch.chdir(ROOT)
    wide = _header_rows(cli("inspect", path, "--no-stats", env={"COLUMNS": "400"}).stdout,
                        400)
    r = cli("inspect", path, "--no-stats", env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.stderr
    rows = _header_rows(r.stdout, columns)
    assert len(rows) > len([k for k, _ in rows if k])  # something did wrap
    assert [k for k, _ in rows if k] == [k for k, _ in wide if k]
    # the same words, in the same order, per header line
    words = [k for k, _ in wide if k]
    for key in words:
        i = next(i for i, (k, _) in enumerate(rows) if k == key)
        j = next((n for n in range(i + 1, len(rows)) if rows[n][0]), len(rows))
        w = next(i for i, (k, _) in enumerate(wide) if k == key)
        v = next((n for n in range(w + 1, len(wide)) if wide[n][0]), len(wide))
        assert "".join("".join(x.split()) for _, x in rows[i:j]) == \
            "".join("".join(x.split()) for _, x in wide[w:v])


def test_header_keeps_a_word_whole_that_fits_a_line_but_not_the_value_column():
    """At 40 columns a 35-character name cannot hang under column 10: that value hangs
    less deep and the name stays whole (tests/test_width.py's rule); a word wider than the
    console folds; short values keep the 10-column indent."""
    from rich.text import Text

    from optstate.render.inspect_view import Header

    name = "encoder.layers.0.attn.q_proj.weight"
    rows = Header()
    rows.add("names", Text(f"12 of 12 from a model; first {name}, then more words here"))
    rows.add("optimizer", Text("Adam  confidence high: " + "word " * 12))
    rows.add("file", Text("x" * 50))
    lines = [t.plain for t in rows.lines(40)]
    assert all(len(x) <= 40 for x in lines), lines
    assert any(x.strip() == name + "," for x in lines), lines
    names = lines[:next(i for i, x in enumerate(lines) if x.startswith("optimizer"))]
    assert names[0].startswith("names     12 of 12")
    assert all(x.startswith(" ") and x.strip() for x in names[1:])  # never column 0
    opt = lines[len(names):next(i for i, x in enumerate(lines) if x.startswith("file"))]
    assert len(opt) > 1 and all(x.startswith(" " * 10 + "word") for x in opt[1:])
    assert lines[-2:] == ["file      " + "x" * 30, " " * 10 + "x" * 20]
