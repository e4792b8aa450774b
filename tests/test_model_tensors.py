"""optstate.io.model_tensors: a model's tensor list from real torch models and files.

Names are checked against what torch gives (``state_dict()`` keys, ``named_parameters()``,
its tie rule ``remove_duplicate``) and against the committed expected.json of the
real-library fixtures (scripts/fixtures/make_hf_lightning.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from optstate.base.errors import CheckpointError
from optstate.io.model_tensors import (
    ModelTensor,
    could_be_parameter,
    find_model_beside,
    find_model_in_container,
    model_tensors_from_state_dict,
    read_model_file,
)
from optstate.io.torch_file import load_torch_file

FIXTURES = Path(__file__).parent / "fixtures" / "hf_lightning"
BERT = FIXTURES / "hf_trainer_bert_mlm"
LIGHTNING = FIXTURES / "lightning_cnn_bn"


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.decoder = nn.Linear(6, 11)
        self.decoder.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.embed(x)))


def trained_cnn() -> tuple[SmallCNN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 1, 6, 6)).pow(2).mean().backward()
        opt.step()
    return model, opt


def trained_tied() -> tuple[TiedLM, torch.optim.Optimizer]:
    torch.manual_seed(1)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model(torch.randint(0, 11, (3, 4))).pow(2).mean().backward()
    opt.step()
    return model, opt


def param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize("layout", ["tutorial", "short"])
def test_cnn_with_batchnorm_in_a_container(tmp_path, layout):
    model, opt = trained_cnn()
    if layout == "tutorial":
        ckpt = {"epoch": 2, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": 0.5}
        opt_loc, model_loc = "optimizer_state_dict", "model_state_dict"
    else:
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        opt_loc, model_loc = "optimizer", "model"
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    obj = load_torch_file(path, mmap=True).obj

    location, sd = find_model_in_container(obj, opt_loc)
    assert location == model_loc
    assert list(sd) == list(model.state_dict())

    mt = read_model_file(path)
    assert mt.ordered and mt.location == model_loc and mt.path == str(path)
    assert mt.origin == f"the model state_dict at '{model_loc}' in ckpt.pt"
    assert [t.name for t in mt.tensors] == list(model.state_dict())
    assert {t.name: t.shape for t in mt.tensors} == shapes(model)
    dtypes = {t.name: t.dtype for t in mt.tensors}
    assert dtypes["bn.num_batches_tracked"] == "int64" and dtypes["conv.weight"] == "float32"
    assert all(t.aliases == () for t in mt.tensors)
    # what could be a parameter is exactly what named_parameters() yields, in its order
    assert [t.name for t in mt.tensors if could_be_parameter(t)] == param_names(model)


def test_the_parent_dict_of_a_nested_optimizer_is_searched_first():
    model, opt = trained_cnn()
    other = nn.Linear(2, 2).state_dict()
    obj = {"trainer": {"optimizer": opt.state_dict(), "model": model.state_dict()},
           "model": other}
    location, sd = find_model_in_container(obj, "trainer.optimizer")
    assert location == "trainer.model" and list(sd) == list(model.state_dict())
    # nothing beside it: the top level
    obj = {"trainer": {"optimizer": opt.state_dict(), "epoch": 1}, "net": model.state_dict()}
    location, sd = find_model_in_container(obj, "trainer.optimizer")
    assert location == "net" and sd is obj["net"]


def test_preferred_keys_win_and_two_unpreferred_candidates_are_none():
    model, opt = trained_cnn()
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    obj = {"ema": ema, "model_state_dict": model.state_dict(), "state_dict": ema,
           "optimizer_state_dict": opt.state_dict()}
    assert find_model_in_container(obj, "optimizer_state_dict")[0] == "model_state_dict"
    # one unpreferred candidate is taken; two are ambiguous
    obj = {"generator": model.state_dict(), "opt": opt.state_dict()}
    assert find_model_in_container(obj, "opt")[0] == "generator"
    obj = {"generator": model.state_dict(), "critic": ema, "opt": opt.state_dict()}
    assert find_model_in_container(obj, "opt") is None
    # the optimizer state itself, and a dict of scalars, are not model state_dicts
    assert find_model_in_container({"optimizer": opt.state_dict(), "epoch": 3},
                                   "optimizer") is None
    # a key that is not a path still finds the top-level model
    obj = {"model": model.state_dict(), "opt.v1": opt.state_dict()}
    assert find_model_in_container(obj, 'opt.v1[')[0] == "model"


def test_lightning_ckpt_state_dict_beside_optimizer_states():
    expected = json.loads((LIGHTNING / "expected.json").read_text())
    obj = load_torch_file(LIGHTNING / "model.ckpt", mmap=True).obj
    assert list(obj) == expected["ckpt_top_level_keys"]
    location, sd = find_model_in_container(obj, "optimizer_states[0]")
    assert location == "state_dict"
    assert list(sd) == expected["state_dict_keys"]

    mt = read_model_file(LIGHTNING / "model.ckpt")
    assert mt.ordered and mt.location == "state_dict"
    assert [t.name for t in mt.tensors] == expected["state_dict_keys"]
    params = [t for t in mt.tensors if could_be_parameter(t)]
    assert [[t.name, list(t.shape)] for t in params] == expected["named_parameters"]
    assert [t.name for t in mt.tensors if not could_be_parameter(t)] == expected["buffers"]


# --------------------------------------------------------------------------- ties


def test_tied_embeddings_are_one_tensor_with_an_alias(tmp_path):
    model, _ = trained_tied()
    path = tmp_path / "tied.pt"
    torch.save(model.state_dict(), path)
    mt = read_model_file(path)
    assert mt.ordered and mt.origin == "tied.pt" and mt.location is None
    # torch's own rule: named_parameters() yields the tied weight once, under its first name
    assert [t.name for t in mt.tensors] == param_names(model)
    all_names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    first = {t.name: t for t in mt.tensors}
    assert first["embed.weight"].aliases == ("decoder.weight",)
    assert sorted([t.name for t in mt.tensors] + ["decoder.weight"]) == sorted(all_names)
    assert all(t.aliases == () for t in mt.tensors if t.name != "embed.weight")


def test_views_of_one_storage_are_distinct_tensors():
    # a fused qkv weight split into views: one storage, three offsets -> three tensors;
    # a transposed view (same offset, other stride) is not the same tensor either
    qkv = torch.randn(3 * 4, 4)
    q, k, v = qkv.split(4)
    sd = {"q": q, "k": k, "v": v, "qkv": qkv, "qkv_t": qkv.t(), "q_again": q.view(4, 4)}
    mt = model_tensors_from_state_dict(sd, origin="views")
    assert [(t.name, t.aliases) for t in mt.tensors] == [
        ("q", ("q_again",)), ("k", ()), ("v", ()), ("qkv", ()), ("qkv_t", ())]


def test_lazy_and_meta_tensors_have_no_ties():
    from optstate.io.lazy import LazyTensor

    def loader() -> torch.Tensor:
        raise AssertionError("structure only: the data is never read")

    with torch.device("meta"):
        meta = nn.Linear(3, 2)
    sd = {"a": LazyTensor((2, 3), torch.bfloat16, loader), "b": meta.weight,
          "c": meta.weight, "n": 7, 3: torch.zeros(1)}
    mt = model_tensors_from_state_dict(sd, origin="lazy")
    assert [(t.name, t.shape, t.dtype, t.aliases) for t in mt.tensors] == [
        ("a", (2, 3), "bfloat16", ()), ("b", (2, 3), "float32", ()),
        ("c", (2, 3), "float32", ())]


# --------------------------------------------------------------------------- safetensors


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """The safetensors format by hand: u64 header length, JSON header, raw bytes."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        code = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                torch.int64: "I64", torch.bool: "BOOL", torch.uint8: "U8"}[t.dtype]
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_safetensors_written_here_reads_back_sorted(tmp_path):
    model, _ = trained_cnn()
    sd = dict(model.state_dict())
    sd["head.weight"] = sd["head.weight"].to(torch.bfloat16)
    sd["bn.bias"] = sd["bn.bias"].half()
    sd["mask"] = torch.tensor([True, False])
    path = tmp_path / "model.safetensors"
    write_safetensors(path, sd)
    mt = read_model_file(path)
    assert not mt.ordered and mt.origin == "model.safetensors" and mt.path == str(path)
    assert [t.name for t in mt.tensors] == sorted(sd)
    assert {t.name: (t.shape, t.dtype) for t in mt.tensors} == {
        n: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in sd.items()}
    # content decides, not the name: the same bytes under another suffix
    other = tmp_path / "weights.bin"
    other.write_bytes(path.read_bytes())
    assert read_model_file(other).tensors == mt.tensors


