"""``optstate compare``: several optimizers, one objective, one start, the same steps.

Each contender is an ordinary ``simulate`` run: the base ``RunSpec`` with the
contender's optimizer and hyperparameters swapped in, so every number here is exactly
what ``optstate simulate`` prints for the same flags (the tests check that).

Contenders are written ``sgd,adam`` (labels default to the name as written, lower case)
or ``slow=sgd,fast=sgd`` to run one optimizer twice under two labels. Hyperparameters:
``lr=0.01`` sets every contender's; ``adam.lr=0.01`` only the one labelled ``adam``.
A label's setting wins over the shared one, whatever the order on the command line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from optstate.base.errors import ConfigError, option
from optstate.base.suggest import did_you_mean
from optstate.sim.config import RunSpec
from optstate.sim.spec_text import parse_assignment
from optstate.state.report import plain

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Final parameter values go in the report up to this many elements (a 2-D start, a 2x2).
VALUES_UP_TO = 16


@dataclass(frozen=True)
class Contender:
    """One optimizer in a comparison: its label, its torch.optim name, its settings."""

    label: str
    optimizer: str
    hyperparams: dict[str, Any] = field(default_factory=dict)


def parse_contenders(text: str) -> list[Contender]:
    """``"sgd,adam"`` / ``"slow=sgd,fast=sgd"`` -> contenders (names checked later)."""
    out: list[Contender] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        label, eq, name = item.partition("=")
        label, name = label.strip(), name.strip()
        if not eq:
            name, label = label, label.lower()
        if not name or not _LABEL.match(label):
            raise ConfigError(
                f"bad optimizer entry {item!r} in {option('optimizers')}",
                hint="write optimizer names (sgd,adam) or label=name pairs (slow=sgd,fast=sgd)",
            )
        out.append(Contender(label, name))
    if not out:
        raise ConfigError(f"{option('optimizers')} names no optimizer", hint="for example "
                          + option("optimizers", "sgd,adam,adamw,rmsprop"))
    seen: set[str] = set()
    for c in out:
        if c.label.lower() in seen:
            raise ConfigError(
                f"{option('optimizers')} lists {c.label!r} twice",
                hint=f"label the runs to tell them apart: slow={c.optimizer},fast={c.optimizer}",
            )
        seen.add(c.label.lower())
    return out


def parse_settings(settings: Sequence[str], contenders: Sequence[Contender]
                   ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--set`` values -> (settings for all, settings per label):
    ``key=value`` is for every contender, ``label.key=value`` for one."""
    by_label = {c.label.lower(): c for c in contenders}
    shared: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {c.label: {} for c in contenders}
    for text in settings:
        target, dot, _ = text.partition("=")[0].partition(".")
        if dot:
            c = by_label.get(target.strip().lower())
            if c is None:
                raise ConfigError(
                    f"{option('settings', [text])}: no optimizer is labelled "
                    f"{target.strip()!r}"
                    f"{did_you_mean(target.strip(), [c.label for c in contenders])}",
                    hint=f"labels: {', '.join(c.label for c in contenders)}",
                )
            key, value = parse_assignment(text.partition(".")[2])
            own[c.label][key] = value
        else:
            key, value = parse_assignment(text)
            shared[key] = value
    return shared, own


def contenders_from_flags(optimizers: str, settings: Sequence[str] = ()) -> list[Contender]:
    """``--optimizers`` and ``--set`` -> checked contenders: every optimizer name and
    hyperparameter is checked (against torch) before the first run takes a step."""
    from optstate.sim.build import check_hyperparameters, hyperparameter_defaults, optimizer_class

    contenders = parse_contenders(optimizers)
    shared, own = parse_settings(settings, contenders)
    out = []
    for c in contenders:
        cls = optimizer_class(c.optimizer)
        for key in shared:
            if key not in hyperparameter_defaults(cls):
                raise ConfigError(
                    option("settings", shown=f"{key}=...", python=f"['{key}=...']")
                    + f" applies to every optimizer, but {cls.__name__} "
                    f"({c.label}) has no hyperparameter {key!r}",
                    hint="set it for one optimizer only: " + option(
                        "settings", shown=f"LABEL.{key}=...", python=f"['LABEL.{key}=...']"),
                )
        hyper = {**shared, **own[c.label]}
        check_hyperparameters(cls, hyper, f" (in {option('settings')} for {c.label})")
        out.append(replace(c, hyperparams=hyper))
    return out


