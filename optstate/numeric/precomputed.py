"""Tensor results computed elsewhere (on other ranks), handed to the one report builder.

``inspect`` and ``diff`` across processes (``analysis/ranks.py``) run the same report
code as one process; only the two functions that read tensor data, ``stats.summarize``
and ``compare.compare_tensors``, go through ``intercept`` here:

- ``recording()``: nothing is read; each call is recorded (its kind, its tensors, its
  keyword arguments) and answered with a placeholder carrying no statistics. A report
  built this way is thrown away: the record is the deterministic list of tensor work
  the real report needs, in the order it needs it, to be split over ranks.
- ``using(results)``: a call whose tensors are in ``results`` (by the tensor objects'
  ``id``: the same objects the recording saw, alive in the open source) gets that
  result instead of reading the data; any other call computes as usual.

Outside both, ``intercept`` just computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One recorded call: ``kind`` ("summary" or "compare"), its tensors, its options."""

    kind: str
    tensors: tuple[Any, ...]
    options: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, *(id(t) for t in self.tensors))


@dataclass
class _Mode:
    record: list[Call] | None = None
    results: dict[tuple[Any, ...], Any] = field(default_factory=dict)


_mode: ContextVar[_Mode | None] = ContextVar("optstate_precomputed", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[Call]]:
    """Record tensor calls instead of running them (see module docstring)."""
    calls: list[Call] = []
    token = _mode.set(_Mode(record=calls))
    try:
        yield calls
    finally:
        _mode.reset(token)


@contextlib.contextmanager
def using(results: dict[tuple[Any, ...], Any]) -> Iterator[None]:
    """Answer calls from ``results`` (``Call.key`` -> result) while the block runs."""
    token = _mode.set(_Mode(results=results))
    try:
        yield
    finally:
        _mode.reset(token)


def intercept(kind: str, tensors: tuple[Any, ...], options: dict[str, Any],
              compute: Callable[[], Any], placeholder: Callable[[], Any]) -> Any:
    """``compute()``, or, in a mode above, a recorded placeholder or a precomputed result."""
    mode = _mode.get()
    if mode is None:
        return compute()
    if mode.record is not None:
        mode.record.append(Call(kind, tensors, options))
        return placeholder()
    hit = mode.results.get((kind, *(id(t) for t in tensors)))
    return compute() if hit is None else hit