def test_real_trainer_safetensors_matches_expected_json():
    expected = json.loads((BERT / "expected.json").read_text())
    mt = read_model_file(BERT / "checkpoint-3" / "model.safetensors")
    assert not mt.ordered
    assert [t.name for t in mt.tensors] == expected["safetensors_keys"]
    named = {n: tuple(s) for n, s in expected["named_parameters"]}
    assert {t.name: t.shape for t in mt.tensors} == named
    assert {t.dtype for t in mt.tensors} == {"float32"}
    # the tied decoder weight and bias are stored once, under their first names
    for first, tied in expected["tied"]:
        assert first in named and tied not in {t.name for t in mt.tensors}


def test_find_model_beside_prefers_the_ordered_torch_file(tmp_path):
    assert find_model_beside(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert find_model_beside(tmp_path) == tmp_path / "model.safetensors"
    (tmp_path / "pytorch_model.bin").mkdir()  # a folder is not a model file
    assert find_model_beside(tmp_path) == tmp_path / "model.safetensors"
    (tmp_path / "pytorch_model.bin").rmdir()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert find_model_beside(tmp_path) == tmp_path / "pytorch_model.bin"
    assert find_model_beside(BERT / "checkpoint-3") == BERT / "checkpoint-3" / "model.safetensors"


# --------------------------------------------------------------------------- sharded


def test_sharded_safetensors_index(tmp_path):
    model, _ = trained_cnn()
    sd = model.state_dict()
    names = list(sd)
    shard_of = {n: ("model-00001-of-00002.safetensors" if i < 4 else
                    "model-00002-of-00002.safetensors") for i, n in enumerate(names)}
    for shard in set(shard_of.values()):
        write_safetensors(tmp_path / shard, {n: sd[n] for n in names if shard_of[n] == shard})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": shard_of}))
    mt = read_model_file(index)
    assert not mt.ordered and mt.origin == "model.safetensors.index.json (2 shards)"
    assert [t.name for t in mt.tensors] == sorted(names)
    assert {t.name: t.shape for t in mt.tensors} == shapes(model)

    shard_of["head.bias"] = "model-00001-of-00002.safetensors"  # but it is in shard 2
    index.write_text(json.dumps({"weight_map": shard_of}))
    with pytest.raises(CheckpointError, match="puts tensor 'head.bias' in model-00001"):
        read_model_file(index)
    shard_of["head.bias"] = "../../etc/passwd"
    index.write_text(json.dumps({"weight_map": shard_of}))
    with pytest.raises(CheckpointError, match="not a file name in the same folder"):
        read_model_file(index)
    shard_of["head.bias"] = "model-00003-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": shard_of}))
    with pytest.raises(CheckpointError, match="names the shard model-00003.*does not exist"):
        read_model_file(index)


