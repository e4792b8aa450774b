"""Checks on plain values read from flags, config files and checkpoints."""

from __future__ import annotations

from typing import Any


def is_number(v: Any) -> bool:
    """An int or a float, not a bool (``True`` is an int to Python, never a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    """A shape as people and config files write it: ``2x3``, ``7``; ``scalar`` for ()."""
    return "x".join(str(d) for d in shape) if shape else "scalar"
