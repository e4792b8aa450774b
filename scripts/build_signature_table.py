"""Build optstate/state/optimizer_signatures.json, the table ``state.kind`` names optimizers by.

    .venv/bin/python scripts/build_signature_table.py          # rewrite the table
    .venv/bin/python scripts/build_signature_table.py --check  # exit 1 if it is stale

Everything in the table comes from files the libraries themselves wrote (nothing typed by
hand but the wrappers' inner optimizers and which entries hold a parameter's own copy):

- tests/fixtures/optimizer_signatures.json (scripts/fixtures/optimizer_signatures.py: every
  optimizer of torch.optim, timm, pytorch-optimizer, schedulefree, lion-pytorch, heavyball
  and three wrappers, built with its defaults on a tiny model and stepped 3 times): group
  keys, per-param state entries and their shapes' relation to the param;
- tests/fixtures/lowbit/*/optimizer.pt (bitsandbytes and torchao, made by
  scripts/fixtures/make_lowbit.py): group keys, the logical entries (bitsandbytes' ``state1``
  / ``state2`` beside their quantization maps, torchao's subclassed ``exp_avg`` ...), and the
  stored format that tells them from torch's Adam;
- zero by design: which entries are all zeros in every param after those 3 steps with the
  defaults (tests/fixtures/third_party/*/expected.pt, and third_party_all/*/expected.json
  where present), with the group values that were 0 then (``while``): a zero buffer is
  expected only while those are still 0 (SM3's ``momentum_buffer`` with ``momentum=0``).

One row per optimizer class (registry aliases of one class merge). Rows for torch.optim
classes carry relations and zeros only: ``state.kind`` keeps its hand-written torch
signatures, which know the keys of every torch version, for matching them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIGNATURES = ROOT / "tests" / "fixtures" / "optimizer_signatures.json"
LOWBIT = ROOT / "tests" / "fixtures" / "lowbit"
THIRD_PARTY = ROOT / "tests" / "fixtures" / "third_party"
THIRD_PARTY_ALL = ROOT / "tests" / "fixtures" / "third_party_all"
OUT = ROOT / "optstate" / "state" / "optimizer_signatures.json"

# Wrappers recorded around a known optimizer: (library, recorded name) -> (wrapper name,
# the inner optimizer's (library, recorded name)). What each adds is the difference.
WRAPPERS = {
    ("torch", "SGD+SWALR"): ("SWALR", ("torch", "SGD")),
    ("pytorch-optimizer", "Lookahead(AdamW)"): ("Lookahead", ("torch", "AdamW")),
    ("timm", "Lookahead(AdamW)"): ("Lookahead", ("torch", "AdamW")),
    ("schedulefree", "ScheduleFreeWrapper(SGD)"): ("ScheduleFreeWrapper", ("torch", "SGD")),
    ("schedulefree", "ScheduleFreeWrapperReference(SGD)"):
        ("ScheduleFreeWrapperReference", ("torch", "SGD")),
}
# Entries that are a copy of the parameter (Lookahead's slow weights, schedule-free's
# iterates): all zeros exactly when the parameter is, so zeros there say nothing about
# gradients. The data cannot tell a copy from a statistic; these are the libraries' names.
PARAM_COPIES = ("slow_buffer", "lookahead_params", "slow_params", "z", "x", "y", "x0", "ax",
                "p0", "lookahead_slow_buff")
# Built-in wrappers: a state entry that says the optimizer includes one.
BUILT_IN = {"slow_buffer": "Lookahead", "lookahead_params": "Lookahead",
            "z": "schedule-free"}
# Group keys written by schedulers and trainers, not by the optimizer (state.kind has the same).
ADDED_BY_OTHERS = {"initial_lr", "max_lr", "min_lr", "base_lr", "max_momentum",
                   "base_momentum", "param_names", "name", "lr_scale"}
LIBRARY_NAMES = {"torch": "torch.optim"}


def leaves(desc: Any, name: str, out: dict[str, set[str]]) -> None:
    """Nested state (heavyball): each leaf entry under its own key, with its relations."""
    if isinstance(desc, str):
        if name:
            out.setdefault(leaf(name), set()).add(desc.split()[0])
    elif isinstance(desc, dict) and "dict" in desc:
        for k, v in desc["dict"].items():  # keys like 0 or 0.9 (AggMo's betas) name no entry
            leaves(v, leaf(k) if IDENT.search(k) else name, out)
    elif isinstance(desc, dict) and ({"list", "tuple"} & desc.keys()):
        for v in desc.get("list", desc.get("tuple", [])):
            leaves(v, name, out)
    elif isinstance(desc, dict) and ({"list_of", "tuple_of"} & desc.keys()):
        leaves(desc.get("list_of", desc.get("tuple_of")), name, out)
    elif isinstance(desc, dict) and "type" in desc and IDENT.search(name):
        out.setdefault(leaf(name), set()).add("value")


IDENT = re.compile(r"[A-Za-z_]")


def leaf(name: str) -> str:
    sys.path.insert(0, str(ROOT))
    from optstate.state.signatures import leaf as own_leaf

    return own_leaf(name)


def params_of(rec: dict[str, Any]) -> dict[str, Any]:
    """Per-param state by param name; the generator shows a key of ``state`` that is no
    param (MADGRAD's step count ``k``, EmoNavi's ``ema``) as ``<key 'k'>``."""
    return {k: v for k, v in rec.get("state", {}).items() if not k.startswith("<key ")}


def global_keys(rec: dict[str, Any]) -> list[str]:
    return sorted(k[len("<key '"):-2] for k in rec.get("state", {}) if k.startswith("<key '"))


def entries_of(rec: dict[str, Any]) -> tuple[dict[str, set[str]], bool]:
    out: dict[str, set[str]] = {}
    # nested: entries that are dicts per inner group (heavyball), compared by their leaves
    nested = any(isinstance(d, dict) and "dict" in d
                 for per_param in params_of(rec).values() for d in per_param.values())
    for per_param in params_of(rec).values():
        for entry, desc in per_param.items():
            if nested:
                leaves(desc, entry if IDENT.search(entry) else "", out)
            elif isinstance(desc, str):
                out.setdefault(entry, set()).add(desc.split()[0])
            else:
                out.setdefault(entry, set()).add("value")
    return out, nested


def base_optimizer_groups(rec: dict[str, Any]) -> tuple[list[str], dict[str, set[str]]]:
    """pytorch-optimizer's Lookahead keeps the inner optimizer's state_dict under
    ``base_optimizer``: its group keys and entry names are what a reader sees."""
    base = rec.get("other_top_level", {}).get("base_optimizer", {}).get("dict", {})
    groups = base.get("param_groups", {}).get("list_of", {}).get("dict", {})
    keys = sorted(k for k in groups if k not in ("params", "param_names"))
    state: dict[str, set[str]] = {}
    for per_param in base.get("state", {}).get("dict", {}).values():
        for entry in per_param.get("dict", {}):
            state.setdefault(entry, set()).add("same")
    return keys, state


def row_for(rec: dict[str, Any]) -> dict[str, Any]:
    cls_path = rec["class"]
    cls = cls_path.rsplit(".", 1)[-1]
    torch_class = cls_path.startswith("torch.optim.")
    library = "torch.optim" if torch_class else rec["library"]
    state, nested = entries_of(rec)
    row: dict[str, Any] = {
        "kind": cls if torch_class else f"{library} {cls}",
        "library": library, "class": cls,
        "import_path": rec["import_path"] if not torch_class else f"torch.optim.{cls}",
        "registry_names": [rec["name"]],
        "group_keys": sorted(k for k in rec.get("group_values", {})
                             if k not in ADDED_BY_OTHERS),
        "state": {k: sorted(v) for k, v in sorted(state.items())},
        "defaults_zero": sorted(k for k, v in rec.get("group_values", {}).items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)
                                and v == 0),
    }
    if torch_class:
        row["torch"] = True
    if nested:
        row["nested"] = True
    built_in = sorted({BUILT_IN[e] for e in state if e in BUILT_IN})
    if built_in:
        row["built_in"] = built_in
    return row


def merge(into: dict[str, Any], row: dict[str, Any]) -> None:
    if "group_key_sets" in row or "group_key_sets" in into:
        into["group_key_sets"] = sorted({tuple(k) for k in into.get("group_key_sets", [])}
                                        | {tuple(k) for k in row.get("group_key_sets", [])})
        into["group_key_sets"] = [list(k) for k in into["group_key_sets"]]
    into["registry_names"] = sorted(set(into["registry_names"]) | set(row["registry_names"]))
    into["group_keys"] = sorted(set(into["group_keys"]) | set(row["group_keys"]))
    for k, rel in row["state"].items():
        into["state"][k] = sorted(set(into["state"].get(k, [])) | set(rel))
    into["state"] = dict(sorted(into["state"].items()))
    into["defaults_zero"] = sorted(set(into["defaults_zero"]) & set(row["defaults_zero"]))


def lowbit_rows() -> list[dict[str, Any]]:
    """bitsandbytes and torchao, from their real files (they need CUDA or torchao's own
    subclasses, so the signature generator does not run them)."""
    sys.path.insert(0, str(ROOT))
    from optstate.io.inert import InertTensor
    from optstate.io.torch_file import load_torch_file

    rows = []
    for folder in sorted(LOWBIT.iterdir()):
        if not (folder / "optimizer.pt").is_file():
            continue
        meta = json.loads((folder / "expected.json").read_text())
        sd = load_torch_file(folder / "optimizer.pt").obj
        keys = sorted({str(k) for g in sd["param_groups"] for k in g
                       if k != "params" and k not in ADDED_BY_OTHERS})
        state: dict[str, set[str]] = {}
        formats = set()
        stacked = False
        for raw in sd["state"].values():
            for k, v in raw.items():
                if k == "__bnb_optimizer_quant_state__":  # state1/state2 beside their maps
                    formats.add("bitsandbytes-8bit")
                    for q in v:
                        if str(q).startswith("state"):
                            state.setdefault(str(q), set()).add("same")
                    s1, s2 = v.get("state1"), v.get("state2")
                    if s1 is not None and s2 is not None and s1.dim() == s2.dim() + 1:
                        stacked = True  # AdEMAMix: two moments stacked in state1, which
                        state.pop("state1")  # state.lowbit shows as state1[0], state1[1]
                        for i in range(s1.shape[0]):
                            state.setdefault(f"state1[{i}]", set()).add("same")
                    continue
                if isinstance(v, InertTensor):
                    name = v.qualname.rsplit(".", 1)[-1]
                    formats.add({"OptimState8bit": "torchao-8bit", "OptimState4bit":
                                 "torchao-4bit", "OptimStateFp8": "torchao-fp8"}[name])
                state.setdefault(str(k), set()).add("scalar" if k == "step" else "same")
        path = meta["optimizer"]
        lib = meta["library"]
        cls = path.rsplit(".", 1)[-1]
        rows.append({
            "kind": f"{lib} {cls}", "library": lib, "class": cls, "import_path": path,
            "registry_names": [cls], "group_keys": keys,
            "state": {k: sorted(v) for k, v in sorted(state.items())},
            "defaults_zero": [], "stored_format": sorted(formats)[0],
            **({"stacked": True} if stacked else {}),
        })
    return rows


def zero_entries() -> dict[tuple[str, str], dict[str, set[str]]]:
    """(library, recorded name) -> {"all": entries all zeros in every param that has them,
    "some": entries all zeros in some param} after real steps in which every param got a
    nonzero gradient (the generator's loss depends on each)."""
    import torch

    found: dict[tuple[str, str], dict[str, set[str]]] = {}

    def judge(key: tuple[str, str], sums: dict[str, list[float]]) -> None:
        out = found.setdefault(key, {"all": set(), "some": set()})
        out["all"] |= {e for e, s in sums.items() if s and all(x == 0.0 for x in s)}
        out["some"] |= {e for e, s in sums.items() if any(x == 0.0 for x in s)}

    for folder in sorted(THIRD_PARTY.glob("*/expected.json")):
        meta = json.loads(folder.read_text())
        sig = meta["signature"]
        tensors = torch.load(folder.parent / "expected.pt", weights_only=True)
        sums: dict[str, list[float]] = {}
        for name, t in tensors.items():
            parts = name.split("/")
            if parts[0] != "state" or t.numel() == 0:
                continue
            entry = next((p for p in reversed(parts[2:]) if not p.isdigit()), None)
            if entry is not None and len(parts) >= 3:
                sums.setdefault(entry, []).append(float(t.double().abs().sum()))
        judge((sig["library"], sig["name"]), sums)
    for exp in sorted(THIRD_PARTY_ALL.glob("*/expected.json")):
        doc = json.loads(exp.read_text())
        library = doc.get("library", exp.parent.name)
        for name, o in (doc.get("optimizers") or {}).items():
            sums = {}
            for path, t in (o.get("tensors") or {}).items():
                parts = path.split("/")
                entry = next((p for p in reversed(parts[1:]) if not p.isdigit()), None)
                if entry is not None and t.get("numel"):
                    sums.setdefault(entry, []).append(float(t.get("abs_sum", 1.0)))
            judge((library, name), sums)
    return found


def torch_state() -> dict[str, set[str]]:
    """torch.optim's entries by class, from state.kind's hand-written torch signatures."""
    sys.path.insert(0, str(ROOT))
    from optstate.state.kind import SIGNATURES as TORCH

    return {s.name: set(s.state) for s in TORCH}


TORCH_STATE: dict[str, set[str]] = {}


def real_group_keys() -> dict[tuple[str, str], list[list[str]]]:
    """(library, recorded name) -> each param group's keys in the real saved state
    (third_party_all/): optimizers built with two groups (Muon's use_muon True/False)
    write different keys in each, and the signature generator records the first only."""
    sys.path.insert(0, str(ROOT))
    from optstate.base.errors import OptstateError
    from optstate.io.torch_file import load_torch_file

    out: dict[tuple[str, str], list[list[str]]] = {}
    for exp in sorted(THIRD_PARTY_ALL.glob("*/expected.json")):
        doc = json.loads(exp.read_text())
        loaded: dict[str, Any] = {}
        for name, o in (doc.get("optimizers") or {}).items():
            saved = o.get("saved")
            if not saved:
                continue
            if saved not in loaded:
                try:
                    loaded[saved] = load_torch_file(exp.parent / saved).obj
                except OptstateError:
                    loaded[saved] = None
            obj = loaded[saved]
            sd = obj.get(name) if saved == "states.pt" and isinstance(obj, dict) else obj
            if not isinstance(sd, dict) or not isinstance(sd.get("param_groups"), list):
                continue
            out[(doc.get("library", exp.parent.name), name)] = [
                sorted(str(k) for k in g if k not in ("params",) and k not in ADDED_BY_OTHERS)
                for g in sd["param_groups"]]
    return out


def build() -> dict[str, Any]:
    TORCH_STATE.update(torch_state())
    real_groups = real_group_keys()
    doc = json.loads(SIGNATURES.read_text())
    recs = [r for r in doc["optimizers"] if r.get("class") and r.get("stepped")]
    zeros = zero_entries()
    by_class: dict[str, dict[str, Any]] = {}
    wrappers = []
    containers: list[dict[str, Any]] = []
    named = {(r["library"], r["name"]): r for r in recs}
    for rec in recs:
        key = (rec["library"], rec["name"])
        inner_keys = [k for k, v in rec.get("other_top_level", {}).items() if isinstance(v, dict)
                      and {"state", "param_groups"} <= set(v.get("dict", {}))]
        if "state" not in rec.get("state_dict_keys", ["state"]) and len(inner_keys) == 1:
            # A wrapper whose state_dict holds the inner optimizer's under one key (Magma's
            # "base", Lookahead's "base_optimizer"): told by the keys beside it.
            containers.append({
                "name": rec["class"].rsplit(".", 1)[-1], "library": rec["library"],
                "import_path": rec["import_path"], "inner_key": inner_keys[0],
                "beside": sorted(set(rec["state_dict_keys"]) - set(inner_keys))})
            if key not in WRAPPERS:
                continue
        if key in WRAPPERS:
            wname, inner_key = WRAPPERS[key]
            inner = named[inner_key]
            if rec.get("group_count"):
                keys = set(rec.get("group_values", {}))
                state, _ = entries_of(rec)
            else:
                k, state = base_optimizer_groups(rec)
                keys = set(k)
            inner_state, _ = entries_of(inner)
            # Every entry the inner class can write (recorded with its defaults it may
            # write fewer: SGD without momentum writes none).
            inner_state = set(inner_state) | TORCH_STATE.get(inner_key[1], set())
            wrappers.append({
                "name": wname, "library": LIBRARY_NAMES.get(rec["library"], rec["library"]),
                "import_path": rec["import_path"],
                "recorded_around": row_for(inner)["kind"],
                "group_keys": sorted(keys - set(inner.get("group_values", {}))
                                     - ADDED_BY_OTHERS),
                "state": sorted(set(state) - set(inner_state)),
            })
            continue
        row = row_for(rec)
        sets = {tuple(k) for k in real_groups.get(key, [])}
        if len(sets) > 1:  # groups with different keys: each set, and the union
            row["group_key_sets"] = sorted(list(k) for k in sets)
            row["group_keys"] = sorted(set(row["group_keys"]).union(*sets))
        z = zeros.get(key, {"all": set(), "some": set()})
        z_all = z["all"] - set(PARAM_COPIES)
        z_some = z["some"] - z_all - set(PARAM_COPIES)
        if z_all or z_some:
            row["zero_by_design"] = {"entries": sorted(z_all & set(row["state"])),
                                     "some_params": sorted(z_some & set(row["state"])),
                                     "while_zero": row["defaults_zero"]}
        if not row["state"]:  # no per-param state after real steps, with these defaults
            row["stateless_while_zero"] = row["defaults_zero"]
        if global_keys(rec):
            row["global_state_keys"] = global_keys(rec)
        cls_key = rec["class"]
        if cls_key in by_class:
            merge(by_class[cls_key], row)
            if "zero_by_design" in row:
                prev = by_class[cls_key].get("zero_by_design",
                                             {"entries": [], "some_params": []})
                for k in ("entries", "some_params"):
                    prev[k] = sorted(set(prev[k]) | set(row["zero_by_design"][k]))
                prev["while_zero"] = by_class[cls_key]["defaults_zero"]
                by_class[cls_key]["zero_by_design"] = prev
            for k in ("global_state_keys",):
                if k in row:
                    by_class[cls_key][k] = sorted(set(by_class[cls_key].get(k, [])) | set(row[k]))
            if "stateless_while_zero" in row:  # an alias with momentum=0 (timm's lars)
                by_class[cls_key]["stateless_while_zero"] = row["stateless_while_zero"]
        else:
            by_class[cls_key] = row
    rows = sorted(by_class.values(), key=lambda r: (r["library"] != "torch.optim",
                                                    r["library"], r["class"]))
    rows += lowbit_rows()
    for r in rows:
        r.pop("defaults_zero", None)
        zero = r.get("zero_by_design")
        if zero is not None and not zero["entries"] and not zero["some_params"]:
            del r["zero_by_design"]
    versions = dict(doc["versions"])
    lowbit_versions = LOWBIT / "versions.json"
    if lowbit_versions.is_file():
        versions.update(json.loads(lowbit_versions.read_text()))
    return {
        "schema": 1,
        "generated_by": "scripts/build_signature_table.py",
        "from": ["tests/fixtures/optimizer_signatures.json", "tests/fixtures/lowbit/",
                 "tests/fixtures/third_party/", "tests/fixtures/third_party_all/"],
        "versions": versions,
        "relations": doc["relations"],
        "param_copies": list(PARAM_COPIES),
        "optimizers": rows,
        "wrappers": wrappers,
        "containers": containers,
    }


def render(table: dict[str, Any]) -> str:
    head = {k: v for k, v in table.items() if k not in ("optimizers", "wrappers", "containers")}
    text = json.dumps(head, indent=1)[:-2]
    for key in ("optimizers", "wrappers", "containers"):
        lines = [json.dumps(r, separators=(",", ":")) for r in table[key]]
        text += f',\n "{key}": [\n' + ",\n".join(lines) + "\n ]"
    return text + "\n}\n"


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)}: {'up to date' if same else 'STALE'}")
        return 0 if same else 1
    OUT.write_text(text)
    table = json.loads(text)
    print(f"{OUT.relative_to(ROOT)}: {len(table['optimizers'])} optimizers, "
          f"{len(table['wrappers'])} wrappers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
