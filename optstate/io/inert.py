"""Foreign classes in a checkpoint, decoded inertly: their names and fields, never their code.

DeepSpeed pickles its ``LossScaler``, ``ZeroStageEnum`` and ``fragment_address`` into every
optimizer file; torchao's low-bit optimizers save their states as tensor subclasses
(``OptimState8bit``, ...); FSDP2's ``optim.state_dict()`` holds ``DTensor``s, whose spec
names a ``DeviceMesh``. torch's ``weights_only`` unpickler refuses all of them, and loading
them with full pickle runs the library's code (and needs it installed).

Each class named in ``KNOWN`` is given to torch's ``weights_only`` unpickler under its
name as a *stand-in*: a class of ours that only records what the pickle gives it (the
constructor arguments and the ``BUILD`` state). Nothing of the foreign library is imported
or run, and any class not in ``KNOWN`` is still refused by torch, with its name.

After loading, ``settle`` turns tensor stand-ins into ``InertTensor`` (a plain object, not a
``torch.Tensor``: the wrapper torch built has no data, and statistics must never see it);
object stand-ins stay as they are: instances of ``Inert``.

- ``Inert``: ``qualname``, ``args`` (what the pickle called the class with: an enum's
  value), ``state`` (its fields, a dict); ``fields()`` gives both.
- ``InertTensor``: ``qualname``, the outer tensor's ``dtype``/``shape``/``stride``, and
  ``state``: its attributes (inner tensors: ``codes``, ``scale``, ``_local_tensor``, ...).

Readers above this layer interpret them (``state.packed``: low-bit states and DTensors;
``io.deepspeed``: DeepSpeed's classes).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

# qualname -> "object" (any class: dataclass, enum, plain class) | "tensor" (a tensor subclass)
KNOWN: dict[str, str] = {
    # DeepSpeed (ZeRO optimizer files)
    "deepspeed.runtime.zero.config.ZeroStageEnum": "object",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": "object",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": "object",
    "deepspeed.utils.tensor_fragment.fragment_address": "object",
    # torchao low-bit optimizer states (current and prototype locations)
    "torchao.optim.subclass_8bit.OptimState8bit": "tensor",
    "torchao.optim.subclass_4bit.OptimState4bit": "tensor",
    "torchao.optim.subclass_fp8.OptimStateFp8": "tensor",
    "torchao.prototype.low_bit_optim.subclass_8bit.OptimState8bit": "tensor",
    "torchao.prototype.low_bit_optim.subclass_4bit.OptimState4bit": "tensor",
    "torchao.prototype.low_bit_optim.subclass_fp8.OptimStateFp8": "tensor",
    # FSDP2 / DTensor
    "torch.distributed.tensor.DTensor": "tensor",
    "torch.distributed._tensor.api.DTensor": "tensor",
    "torch.distributed.tensor._dtensor_spec.DTensorSpec": "object",
    "torch.distributed.tensor._dtensor_spec.TensorMeta": "object",
    "torch.distributed.tensor._dtensor_spec.ShardOrderEntry": "object",
    "torch.distributed.device_mesh.DeviceMesh": "object",
    "torch.distributed._mesh_layout._MeshLayout": "object",
    "torch.distributed._mesh_layout._FlatLayout": "object",
    "torch.distributed.tensor.placement_types.Shard": "object",
    "torch.distributed.tensor.placement_types._StridedShard": "object",
    "torch.distributed.tensor.placement_types.Replicate": "object",
    "torch.distributed.tensor.placement_types.Partial": "object",
    # pytorch-optimizer's ScalableShampoo keeps its preconditioner objects in the state
    "pytorch_optimizer.optimizer.utils.preconditioner.PreConditioner": "object",
    "pytorch_optimizer.optimizer.utils.partition.BlockPartitioner": "object",
    "pytorch_optimizer.optimizer.utils.partition.PreConditionerType": "object",
    "pytorch_optimizer.optimizer.utils.graft.SGDGraft": "object",
    "pytorch_optimizer.optimizer.utils.graft.AdaGradGraft": "object",
    "pytorch_optimizer.optimizer.utils.graft.RMSPropAdaGradGraft": "object",
    "pytorch_optimizer.optimizer.utils.graft.Graft": "object",
    "pytorch_optimizer.optimizer.utils.galore.GaLoreProjector": "object",
    "pytorch_optimizer.optimizer.scion.LMONorm": "object",
}


class _Decoded:
    """What ``Inert`` and ``InertTensor`` share: a name, fields, and no way back to a file."""

    qualname: str
    state: dict[Any, Any]

    @property
    def name(self) -> str:
        """The class's own name (``LossScaler``)."""
        return self.qualname.rsplit(".", 1)[-1]

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise _unwritable(self.qualname)

    def __deepcopy__(self, memo: Any) -> Any:
        return self  # read-only: a copy is the same fields


