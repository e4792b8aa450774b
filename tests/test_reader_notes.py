"""What ``file.reader`` / ``reader_note`` and the human ``read with torch:`` line tell a
user about which reader read a checkpoint (issue #22, review R2: F3 F5 F6 F7).

- A checkpoint read natively whose scheduler file beside it was read with torch says so.
- Every note reads well after "read with torch: ": the reason only, in a user's words,
  no torch-internal function names, no "is read with torch" repeated.
- An unknown ``OPTSTATE_READER`` value is one ``Error:`` line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from optstate.base.errors import ConfigError
from optstate.io.source import open_source
from optstate.io.torch_file import choose_reader
from tests.conftest import ROOT


def _state():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    return opt.state_dict(), sched.state_dict()


def _hf_folder(root: Path, legacy_scheduler: bool) -> Path:
    folder = root / "checkpoint-5"
    folder.mkdir(parents=True)
    opt, sched = _state()
    torch.save(opt, folder / "optimizer.pt")
    torch.save(sched, folder / "scheduler.pt",
               _use_new_zipfile_serialization=not legacy_scheduler)
    return folder


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.pop("OPTSTATE_READER", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "optstate", *args], capture_output=True,
                          text=True, cwd=ROOT, env=full, timeout=300)


# ------------------------------------------------------------------ F3: the sibling file


def test_a_legacy_scheduler_beside_a_native_optimizer_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    folder = _hf_folder(tmp_path, legacy_scheduler=True)
    for target in (folder, folder / "optimizer.pt"):
        src = open_source(target, reader="auto")
        assert src.reader == "native"  # the optimizer's own file
        assert src.reader_note == ("scheduler.pt: read with torch (the legacy (non-zip) "
                                   "torch.save format)")
        assert "scheduler" in src.siblings


def test_a_zip_scheduler_beside_a_native_optimizer_file_says_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    src = open_source(_hf_folder(tmp_path, legacy_scheduler=False), reader="auto")
    assert (src.reader, src.reader_note) == ("native", None)


def test_the_sibling_note_in_the_json_and_the_human_view(tmp_path):
    folder = _hf_folder(tmp_path, legacy_scheduler=True)
    got = _cli("inspect", str(folder), "--json", "--no-stats")
    assert got.returncode == 0, got.stderr
    file = json.loads(got.stdout)["file"]
    assert file["reader"] == "native"
    assert file["reader_note"].startswith("scheduler.pt: read with torch (the legacy")
    human = _cli("inspect", str(folder), "--no-stats")
    assert human.returncode == 0, human.stderr
    lines = [ln for ln in human.stdout.splitlines() if "read with torch" in ln]
    assert lines == ["scheduler.pt: read with torch (the legacy (non-zip) torch.save format)"]


# ----------------------------------------------------------- F5 F6: notes in users' words


def _note(path: Path) -> str:
    src = open_source(path, reader="auto")
    assert src.reader == "torch"
    assert src.reader_note
    return src.reader_note


def _plain(note: str) -> None:
    """Reads well after 'read with torch: '."""
    assert "read with torch" not in note, note
    assert "_rebuild" not in note and "torch._" not in note, note


def test_a_rezipped_file_says_what_compressed_means(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    plain, deflated = tmp_path / "a.pt", tmp_path / "deflated.pt"
    torch.save(_state()[0], plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(deflated, "w",
                                                        zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    note = _note(deflated)
    _plain(note)
    assert note == ("the zip's members are compressed (torch.save stores them uncompressed, "
                    "so it was re-zipped)")


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_a_quantized_tensor_is_named_so(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    opt = _state()[0]
    opt["state"][0]["exp_avg_q"] = torch.quantize_per_tensor(torch.randn(4), 0.1, 0,
                                                             torch.qint8)
    torch.save(opt, tmp_path / "q.pt")
    note = _note(tmp_path / "q.pt")
    _plain(note)
    assert note.startswith("a quantized tensor"), note


def test_a_tensor_subclass_is_named_so(monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    note = _note(ROOT / "tests/fixtures/lowbit/torchao_AdamW8bit/optimizer.pt")
    _plain(note)
    assert note.startswith("a tensor subclass"), note


def test_deepspeed_and_fsdp2_notes_are_the_reason_only(monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    ds = _note(ROOT / "tests/fixtures/deepspeed/zero1_bf16_ws2/checkpoint")
    _plain(ds)
    assert ds == "a DeepSpeed checkpoint"
    fsdp = next(p for p in sorted((ROOT / "tests/fixtures/fsdp2").iterdir())
                if p.is_dir() and any(p.glob("rank*.pt")))
    note = _note(fsdp)
    _plain(note)
    assert note.startswith("a folder of FSDP2 rank files"), note


def test_no_io_reason_repeats_read_with_torch():
    """Every literal note text of io/ reads well after 'read with torch: '."""
    import re

    bad = []
    for path in sorted((ROOT / "optstate/io").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"NativeUnsupported\(|_torch_because\(|note = ", line) or \
                    re.search(r"^\s+\"", line):
                if re.search(r"is read with torch|reads with torch|\(\"_rebuild|\(\"_codecs",
                             line):
                    bad.append(f"{path.name}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------ F7: OPTSTATE_READER typos


@pytest.mark.parametrize("value", ["bogus", "pytorch", "off"])
def test_an_unknown_reader_is_a_config_error(value, monkeypatch):
    monkeypatch.setenv("OPTSTATE_READER", value)
    with pytest.raises(ConfigError, match=f"^OPTSTATE_READER={value} is not a reader: "
                                          "use torch or native$"):
        choose_reader("auto")
    assert choose_reader("torch") == ("torch", None)  # callers that ask torch: untouched


@pytest.mark.parametrize("value", ["torch", "TORCH", "native", " Native ", "auto", ""])
def test_the_known_reader_values(value, monkeypatch):
    monkeypatch.setenv("OPTSTATE_READER", value)
    chosen, _ = choose_reader("auto")
    assert chosen == ("torch" if value.strip().lower() == "torch" else "native")


def test_an_unknown_reader_through_the_cli(tmp_path):
    f = tmp_path / "a.pt"
    torch.save(_state()[0], f)
    for args in (["inspect", str(f)], ["diff", str(f), str(f), "--json"],
                 ["timeline", str(tmp_path), "--no-cache"]):
        got = _cli(*args, env={"OPTSTATE_READER": "bogus"})
        assert got.returncode == 2, (args, got.stdout, got.stderr)
        assert got.stderr.strip() == ("Error: OPTSTATE_READER=bogus is not a reader: use "
                                      "torch or native"), got.stderr
        assert "Traceback" not in got.stderr


def test_timeline_names_the_sibling_read_with_torch(tmp_path):
    run = tmp_path / "run"
    for step in (5, 10):
        folder = _hf_folder(run / f"s{step}", legacy_scheduler=True)
        folder.rename(run / f"checkpoint-{step}")
        (run / f"s{step}").rmdir()
    # (timeline reads checkpoints in threads: one importing torch for its scheduler.pt
    # while another walks a native tree saw a half-imported torch)
    got = _cli("timeline", str(run), "--no-cache", env={"COLUMNS": "200"})
    assert got.returncode in (0, 1), got.stderr  # 1: the step repeats (the same state)
    lines = [ln for ln in got.stdout.splitlines() if "read with torch" in ln]
    assert lines == ["scheduler.pt: read with torch (the legacy (non-zip) torch.save format) "
                     "(2 of 2 checkpoints)"], got.stdout


def test_a_legacy_model_file_read_for_names_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTSTATE_READER", raising=False)
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    torch.save(_state()[0], folder / "optimizer.pt")
    torch.save({"fc.weight": torch.zeros(3, 4)}, folder / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    got = _cli("inspect", str(folder), "--json", "--no-stats")
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["params"][0]["name"] == "fc.weight"
    assert (report["file"]["reader"], report["file"]["reader_note"]) == (
        "native", "pytorch_model.bin (read for names): read with torch (the legacy (non-zip) "
        "torch.save format)")
