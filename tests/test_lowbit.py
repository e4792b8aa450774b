"""8-bit, 4-bit and fp8 optimizer states (issue #19): bitsandbytes' and torchao's, read
without the libraries and shown dequantized.

Ground truth: tests/fixtures/lowbit/*/expected.pt, computed by the libraries themselves
(``bitsandbytes.functional.dequantize_blockwise``, torchao's ``.dequantize()``;
scripts/fixtures/make_lowbit.py). optstate's dequantization is one table look-up and one
float32 product per value, as theirs, so the values must be equal bit for bit.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import optstate
from optstate.io.inert import InertTensor
from optstate.io.torch_file import load_torch_file
from optstate.numeric import dequant
from optstate.state.lowbit import BNB_KEY
from optstate.state.packed import describe_stored, unpack_state
from optstate.state.view import OptimizerStateView

LOWBIT = Path(__file__).parent / "fixtures" / "lowbit"
CASES = sorted(p.name for p in LOWBIT.iterdir() if (p / "optimizer.pt").is_file())
QMAP_BYTES = 256 * 4  # bitsandbytes' qmapN: 256 float32, kept per param in the state


def _case(name: str) -> tuple[OptimizerStateView, dict, dict]:
    view = OptimizerStateView.from_state_dict(load_torch_file(LOWBIT / name /
                                                              "optimizer.pt").obj)
    expected = torch.load(LOWBIT / name / "expected.pt", weights_only=True)
    info = json.loads((LOWBIT / name / "expected.json").read_text())
    return view, expected, info


def test_every_fixture_is_here():
    assert len(CASES) == 16  # 10 bitsandbytes + 6 torchao (failures.json: none failed)


@pytest.mark.parametrize("case", CASES)
def test_dequantized_moments_equal_the_librarys_own_bit_for_bit(case):
    view, expected, info = _case(case)
    seen = 0
    for pos, name in enumerate(info["parameter_order"]):
        p = view.params[pos]
        for entry in info["params"][name]["entries"]:
            want = expected[f"{entry}/{name}"]
            if entry == "state1" and case == "bitsandbytes_AdEMAMix8bit":  # one per moment
                got = torch.stack([p.state["state1[0]"], p.state["state1[1]"]])
            else:
                got = p.state[entry]
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
            assert got.shape == want.shape, (case, name, entry)
            assert torch.equal(got, want), (case, name, entry,
                                            float((got - want).abs().max()))
            seen += 1
        assert p.state["step"] == info["params"][name]["step"] or float(
            p.state["step"]) == info["params"][name]["step"]
    assert seen == len(info["expected_pt_keys"])
    # nothing of the stored form is left among the entries
    for p in view.params:
        assert BNB_KEY not in p.state
        assert not any(isinstance(v, InertTensor) for v in p.state.values())


@pytest.mark.parametrize("case", CASES)
def test_stored_descriptions_say_what_the_library_stored(case):
    view, _, info = _case(case)
    for pos, name in enumerate(info["parameter_order"]):
        p = view.params[pos]
        for entry, want in info["params"][name]["entries"].items():
            d = p.stored.get(entry)
            if entry == "state1" and case == "bitsandbytes_AdEMAMix8bit":  # two moments
                d0, d1 = p.stored.get("state1[0]"), p.stored.get("state1[1]")
                d = d0 if d0 is None or "bytes_stored" not in d0 else dict(
                    d0, bytes_stored=d0["bytes_stored"] + d1["bytes_stored"],
                    bytes_float32=d0["bytes_float32"] + d1["bytes_float32"])
            if want["blocksize"] is None:  # 32-bit state: stored as itself
                assert d is None or (d["format"] == "bitsandbytes-32bit"
                                     and "bytes_stored" not in d), (case, entry, d)
                continue
            assert d["dtype"] == want["stored_dtype"].removeprefix("torch.")
            assert d["block_size"] == want["blocksize"]
            assert d["bytes_float32"] == want["float32_bytes"]
            if case.startswith("bitsandbytes"):  # expected.json counts codes + absmax
                assert d["format"] == "bitsandbytes-8bit"
                assert d["bytes_stored"] == want["stored_bytes"] + QMAP_BYTES
                assert d["from"] == [f"{BNB_KEY}.{entry}", f"{BNB_KEY}.qmap{entry[-1]}",
                                     f"{BNB_KEY}.absmax{entry[-1]}"]
            else:  # codes + scale + qmap
                assert d["format"] == {"OptimState8bit": "torchao-8bit",
                                       "OptimState4bit": "torchao-4bit",
                                       "OptimStateFp8": "torchao-fp8"}[
                                           want["subclass"].rsplit(".", 1)[-1]]
                assert d["class"] == want["subclass"]
                assert d["bytes_stored"] == want["stored_bytes"]
                assert d["from"] == [entry]
                assert d.get("signed") == want["signed"]  # None for fp8


def test_ademamix_state1_is_one_entry_per_moment_and_says_which():
    # R1: one norm/min/max/mean over both stacked moments (fast and slow EMA)
    view, expected, _ = _case("bitsandbytes_AdEMAMix8bit")
    p = view.params[0]
    assert list(p.state) == ["step", "state1[0]", "state1[1]", "state2"]
    for i in (0, 1):
        assert p.state[f"state1[{i}]"].shape == (64, 80)
        assert torch.equal(p.state[f"state1[{i}]"], expected["state1/0.weight"][i])
        d = p.stored[f"state1[{i}]"]
        assert (d["stacked_in"], d["moment"], d["of"]) == ("state1", i, 2)
    assert "state1[1] of 2 stacked moments (bitsandbytes' m2: the slow EMA" in describe_stored(
        p.stored["state1[1]"])
    from optstate.state.view import slot_shape

    assert [slot_shape(q.state, q.stored) for q in view.params] == [(64, 80), (64,), (16, 64)]
    rep = optstate.inspect(LOWBIT / "bitsandbytes_AdEMAMix8bit" / "optimizer.pt")
    assert rep["warnings"] == [] and rep["notes"] == []  # not a mismatch, not factored
    assert rep["optimizer"]["kind"] == "bitsandbytes AdEMAMix8bit"
    s0 = rep["params"][0]["state"]
    assert s0["state1[1]"]["norm"] == pytest.approx(
        float(expected["state1/0.weight"][1].norm()), rel=1e-6)
    low = rep["totals"]["low_bit"]  # the bytes stored, split between the two moments
    assert low["bytes_stored"] == 2 * 5120 + 2 * 20 * 4 + 256 * 4 + 5120 + 20 * 4 + 256 * 4


def test_a_nan_in_the_slow_ema_is_named_as_that_moment(tmp_path):
    sd = torch.load(LOWBIT / "bitsandbytes_AdEMAMix8bit" / "optimizer.pt", weights_only=True)
    sd["state"][0][BNB_KEY]["absmax1"][1, 3] = float("nan")  # moment 1 (m2), block 3
    torch.save(sd, tmp_path / "nan.pt")
    rep = optstate.inspect(tmp_path / "nan.pt")
    nans = [w["message"] for w in rep["warnings"] if w["code"] == "nan"]
    assert len(nans) == 1 and "state1[1]" in nans[0] and "state1[0]" not in nans[0], nans
    d = optstate.diff(LOWBIT / "bitsandbytes_AdEMAMix8bit" / "optimizer.pt", tmp_path / "nan.pt")
    assert [c["path"] for c in d["changes"]] == ['state[0]["state1[1]"]']


def test_describe_stored_in_words():
    view, _, _ = _case("bitsandbytes_Adam8bit")
    assert describe_stored(view.params[0].stored["state1"]) == (
        "8-bit blockwise (bitsandbytes): uint8, blocks of 256, 30% of float32 bytes")
    view, _, _ = _case("torchao_AdamW4bit")
    assert describe_stored(view.params[0].stored["exp_avg"]) == (
        "4-bit blockwise (torchao): uint8, 2 codes a byte, blocks of 128, 14% of float32 bytes")


# ------------------------------------------------------------------ the formulas alone


def test_bnb_block_size_is_derived_never_guessed():
    assert dequant.bnb_blocksize(5120, 20) == 256
    assert dequant.bnb_blocksize(5120, 3) == 2048
    assert dequant.bnb_blocksize(100, 1) is None  # one block: every size gives the same
    with pytest.raises(dequant.DequantError, match="no block size bitsandbytes uses"):
        dequant.bnb_blocksize(5120, 19)


def test_a_short_last_block_is_scaled_by_its_own_absmax():
    qmap = torch.linspace(-1, 1, 256)
    codes = torch.tensor([255] * 300, dtype=torch.uint8)  # 256 + 44: two blocks
    out, block = dequant.bnb_8bit(codes, qmap, torch.tensor([2.0, 3.0]))
    assert block == 256
    assert torch.equal(out[:256], torch.full((256,), 2.0))
    assert torch.equal(out[256:], torch.full((44,), 3.0))


def test_chunks_do_not_change_the_result(monkeypatch):
    view, expected, _ = _case("torchao_AdamW4bit")
    raw = load_torch_file(LOWBIT / "torchao_AdamW4bit" / "optimizer.pt").obj["state"][0]
    monkeypatch.setattr(dequant, "CHUNK", 256)  # many chunks, each two 128-blocks
    entries, _ = unpack_state(raw)
    assert torch.equal(entries["exp_avg"], expected["exp_avg/0.weight"])


# ------------------------------------------------------------------ damaged and unknown


def _bnb_copy(tmp_path: Path, change, name: str = "bnb.pt") -> Path:
    sd = torch.load(LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt", weights_only=True)
    change(sd["state"][0][BNB_KEY])
    out = tmp_path / name
    torch.save(sd, out)
    return out


def test_an_absmax_count_that_fits_no_block_size_is_not_dequantized_and_says_why(
        tmp_path, run_cli):
    path = _bnb_copy(tmp_path, lambda q: q.update(absmax1=q["absmax1"][:19]))
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    p0 = json.loads(r.stdout)["params"][0]
    assert p0["stored"]["state1"]["error"] == (
        "not dequantized: 19 absmax values for 5,120 elements: no block size bitsandbytes "
        "uses (64, 128, 256, 512, 1024, 2048, 4096) gives that many blocks")
    # the stored pieces stay visible as they are (uint8 codes, not a moment), state2 is fine
    assert p0["state"]["state1"]["dtype"] == "uint8"
    assert set(p0["state"]) == {"step", "state1", "qmap1", "absmax1", "state2"}
    assert p0["stored"]["state2"]["block_size"] == 256
    human = run_cli("inspect", path)
    assert human.returncode == 0, human.stderr
    assert "state[0].state1: 8-bit blockwise (bitsandbytes): uint8, not dequantized: 19 " \
           "absmax values" in " ".join(human.stdout.split())


def test_a_layout_not_known_here_keeps_every_piece(tmp_path):
    """bitsandbytes' non-blockwise 8-bit (max1 / new_max1, no absmax1): not read here."""
    def nonblockwise(q: dict) -> None:
        q["max1"] = q.pop("absmax1")[:1]
        q["new_max1"] = q["max1"].clone()
    view = OptimizerStateView.from_state_dict(torch.load(
        _bnb_copy(tmp_path, nonblockwise), weights_only=True))
    p = view.params[0]
    assert p.stored["state1"]["error"].startswith("not dequantized: absmax1 missing")
    assert {"state1", "qmap1", "max1", "new_max1"} <= set(p.state)
    assert p.state["state1"].dtype == torch.uint8


