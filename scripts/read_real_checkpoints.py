"""How many real third-party optimizer checkpoints optstate reads right (issue #19).

    .venv/bin/python scripts/read_real_checkpoints.py            # the per-library table
    .venv/bin/python scripts/read_real_checkpoints.py --json     # every case, judged
    .venv/bin/python scripts/read_real_checkpoints.py --only deepspeed --verbose

Every checkpoint under tests/fixtures/ that a real library wrote and whose truth the
library computed (tests/fixtures/README.md) is read with optstate's Python API
(``optstate.inspect``, as ``optstate inspect --json``) and judged on four criteria:

  a  name: ``report["optimizer"]["kind"]`` names the class the state was made with (a word
     of it equals the class's name, case and punctuation aside, and no other library is
     named), alone or as "A or B" where every other name is a twin: a class of the corpus
     with the same group keys, state entry names and nested tensor paths (each with its
     number of dimensions), or a torch.optim class as some torch version writes it
     (``optstate.state.kind.SIGNATURES``: an old torch's RAdam wrote only lr, betas, eps,
     weight_decay), which no reader can tell apart from what is stored; or it is
     ``unknown`` where the class has a twin. A wrong name is never right, nor a list
     with a name the stored state rules out, nor ``unknown`` for a state with no twin.
  b  buffers: every tensor of the library's truth (expected.pt / expected.json: the state
     tensors, dequantized or reassembled where the library stores them packed) is in the
     report under its parameter (by name where the report names params, else by
     position), with the same element count and a norm within
     ``numeric.tolerance.sum_rtol(numel)`` relative (two float64 sums of the same stored
     values in different orders; a 0-d tensor: its value, within ``sum_rtol(1)``);
     under the same entry path, or, where optstate names the entry
     otherwise (a nested heavyball key), under any entry of that param not matched yet,
     or as its slices (``state1[0]``, ``state1[1]``: together every element, the norm
     of the whole).
     DeepSpeed's fp32 master weights are read but kept beside the optimizer state (inspect
     reports the state; ``convert`` writes them): they are checked in what
     ``optstate.load_state(path).source.obj["fp32_master_weights"]`` holds.
  c  NaN: a copy of the checkpoint with one stored element set to NaN, byte-patched in
     the zip record of the tensor that holds it (the zip CRCs fixed, nothing else
     changed): a plain state entry, a nested heavyball tensor, a bitsandbytes ``absmax``,
     a torchao ``scale``, DeepSpeed rank 0's flat ``exp_avg`` partition, an FSDP2 local
     shard. Right when a warning of code ``nan`` names that param (by name or position).
  d  no false alarm: the clean checkpoint gives no warning (notes are fine).

A checkpoint optstate refuses fails all four, with its error. Checkpoints:
tests/fixtures/third_party_all (every optimizer of torch.optim, timm, pytorch-optimizer,
schedulefree, lion-pytorch and heavyball that steps on CPU; each state_dict is written to
a file of its own with torch.save, as a user would have it), lowbit/ (bitsandbytes,
torchao), deepspeed/ (ZeRO 1/2/3 folders), fsdp2/ (each rank's file), hf_lightning/
(a transformers Trainer folder, a Lightning .ckpt). tests/fixtures/third_party/ is not
counted again (its 21 states are in third_party_all); names/ has no tensor truth.

Imports no third-party optimizer library: the truth is in the fixtures.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optstate.numeric.tolerance import sum_rtol

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
LIBRARY_WORDS = {"torch", "timm", "pytorch_optimizer", "pytorchoptimizer", "schedulefree",
                 "lion_pytorch", "lionpytorch", "heavyball", "bitsandbytes", "bnb", "torchao",
                 "deepspeed"}


@dataclass
class Case:
    library: str  # the library that wrote it (its row in the table)
    name: str  # e.g. "timm/lamb", "deepspeed/zero2_bf16_ws2"
    path: Path  # what optstate.inspect is given
    kind: str  # the class's own name, e.g. "AdamW"
    kind_library: str  # the package of that class, e.g. "torch"
    signature: tuple[frozenset, frozenset] | None  # (group keys, entry names) for twins
    # truth: (param name or position, entry path) -> {"numel", "norm"} or {"value"}
    truth: dict[tuple[Any, str], dict[str, Any]]
    order: list[str | None]  # param name by position (as the state numbers them)
    file_to_patch: Path  # the torch.save file holding the tensor to set to NaN
    # the loaded file -> (the tensor to set a NaN in, its param, the entry the NaN shows in)
    nan_target: Callable[[Any], tuple[torch.Tensor, int | str, str]]
    # entries optstate reads but keeps beside the optimizer state (not in inspect's report):
    # entry -> the key of a {param name: tensor} dict in optstate.load_state(path).source.obj
    beside: dict[str, str] = field(default_factory=dict)


# --- the checkpoints -------------------------------------------------------------------

def short(cls: str) -> str:
    return cls.rsplit(".", 1)[-1]


def package(cls: str) -> str:
    return cls.split(".", 1)[0]


def plain_state_target(obj: Any) -> tuple[torch.Tensor, int | str, str]:
    """The NaN goes into the largest float tensor of the first param in ``state`` that has
    one, nested ones too (heavyball's dicts, lists of tensors)."""
    state = find_state(obj)
    for key, value in state.items():
        found = [(t.numel(), path, t) for path, t in tensors_in(value, "")
                 if t.is_floating_point() and t.numel() >= 2]
        if found:
            _, path, t = max(found, key=lambda f: f[0])
            return t, key, last_name(path)
    raise LookupError("no float tensor in the state to set to NaN")


def last_name(path: str) -> str:
    """The innermost name of a tensor's path in a param's state: 0/scale_by_soap_Q_3/1 ->
    scale_by_soap_Q_3 (what a NaN warning's place must name)."""
    names = [p for p in path.split("/") if not p.isdigit()]
    return names[-1] if names else path


def find_state(obj: Any) -> dict:
    """The optimizer state dict's "state" in a loaded file (torch.save state_dict, HF
    optimizer.pt, Lightning's optimizer_states[0], DeepSpeed's base_optimizer_state)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("state"), dict) and "param_groups" in obj:
            return obj["state"]
        for k in ("optimizer_states", "optimizer_state_dict", "base_optimizer_state",
                  "base_optimizer", "base", "optimizer"):
            if k in obj:
                inner = obj[k][0] if isinstance(obj[k], list) else obj[k]
                try:
                    return find_state(inner)
                except LookupError:
                    pass
    raise LookupError("no optimizer state found in the file")


def tensors_in(value: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every plain tensor under value (dicts, lists, inert objects' fields, inert tensor
    subclasses' fields), with its path."""
    from optstate.io.inert import Inert, InertTensor

    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors_in(v, f"{path}/{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from tensors_in(v, f"{path}/{i}" if path else str(i))
    elif isinstance(value, (Inert, InertTensor)):
        yield from tensors_in(value.state, path)


def load_any(path: Path) -> Any:
    """A torch.save file as optstate's safe reader loads it (foreign classes inert): to
    find the tensor to corrupt, never to judge."""
    from optstate.io.torch_file import load_torch_file

    return load_torch_file(path).obj


def third_party_all(tmp: Path) -> list[Case]:
    cases = []
    docs: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in (FIX / "third_party_all").iterdir() if p.is_dir()):
        docs[folder.name] = json.loads((folder / "expected.json").read_text())["optimizers"]
    for library, optimizers in docs.items():
        folder = FIX / "third_party_all" / library
        bundle = (torch.load(folder / "states.pt", weights_only=True)
                  if (folder / "states.pt").exists() else {})
        for name, doc in optimizers.items():
            if not doc.get("saved"):
                continue
            if doc["saved"] == "states.pt":
                path = tmp / f"{library}_{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.pt"
                torch.save(bundle[name], path)
            else:
                path = folder / doc["saved"]
            order = doc["param_names"]
            truth = {}
            for key, t in doc["tensors"].items():
                head, rest = wrapped_key(key)
                if not (head.isdigit() and int(head) < len(order)):
                    continue  # not a param's (MADGRAD's global "k"): not a per-param buffer
                pkey: Any = int(head)
                if isinstance(pkey, int) and order[pkey] is not None:
                    pkey = order[pkey]
                truth[(pkey, rest)] = ({"value": t["sum"]} if t["shape"] == [] and "sum" in t
                                       else {"numel": t["numel"], "norm": t.get("norm", 0.0)})
            entries = frozenset(doc.get("entry_names", [])) | frozenset(
                f"{shape_of_path(wrapped_key(k)[1])}:{len(t['shape'])}"
                for k, t in doc["tensors"].items())
            cases.append(Case(
                library, f"{library}/{name}", path, short(doc["class"]), package(doc["class"]),
                (frozenset(doc.get("group_keys", [])), entries), truth, order, path,
                plain_state_target))
    return cases


def wrapped_key(key: str) -> tuple[str, str]:
    """(position, entry path) of a truth key: "3/exp_avg"; a wrapper's own layout too:
    "base/state/3/exp_avg" (Magma's, Lookahead's base optimizer) and
    "lookahead_state/(0, 3)/slow_params" (group 0's 4th param; one group in this corpus)."""
    m = re.fullmatch(r"(?:base|base_optimizer)/state/(\d+)/(.+)", key)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"\w+_state/\(0, (\d+)\)/(.+)", key)
    if m:
        return m.group(1), m.group(2)
    head, _, rest = key.partition("/")
    return head, rest