@dataclass
class ComparisonRun:
    contender: Contender
    spec: RunSpec
    result: Any  # SimulationResult


def compare(base: RunSpec, contenders: Sequence[Contender],
            on_run: Callable[[Contender], None] | None = None,
            record_every: int | str = "auto") -> list[ComparisonRun]:
    """Run every contender from ``base`` (same objective, parameters, seed, steps), each
    recording its history as ``simulate(record_every=...)`` does."""
    from optstate.sim.simulate import simulate

    runs = []
    for c in contenders:
        spec = replace(base, optimizer=c.optimizer,
                       hyperparams={**base.hyperparams, **c.hyperparams})
        if on_run is not None:
            on_run(c)
        runs.append(ComparisonRun(c, spec, simulate(spec, record_every=record_every)))
    return runs


def distance(params: Sequence[Any], target: Sequence[float]) -> float:
    """Euclidean distance, in float64, from all parameter elements (in order) to
    ``target``."""
    import torch

    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    return float((flat - torch.tensor(target, dtype=torch.float64)).norm())


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def compare_report(base: RunSpec, runs: Sequence[ComparisonRun]) -> dict[str, Any]:
    """The plain-data result (schema ``optstate.compare/1``)."""
    import torch

    from optstate.sim.build import init_params
    from optstate.sim.gradients import optimum

    start_params, _, _ = init_params(base)
    start = torch.cat([p.detach().reshape(-1) for p in start_params]).tolist()
    numel = len(start)
    target = optimum(base.grad, base.grad_value, numel)
    out_runs = []
    for run in runs:
        r, h = run.result, run.result.history
        final_loss = h.loss[-1] if h.loss else None
        finite_losses = [x for x in h.loss if _finite(x)]
        flat = torch.cat([p.detach().reshape(-1) for p in r.params])
        out_runs.append({
            "label": run.contender.label,
            "optimizer": type(r.optimizer).__name__,
            "hyperparams": {k: plain(v) for k, v in run.contender.hyperparams.items()},
            "lr": plain(r.optimizer.param_groups[0]["lr"]),
            "initial_loss": plain(h.loss[0]) if h.loss else None,
            "final_loss": plain(final_loss),
            "best_loss": min(finite_losses) if finite_losses else None,
            "distance_to_optimum": None if target is None else plain(distance(r.params, target)),
            "diverged": not bool(torch.isfinite(flat).all()) or (
                final_loss is not None and not math.isfinite(final_loss)),
            "final_params": plain(flat.tolist()) if numel <= VALUES_UP_TO else None,
            "history": {
                "record_every": h.record_every,
                "step": list(h.step),
                "loss": [plain(x) for x in h.loss],
                "param_norm": [plain(x) for x in h.param_norm],
                "point": [[plain(x), plain(y)] for x, y in h.point],
            },
        })
    ranked = [r for r in out_runs if r["final_loss"] is not None]
    best = min(ranked, key=lambda r: r["final_loss"])["label"] if ranked else None
    return {
        "schema": "optstate.compare/1",
        "objective": {
            "grad": base.grad,
            "grad_value": base.grad_value,
            "shapes": [list(s) for g in base.groups for s in g.shapes],
            "start": plain(start) if numel <= VALUES_UP_TO else None,
            "optimum": target if numel <= VALUES_UP_TO else None,
        },
        "steps": base.steps,
        "seed": base.seed,
        "init": base.init,
        "best": best,
        "runs": out_runs,
    }
