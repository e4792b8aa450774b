"""tests/fixtures/ is complete: each folder has its generator, versions.json and expected files.

The fixtures are written by third-party libraries (DeepSpeed, bitsandbytes, torchao, FSDP2,
...) that the project's test venv does not have; this only checks that what is committed
is whole and that every ``expected.pt`` is plain tensors (loads with weights_only=True).
Reading the formats themselves is the work of issues #19 and #18.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GENERATORS = ROOT / "scripts" / "fixtures"

# folder -> (generator script, files every case folder inside it must have)
FOLDERS = {
    "deepspeed": ("make_deepspeed.py", ("expected.pt", "expected.json", "checkpoint/latest")),
    "lowbit": ("make_lowbit.py", ("optimizer.pt", "expected.pt", "expected.json")),
    "fsdp2": ("make_fsdp2.py", ("rank0.pt", "rank1.pt", "expected.pt", "expected.json")),
    "hf_lightning": ("make_hf_lightning.py", ("expected.pt", "expected.json")),
    "names": ("make_names_cases.py", ("truth.json",)),
    "runs": ("make_runs.py", ("expected.json",)),
    "third_party": ("optimizer_signatures.py", ("optimizer.pt", "expected.pt", "expected.json")),
    "third_party_all": ("optimizer_signatures.py", ("expected.json",)),
}


def case_folders(folder: str) -> list[Path]:
    return sorted(p for p in (FIXTURES / folder).iterdir() if p.is_dir())


def test_every_fixture_folder_is_listed() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert on_disk == set(FOLDERS)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_folder_has_generator_versions_and_cases(folder: str) -> None:
    script, required = FOLDERS[folder]
    assert (GENERATORS / script).is_file()
    versions = json.loads((FIXTURES / folder / "versions.json").read_text())
    assert versions.get("torch")
    cases = case_folders(folder)
    assert cases, f"{folder} has no fixtures"
    for case in cases:
        missing = [name for name in required if not (case / name).is_file()]
        assert not missing, f"{case.relative_to(FIXTURES)} lacks {missing}"


def test_optimizer_signatures_has_generator_and_versions() -> None:
    assert (GENERATORS / "optimizer_signatures.py").is_file()
    doc = json.loads((FIXTURES / "optimizer_signatures.json").read_text())
    assert doc["versions"]["torch"]
    assert doc["optimizers"]


def test_readme_names_every_folder() -> None:
    text = (FIXTURES / "README.md").read_text()
    for folder in FOLDERS:
        assert f"{folder}/" in text


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("expected.pt")),
)
def test_expected_pt_is_plain_tensors(path: str) -> None:
    data = torch.load(FIXTURES / path, weights_only=True, map_location="cpu")
    assert isinstance(data, dict) and data
    assert all(isinstance(k, str) and type(v) is torch.Tensor for k, v in data.items())
