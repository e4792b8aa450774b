"""Low-bit optimizer states as the moments they stand for (an unpacker of ``state.packed``).

bitsandbytes' 8-bit optimizers: ``Optimizer8bit.state_dict()`` moves every key of its
``non_castable_tensor_keys`` (state1/2, qmap1/2, absmax1/2, max1/2, new_max1/2, gnorm_vec,
unorm_vec) of each param into a dict under ``__bnb_optimizer_quant_state__`` (older
versions kept them beside ``step``). A param with fewer than ``min_8bit_size`` (4096)
elements keeps float32 ``state1``/``state2`` there. ``bnb`` gives entries ``state1`` and
``state2``: dequantized (``numeric.dequant.bnb_8bit``) when they are uint8 codes with their
``qmapN`` and ``absmaxN``, as they are when float32 (AdEMAMix8bit's ``state1`` holds its
two moments stacked, (2, *shape)). Every other key of the dict stays an entry under its
own name (``__bnb_optimizer_quant_state__.KEY`` if that name is taken): nothing is dropped.

torchao's low-bit optimizers: an entry that is an ``io.inert.InertTensor`` of
``OptimState8bit`` / ``OptimState4bit`` / ``OptimStateFp8`` (or, loaded with ``--unsafe``
where torchao is installed, the subclass itself: only its attributes are read) becomes its
dequantized value (``torchao``).

A dequantized entry is an ``io.lazy.LazyTensor``: shape and dtype (float32) known without
work, its values computed (``numeric.dequant``) each time an operation reads them and
never kept, so ``--no-stats`` dequantizes nothing and a large state is dequantized one
entry at a time. Each such entry gets its ``stored`` description (``state.packed``'s
schema; ``signed`` for torchao; ``blocks`` for bitsandbytes; ``stacked``: k when the entry
holds k moments stacked along its first dimension, each of the param's shape:
AdEMAMix8bit's ``state1``).
Where the pieces do not fit together (a damaged file, a layout not known here:
bitsandbytes' non-blockwise ``max1``), nothing is guessed: the stored pieces are the
entries, under their own names (bitsandbytes: ``state1``, ``qmap1``, ...; torchao: the
object's fields, ``exp_avg.codes``, ``exp_avg.scale``, ...), and the entry's description
carries ``error`` ("not dequantized: ...") for the views to show.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from optstate.io.inert import InertTensor
from optstate.io.native_tensor import dtype_name, is_native, is_tensor
from optstate.numeric.dequant import (
    DequantError,
    Plan,
    bnb_8bit_plan,
    torchao_4bit_plan,
    torchao_8bit_plan,
    torchao_fp8_plan,
)

BNB_KEY = "__bnb_optimizer_quant_state__"
# Keys bitsandbytes moves under BNB_KEY (Optimizer8bit.non_castable_tensor_keys).
BNB_KEYS = frozenset({"qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2", "state1",
                      "state2", "gnorm_vec", "absmax1", "absmax2", "unorm_vec"})

TORCHAO_FORMATS = {"OptimState8bit": "torchao-8bit", "OptimState4bit": "torchao-4bit",
                   "OptimStateFp8": "torchao-fp8"}


def _nbytes(*tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if is_tensor(t))


def _dtype(t: Any) -> str:
    return str(getattr(t, "dtype", type(t).__name__)).removeprefix("torch.")


def bnb(entries: dict[Any, Any], stored: dict[str, dict[str, Any]]) -> dict[Any, Any]:
    """bitsandbytes' state (see the module docstring); other states pass through."""
    nested = entries.get(BNB_KEY)
    if isinstance(nested, dict):
        quant, prefix = dict(nested), f"{BNB_KEY}."
        out = {k: v for k, v in entries.items() if k != BNB_KEY}
    elif any(f"absmax{n}" in entries or f"qmap{n}" in entries for n in (1, 2)) and any(
            is_tensor(entries.get(f"state{n}")) for n in (1, 2)):
        quant, prefix = {k: v for k, v in entries.items() if k in BNB_KEYS}, ""
        out = {k: v for k, v in entries.items() if k not in BNB_KEYS}
    else:
        return entries
    for n in (1, 2):
        key = f"state{n}"
        value = quant.get(key)
        if not is_tensor(value):
            continue
        if dtype_name(value.dtype) != "uint8":  # a small param's 32-bit state
            out[key] = quant.pop(key)
            stored[key] = {"format": "bitsandbytes-32bit", "from": [prefix + key],
                           "dtype": _dtype(value)}
            continue
        parts = [key, f"qmap{n}", f"absmax{n}"]
        desc: dict[str, Any] = {"format": "bitsandbytes-8bit",
                                "from": [prefix + k for k in parts if k in quant],
                                "dtype": "uint8"}
        try:
            missing = [k for k in parts[1:] if k not in quant]
            if missing:
                raise DequantError(f"{' and '.join(missing)} missing (a layout other than "
                                   "blockwise 8-bit is not read here)")
            plan = bnb_8bit_plan(value, quant[f"qmap{n}"], quant[f"absmax{n}"])
        except DequantError as exc:
            desc["error"] = f"not dequantized: {exc}"
            stored[key] = desc
            continue  # the pieces stay entries below
        absmax = quant[f"absmax{n}"]
        desc.update({"block_size": plan.block_size, "blocks": int(absmax.shape[-1]),
                     "bytes_stored": _nbytes(*(quant.pop(k) for k in parts)),
                     "bytes_float32": _numel(plan) * 4})
        out[key] = _lazy(plan, "bitsandbytes-8bit")
        stored[key] = desc
    for k, v in quant.items():  # everything not consumed stays visible
        name = k if k not in out else prefix + k
        out[name] = v
    s1, s2 = out.get("state1"), out.get("state2")
    if (is_tensor(s1) and is_tensor(s2) and "state1" in stored
            and s1.dim() == s2.dim() + 1 and s1.shape[1:] == s2.shape):
        return _split_moments(out, stored, "state1")  # AdEMAMix8bit: two moments in one
    return out


