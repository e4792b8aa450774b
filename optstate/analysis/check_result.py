"""``check``'s results: the ``Finding``s and the ``CheckResult`` they make up, its verdict
and exit status, and how findings word the values they name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optstate.state.kind import infer_kind
from optstate.state.report import plain
from optstate.state.view import OptimizerStateView

LEVELS = ("info", "warn", "fail")
VERDICTS = {"info": ("ok", 0), "warn": ("differs", 1), "fail": ("fails", 2)}


@dataclass
class Finding:
    # group-count, group-size, names-reordered, names-differ, hyperparams-override,
    # hyperparams-kept, hyperparams-foreign, hyperparams-missing, state-shape,
    # state-foreign, state-missing, state-incomplete, dtype-cast, state-orphans, scheduler-*, trial
    code: str
    level: str  # "info" | "warn" | "fail"
    message: str
    group: int | None = None
    param: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    source: str
    location: str
    scheduler_location: str | None
    config: str
    optimizer: str
    groups: dict[str, list[int]]  # {"checkpoint": [n per group], "config": [...]}
    findings: list[Finding]
    trial: dict[str, Any]
    fixes: list[str] = field(default_factory=list)  # `optstate set` lines that apply the config
    no_fix_reason: str | None = None  # why no `set` line is offered though some differ
    naming: dict[str, Any] | None = None  # how the checkpoint's params were named (Naming)
    # whether names were compared: None when the config lists none, False when it does
    # but the checkpoint's params are all unnamed, True otherwise
    names_compared: bool | None = None

    @property
    def verdict(self) -> str:
        return VERDICTS[self.worst][0]

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.worst][1]

    @property
    def worst(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="info")


# --------------------------------------------------------------------------- words


def n_of(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def show(v: Any) -> str:
    p = plain(v)
    if isinstance(p, list):
        return "(" + ", ".join(map(str, p)) + ")"
    return repr(p)


def positions(ps: list[int]) -> str:
    text = ", ".join(map(str, ps[:8]))
    return f"position{'s' * (len(ps) > 1)} " + text + (" …" if len(ps) > 8 else "")


def equal_hyper(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return a == b or (isinstance(a, float) and isinstance(b, float)
                          and math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal_hyper(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def guess_kind(view: OptimizerStateView) -> str:
    guess = infer_kind([g.hyperparams for g in view.groups],
                        {k for p in view.params for k in p.state})
    if guess.kind == "unknown":
        return ""
    return f" (the checkpoint looks like {guess.kind} state)"