def test_damaged_torchao_pieces_are_named_not_guessed():
    raw = load_torch_file(LOWBIT / "torchao_AdamW8bit" / "optimizer.pt").obj["state"][0]
    t = raw["exp_avg"]
    broken = InertTensor(t.qualname, t.dtype, t.shape, t.stride,
                         {**t.state, "scale": t.state["scale"][:19]})
    entries, stored = unpack_state({"exp_avg": broken})
    assert stored["exp_avg"]["error"] == ("not dequantized: 19 scale values do not split "
                                          "5,120 elements into equal blocks")
    # its pieces are the entries: tensors that diff compares and totals count
    assert set(entries) == {"exp_avg.codes", "exp_avg.scale", "exp_avg.qmap",
                            "exp_avg.signed", "exp_avg.block_size"}
    assert entries["exp_avg.codes"] is t.state["codes"]
    t4 = load_torch_file(LOWBIT / "torchao_AdamW4bit" / "optimizer.pt").obj["state"][0]
    t4 = t4["exp_avg"]
    broken = InertTensor(t4.qualname, t4.dtype, t4.shape, t4.stride,
                         {**t4.state, "_shape": torch.Size([64, 81])})
    _, stored = unpack_state({"exp_avg": broken})
    assert "not the 5,184 of shape [64, 81]" in stored["exp_avg"]["error"]