# bitsandbytes' AdEMAMix (optim/ademamix.py, its reference step): m1, m2 = state1[0],
# state1[1]; m1 the fast EMA (betas[0]), m2 the slow one (betas[2]); nu (state2) the second
ADEMAMIX_MOMENTS = ("m1: the fast EMA, betas[0]", "m2: the slow EMA, betas[2]")


def _split_moments(entries: dict[Any, Any], stored: dict[str, dict[str, Any]],
                   key: str) -> dict[Any, Any]:
    """``key`` holding k moments stacked on dim 0 becomes k entries ``key[0]``, ...: each
    one moment of the param's shape, with its own statistics, warnings and diff (stored
    bytes split evenly, as its codes and scales are; the one table shared)."""
    value, desc = entries[key], stored.pop(key)
    k = int(value.shape[0])
    out: dict[Any, Any] = {}
    for name, v in entries.items():
        if name != key:
            out[name] = v
            continue
        for i in range(k):
            d = dict(desc, stacked_in=key, moment=i, of=k)
            if k == len(ADEMAMIX_MOMENTS):
                d["name"] = ADEMAMIX_MOMENTS[i]
            for b in ("bytes_stored", "bytes_float32"):
                if d.get(b) is not None:
                    d[b] = int(desc[b]) // k + (i == 0) * (int(desc[b]) % k)
            out[f"{key}[{i}]"] = (
                _lazy_tensor()(value.shape[1:], value.dtype, lambda v=value, i=i: v[i].clone(),
                               info=value.info) if _is_lazy(value) else value[i])
            stored[f"{key}[{i}]"] = d
    return out


def torchao(entries: dict[Any, Any], stored: dict[str, dict[str, Any]]) -> dict[Any, Any]:
    """torchao's low-bit entries (``InertTensor``s of its subclasses), dequantized."""
    out = dict(entries)
    for key, value in entries.items():
        s = _torchao_fields(value)
        if s is None:
            continue
        qualname, s = s
        fmt = TORCHAO_FORMATS[qualname.rsplit(".", 1)[-1]]
        codes = s.get("codes")
        desc: dict[str, Any] = {"format": fmt, "from": [str(key)], "dtype": _dtype(codes),
                                "class": qualname}
        if "signed" in s:
            desc["signed"] = s["signed"]
        try:
            if fmt == "torchao-8bit":
                plan = torchao_8bit_plan(codes, s.get("scale"), s.get("qmap"),
                                         s.get("block_size"))
            elif fmt == "torchao-4bit":
                plan = torchao_4bit_plan(codes, s.get("scale"), s.get("qmap"), s.get("_shape"),
                                         s.get("block_size"))
            else:
                plan = torchao_fp8_plan(codes, s.get("scale"), s.get("block_size"))
        except DequantError as exc:
            desc["error"] = f"not dequantized: {exc}"
            stored[str(key)] = desc
            # its pieces become entries (``exp_avg.codes``, ``exp_avg.scale``, ...): what
            # the file holds, compared and counted as tensors (the object itself is not one)
            del out[key]
            out.update((f"{key}.{field}", v) for field, v in s.items())
            continue
        desc.update({"block_size": plan.block_size,
                     "bytes_stored": _nbytes(codes, s.get("scale"), s.get("qmap")),
                     "bytes_float32": _numel(plan) * 4})
        out[key] = _lazy(plan, fmt)
        stored[str(key)] = desc
    return out


