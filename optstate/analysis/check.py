"""``check``: will ``optimizer.load_state_dict(ckpt)`` work for the optimizer a config
builds, and will it do what the user thinks?

Two kinds of evidence, both reported:

- findings: a comparison of the checkpoint's groups, parameters, state entries and
  scheduler state with the optimizer (and scheduler) the config builds, each explained
  in plain words with what torch will do about it;
- a trial: the same ``load_state_dict`` and one ``step()`` (and the scheduler's), run by
  torch itself on a fresh copy of the configured optimizer with a copy of the state.
  torch's own error, if any, is the final word on "would fail".

Verdict and exit status: ``ok`` (0) loading works and matches; ``differs`` (1) it works
but something differs that is worth knowing; ``fails`` (2) torch would refuse the state
or fail at the first step.

Here: the entry points, torch's final word on the findings (``_reconcile``), the report
and the ``optstate set`` lines that apply the config. The findings are made in
``check_structure`` and ``check_hyperparams``, worded with ``check_result``; the trial is
``sim.trial.run_trial``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from optstate.analysis.check_hyperparams import SCHEDULED_LRS, check_hyperparams, check_scheduler
from optstate.analysis.check_result import LEVELS, VERDICTS, CheckResult, Finding
from optstate.analysis.check_structure import (
    check_kind,
    check_names,
    check_state_entries,
    check_structure,
    name_findings,
)
from optstate.base.errors import ConfigError
from optstate.io.source import open_source
from optstate.sim.build import build
from optstate.sim.config import RunSpec, read_config_file, spec_from_dict
from optstate.sim.fit import group_fit
from optstate.sim.trial import STAGES, run_trial
from optstate.state.locate import is_deepspeed_scheduler, locate
from optstate.state.names import name_params
from optstate.state.view import OptimizerStateView

# --------------------------------------------------------------------------- entry points


def check_checkpoint(path: str | Path, config: str | Path, *, key: str | None = None,
                     unsafe: bool = False, trial: bool = True,
                     model_file: str | Path | None = None) -> CheckResult:
    """Load the checkpoint (safely) and the config, and compare them. The checkpoint's
    params are named as inspect names them (``state.names.name_params``; ``model_file``
    is a model the user gives), so that a config listing names is compared by name."""
    data = read_config_file(config)
    if not data:  # `--config <(optstate config X)` when config failed: not SGD on a 2x2
        raise ConfigError(f"config {config} is empty: it builds no optimizer to check against",
                          hint="optstate config CKPT writes the config of a checkpoint")
    spec = spec_from_dict(data, str(config))
    source = open_source(path, unsafe=unsafe)
    located = locate(source, key)
    view = OptimizerStateView.from_state_dict(located.state)
    naming = name_params(view, source, located, model_file=model_file)
    result = check_state(located.state, spec, scheduler_state=located.scheduler, trial=trial,
                         view=view)
    result.source = source.label
    result.location = located.location
    result.scheduler_location = located.scheduler_location
    result.config = str(config)
    result.naming = naming.to_dict()
    if source.format == "deepspeed":  # set refuses it: its state is in the rank files
        if any(f.level != "info" and f.code in FIXED_BY_SET for f in result.findings):
            result.no_fix_reason = (
                "no `optstate set` line is suggested: set does not write DeepSpeed "
                "checkpoints (the state is spread over the rank files); change the "
                "hyperparameters in the DeepSpeed run itself")
    elif source.format != "dcp":  # set writes torch.save files and folders only
        result.fixes = fix_commands(result, str(path), key)
    return result


def check_state(sd: dict[str, Any], spec: RunSpec, *,
                scheduler_state: dict[str, Any] | None = None,
                trial: bool = True, view: OptimizerStateView | None = None) -> CheckResult:
    """Compare an optimizer ``state_dict`` (and scheduler state) with what ``spec`` builds;
    ``view``: the state's view with its params named (else names as the state has them)."""
    if view is None:
        view = OptimizerStateView.from_state_dict(sd)
    built = build(spec)
    fit = group_fit(view, built.optimizer)
    result = CheckResult("", "", None, "", type(built.optimizer).__name__, {
        "checkpoint": fit.checkpoint, "config": fit.config}, [], {})
    add = result.findings.append
    loaded_groups = None
    if trial:
        result.trial = run_trial(sd, spec, scheduler_state)
        loaded_groups = result.trial.pop("_loaded_groups", None)
    check_kind(view, built, add)
    structure_ok = check_structure(view, spec, fit, add)
    # A config's lr is the base lr its scheduler starts from; the checkpoint's group lr is
    # where the scheduler has taken it. initial_lr (which LRScheduler writes into every
    # group) or scheduler state in the checkpoint says a scheduler ran.
    # DeepSpeed's own scheduler sets every group's lr at each step: the saved lr is where
    # it was, not what the run will use, and no config lr can be compared with it.
    ds_sched = is_deepspeed_scheduler(scheduler_state)
    scheduled = not ds_sched and built.scheduler is not None and (
        scheduler_state is not None or any("initial_lr" in g.hyperparams for g in view.groups))
    if not fit.count_differs:  # otherwise torch stops before comparing groups
        check_hyperparams(view, built, add, loaded_groups,
                          scheduler_state if scheduled else None, scheduled,
                          lr_by_deepspeed=ds_sched)
    check_names(view, spec, add)  # also when the counts differ: which names are missing
    if any(g.names for g in spec.groups):
        result.names_compared = any(p.name is not None for p in view.params)
    if structure_ok:
        check_state_entries(view, spec, built, add)
    check_scheduler(scheduler_state, built, spec, add, scheduled)
    if trial:
        _reconcile(result)
    name_findings(result.findings, view)
    result.findings.sort(key=_action_order)
    return result