def named_truth(folder: Path, entries: dict[str, str] | None = None) -> dict:
    """expected.pt keyed "<entry>/<param name>" -> truth; ``entries`` renames (None drops)."""
    out = {}
    for key, t in torch.load(folder / "expected.pt", weights_only=True).items():
        entry, _, pname = key.partition("/")
        if entries is not None:
            if entry not in entries:
                continue
            entry = entries[entry]
        out[(pname, entry)] = summary(t)
    return out


def summary(t: torch.Tensor) -> dict[str, Any]:
    if t.dim() == 0:
        return {"value": float(t)}
    return {"numel": t.numel(), "norm": float(torch.linalg.vector_norm(t.double()))}


def cases_in(folder: str) -> list[Path]:
    """The fixture folders with their expected.json (one being generated has none yet;
    tests/test_fixtures_manifest.py fails on one left so)."""
    return sorted(p for p in (FIX / folder).iterdir()
                  if p.is_dir() and (p / "expected.json").is_file())


def lowbit() -> list[Case]:
    cases = []
    for folder in cases_in("lowbit"):
        doc = json.loads((folder / "expected.json").read_text())
        lib = doc["library"]

        def target(obj: Any, lib: str = lib) -> tuple[torch.Tensor, int | str, str]:
            state = find_state(obj)
            if lib == "bitsandbytes":  # a block's absmax: its 256 values dequantize to NaN
                packed = state[0].get("__bnb_optimizer_quant_state__", state[0])
                return packed["absmax1"], 0, "state1"
            return state[0]["exp_avg"].state["scale"], 0, "exp_avg"  # torchao: a block's scale

        cases.append(Case(
            lib, f"{lib}/{folder.name.split('_', 1)[1]}", folder / "optimizer.pt",
            short(doc["optimizer"]), package(doc["optimizer"]),
            stored_signature(folder / "optimizer.pt"), named_truth(folder),
            doc["parameter_order"], folder / "optimizer.pt", target))
    return cases


