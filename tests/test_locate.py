"""Finding the optimizer state (and its scheduler) in real container layouts."""

from __future__ import annotations

import warnings

import pytest
import torch

from optstate.base.errors import CheckpointError, NoOptimizerStateError
from optstate.io.source import open_source
from optstate.state.locate import locate, resolve_key
from tests.optim_states import stepped_optimizer


def _opt_and_sched(name: str = "SGD", seed: int = 0):
    opt, params = stepped_optimizer(name, steps=3, seed=seed)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore")
        sched.step()
    model = {"layer.weight": params[0].detach().clone(), "layer.bias": params[1].detach().clone()}
    return opt.state_dict(), sched.state_dict(), model


def _same(a, b) -> bool:
    return a["param_groups"] == b["param_groups"] and all(
        all(torch.equal(a["state"][k][e], b["state"][k][e]) if torch.is_tensor(b["state"][k][e])
            else a["state"][k][e] == b["state"][k][e] for e in b["state"][k])
        for k in b["state"])


def test_plain_state_dict_is_found_at_top_level(tmp_path):
    sd, _, _ = _opt_and_sched()
    torch.save(sd, tmp_path / "opt.pkl")
    found = locate(open_source(tmp_path / "opt.pkl"))
    assert found.location == ""
    assert found.candidates == ("",)
    assert found.scheduler is None
    assert _same(found.state, sd)


def test_pytorch_tutorial_general_checkpoint(tmp_path):
    sd, _, model = _opt_and_sched()
    torch.save({"epoch": 5, "model_state_dict": model, "optimizer_state_dict": sd,
                "loss": 0.25}, tmp_path / "model.tar")
    found = locate(open_source(tmp_path / "model.tar"))
    assert found.location == "optimizer_state_dict"
    assert _same(found.state, sd)


@pytest.mark.parametrize("key", ["optimizer", "optim", "opt", "optimizer_state"])
def test_common_keys(tmp_path, key):
    sd, sched, model = _opt_and_sched()
    torch.save({"model": model, key: sd, "scheduler": sched, "step": 3}, tmp_path / "c.pth")
    found = locate(open_source(tmp_path / "c.pth"))
    assert found.location == key
    assert found.scheduler_location == "scheduler"
    assert found.scheduler["last_epoch"] == 1


def _lightning(sds, scheds, model):
    return {
        "epoch": 2, "global_step": 30, "pytorch-lightning_version": "2.4.0",
        "state_dict": model, "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {},
        "optimizer_states": sds, "lr_schedulers": scheds, "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.1},
    }


def test_lightning_single_optimizer_pairs_its_scheduler(tmp_path):
    sd, sched, model = _opt_and_sched()
    torch.save(_lightning([sd], [sched], model), tmp_path / "epoch=2.ckpt")
    found = locate(open_source(tmp_path / "epoch=2.ckpt"))
    assert found.location == "optimizer_states[0]"
    assert found.scheduler_location == "lr_schedulers[0]"
    assert found.scheduler["base_lrs"] == sched["base_lrs"]


def test_lightning_two_optimizers_are_listed_and_key_picks_one(tmp_path):
    sd0, sched0, model = _opt_and_sched("SGD")
    sd1, sched1, _ = _opt_and_sched("Adam", seed=1)
    torch.save(_lightning([sd0, sd1], [sched0, sched1], model), tmp_path / "gan.ckpt")
    src = open_source(tmp_path / "gan.ckpt")
    with pytest.raises(NoOptimizerStateError) as e:
        locate(src)
    assert str(e.value) == (
        f"{tmp_path / 'gan.ckpt'} holds 2 optimizer states: optimizer_states[0] (SGD, 1 group, "
        "2 params); optimizer_states[1] (Adam, 1 group, 2 params)")
    assert e.value.hint == "pick one with key, e.g. key='optimizer_states[0]'"
    found = locate(src, key="optimizer_states[1]")
    assert found.location == "optimizer_states[1]"
    assert _same(found.state, sd1)
    assert found.scheduler_location == "lr_schedulers[1]"
    assert found.candidates == ("optimizer_states[0]", "optimizer_states[1]")
    dotted = locate(src, key="optimizer_states.1")  # another spelling, same place
    assert (dotted.location, dotted.scheduler_location) == ("optimizer_states[1]",
                                                            "lr_schedulers[1]")


def test_lightning_weights_only_says_what_it_holds(tmp_path):
    _, _, model = _opt_and_sched()
    ckpt = _lightning([], [], model)
    del ckpt["optimizer_states"], ckpt["lr_schedulers"]
    torch.save(ckpt, tmp_path / "w.ckpt")
    with pytest.raises(NoOptimizerStateError) as e:
        locate(open_source(tmp_path / "w.ckpt"))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'w.ckpt'} holds a PyTorch Lightning checkpoint saved "
                          "without optimizer state")
    assert "state_dict (a model state_dict with 2 tensors (16 elements))" in msg
    assert msg.endswith("; no optimizer state found")