class Inert(_Decoded):
    """A foreign object, decoded inertly (see the module docstring)."""

    qualname: ClassVar[str] = "?"  # type: ignore[misc]

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        self = object.__new__(cls)
        self.args = tuple(args) + tuple(kwargs.items())
        self.state = {}
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything was recorded by __new__

    def __setstate__(self, state: Any) -> None:  # the pickle's BUILD
        if (isinstance(state, tuple) and len(state) == 2
                and all(s is None or isinstance(s, dict) for s in state)):
            for part in state:  # (__dict__, slots)
                self.state.update(part or {})
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def fields(self) -> dict[str, Any]:
        """The constructor arguments (``args[0]``, ...) and the fields, in one dict."""
        out: dict[str, Any] = {f"args[{i}]": a for i, a in enumerate(self.args)}
        out.update((str(k), v) for k, v in self.state.items())
        return out

    def __repr__(self) -> str:
        """``LMONorm(1)``, ``LossScaler(cur_scale=1.0, dynamic=False)``: the class's own
        name with what the pickle gave it (the first six fields)."""
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.state.items()]
        more = ", ..." if len(parts) > 6 else ""
        return f"{self.name}({', '.join(parts[:6])}{more})"


class InertTensor(_Decoded):
    """A tensor subclass decoded inertly: the outer tensor's metadata and its attributes."""

    def __init__(self, qualname: str, dtype: Any, shape: tuple[int, ...],
                 stride: tuple[int, ...], state: dict[str, Any]) -> None:
        self.qualname = qualname
        self.dtype = dtype
        self.shape = shape
        self.stride = stride
        self.state = state

    def fields(self) -> dict[str, Any]:
        return {str(k): v for k, v in self.state.items()}

    def __repr__(self) -> str:
        return f"<{self.qualname} {self.dtype} {list(self.shape)}>"


def _unwritable(qualname: str) -> Exception:
    """Writing a decoded object back would save optstate's stand-in, not the library's
    class: a file the library could not load. Refused before anything is written."""
    from optstate.base.errors import CheckpointError

    if qualname.startswith("torch."):  # torch's own (DTensor): read without importing it
        return CheckpointError(
            f"the checkpoint holds {qualname} objects, which optstate reads as stand-ins "
            "(torch's class is never imported for a safe load) but cannot write back",
            hint="for FSDP2 rank files, convert the folder of all of them to one file and "
            "change that; or change them with torch.distributed")
    return CheckpointError(
        f"the checkpoint holds {qualname} objects, which optstate reads (decoded without "
        "their library) but cannot write back",
        hint="change this checkpoint with the library that wrote it")


_object_classes: dict[str, type] = {}
_tensor_classes: dict[str, type] = {}


def _object_class(qualname: str) -> type:
    cls = _object_classes.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (Inert,), {"qualname": qualname,
                                                          "__module__": __name__})
        _object_classes[qualname] = cls
    return cls