def shape_of_path(path: str) -> str:
    """An entry path with indices as '#': 0/scale_by_soap_Q_3/1 -> #/scale_by_soap_Q_3/#."""
    return "/".join("#" if part.isdigit() else part for part in path.split("/"))


def stored_signature(path: Path) -> tuple[frozenset, frozenset]:
    """(group keys, state entry names and nested tensor paths with their number of
    dimensions) as stored: what tells optimizers apart on disk."""
    sd = load_any(path)
    keys = frozenset(str(k) for g in sd["param_groups"] for k in g if k != "params")
    entries = {str(k) for v in sd["state"].values() for k in v}
    entries |= {f"{shape_of_path(p)}:{t.dim()}" for v in sd["state"].values()
                for p, t in tensors_in(v, "")}
    return keys, frozenset(entries)


def deepspeed() -> list[Case]:
    cases = []
    for folder in cases_in("deepspeed"):
        doc = json.loads((folder / "expected.json").read_text())
        groups = doc.get("param_groups")
        frozen = set(doc.get("frozen", []))
        order = ([n for g in groups for n in g["names"]] if groups
                 else [n for n in doc["parameter_order"] if n not in frozen])
        zero = doc["zero_stage"] > 0
        # without ZeRO, "fp32" is the model's own weight (module state), not optimizer state
        truth = named_truth(folder, {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
                                     **({"fp32": "fp32"} if zero else {})})
        tag = folder / "checkpoint" / doc["tag"]
        # ZeRO: rank 0's flat partition, which starts with the first param of the first
        # group; stage 0: the client optimizer's state_dict in the model states file
        rank0 = (sorted(tag.glob("*rank_0_*optim_states.pt")) if zero
                 else [tag / "mp_rank_00_model_states.pt"])[0]
        first = order[0]

        def target(obj: Any, first: str = first) -> tuple[torch.Tensor, int | str, str]:
            state = find_state(obj)
            flat = state[0] if 0 in state else next(iter(state.values()))
            return flat["exp_avg"], first, "exp_avg"

        cases.append(Case("deepspeed", f"deepspeed/{folder.name}", folder / "checkpoint",
                          "AdamW", "torch", None, truth, order, rank0, target,
                          beside={"fp32": "fp32_master_weights"} if zero else {}))
    return cases