def test_model_only_file(tmp_path):
    model = {f"l{i}.weight": torch.zeros(2, 3) for i in range(4)}
    torch.save(model, tmp_path / "model.bin")
    with pytest.raises(NoOptimizerStateError) as e:
        locate(open_source(tmp_path / "model.bin"))
    assert str(e.value) == (f"{tmp_path / 'model.bin'} holds a model state_dict with 4 tensors "
                            "(24 elements); no optimizer state found")


def test_scheduler_only_file(tmp_path):
    _, sched, _ = _opt_and_sched()
    torch.save(sched, tmp_path / "scheduler.pt")
    with pytest.raises(NoOptimizerStateError, match="an LR scheduler state_dict "
                       r"\(last_epoch 1\); no optimizer state found"):
        locate(open_source(tmp_path / "scheduler.pt"))


def _hf_folder(tmp_path, opt_name="optimizer.pt", sched_name="scheduler.pt"):
    sd, sched, model = _opt_and_sched("AdamW")
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    torch.save(sd, folder / opt_name)
    torch.save(sched, folder / sched_name)
    torch.save(model, folder / "pytorch_model.bin")
    (folder / "trainer_state.json").write_text('{"global_step": 500}')
    return folder, sd, sched


@pytest.mark.parametrize(("opt_name", "sched_name"), [
    ("optimizer.pt", "scheduler.pt"),  # Hugging Face Trainer
    ("optimizer.bin", "scheduler.bin"),  # accelerate save_state
])
def test_hf_and_accelerate_folders(tmp_path, opt_name, sched_name):
    folder, sd, sched = _hf_folder(tmp_path, opt_name, sched_name)
    src = open_source(folder)
    assert src.file == folder / opt_name
    found = locate(src)
    assert found.location == ""
    assert _same(found.state, sd)
    assert found.scheduler_location == sched_name
    assert found.scheduler["_last_lr"] == sched["_last_lr"]


def test_hf_optimizer_file_named_directly_finds_its_scheduler(tmp_path):
    folder, _, sched = _hf_folder(tmp_path)
    found = locate(open_source(folder / "optimizer.pt"))
    assert found.scheduler_location == "scheduler.pt"
    assert found.scheduler["last_epoch"] == sched["last_epoch"]


def test_broken_scheduler_beside_optimizer_does_not_hide_the_optimizer(tmp_path):
    folder, sd, _ = _hf_folder(tmp_path)
    (folder / "scheduler.pt").write_bytes(b"PK\x03\x04 broken")
    src = open_source(folder)
    assert "scheduler" in src.sibling_errors
    found = locate(src)
    assert found.scheduler is None
    assert _same(found.state, sd)