def _tensor_class(qualname: str) -> type:
    cls = _tensor_classes.get(qualname)
    if cls is None:
        import torch

        def __setstate__(self: Any, state: Any) -> None:
            if isinstance(state, tuple) and len(state) == 2:
                merged: dict[str, Any] = {}
                for part in state:
                    merged.update(part or {})
                state = merged
            self._inert_state = state if isinstance(state, dict) else {"__state__": state}
            _built[0] += 1

        def __torch_dispatch__(cls: Any, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            # the wrapper holds no data: no operation may run on it (settle replaces it)
            raise TypeError(f"{qualname} is decoded inertly; {func} cannot run on it")

        cls = type(qualname.rsplit(".", 1)[-1], (torch.Tensor,),
                   {"__setstate__": __setstate__, "_inert_qualname": qualname,
                    "__module__": __name__,
                    "__torch_dispatch__": classmethod(__torch_dispatch__),
                    "__torch_function__": torch._C._disabled_torch_function_impl})
        _tensor_classes[qualname] = cls
    return cls


def stand_ins() -> list[tuple[type, str]]:
    """(stand-in, qualname) for every class in ``KNOWN``: what ``torch.serialization.
    safe_globals`` takes."""
    return [(_tensor_class(q) if k == "tensor" else _object_class(q), q)
            for q, k in KNOWN.items()]


_lock = threading.Lock()
_built = [0]  # tensor stand-ins built so far (settle has work only when this moved)


class Decoded:
    """What ``decoding`` saw: ``tensors``, the tensor stand-ins built while it was active."""

    def __init__(self) -> None:
        self._start = _built[0]
        self.tensors = 0

    def finish(self) -> None:
        self.tensors = _built[0] - self._start


@contextlib.contextmanager
def decoding() -> Iterator[Decoded]:
    """While active, torch's ``weights_only`` unpickler decodes the classes in ``KNOWN``
    with our stand-ins. Globals another library registered under the same names (importing
    ``torch.distributed.tensor`` registers the real DTensor) are set aside meanwhile, so
    that a real class's code never runs; they are put back afterwards."""
    import torch.serialization as ts

    seen = Decoded()
    if not _stand_ins_supported():  # torch < 2.6: no stand-ins, the classes are refused
        yield seen
        return
    with _lock:
        before = list(ts.get_safe_globals())
        kept = [g for g in before if _registered_name(g) not in KNOWN]
        ts.clear_safe_globals()
        try:
            ts.add_safe_globals(kept + stand_ins())
            yield seen
        finally:
            seen.finish()
            ts.clear_safe_globals()
            ts.add_safe_globals(before)


def _stand_ins_supported() -> bool:
    """torch >= 2.6 takes ``(object, "module.Name")`` pairs in ``safe_globals``; 2.4 and 2.5
    take objects only (a pair there would break every load, not just these classes)."""
    import torch
    import torch.serialization as ts

    try:
        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 6) and hasattr(ts, "get_safe_globals")


def _registered_name(g: Any) -> str:
    if isinstance(g, tuple) and len(g) == 2:
        return str(g[1])
    return f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}"


def settle(obj: Any) -> Any:
    """Replace every tensor stand-in in ``obj`` (in place where it can, rebuilding tuples)
    by an ``InertTensor``; return ``obj`` (or its replacement). Called only when
    ``Decoded.tensors`` says stand-ins were built. Shared objects are settled
    once; a cycle is left for ``walk`` to report."""
    done: dict[int, Any] = {}
    try:
        return _settle(obj, done, set())
    except RecursionError:
        from optstate.base.errors import CheckpointError

        raise CheckpointError("the checkpoint is nested too deeply to read") from None


def _settle(obj: Any, done: dict[int, Any], active: set[int]) -> Any:
    key = id(obj)
    if key in done:
        return done[key]
    if key in active:  # a cycle: walk reports it
        return obj
    tensor_types = tuple(_tensor_classes.values())
    if isinstance(obj, tensor_types):
        state = getattr(obj, "_inert_state", {})
        active.add(key)
        state = {k: _settle(v, done, active) for k, v in state.items()}
        active.discard(key)
        out: Any = InertTensor(type(obj)._inert_qualname, obj.dtype, tuple(obj.shape),
                               tuple(obj.stride()), state)
        done[key] = out
        return out
    active.add(key)
    try:
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                new = _settle(v, done, active)
                if new is not v:
                    obj[k] = new
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                new = _settle(v, done, active)
                if new is not v:
                    obj[i] = new
        elif isinstance(obj, tuple):
            items = [_settle(v, done, active) for v in obj]
            if any(a is not b for a, b in zip(items, obj, strict=True)):
                obj = type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        elif isinstance(obj, Inert):
            obj.args = tuple(_settle(v, done, active) for v in obj.args)
            for k, v in list(obj.state.items()):
                new = _settle(v, done, active)
                if new is not v:
                    obj.state[k] = new
    finally:
        active.discard(key)
    done[key] = obj
    return obj


def is_inert(obj: Any) -> bool:
    return isinstance(obj, (Inert, InertTensor))