def test_sharded_torch_bin_index(tmp_path):
    model, _ = trained_tied()
    sd = model.state_dict()
    names = list(sd)
    shard_of = {n: ("pytorch_model-00001-of-00002.bin" if i < 2 else
                    "pytorch_model-00002-of-00002.bin") for i, n in enumerate(names)}
    for shard in set(shard_of.values()):
        torch.save({n: sd[n] for n in names if shard_of[n] == shard}, tmp_path / shard)
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": dict(sorted(shard_of.items()))}))
    mt = read_model_file(index)
    # shard order, each shard's own order: the model's here, but not certainly in general
    assert not mt.ordered
    assert [t.name for t in mt.tensors] == names  # the tie spans two shards: not merged
    assert {t.name: t.shape for t in mt.tensors} == shapes(model)


# --------------------------------------------------------------------------- refusals


def test_could_be_parameter():
    assert could_be_parameter(ModelTensor("fc.weight", (2, 2), "float32"))
    assert could_be_parameter(ModelTensor("x.scale", (), "bfloat16"))
    assert could_be_parameter(ModelTensor("rot", (2,), "complex64"))
    assert could_be_parameter(ModelTensor("q", (2,), "float8_e4m3fn"))
    assert not could_be_parameter(ModelTensor("bn.running_mean", (4,), "float32"))
    assert not could_be_parameter(ModelTensor("rotary_emb.inv_freq", (4,), "float32"))
    assert not could_be_parameter(ModelTensor("ids", (4,), "int64"))
    assert not could_be_parameter(ModelTensor("mask", (4,), "bool"))
    # a component that merely contains a buffer name is not one
    assert could_be_parameter(ModelTensor("running_mean_proj.weight", (4,), "float32"))