def test_folder_without_optimizer_file(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no optimizer.pt or optimizer.bin"):
        open_source(tmp_path)


def test_nested_container_location_and_key(tmp_path):
    sd, _, _ = _opt_and_sched()
    torch.save({"trainer": {"optimizer": sd, "step": 4}, "meta": [1, 2]}, tmp_path / "n.pt")
    src = open_source(tmp_path / "n.pt")
    assert locate(src).location == "trainer.optimizer"
    assert locate(src, key="trainer.optimizer").location == "trainer.optimizer"
    assert resolve_key(src.obj, "meta[1]") == 2


def test_key_errors_say_what_is_there(tmp_path):
    sd, _, model = _opt_and_sched()
    torch.save({"model": model, "optimizer": sd}, tmp_path / "c.pt")
    src = open_source(tmp_path / "c.pt")
    with pytest.raises(NoOptimizerStateError) as e:
        locate(src, key="optim")
    p = tmp_path / "c.pt"
    assert str(e.value) == (f"key='optim': nothing at 'optim' in {p}"  # which file: diff
                            "; did you mean 'optimizer'?")
    assert e.value.hint.startswith("it holds a dict with keys model (a model state_dict")
    with pytest.raises(NoOptimizerStateError) as e:
        locate(src, key="model")
    assert str(e.value) == (f"key='model' in {p} is a model state_dict with 2 tensors "
                            "(16 elements), not an optimizer state")
    assert e.value.hint == "optimizer states are at: optimizer"


def test_legacy_non_zip_format(tmp_path):
    sd, _, _ = _opt_and_sched()
    torch.save({"optimizer": sd}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    src = open_source(tmp_path / "old.pth")
    assert src.format == "legacy"
    found = locate(src)
    assert found.location == "optimizer"
    assert _same(found.state, sd)


def test_pickled_optimizer_object_is_refused_safely_and_read_with_unsafe(tmp_path):
    opt, _ = stepped_optimizer("Adam")
    torch.save({"optimizer": opt, "epoch": 1}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="needs torch.optim.adam.Adam, which safe loading "
                       "does not allow"):
        open_source(tmp_path / "obj.pt")
    src = open_source(tmp_path / "obj.pt", unsafe=True)
    found = locate(src)
    assert found.location == "optimizer"
    assert _same(found.state, opt.state_dict())
    assert locate(src, key="optimizer").location == "optimizer"


def test_accelerate_second_optimizer_pairs_its_own_scheduler(tmp_path):
    folder = tmp_path / "checkpoint_3"
    folder.mkdir()
    sd0, sched0, _ = _opt_and_sched("SGD")
    sd1, sched1, _ = _opt_and_sched("Adam", seed=1)
    sched1["last_epoch"] = 7  # tell the two schedulers apart
    torch.save(sd0, folder / "optimizer.bin")
    torch.save(sched0, folder / "scheduler.bin")
    torch.save(sd1, folder / "optimizer_1.bin")
    torch.save(sched1, folder / "scheduler_1.bin")
    with pytest.raises(NoOptimizerStateError) as e:
        open_source(folder)
    assert str(e.value) == f"{folder} holds 2 optimizer files: optimizer.bin, optimizer_1.bin"
    assert e.value.hint == f"give one of them, e.g. {folder / 'optimizer.bin'}"
    second = locate(open_source(folder / "optimizer_1.bin"))
    assert _same(second.state, sd1)
    assert (second.scheduler_location, second.scheduler["last_epoch"]) == ("scheduler_1.bin", 7)
    first = locate(open_source(folder / "optimizer.bin"))
    assert (first.scheduler_location, first.scheduler["last_epoch"]) == ("scheduler.bin", 1)


THIRD = __import__("pathlib").Path(__file__).parent / "fixtures" / "third_party"
ALL_PO = THIRD.parent / "third_party_all" / "pytorch-optimizer" / "states.pt"


def test_key_finds_the_state_one_level_down_in_a_wrapper_and_the_hint_is_short():
    """pytorch-optimizer's Magma saves {"base": state, "magma_state": ...}: --key magma
    finds magma.base (R2 finding 2); a --key naming no state lists a few locations, not 116."""
    src = open_source(ALL_PO)
    loc = locate(src, "magma")
    assert loc.location == "magma.base"
    assert loc.extra and set(loc.extra[(0, 0)]) == {"magma_state.alignment"}
    with pytest.raises(NoOptimizerStateError) as e:
        locate(src, "magma.tau")
    assert e.value.hint.endswith("and 110 more") and len(e.value.hint) < 200


def test_lookahead_slow_params_join_each_params_entries(tmp_path):
    """pytorch-optimizer's Lookahead keeps slow weights by (group, index) beside
    base_optimizer (R2 finding 2): they are each param's entries, so totals count them and
    a NaN in them is warned about (they are copied into the model at the next sync)."""
    from optstate import api

    case = THIRD / "pytorch-optimizer_Lookahead_AdamW_" / "optimizer.pt"
    sd = torch.load(case, weights_only=True)
    loc = locate(open_source(case))
    assert loc.location == "base_optimizer"
    where, slow = loc.extra[(0, 1)]["lookahead_state.slow_params"]
    assert where == "lookahead_state[(0, 1)].slow_params"
    assert torch.equal(slow, sd["lookahead_state"][(0, 1)]["slow_params"])
    clean = api.inspect(case)
    assert not [w for w in clean["warnings"] if w["code"] == "nan"]
    assert "lookahead_state.slow_params" in clean["params"][1]["state"]
    sd["lookahead_state"][(0, 1)]["slow_params"].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    rep = api.inspect(tmp_path / "nan.pt")
    nan = [w for w in rep["warnings"] if w["code"] == "nan"]
    assert len(nan) == 1 and "lookahead_state.slow_params" in nan[0]["message"]
    assert rep["optimizer"]["kind"] == "AdamW wrapped by Lookahead"


def test_diff_sees_a_nan_in_lookahead_slow_params(tmp_path):
    """diff compares the wrapper's per-param entries too (R2 finding 2): before, two
    files differing only in slow_params compared equal."""
    from optstate import api

    case = THIRD / "pytorch-optimizer_Lookahead_AdamW_" / "optimizer.pt"
    sd = torch.load(case, weights_only=True)
    sd["lookahead_state"][(0, 1)]["slow_params"].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    r = api.diff(case, tmp_path / "nan.pt")
    assert not r["equal"]
    assert [c["path"] for c in r["changes"]] == ["state[1].lookahead_state.slow_params"]
    assert r["changes"][0]["metrics"]["nan_b_only"] == 1