def fsdp2() -> list[Case]:
    folder = FIX / "fsdp2" / "adamw_ws2"
    doc = json.loads((folder / "expected.json").read_text())
    full = torch.load(folder / "expected.pt", weights_only=True)
    cases = []
    for rank in range(doc["world_size"]):
        truth = {}
        for key, t in full.items():
            entry, _, pname = key.partition("/")
            if entry == "param":
                continue
            local = doc["params"][pname]["entries"][entry]["local_shape_rank"][str(rank)]
            n = local[0]
            start = sum(doc["params"][pname]["entries"][entry]["local_shape_rank"][str(r)][0]
                        for r in range(rank))
            # Shard(0): this rank's rows; global statistics are not in one rank's file
            truth[(pname, entry)] = summary(t[start:start + n])

        def target(obj: Any) -> tuple[torch.Tensor, int | str, str]:
            return find_state(obj)[0]["exp_avg"].state["_local_tensor"], 0, "exp_avg"

        path = folder / f"rank{rank}.pt"
        cases.append(Case("torch (FSDP2)", f"fsdp2/adamw_ws2/rank{rank}", path, "AdamW",
                          "torch", None, truth, doc["parameter_order"], path, target))
    return cases


def hf_lightning() -> list[Case]:
    cases = []
    hf = FIX / "hf_lightning" / "hf_trainer_bert_mlm"
    doc = json.loads((hf / "expected.json").read_text())
    order = [n for g in doc["param_groups"] for n in g["names"]]
    cases.append(Case("transformers", "transformers/Trainer bert", hf / "checkpoint-3",
                      "AdamW", "torch", None, named_truth(hf), order,
                      hf / "checkpoint-3" / "optimizer.pt", plain_state_target))
    lt = FIX / "hf_lightning" / "lightning_cnn_bn"
    doc = json.loads((lt / "expected.json").read_text())
    order = [n for g in doc["param_groups"] for n in g["names"]]
    cases.append(Case("lightning", "lightning/cnn_bn", lt / "model.ckpt", "AdamW", "torch",
                      None, named_truth(lt), order, lt / "model.ckpt", plain_state_target))
    return cases


def all_cases(tmp: Path) -> list[Case]:
    return third_party_all(tmp) + lowbit() + deepspeed() + fsdp2() + hf_lightning()


# --- the NaN copy ----------------------------------------------------------------------

NAN_BYTES = {torch.float32: struct.pack("<f", float("nan")),
             torch.float64: struct.pack("<d", float("nan")),
             torch.float16: b"\x00\x7e", torch.bfloat16: b"\xc0\x7f"}


