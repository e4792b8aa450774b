"""Foreign classes decoded inertly (optstate/io/inert.py): names and fields, never code.

The pickles here are real torch.save files of instances of classes defined in this test
under the foreign names (a module put in ``sys.modules`` while saving, removed before
loading), and the real-library fixtures in tests/fixtures/.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from optstate.base.errors import UnsafeCheckpointError
from optstate.io.inert import KNOWN, Inert, InertTensor
from optstate.io.torch_file import load_torch_file

FIXTURES = Path(__file__).parent / "fixtures"
RAN: list[str] = []  # what the foreign classes' code did, if it ever ran


def _save_with_module(tmp_path: Path, module: str, cls_name: str, obj_factory, name: str):
    """torch.save ``obj_factory(cls)`` where ``cls`` is defined as ``module.cls_name``,
    then take the module away again, as on a machine without the library."""
    parts = module.split(".")
    made = []
    for i in range(1, len(parts) + 1):
        mod = ".".join(parts[:i])
        if mod not in sys.modules:
            sys.modules[mod] = types.ModuleType(mod)
            made.append(mod)

    class Foreign:
        def __init__(self, scale=1.0):
            self.cur_scale = scale
            self.tensor = torch.arange(4.0)

        def __setstate__(self, state):
            RAN.append("setstate")
            self.__dict__.update(state)

    Foreign.__name__ = Foreign.__qualname__ = cls_name
    Foreign.__module__ = module
    setattr(sys.modules[module], cls_name, Foreign)
    try:
        path = tmp_path / name
        torch.save({"state": {}, "param_groups": [], "extra": obj_factory(Foreign)}, path)
    finally:
        for mod in made:
            del sys.modules[mod]
    return path


def test_a_known_foreign_class_comes_back_as_its_fields_without_its_code(tmp_path):
    path = _save_with_module(tmp_path, "deepspeed.runtime.fp16.loss_scaler", "LossScaler",
                             lambda cls: cls(256.0), "ds.pt")
    obj = load_torch_file(path).obj
    scaler = obj["extra"]
    assert isinstance(scaler, Inert)
    assert scaler.qualname == "deepspeed.runtime.fp16.loss_scaler.LossScaler"
    assert scaler.name == "LossScaler"
    assert scaler.get("cur_scale") == 256.0
    assert torch.equal(scaler.get("tensor"), torch.arange(4.0))
    assert RAN == []  # the foreign __setstate__ never ran
    assert "deepspeed" not in sys.modules


def test_a_class_not_known_is_still_refused_by_name(tmp_path):
    path = _save_with_module(tmp_path, "somelib.things", "Gadget", lambda cls: cls(), "x.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"somelib\.things\.Gadget"):
        load_torch_file(path)
    assert "somelib" not in sys.modules


def test_an_enum_keeps_its_value():
    obj = load_torch_file(next((FIXTURES / "deepspeed" / "zero3_fp32_ws1").rglob(
        "*optim_states.pt"))).obj
    stage = obj["optimizer_state_dict"]["zero_stage"]
    assert isinstance(stage, Inert) and stage.name == "ZeroStageEnum"
    assert stage.args == (3,)


def test_tensor_subclasses_become_inert_tensors_with_their_attributes():
    obj = load_torch_file(FIXTURES / "lowbit" / "torchao_AdamW8bit" / "optimizer.pt").obj
    exp_avg = obj["state"][0]["exp_avg"]
    assert isinstance(exp_avg, InertTensor) and not isinstance(exp_avg, torch.Tensor)
    assert exp_avg.name == "OptimState8bit"
    assert exp_avg.dtype == torch.float32 and exp_avg.shape == (64, 80)
    assert exp_avg.get("codes").dtype == torch.uint8
    assert exp_avg.get("codes").numel() == 64 * 80


def test_the_real_dtensor_class_registered_by_torch_is_set_aside_while_loading():
    """Importing torch.distributed.tensor registers the real DTensor as a safe global;
    while optstate loads, its stand-in is used instead (no DTensor code runs: a real
    DTensor would need a process group), and torch's registrations are back afterwards."""
    code = (
        "import torch, torch.distributed.tensor, torch.serialization as ts\n"
        "before = list(ts.get_safe_globals())\n"
        "from optstate.io.torch_file import load_torch_file\n"
        "from optstate.io.inert import InertTensor\n"
        f"obj = load_torch_file({str(FIXTURES / 'fsdp2' / 'adamw_ws2' / 'rank0.pt')!r}).obj\n"
        "v = obj['state'][0]['exp_avg']\n"
        "assert isinstance(v, InertTensor), type(v)\n"
        "assert v.qualname == 'torch.distributed.tensor.DTensor'\n"
        "assert isinstance(v.get('_local_tensor'), torch.Tensor)\n"
        "assert set(ts.get_safe_globals()) == set(before)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_every_known_class_has_a_stand_in_of_its_kind():
    from optstate.io.inert import stand_ins

    pairs = stand_ins()
    assert [q for _, q in pairs] == list(KNOWN)
    for cls, q in pairs:
        assert issubclass(cls, torch.Tensor) == (KNOWN[q] == "tensor")
        if KNOWN[q] == "object":
            assert issubclass(cls, Inert)


def test_nothing_can_run_on_a_tensor_stand_in():
    from optstate.io.inert import stand_ins

    cls = next(c for c, q in stand_ins() if q == "torch.distributed.tensor.DTensor")
    t = torch.Tensor._make_wrapper_subclass(cls, (2, 2), dtype=torch.float32)
    with pytest.raises(TypeError):
        t + 1
    with pytest.raises(TypeError, match="decoded inertly"):
        torch.add(t, 1)


def test_a_decoded_object_is_never_written_back_as_optstates_stand_in(tmp_path):
    """set would save the stand-in class instead of torchao's: a file torchao cannot
    load. It is refused with one Error line before anything is written."""
    from typer.testing import CliRunner

    from optstate.cli import app

    out = tmp_path / "out.pt"
    r = CliRunner().invoke(app, ["set", str(FIXTURES / "lowbit" / "torchao_AdamW8bit" /
                                             "optimizer.pt"), "--lr", "0.5", "-o", str(out)])
    assert r.exit_code == 2
    assert r.output.startswith("Error: the checkpoint holds "
                               "torchao.optim.subclass_8bit.OptimState8bit objects")
    assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []
    import pickle

    scaler = load_torch_file(next((FIXTURES / "deepspeed" / "zero1_fp16_ws1").rglob(
        "*optim_states.pt"))).obj["optimizer_state_dict"]["loss_scaler"]
    with pytest.raises(Exception, match="cannot write back"):
        pickle.dumps(scaler)