# The order a user acts on findings in: the wrong optimizer first, then a checkpoint that
# does not fit the configured parameters, then state torch will mishandle, then what
# `set` can change, then torch's own verdict; information last.
_ORDER = ("optimizer-kind", "group-count", "group-size", "state-shape", "names-reordered",
          "names-differ", "state-foreign", "hyperparams-foreign", "hyperparams-missing",
          "state-incomplete", "dtype-cast", "state-orphans", "base-lr-override",
          "hyperparams-override", "scheduler-kind", "scheduler-missing", "scheduler-override",
          "trial")


def _action_order(f: Finding) -> tuple[bool, int]:
    return (f.level == "info", _ORDER.index(f.code) if f.code in _ORDER else len(_ORDER))


# Findings an `optstate set` line resolves: only when every finding that is not
# information is one of these is a set line offered (otherwise it would not make the
# checkpoint fit, and offering it would say it does).
FIXED_BY_SET = frozenset({"hyperparams-override", "base-lr-override", "scheduler-override"})


# --------------------------------------------------------------------------- trial


def _reconcile(result: CheckResult) -> None:
    """torch has the final word: a failure the findings did not predict becomes a finding;
    a predicted step failure that torch got through (by broadcasting) is downgraded."""
    trial = result.trial
    failed = {k: v for k, v in trial.items() if k in STAGES and v not in (None, "ok")}
    if trial.get("load_state_dict") == "ok":
        missing = trial.get("missing_after_load", {})
        for f in result.findings:
            if f.code == "hyperparams-missing" and not missing.get(str(f.group)):
                f.level = "info"
                f.message += f" (it does: {result.optimizer} filled them when loading)"
    static_fail = any(f.level == "fail" for f in result.findings)
    if failed and not static_fail:
        stage, msg = next(iter(failed.items()))
        result.findings.append(Finding(
            "trial", "fail", f"torch fails at {STAGES[stage]}: {msg}",
            detail={"stage": stage, "error": msg},
        ))
    if not failed and trial.get("step") == "ok":
        for f in result.findings:
            if f.code == "state-shape":
                f.level = "warn"
                f.message = f.message.replace(
                    "the first step() fails",
                    "torch's first step() ran anyway by broadcasting: the state no longer "
                    "matches the parameter")


# --------------------------------------------------------------------------- report