def nan_copy(case: Case, dest: Path) -> tuple[Path, int | str, str]:
    """A copy of the checkpoint whose target tensor's first element is NaN; returns (the
    path to inspect, the param the NaN is in, the name of its entry)."""
    obj = load_any(case.file_to_patch)
    tensor, param, entry = case.nan_target(obj)
    if tensor.dtype not in NAN_BYTES:
        raise LookupError(f"cannot put a NaN into {tensor.dtype}")
    needle = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    data = bytearray(case.file_to_patch.read_bytes())
    with zipfile.ZipFile(case.file_to_patch) as z:
        hits = []
        for info in z.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            start = info.header_offset + 30 + len(info.filename.encode()) + \
                struct.unpack_from("<H", data, info.header_offset + 28)[0]
            record = bytes(data[start:start + info.file_size])
            at = record.find(needle)
            if at >= 0 and record.find(needle, at + 1) < 0:
                hits.append((info, start, at))
        if len(hits) != 1:
            raise LookupError(f"the target tensor's bytes are in {len(hits)} records")
        info, start, at = hits[0]
        nan = NAN_BYTES[tensor.dtype]
        data[start + at:start + at + len(nan)] = nan
        crc = zlib.crc32(bytes(data[start:start + info.file_size])) & 0xFFFFFFFF
        struct.pack_into("<I", data, info.header_offset + 14, crc)
        # the central directory's copy of this record's CRC
        pos, name = z.start_dir, info.filename.encode()
        while data[pos:pos + 4] == b"PK\x01\x02":
            n, m, k = struct.unpack_from("<HHH", data, pos + 28)
            if bytes(data[pos + 46:pos + 46 + n]) == name:
                struct.pack_into("<I", data, pos + 16, crc)
                break
            pos += 46 + n + m + k
        else:
            raise LookupError("the record is not in the zip's central directory")
    if case.path.is_dir():  # a folder: the same folder with the one file replaced
        import shutil

        copy = dest / case.path.name
        shutil.copytree(case.path, copy)
        patched = copy / case.file_to_patch.relative_to(case.path)
        patched.write_bytes(bytes(data))
        return copy, param, entry
    copy = dest / case.path.name
    copy.write_bytes(bytes(data))
    return copy, param, entry


# --- judging ---------------------------------------------------------------------------