def _header_file(tmp_path: Path, length: int, body: bytes) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", length) + body)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("huge", r"header length 9,223,372,036,854,775,808 is over the 100,000,000-byte limit"),
    ("truncated", r"is truncated: its safetensors header needs 4,000 bytes, the file "
                  r"holds 14 after the length"),
    ("not_json", r"its header is not JSON"),
    ("not_utf8", r"its header is not JSON"),
    ("list", r"its header is a JSON list, not an object"),
    ("duplicate", r"the key 'a' appears twice"),
    ("dtype", r"tensor 'a' has the dtype 'Q7', which optstate does not know"),
    ("shape", r"tensor 'a' has no valid shape"),
    ("offsets", r"tensor 'a' ends at byte 800 of the data, which holds 8"),
    ("size", r"tensor 'a' of shape \[3\] \(float32\) needs 12 bytes, its data_offsets "
             r"give 8"),
    ("short", r"is truncated: a safetensors file starts with an 8-byte header length"),
])
def test_hostile_safetensors_headers(tmp_path, case, pattern):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

    def header(**changes) -> bytes:
        return json.dumps({"a": {**entry, **changes}}).encode()

    if case == "huge":
        path = _header_file(tmp_path, 2**63, b"{}")
    elif case == "truncated":
        path = _header_file(tmp_path, 4000, b'{"a": {"dtype"')
    elif case == "not_json":
        path = _header_file(tmp_path, 9, b"{not json")
    elif case == "not_utf8":
        path = _header_file(tmp_path, 4, b"{\xff\xfe}")
    elif case == "list":
        path = _header_file(tmp_path, 2, b"[]")
    elif case == "duplicate":
        body = b'{"a": {}, "a": {}}'
        path = _header_file(tmp_path, len(body), body)
    elif case == "short":
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"\x10\x00")
    else:
        body = {"dtype": header(dtype="Q7"), "shape": header(shape=[2, -1]),
                "offsets": header(data_offsets=[0, 800]),
                "size": header(shape=[3])}[case]
        path = _header_file(tmp_path, len(body), body + b"\0" * 8)
    with pytest.raises(CheckpointError, match=pattern) as info:
        read_model_file(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_files_that_are_not_model_files(tmp_path):
    _, opt = trained_cnn()
    cases = {
        "missing.pt": (None, "is not a model file: it does not exist"),
        "optimizer.pt": ("opt", "is not a model file: it holds an optimizer state_dict"),
        "run.pt": ({"epoch": 3, "loss": 0.2}, r"it holds a dict \('epoch', 'loss'\) with no "
                                              "model state_dict in it"),
        "list.pt": ([torch.zeros(2)], "it holds a list, not a model state_dict"),
        "notes.txt": (b"hello, this is text\n", "is neither safetensors nor a torch.save "
                                                "file"),
        "empty.bin": (b"", "it is empty"),
    }
    for name, (content, pattern) in cases.items():
        path = tmp_path / name
        if content == "opt":
            torch.save(opt.state_dict(), path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(CheckpointError, match=pattern) as info:
            read_model_file(path)
        assert info.value.hint and "model" in info.value.hint, name
    with pytest.raises(CheckpointError, match="is not a model file: it is a directory"):
        read_model_file(tmp_path)
    bad_index = tmp_path / "model.safetensors.index.json"
    bad_index.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="without a 'weight_map'"):
        read_model_file(bad_index)
