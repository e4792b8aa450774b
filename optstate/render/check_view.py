"""The human view of ``optstate check``: the verdict, each finding, and torch's trial."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

_STYLE = {"fail": "bold red", "warn": "yellow", "info": "dim"}
_MARK = {"fail": "FAIL", "warn": "WARN", "info": "info"}
_VERDICT = {
    "ok": ("OK: load_state_dict works and the state matches the config", "bold green"),
    "differs": ("DIFFERS: load_state_dict works, with differences worth knowing",
                "bold yellow"),
    "fails": ("FAILS: torch would refuse this state or fail at the first step", "bold red"),
}
_STAGES = (("load_state_dict", "optimizer.load_state_dict"), ("step", "optimizer.step"),
           ("scheduler_load_state_dict", "scheduler.load_state_dict"),
           ("scheduler_step", "scheduler.step"))


def check_view(report: dict[str, Any]) -> Group:
    where = report["location"] or "(top level)"
    per_group = report["groups"]["config"]
    n_groups, n_params = len(per_group), sum(per_group)
    params = (" + ".join(map(str, per_group)) + " params" if n_groups > 1
              else f"{n_params} param{'s' * (n_params != 1)}")
    parts: list[Any] = [
        Text(f"{report['source']} (optimizer state at {where}) against {report['config']} "
             f"({report['optimizer']}, {n_groups} group{'s' * (n_groups != 1)}, {params})"),
    ]
    text, style = _VERDICT[report["verdict"]]
    parts.append(Text(text, style=style))
    for f in report["findings"]:
        line = Text()
        line.append(f"{_MARK[f['level']]:>4} ", style=_STYLE[f["level"]])
        line.append(f["message"])
        parts.append(line)
    trial = report["trial"]
    if trial:
        steps = []
        for key, label in _STAGES:
            value = trial.get(key)
            if value is not None:
                steps.append(f"{label}: {value}")
        parts.append(Text("torch trial: " + "; ".join(steps), style="dim"))
    if report.get("fixes"):
        parts.append(Text("To resume with the config's hyperparameters, write them into a copy:"))
        parts.extend(Text(f"  {line}", style="bold") for line in report["fixes"])
    return Group(*parts)
