"""sample_checkpoints/ is reproducible: regenerating gives the same tensors (and, with
the torch that wrote them, the same bytes), and each sample's command makes it."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_simulate import assert_identical

SAMPLES = ROOT / "sample_checkpoints"
MANIFEST = json.loads((SAMPLES / "MANIFEST.json").read_text())
FILES = [e["path"] for e in MANIFEST["files"]]
SAME_TORCH = MANIFEST["torch"] == torch.__version__


def _load(path):
    """The file's contents, tensors as (dtype, shape, bytes): NaN payloads compare too."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return _bits(torch.load(path, weights_only=True))


def _bits(obj):
    if isinstance(obj, torch.Tensor):
        return (str(obj.dtype), tuple(obj.shape), obj.reshape(-1).contiguous().view(torch.uint8))
    if isinstance(obj, dict):
        return {k: _bits(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_bits(v) for v in obj)
    return obj


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_samples
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = tmp_path_factory.mktemp("samples")
    make_samples.make_samples(out)
    return out


def test_manifest_lists_every_file():
    on_disk = sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file())
    assert on_disk == sorted([*FILES, "MANIFEST.json"])


@pytest.mark.parametrize("name", FILES)
def test_committed_files_match_the_manifest(name):
    entry = next(e for e in MANIFEST["files"] if e["path"] == name)
    data = (SAMPLES / name).read_bytes()
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


ROUNDED = {e["path"] for e in MANIFEST["files"] if e.get("reproducible")}


def _close(a, b, path="file"):
    """Equal structure; float tensors equal to a few float32 ulps of their scale (a model's
    forward pass reduces in an order the CPU's vector width decides)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            scale = max(float(b.abs().max()), 1e-30) if b.numel() else 1.0
            torch.testing.assert_close(a, b, rtol=0, atol=64 * torch.finfo(a.dtype).eps * scale,
                                       msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _close(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", FILES)
def test_regenerating_gives_the_same_contents(regenerated, name):
    if name in ROUNDED:
        _close(torch.load(regenerated / name, weights_only=True),
               torch.load(SAMPLES / name, weights_only=True))
        return
    assert_identical(_load(regenerated / name), _load(SAMPLES / name))
    if SAME_TORCH:
        assert (regenerated / name).read_bytes() == (SAMPLES / name).read_bytes()


COMMANDS = [e for e in MANIFEST["files"] if "command" in e]


@pytest.mark.parametrize("entry", COMMANDS, ids=[e["path"] for e in COMMANDS])
def test_each_sample_is_what_its_command_makes(cli, tmp_path, entry, monkeypatch):
    argv = shlex.split(entry["command"])
    assert argv[:2] == ["optstate", "simulate"]
    out = tmp_path / entry["path"]
    argv[argv.index("--save") + 1] = str(out)
    monkeypatch.chdir(ROOT)  # the commands name configs relative to the repository
    r = cli(*argv[1:])
    assert r.exit_code == 0, r.stderr
    assert_identical(_load(out), _load(SAMPLES / entry["path"]))
    if SAME_TORCH:
        assert out.read_bytes() == (SAMPLES / entry["path"]).read_bytes()


def test_the_tutorial_sample_has_the_geometric_momentum():
    sd = torch.load(SAMPLES / "sgd_momentum.pt", weights_only=True)
    buf = sd["state"][0]["momentum_buffer"]
    assert torch.allclose(buf.double(), torch.full((2, 2), sum(0.9**k for k in range(10)),
                                                   dtype=torch.float64), rtol=0, atol=1.5e-6)


def test_samples_load_into_real_optimizers():
    adam = torch.load(SAMPLES / "adam_two_groups.pt", weights_only=True)
    ws = [torch.zeros(2, 2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    opt = torch.optim.Adam(ws, lr=1e-3)
    opt.add_param_group({"params": [torch.zeros(3, 2, requires_grad=True)], "lr": 1e-4})
    opt.load_state_dict(adam)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert float(opt.state_dict()["state"][2]["step"]) == 20.0

    ckpt = torch.load(SAMPLES / "lightning.ckpt", weights_only=True)
    hf_opt = torch.load(SAMPLES / "hf-checkpoint-12" / "optimizer.pt", weights_only=True)
    tut = torch.load(SAMPLES / "adamw_scheduler.pt", weights_only=True)
    assert_identical(ckpt["optimizer_states"][0], tut["optimizer_state_dict"])
    assert_identical(hf_opt, tut["optimizer_state_dict"])
    assert ckpt["lr_schedulers"][0] == tut["scheduler_state_dict"]
    assert tut["scheduler_state_dict"]["_last_lr"] == [5e-3 * 0.25, 5e-3 * 0.25]