def check_report(result: CheckResult) -> dict[str, Any]:
    """The plain-data report of a ``check`` run (schema ``optstate.check/1``)."""
    return {
        "schema": "optstate.check/1",
        "source": result.source,
        "location": result.location,
        "scheduler_location": result.scheduler_location,
        "config": result.config,
        "optimizer": result.optimizer,
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "groups": result.groups,
        "findings": [asdict(f) for f in result.findings],
        "trial": result.trial,
        "fixes": result.fixes,
        "no_fix_reason": result.no_fix_reason,
        "naming": result.naming,
        "names_compared": result.names_compared,
    }


def fix_commands(result: CheckResult, path: str, key: str | None = None) -> list[str]:
    """``optstate set`` command lines that write the config's hyperparameters (and
    scheduler settings) into a copy of the checkpoint, for the overrides found: one line,
    or one per group when the groups need different values (chained through copies)."""
    import shlex

    per_group: dict[int, dict[str, Any]] = {}
    sched: dict[str, Any] = {}
    blocking = [f for f in result.findings if f.level != "info" and (
        f.code not in FIXED_BY_SET or f.detail.get("unscalable"))]
    fixable = [f for f in result.findings if f.level != "info" and f.code in FIXED_BY_SET]
    if blocking:
        if fixable:
            codes = ", ".join(dict.fromkeys(f.code for f in blocking))
            result.no_fix_reason = (
                "no `optstate set` line is suggested: set changes hyperparameters, and it "
                f"would not make this checkpoint fit ({codes} above)")
        return []
    base = [f for f in fixable if f.code == "base-lr-override"]
    if base and result.scheduler_location is None:
        result.no_fix_reason = (
            "no `optstate set` line is suggested: the base lr differs, and set --base-lr "
            "needs the scheduler state beside the optimizer state (this file has none) to "
            "scale it alike")
        return []
    for f in fixable:
        if f.code == "base-lr-override":
            per_group.setdefault(f.group, {})["--base-lr"] = f.detail["config"]
        elif f.code == "hyperparams-override":
            if base and f.detail["key"] in SCHEDULED_LRS:
                continue  # --base-lr scales them with the base
            per_group.setdefault(f.group, {})[f.detail["key"]] = f.detail["config"]
        elif f.code == "scheduler-override":
            sched[f.detail["key"]] = f.detail["config"]
    if not per_group and not sched:
        return []
    stem = Path(path)
    out = shlex.quote(str(stem.with_name(stem.stem + "-fixed" + stem.suffix)))
    src = shlex.quote(path)
    pick = f" --key {shlex.quote(key)}" if key else ""

    def text(v: Any) -> str:
        return shlex.quote(",".join(map(str, v)) if isinstance(v, list) else str(v))

    def flags(values: dict[str, Any], sched_values: dict[str, Any]) -> str:
        parts = [f"--lr {text(v)}" if k == "lr" else f"{k} {text(v)}" if k == "--base-lr"
                 else f"--set {k}={text(v)}" for k, v in values.items()]
        parts += [f"--scheduler-set {k}={text(v)}" for k, v in sched_values.items()]
        return " ".join(parts)

    n_groups = len(result.groups["checkpoint"])
    distinct = {repr(v) for v in per_group.values()}
    if not per_group or (len(per_group) == n_groups and len(distinct) == 1):
        values = next(iter(per_group.values())) if per_group else {}
        return [f"optstate set {src}{pick} -o {out} {flags(values, sched)}"]
    lines, current = [], src
    for i, (gi, values) in enumerate(sorted(per_group.items())):
        last = i == len(per_group) - 1
        target = out if last else shlex.quote(
            str(stem.with_name(f"{stem.stem}-fixed{i}{stem.suffix}")))
        lines.append(f"optstate set {current}{pick} -o {target} --group {gi} "
                     f"{flags(values, sched if last else {})}")
        current = target
    return lines


__all__ = ["LEVELS", "VERDICTS", "CheckResult", "Finding", "check_checkpoint", "check_report",
           "check_state", "fix_commands"]