# ------------------------------------------------------------------ NaN, inspect, diff


def _patch_tensor_bytes(src: Path, dst: Path, old: torch.Tensor, new: torch.Tensor) -> None:
    """Copy the torch.save zip ``src`` to ``dst`` with the record holding ``old``'s bytes
    holding ``new``'s (same size; CRCs updated). For files torch.save cannot write here
    (torchao's subclasses need torchao)."""
    data = bytearray(src.read_bytes())
    target, repl = old.numpy().tobytes(), new.numpy().tobytes()
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if z.read(i) == target)
    off = info.header_offset
    n, e = struct.unpack("<HH", data[off + 26:off + 30])
    start = off + 30 + n + e
    data[start:start + len(repl)] = repl
    crc = zlib.crc32(repl)
    struct.pack_into("<I", data, off + 14, crc)
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        ln = struct.unpack("<H", data[i + 28:i + 30])[0]
        if data[i + 46:i + 46 + ln].decode() == info.filename:
            struct.pack_into("<I", data, i + 16, crc)
        i = data.find(b"PK\x01\x02", i + 4)
    dst.write_bytes(bytes(data))


def test_a_nan_in_absmax_is_the_nan_warning_at_that_param_and_entry(tmp_path):
    def nan(q: dict) -> None:
        q["absmax2"][3] = float("nan")
    rep = optstate.inspect(_bnb_copy(tmp_path, nan))
    assert rep["params"][0]["state"]["state2"]["nan"] == 256  # one block of 256
    nans = [w for w in rep["warnings"] if w["code"] == "nan"]
    assert len(nans) == 1 and "state[0].state2" in nans[0]["message"]