def leaves(rep: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if "items" in rep:
        for i, item in enumerate(rep["items"]):
            yield from leaves(item, f"{path}/{i}")
    elif "entries" in rep and isinstance(rep["entries"], dict):  # nested, however shown
        for k, item in rep["entries"].items():
            yield from leaves(item, f"{path}/{k}")
    else:
        yield path, rep


def agrees(truth: dict[str, Any], rep: dict[str, Any]) -> bool:
    if "value" in truth:
        v = rep.get("value")
        return isinstance(v, (int, float)) and abs(v - truth["value"]) <= sum_rtol(1) * abs(
            truth["value"])
    if rep.get("numel") != truth["numel"]:
        return False
    if truth["numel"] == 0:
        return True
    if rep.get("norm") is None:
        return False
    # both are float64 sums of the same stored values, in two orders: the stated bound
    return abs(rep["norm"] - truth["norm"]) <= sum_rtol(truth["numel"]) * abs(truth["norm"])


def named_in(alternative: str) -> tuple[set[str], set[str]]:
    """(library words, other words) of one name in a kind: "pytorch-optimizer Lamb"."""
    words = {w for w in re.split(r"[^a-z0-9_]+", alternative.lower().replace("-", "_")) if w}
    libs = {w for w in words if w in LIBRARY_WORDS}
    return {w.replace("_", "") for w in libs}, {w.replace("_", "") for w in words - libs}


def judge_names(case: Case, kind: str, twins: set[str]) -> tuple[bool, str]:
    """Right: the kind names the class, alone or among twins only ("A or B" where no key
    tells A from B); or says unknown where the class has a twin. Never a wrong name."""
    if kind.lower().startswith("unknown"):
        if twins:
            return True, ""
        return False, f"unknown, but no other optimizer has its signature (it is {case.kind})"
    lib = case.kind_library.lower().replace("_", "")
    own = case.kind.lower().replace("_", "")
    twin_names = {(package(t).lower().replace("_", ""), short(t).lower().replace("_", ""))
                  for t in twins}
    alternatives = [a for a in re.split(r"\s+or\s+|,\s*", kind) if a.strip()]
    right, extra = 0, []
    for alt in alternatives:
        libs, words = named_in(alt)
        if own in words and (not libs or lib in libs):
            right += 1
        elif not words & {t for _, t in twin_names}:
            extra.append(alt.strip())
    if right == 0:
        return False, f"named {kind!r}, it is {case.kind_library}'s {case.kind}"
    if extra:
        return False, (f"names {case.kind} among others its stored state rules out: "
                       f"{', '.join(extra)}")
    return True, ""


def judge(case: Case, twins: set[str], dest: Path) -> dict[str, Any]:
    import optstate

    out: dict[str, Any] = {"library": case.library, "checkpoint": case.name,
                           "path": str(case.path.relative_to(ROOT))
                           if case.path.is_relative_to(ROOT) else case.path.name,
                           "class": case.kind, "twins": sorted(twins)}
    try:
        report = optstate.inspect(case.path)
    except Exception as exc:  # noqa: BLE001 - a refusal is the finding
        why = f"not read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        out.update(read=False, a=why, b=why, c=why, d=why, right=False)
        return out
    kind = report["optimizer"].get("kind", "")
    out["kind"] = kind
    ok, why = judge_names(case, kind, twins)
    out["a"] = True if ok else why
    # b: every truth tensor under its param
    by_key: dict[Any, dict[str, dict[str, Any]]] = {}
    for p in report["params"]:
        name = p.get("name")
        key = name if name is not None else (
            case.order[p["position"]] if p["position"] < len(case.order) else p["position"])
        if key is None:
            key = p["position"]
        flat = {}
        for entry, rep in p["state"].items():
            flat.update(dict(leaves(rep, entry)))
        by_key[key] = flat
    missing = []
    beside: dict[str, dict[str, Any]] = {}
    if case.beside:
        obj = optstate.load_state(case.path).source.obj
        beside = {entry: obj.get(key) or {} for entry, key in case.beside.items()}
    for (pkey, path), t in case.truth.items():
        if path in beside:  # read, and kept beside the state (DeepSpeed's master weights)
            got = beside[path].get(pkey)
            if got is None or not agrees(t, summary(got)):
                missing.append(f"{pkey} {path}: "
                               f"{'absent' if got is None else 'differs'} beside the state")
            continue
        flat = by_key.get(pkey)
        if flat is None:
            missing.append(f"{pkey}: no such param in the report")
            continue
        rep = flat.get(path)
        if rep is not None and agrees(t, rep):
            flat.pop(path)
            continue
        other = next((k for k, r in flat.items() if agrees(t, r)), None)
        if other is not None:
            flat.pop(other)
            continue
        # one stored tensor shown as its slices (AdEMAMix8bit's two stacked moments:
        # state1 -> state1[0], state1[1]): together they hold every element
        parts = [k for k in flat if k.startswith(f"{path}[") and k.endswith("]")
                 and k[len(path) + 1:-1].isdigit()]
        if parts and "numel" in t and all(flat[k].get("norm") is not None for k in parts):
            whole = {"numel": sum(flat[k].get("numel") or 0 for k in parts),
                     "norm": sum(flat[k]["norm"] ** 2 for k in parts) ** 0.5}
            if agrees(t, whole):
                for k in parts:
                    flat.pop(k)
                continue
        seen = "absent" if rep is None else (
            f"numel {rep.get('numel')} norm {rep.get('norm')}" if "value" not in t
            else f"value {rep.get('value')}")
        want = f"numel {t.get('numel')} norm {t.get('norm')}" if "value" not in t \
            else f"value {t['value']}"
        missing.append(f"{pkey} {path}: {seen}, the library says {want}")
    out["b"] = True if not missing else f"{len(missing)} of {len(case.truth)}: {missing[0]}"
    # d: the clean file gives no warning
    warns = report.get("warnings", [])
    out["d"] = True if not warns else "; ".join(
        f"{w['code']}: {w['message'][:160]}" for w in warns[:2])
    # c: the NaN copy
    if not any("numel" in t and t["numel"] > 1 for t in case.truth.values()):
        out["c"] = "n/a"  # no per-parameter tensor to put a NaN in (stateless SGD)
        out["read"] = True
        out["right"] = all(out[k] in (True, "n/a") for k in "abcd")
        return out
    try:
        copy, param, entry = nan_copy(case, dest)
        nan_report = optstate.inspect(copy)
        hits = [w for w in nan_report.get("warnings", []) if w.get("code") == "nan"]
        pos = case.order.index(param) if isinstance(param, str) and param in case.order \
            else param
        name = case.order[pos] if isinstance(pos, int) and pos < len(case.order) else param
        # the warning's place for this param (by name, or state[pos]) names the entry
        found = any(entry in str(x) and (n == name or str(x).startswith(f"state[{pos}]"))
                    for w in hits for x, n in zip(w.get("where", []), w.get("names")
                                                  or [None] * len(w.get("where", [])),
                                                  strict=False))
        out["c"] = True if found else (
            f"no NaN warning for {name} {entry} (state[{pos}]); warnings: "
            + "; ".join(f"{w['code']} at {w.get('where')}"[:160]
                        for w in nan_report.get("warnings", [])))
    except Exception as exc:  # noqa: BLE001
        out["c"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    out["read"] = True
    out["right"] = all(out[k] in (True, "n/a") for k in "abcd")
    return out


def twins_of(cases: list[Case]) -> dict[str, set[str]]:
    """Per case, the other classes whose stored state is alike: in this corpus, and the
    torch.optim classes as some torch version writes them (an old torch's RAdam wrote
    only lr, betas, eps, weight_decay: ``optstate.state.kind.SIGNATURES``' core and full
    keys, the torch versions' facts that table records)."""
    from optstate.state.kind import _ADDED_BY_OTHERS, SIGNATURES

    by_sig: dict[Any, set[str]] = {}
    for c in cases:
        if c.signature is not None:
            by_sig.setdefault(c.signature, set()).add(f"{c.kind_library}.{c.kind}")
    out = {}
    for c in cases:
        if c.signature is None:
            continue
        keys, entries = c.signature
        own = set(keys) - _ADDED_BY_OTHERS
        top = {e for e in entries if ":" not in e}
        older = {f"torch.{s.name}" for s in SIGNATURES
                 if s.core <= own <= s.full and top <= s.state}
        out[c.name] = (by_sig[c.signature] | older) - {f"{c.kind_library}.{c.kind}"}
    return out


def run(only: str | None = None, names: list[str] | None = None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cases = all_cases(tmp)
        twins = twins_of(cases)
        results = []
        for i, case in enumerate(cases):
            if only and not case.name.startswith(only) and case.library != only:
                continue
            if names is not None and case.name not in names:
                continue
            dest = tmp / f"nan{i}"
            dest.mkdir()
            results.append(judge(case, twins.get(case.name, set()), dest))
        return results


def table(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r["library"], {"checkpoints": 0, "right": 0,
                                             "failing": {k: 0 for k in "abcd"}, "example": {}})
        row["checkpoints"] += 1
        row["right"] += r["right"]
        for k in "abcd":
            if r[k] not in (True, "n/a"):
                row["failing"][k] += 1
                row["example"].setdefault(k, f"{r['checkpoint']}: {r[k]}")
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="every case and the table as JSON")
    ap.add_argument("--only", help="a library (table row) or a checkpoint name prefix")
    ap.add_argument("--verbose", action="store_true", help="list every failing case")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    results = run(args.only)
    rows = table(results)
    if args.json:
        print(json.dumps({"table": rows, "cases": results}, indent=1))
        return 0
    total = sum(r["checkpoints"] for r in rows.values())
    right = sum(r["right"] for r in rows.values())
    print(f"{'library':<18} {'ckpts':>5} {'right':>5}   failing a/b/c/d (a name, b buffers, "
          "c NaN found, d no false warning)")
    for lib, row in rows.items():
        f = row["failing"]
        print(f"{lib:<18} {row['checkpoints']:>5} {row['right']:>5}   "
              f"{f['a']}/{f['b']}/{f['c']}/{f['d']}")
        for k in "abcd":
            if k in row["example"]:
                print(f"    {k}: {row['example'][k][:220]}")
    print(f"{'total':<18} {total:>5} {right:>5}   ({time.monotonic() - t0:.0f} s)")
    if args.verbose:
        for r in results:
            if not r["right"]:
                bad = {k: r[k] for k in "abcd" if r[k] not in (True, "n/a")}
                print(f"- {r['checkpoint']}: " + " | ".join(f"{k}: {v}"[:200]
                                                         for k, v in bad.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
