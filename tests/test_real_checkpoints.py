"""How many real third-party checkpoints optstate reads right (issue #19's measure).

scripts/read_real_checkpoints.py judges every checkpoint a real library wrote under
tests/fixtures/ on four criteria (the optimizer named, every buffer read as the library
computed it, an injected NaN found at its param, no false warning); the counts per library
are held here exactly, so a change that reads one more (or one fewer) right shows up.
The harness's own judging is tested too: a wrong name, a wrong buffer and a NaN copy.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _harness():
    name = "read_real_checkpoints"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


H = _harness()

# library -> (checkpoints, read right on all four criteria)
EXPECTED = {
    "heavyball": (37, 37),
    "lion-pytorch": (1, 1),
    "pytorch-optimizer": (121, 120),
    "schedulefree": (11, 11),
    "timm": (86, 86),
    "torch": (15, 15),
    "bitsandbytes": (10, 10),
    "torchao": (6, 6),
    "deepspeed": (26, 26),
    "torch (FSDP2)": (2, 2),
    "transformers": (1, 1),
    "lightning": (1, 1),
}


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return H.run()


def test_counts_per_library(results: list[dict]) -> None:
    rows = H.table(results)
    got = {lib: (row["checkpoints"], row["right"]) for lib, row in rows.items()}
    failing = {r["checkpoint"]: {k: r[k] for k in "abcd" if r[k] not in (True, "n/a")}
               for r in results if not r["right"]}
    assert got == EXPECTED, (f"{len(failing)} not right; scripts/read_real_checkpoints.py "
                             "--verbose says why")


def test_readme_states_the_same_counts() -> None:
    text = (ROOT / "README.md").read_text()
    head = ("| library | real checkpoints | read right | failing a / b / c / d |\n"
            "|---|---|---|---|\n")
    assert head in text
    rows = {}
    for line in text[text.index(head) + len(head):].splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = (int(cells[1]), int(cells[2]))
    total = rows.pop("all")
    assert rows == EXPECTED
    assert total == tuple(map(sum, zip(*EXPECTED.values(), strict=True)))


def test_every_case_is_judged_on_all_four(results: list[dict]) -> None:
    assert len(results) == sum(n for n, _ in EXPECTED.values())
    for r in results:
        assert all(r[k] is True or r[k] == "n/a" or (isinstance(r[k], str) and r[k])
                   for k in "abcd"), r
        assert r["right"] == all(r[k] in (True, "n/a") for k in "abcd")


def _case(name: str, tmp_path: Path):
    return next(c for c in H.all_cases(tmp_path) if c.name == name)


def test_nan_copy_sets_exactly_one_stored_element(tmp_path: Path) -> None:
    case = _case("torch/Adam", tmp_path)
    dest = tmp_path / "nan"
    dest.mkdir()
    copy, param, entry = H.nan_copy(case, dest)
    with zipfile.ZipFile(copy) as z:
        assert z.testzip() is None  # the CRCs were fixed
    before = torch.load(case.path, weights_only=True)["state"]
    after = torch.load(copy, weights_only=True)["state"]
    nans = [(k, e) for k, s in after.items() for e, t in s.items() if t.isnan().any()]
    position = case.order.index(param) if isinstance(param, str) else param
    assert len(nans) == 1 and nans[0][0] == position
    key, entry_ = nans[0]
    assert entry_ == entry
    assert int(after[key][entry_].isnan().sum()) == 1
    changed = after[key][entry_].nan_to_num(nan=0.0) != before[key][entry_].nan_to_num(nan=0.0)
    assert int(changed.sum()) <= 1


def test_nan_copy_of_a_folder_patches_the_rank_file_only(tmp_path: Path) -> None:
    case = _case("deepspeed/zero2_fp32_ws2", tmp_path)
    dest = tmp_path / "nan"
    dest.mkdir()
    copy, _, _ = H.nan_copy(case, dest)
    differ = [p.relative_to(copy) for p in copy.rglob("*") if p.is_file()
              and p.read_bytes() != (case.path / p.relative_to(copy)).read_bytes()]
    assert differ == [case.file_to_patch.relative_to(case.path)]


def test_names_are_judged_strictly(tmp_path: Path) -> None:
    case = _case("timm/lamb", tmp_path)  # timm.optim.lamb.Lamb
    assert H.judge_names(case, "Lamb", set())[0]
    assert H.judge_names(case, "timm Lamb", set())[0]
    assert not H.judge_names(case, "pytorch-optimizer Lamb", set())[0]  # another library's
    assert not H.judge_names(case, "RAdam", set())[0]
    assert not H.judge_names(case, "unknown", set())[0]  # the table could tell
    assert H.judge_names(case, "unknown", {"timm.Other"})[0]
    assert not H.judge_names(case, "timm Lamb or timm Other", set())[0]
    assert H.judge_names(case, "timm Lamb or timm Other", {"timm.Other"})[0]


def test_a_wrong_buffer_fails_b(tmp_path: Path) -> None:
    case = _case("torch/Adam", tmp_path)
    dest = tmp_path / "d"
    dest.mkdir()
    assert H.judge(case, set(), dest)["b"] is True
    key = next(k for k, t in case.truth.items() if t.get("norm"))
    case.truth[key] = {**case.truth[key], "norm": case.truth[key]["norm"] * 1.001}
    dest2 = tmp_path / "d2"
    dest2.mkdir()
    assert str(H.judge(case, set(), dest2)["b"]).startswith("1 of ")


def test_json_and_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert H.main(["--json", "--only", "lion-pytorch"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["table"]["lion-pytorch"]["checkpoints"] == 1
    assert [c["checkpoint"] for c in doc["cases"]] == ["lion-pytorch/Lion"]
    assert H.main(["--only", "lion-pytorch"]) == 0
    out = capsys.readouterr().out
    assert "lion-pytorch" in out and out.splitlines()[-1].startswith("total")