def _numel(plan: Plan) -> int:
    return math.prod(plan.shape)


def _lazy_tensor() -> Any:
    """``io.lazy.LazyTensor``, a torch.Tensor subclass: imported (with torch) only where a
    low-bit state is dequantized, so the native reader's plain states never import torch."""
    from optstate.io.lazy import LazyTensor

    return LazyTensor


def _is_lazy(value: Any) -> bool:
    """A ``LazyTensor`` (none exists before ``io.lazy`` is imported: asked without it)."""
    lazy = sys.modules.get("optstate.io.lazy")
    return lazy is not None and isinstance(value, lazy.LazyTensor)


def _lazy(plan: Plan, fmt: str) -> Any:
    """The moment as a tensor whose values are computed when something reads them (each
    time: nothing is kept, so a large state is dequantized one entry at a time)."""
    import torch

    return _lazy_tensor()(plan.shape, torch.float32, plan.compute,
                          info={"dequantized": fmt})


def _torchao_fields(value: Any) -> tuple[str, dict[str, Any]] | None:
    """(class qualname, fields) of a torchao low-bit state: an ``InertTensor`` (safe
    loading), or the library's own tensor subclass (``--unsafe`` with torchao installed:
    its attributes are read, none of its operations run); None for anything else."""
    if isinstance(value, InertTensor):
        return (value.qualname, value.state) if value.name in TORCHAO_FORMATS else None
    if is_native(value) or not is_tensor(value):  # a torch.Tensor below: torch is loaded
        return None
    import torch

    cls = type(value)
    if (isinstance(value, torch.Tensor) and cls is not torch.Tensor
            and cls.__name__ in TORCHAO_FORMATS and cls.__module__.startswith("torchao.")):
        names = ("codes", "scale", "qmap", "signed", "_shape", "block_size")
        return (f"{cls.__module__}.{cls.__qualname__}",
                {n: getattr(value, n) for n in names if hasattr(value, n)})
    return None


def low_bit_totals(stored_by_param: list[dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Over every quantized entry (one with ``bytes_stored``): how many, their stored
    bytes (codes, scales, tables) and the float32 bytes they stand for; None when none."""
    quantized = [d for stored in stored_by_param for d in stored.values()
                 if d.get("bytes_stored") is not None]
    if not quantized:
        return None
    kept = sum(int(d["bytes_stored"]) for d in quantized)
    full = sum(int(d["bytes_float32"]) for d in quantized)
    return {"entries": len(quantized),
            "formats": sorted({str(d["format"]) for d in quantized}),
            "bytes_stored": kept, "bytes_float32": full, "bytes_saved": full - kept}


# bitsandbytes' Adam-family optimizers (its "adam" update, backends/*/ops.py: state1 =
# beta1 * state1 + (1 - beta1) * g, state2 = beta2 * state2 + (1 - beta2) * g * g) keep
# torch Adam's exp_avg in state1 and exp_avg_sq in state2. Its one-state optimizers
# (SGD8bit, Lion8bit, RMSprop8bit, Adagrad8bit) write identical keys: never paired.
_BNB_ADAM = re.compile(r"bitsandbytes (Paged)?AdamW?(8bit|32bit)?")
_BNB_AS_TORCH = {"state1": "exp_avg", "state2": "exp_avg_sq"}
BNB_AS_TORCH_NOTE = ("bitsandbytes state1 is compared with exp_avg and state2 with exp_avg_sq "
                     "(bitsandbytes' Adam update keeps the first moment in state1 and the "
                     "second in state2, as torch's Adam/AdamW keep them in exp_avg and "
                     "exp_avg_sq)")


def bnb_as_torch(ga: Any, gb: Any) -> int | None:
    """Of two states' ``state.kind.KindGuess``es, which (0, 1) is a bitsandbytes Adam
    state beside a torch Adam/AdamW one (``analysis.diff`` compares its state1/state2
    with exp_avg/exp_avg_sq); None when the pairing is not certain."""
    for side, (bnb, other) in enumerate(((ga, gb), (gb, ga))):
        if (bnb.library == "bitsandbytes" and bnb.candidates
                and all(_BNB_ADAM.fullmatch(c) for c in bnb.candidates)
                and other.library == "torch.optim"
                and set(other.candidates or (other.kind,)) <= {"Adam", "AdamW"}):
            return side
    return None


def bnb_torch_names(state: dict[Any, Any]) -> dict[Any, Any]:
    """bitsandbytes' Adam entries under torch's names (``_BNB_AS_TORCH``)."""
    if any(v in state for v in _BNB_AS_TORCH.values()):
        return state
    return {_BNB_AS_TORCH.get(k, k): v for k, v in state.items()}