def test_a_nan_in_a_torchao_scale_is_the_nan_warning_too(tmp_path):
    src = LOWBIT / "torchao_AdamW8bit" / "optimizer.pt"
    scale = load_torch_file(src).obj["state"][0]["exp_avg"].state["scale"]
    bad = scale.clone()
    bad[3] = float("nan")
    _patch_tensor_bytes(src, tmp_path / "nan.pt", scale, bad)
    rep = optstate.inspect(tmp_path / "nan.pt")
    assert rep["params"][0]["state"]["exp_avg"]["nan"] == 256
    nans = [w for w in rep["warnings"] if w["code"] == "nan"]
    assert len(nans) == 1 and "state[0].exp_avg" in nans[0]["message"]


def test_inspect_json_has_stored_and_the_bytes_saved(run_cli):
    r = run_cli("inspect", LOWBIT / "torchao_AdamWFp8" / "optimizer.pt", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    p0 = rep["params"][0]
    assert p0["stored"]["exp_avg_sq"] == {
        "format": "torchao-fp8", "from": ["exp_avg_sq"], "dtype": "float8_e4m3fn",
        "class": "torchao.optim.subclass_fp8.OptimStateFp8", "block_size": 256,
        "bytes_stored": 5120 + 20 * 4, "bytes_float32": 5120 * 4}
    assert p0["state"]["exp_avg"]["numel"] == 5120 and rep["params"][1]["stored"] == {}
    assert rep["totals"]["low_bit"] == {"entries": 2, "formats": ["torchao-fp8"],
                                        "bytes_stored": 2 * 5200, "bytes_float32": 2 * 20480,
                                        "bytes_saved": 2 * (20480 - 5200)}
    assert rep["totals"]["numel"] == 2 * (5120 + 64 + 1024) + 3  # + the steps
    assert not rep["warnings"]


def test_inspect_human_says_how_each_entry_is_stored(run_cli):
    r = run_cli("inspect", LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "state[0].state1: 8-bit blockwise (bitsandbytes): uint8, blocks of 256, 30% of " \
           "float32 bytes" in text
    assert "2 entries stored low-bit in 12.2 KiB instead of 40.0 KiB as float32: 27.8 KiB " \
           "saved" in text
    assert "warning" not in text


def test_hist_is_of_the_dequantized_moment():
    rep = optstate.inspect(LOWBIT / "torchao_Adam8bit" / "optimizer.pt", hist=True)
    h = rep["params"][0]["state"]["exp_avg"]["histogram"]
    want = torch.load(LOWBIT / "torchao_Adam8bit" / "expected.pt",
                      weights_only=True)["exp_avg/0.weight"]
    assert sum(h["counts"]) == h["numel"] == 5120
    assert (h["min"], h["max"]) == (float(want.min()), float(want.max()))


def test_diff_compares_dequantized_moments(tmp_path):
    def bump(q: dict) -> None:
        q["absmax1"][0] *= 2
    path = _bnb_copy(tmp_path, bump)
    rep = optstate.diff(LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt", path)
    paths = [c["path"] for c in rep["changes"]]
    assert paths == ["state[0].state1"], paths
    same = optstate.diff(LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt",
                         LOWBIT / "bitsandbytes_PagedAdam8bit" / "optimizer.pt")
    assert not [c for c in same["changes"] if c["path"].startswith("state")]
    ao = optstate.diff(LOWBIT / "torchao_Adam8bit" / "optimizer.pt",
                       LOWBIT / "torchao_Adam4bit" / "optimizer.pt")
    assert {c["path"] for c in ao["changes"]} >= {"state[0].exp_avg", "state[0].exp_avg_sq"}


# ------------------------------------------------------------------ writing back


@pytest.mark.parametrize("command", [("set", "--lr", "0.1", "-o", "{dst}.pt")])
def test_set_refuses_a_torchao_state_in_one_line_writing_nothing(
        tmp_path, run_cli, command):
    """optstate cannot write torchao's subclasses back (it has stand-ins, not the
    library's classes); set would give a file torchao cannot load as what it was: refused,
    one Error line, nothing written. (convert writes them dequantized, with a warning:
    tests/test_convert.py.)"""
    args = [a.format(dst=tmp_path / "out") for a in command[1:]]
    r = run_cli(command[0], LOWBIT / "torchao_AdamW8bit" / "optimizer.pt", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == ("Error: " + "torch.distributed.checkpoint could not save this "
                        "state: " * (command[0] == "convert") + "the checkpoint holds "
                        "torchao.optim.subclass_8bit.OptimState8bit objects, which optstate "
                        "reads (decoded without their library) but cannot write back")
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_set_on_a_bitsandbytes_state_keeps_its_stored_form(tmp_path, run_cli):
    src = LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt"
    r = run_cli("set", src, "--lr", "0.1", "-o", tmp_path / "b.pt")
    assert r.returncode == 0, r.stderr
    before = torch.load(src, weights_only=True)
    after = torch.load(tmp_path / "b.pt", weights_only=True)
    assert after["param_groups"][0]["lr"] == 0.1
    for key, t in before["state"][0][BNB_KEY].items():  # uint8 codes, absmax, qmap as they were
        assert torch.equal(after["state"][0][BNB_KEY][key], t), key


def test_convert_a_bitsandbytes_state_to_dcp_reads_back_the_same_moments(tmp_path, run_cli):
    src = LOWBIT / "bitsandbytes_AdEMAMix8bit" / "optimizer.pt"
    r = run_cli("convert", src, tmp_path / "dcp")
    assert r.returncode == 0, r.stderr
    a, b = optstate.inspect(src), optstate.inspect(tmp_path / "dcp")
    assert [p["state"] for p in a["params"]] == [p["state"] for p in b["params"]]
    assert [p["stored"] for p in a["params"]] == [p["stored"] for p in b["params"]]


def test_no_stats_dequantizes_nothing_and_moments_are_computed_when_read(monkeypatch):
    from optstate.io.lazy import LazyTensor

    def refuse(*args, **kwargs):
        raise AssertionError("dequantized under --no-stats")
    monkeypatch.setattr(dequant, "_lookup_scaled", refuse)
    rep = optstate.inspect(LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt", stats=False)
    assert rep["params"][0]["state"]["state1"] == {"shape": [64, 80], "dtype": "float32",
                                                   "numel": 5120, "bytes": 20480,
                                                   "bytes_stored": 5200 + QMAP_BYTES,
                                                   "dtype_stored": "uint8"}
    assert rep["totals"]["low_bit"]["bytes_saved"] == 2 * (20480 - 5200 - QMAP_BYTES)
    monkeypatch.undo()
    view, expected, _ = _case("torchao_AdamW8bit")
    moment = view.params[0].state["exp_avg"]
    assert isinstance(moment, LazyTensor)  # values computed on each read, never kept
    assert torch.equal(moment, expected["exp_avg/0.weight"])


def test_diff_sees_the_codes_of_an_entry_it_cannot_dequantize():
    from optstate.analysis.diff import diff_states

    def broken(bump: int) -> dict:
        sd = load_torch_file(LOWBIT / "torchao_AdamW8bit" / "optimizer.pt").obj
        t = sd["state"][0]["exp_avg"]
        codes = t.state["codes"].clone()
        codes.view(-1)[0] += bump
        sd["state"][0]["exp_avg"] = InertTensor(t.qualname, t.dtype, t.shape, t.stride, {
            **t.state, "codes": codes, "scale": t.state["scale"][:19]})
        return sd
    d = diff_states(broken(0), broken(1))
    assert [c.path for c in d.changes] == ["state[0].exp_avg.codes"]


def test_config_on_a_bitsandbytes_state_says_it_is_no_torch_optim_class(run_cli):
    # R1: config called Adam8bit's state "unknown", closest AdEMAMix8bit (whose state1 is
    # stacked: the state tells them apart, as inspect says); the reason is the class
    r = run_cli("config", LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt")
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.splitlines()[0]
    assert err.startswith("Error: cannot write a config: the state is bitsandbytes Adam8bit")
    assert "not a torch.optim class" in err
    assert "unknown" not in err and "AdEMAMix" not in err


def test_the_bytes_column_and_totals_are_the_bytes_stored(run_cli):
    # R1: "state1 64x80 float32 ... 20,480" and "48.5 KiB (float32 48.5 KiB)" for an
    # entry stored as uint8 codes in 6.2 KB and a file of 24.7 KiB
    r = run_cli("inspect", LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt", "--no-stats")
    assert r.returncode == 0, r.stderr
    stored = 5120 + 20 * 4 + 256 * 4  # codes + absmax (20 blocks of 256) + qmap, float32
    row0 = next(line.split() for line in r.stdout.splitlines()
                if line.split()[:2] == ["state1", "64x80"])
    assert row0[-1] == f"{stored:,}" and "float32 (from uint8)" in " ".join(row0)
    small = 2 * 64 * 4 + 2 * 1024 * 4  # params 1 and 2: float32 state1/2 (under 4096)
    text = " ".join(r.stdout.split())
    assert "as stored (bitsandbytes-8bit 12.2 KiB, float32 8.5 KiB)" in text, text
    rep = json.loads(run_cli("inspect", LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt",
                             "--json", "--no-stats").stdout)
    t = rep["totals"]
    assert t["bytes"] == 2 * 5120 * 4 + small  # the entries as shown: unchanged meaning
    assert t["bytes_stored"] == 2 * stored + small + 3 * 0
    assert t["bytes_stored_by_format"] == {"bitsandbytes-8bit": 2 * stored, "float32": small}
    e = rep["params"][0]["state"]["state1"]
    assert (e["bytes"], e["bytes_stored"], e["dtype"], e["dtype_stored"]) == (
        5120 * 4, stored, "float32", "uint8")


def _torch_adam_state(tmp_path: Path, moments: dict[str, torch.Tensor]) -> Path:
    """A real torch.optim.Adam state of the bitsandbytes_Adam8bit fixture's params,
    its exp_avg / exp_avg_sq set to ``moments`` (``state1/0.weight``, ...)."""
    shapes = [(64, 80), (64,), (16, 64)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    opt = torch.optim.Adam(params, lr=0.001)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sd = opt.state_dict()
    for i, name in enumerate(["0.weight", "0.bias", "1.weight"]):
        sd["state"][i]["exp_avg"] = moments[f"state1/{name}"].clone()
        sd["state"][i]["exp_avg_sq"] = moments[f"state2/{name}"].clone()
    out = tmp_path / "torch_adam.pt"
    torch.save(sd, out)
    return out


def test_diff_pairs_bitsandbytes_adam_state1_state2_with_torch_adams_moments(tmp_path):
    # R1: bnb Adam8bit vs torch Adam: "state1/state2 removed, exp_avg/exp_avg_sq added",
    # no numbers. bitsandbytes' adam update: state1 = first moment, state2 = second
    expected = torch.load(LOWBIT / "bitsandbytes_Adam8bit" / "expected.pt", weights_only=True)
    moved = dict(expected)
    moved["state2/0.weight"] = expected["state2/0.weight"] * 2
    bnb = LOWBIT / "bitsandbytes_Adam8bit" / "optimizer.pt"
    for a, b, flip in ((bnb, _torch_adam_state(tmp_path, moved), False),
                       (_torch_adam_state(tmp_path, moved), bnb, True)):
        rep = optstate.diff(a, b)
        kinds = {(c["path"], c["kind"]) for c in rep["changes"]}
        assert not [k for k in kinds if k[1] in ("added", "removed")
                    and k[0].startswith("state")], kinds
        values = [c["path"] for c in rep["changes"] if c["kind"] == "values"]
        assert values == ["state[0].exp_avg_sq"], values  # state1 equal to exp_avg
        notes = " ".join(rep["notes"])
        side = "b" if flip else "a"
        assert (f"{side}'s bitsandbytes state1 is compared with exp_avg and state2 with "
                "exp_avg_sq") in notes, notes


def test_diff_does_not_pair_a_bitsandbytes_state_whose_optimizer_it_cannot_tell(tmp_path):
    # SGD8bit's state1 could be Lion8bit's, RMSprop8bit's, Adagrad8bit's: no pairing
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(64, 80), (64,), (16, 64)]]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "sgd.pt")
    rep = optstate.diff(LOWBIT / "bitsandbytes_SGD8bit" / "optimizer.pt", tmp_path / "sgd.pt")
    kinds = {(c["path"], c["kind"]) for c in rep["changes"]}
    assert ("state[0].state1", "removed") in kinds
    assert ("state[0].momentum_buffer", "added") in kinds
    assert "compared with" not in " ".join(rep["notes"])
