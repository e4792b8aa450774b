"""Tensors whose data is read only when something looks at the numbers.

A ``LazyTensor`` is a real ``torch.Tensor`` (a wrapper subclass, the mechanism torch's
own fake and functional tensors use) that knows its shape and dtype from checkpoint
metadata and holds a ``loader`` for its data. Code that only asks for structure
(``shape``, ``dtype``, ``numel()``, ``element_size()``, ``dim()``) never calls the
loader; any torch operation on it (``summarize``, ``compare_tensors``, ``.item()``,
``.detach()``, indexing) loads the data and runs on an ordinary tensor, and returns
ordinary tensors. So the inspect, diff and stats code handles DCP checkpoints without
knowing they are lazy, and ``--no-stats`` stays free of tensor reads.

``materialize(obj)`` swaps every lazy tensor in a nested structure for its data (for
``torch.save``); pickling a lazy tensor also saves its data, never the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

# How many loaded tensors a lazy reader keeps (io/remote_torch.py's storages, io/dcp.py's
# tensors): inspect looks at a param's moments again right after their statistics (the
# underflow count, --hist), which must not read them a second time.
KEPT = 2


class LazyTensor(torch.Tensor):
    """A CPU tensor of known shape and dtype whose data comes from ``loader()``.

    ``info`` is free-form metadata about where the data lives (for DCP: the key and
    the chunk layout), shown by verbose views. ``stride``: the strides of the data the
    loader returns (a view stored as one, in a remote torch.save file), contiguous if None.
    """

    # Plain dispatch: results of operations are ordinary tensors, not LazyTensors.
    __torch_function__ = torch._C._disabled_torch_function_impl

    _loader: Callable[[], torch.Tensor]
    info: dict[str, Any]

    @staticmethod
    def __new__(cls, shape: Sequence[int], dtype: torch.dtype,
                loader: Callable[[], torch.Tensor], info: dict[str, Any] | None = None,
                stride: Sequence[int] | None = None) -> LazyTensor:
        t = torch.Tensor._make_wrapper_subclass(
            cls, tuple(shape), dtype=dtype, device="cpu",
            strides=None if stride is None else tuple(stride))
        t._loader = loader
        t.info = dict(info or {})
        return t

    def __init__(self, shape: Sequence[int], dtype: torch.dtype,
                 loader: Callable[[], torch.Tensor], info: dict[str, Any] | None = None,
                 stride: Sequence[int] | None = None) -> None:
        pass  # everything happens in __new__

    def load(self) -> torch.Tensor:
        """The data, as an ordinary tensor of this shape and dtype."""
        data = self._loader()
        if tuple(data.shape) != tuple(self.shape) or data.dtype != self.dtype:
            raise RuntimeError(
                f"lazy tensor loader returned {data.dtype} {tuple(data.shape)}, expected "
                f"{self.dtype} {tuple(self.shape)}"
            )
        return data

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        def unwrap(x: Any) -> Any:
            return x.load() if isinstance(x, LazyTensor) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"LazyTensor(shape={list(self.shape)}, dtype={self.dtype})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.load().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict[int, Any]) -> torch.Tensor:
        return self.load().clone()


def is_lazy(value: Any) -> bool:
    return isinstance(value, LazyTensor)


def materialize(obj: Any) -> Any:
    """``obj`` with every LazyTensor (in dicts, lists, tuples) replaced by its data."""
    if isinstance(obj, LazyTensor):
        return obj.load()
    if isinstance(obj, dict):
        return {k: materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [materialize(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(materialize(v) for v in obj)
    return obj
