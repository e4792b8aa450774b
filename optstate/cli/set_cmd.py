"""``optstate set``: write a copy of a checkpoint with chosen hyperparameters changed."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from optstate.base.paths import KEY_HELP
from optstate.cli import (
    UNSAFE_HELP,
    OptstateCommand,
    app,
    errors_to_exit,
    print_json,
    stdout_console,
    warn,
    warn_unsafe,
)


@app.command("set", cls=OptstateCommand)
def set_(
    checkpoint: Annotated[str, typer.Argument(
        metavar="CKPT", help="A torch.save file or a Hugging Face / accelerate checkpoint "
        "folder (or a torch.save file's URL: s3://bucket/ckpt.pt).", show_default=False)],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write the result (a file, or a folder for folder "
        "checkpoints: the folder is copied and its optimizer/scheduler files rewritten). A "
        "URL (s3://bucket/new.pt) is written and checked locally, then uploaded as one "
        "object.")] = None,
    lr: Annotated[float | None, typer.Option(
        help="New learning rate. With scheduler state in the checkpoint, its base_lrs and "
        "_last_lr are changed too (see --no-scheduler).")] = None,
    base_lr: Annotated[float | None, typer.Option(
        "--base-lr", help="New base lr of a scheduled run (the lr its config gives): the "
        "groups' initial_lr and the scheduler's base_lrs become it, and the lr the scheduler "
        "has reached (and _last_lr) is scaled by the same factor, so the resumed run is the "
        "one that started at this base lr. Refused for schedules that are not proportional "
        "to their base lr (ReduceLROnPlateau, CyclicLR, eta_min > 0).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Any other hyperparameter, repeatable; must "
        "already exist in the group and is checked against the saved value's type "
        "(tuples comma-separated: --set betas=0.9,0.95).")] = None,
    scheduler_set: Annotated[list[str] | None, typer.Option(
        "--scheduler-set", metavar="KEY=VALUE", help="A setting of the scheduler state "
        "beside the optimizer state, repeatable: --scheduler-set step_size=10 (it must "
        "exist there; scheduler.load_state_dict restores it over the constructor's).")
    ] = None,
    group: Annotated[int | None, typer.Option(
        help="Change only this param group (0-based). \\[default: every group]")] = None,
    key: Annotated[str | None, typer.Option(
        help=KEY_HELP)] = None,
    scheduler: Annotated[bool, typer.Option(
        "--scheduler/--no-scheduler", help="With --lr: also change the scheduler state's "
        "base_lrs and _last_lr.")] = True,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="Rewrite the input itself (atomically).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing -o path.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would change; write nothing.")] = False,
    trial: Annotated[bool, typer.Option(
        "--trial/--no-trial", help="Load the new state into a fresh optimizer of the kind "
        "that wrote it and take one step, to warn if torch would fail on it (costs one copy "
        "of the state and one step).")] = True,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
) -> None:
    """Copy a checkpoint with hyperparameters changed, everything else identical.

    optimizer.load_state_dict() restores every group's hyperparameters from
    the checkpoint, so the lr you pass to the optimizer's constructor is
    silently replaced by the saved one. Change the saved one instead. Values
    are checked against the saved ones (a tuple stays a tuple); the new file is
    re-read and compared with the input before it is put in place.

    Which lr wins with a scheduler: the scheduler is usually restored after
    the optimizer, and its next step() computes the lr either from the group's
    current lr (StepLR, ExponentialLR, CosineAnnealingLR, LinearLR: the
    optimizer's value wins) or from its saved base_lrs (LambdaLR, the Hugging
    Face default, and others: the scheduler's value wins and the optimizer's
    is undone). --lr therefore changes both (and initial_lr); --no-scheduler
    changes only the optimizer. --lr sets the lr the run resumes at and restarts
    the schedule from it; to resume a scheduled run as if it had started at
    another base lr (keeping the decay it has made), use --base-lr.

    Example: optstate set ckpt.pt -o ckpt-lr.pt --lr 0.01 --set betas=0.9,0.95
    """
    with errors_to_exit():
        from optstate.edit.hyperparameters import set_hyperparameters, set_report
        from optstate.sim.spec_text import parse_assignment

        values: dict[str, Any] = dict(parse_assignment(s) for s in set_ or [])
        if lr is not None:
            values["lr"] = lr
        if unsafe:
            warn_unsafe()
        from optstate.render.progress import Progress, progress_wanted

        # writing, re-reading and comparing a large file: a spinner past a second
        with Progress("writing", enabled=progress_wanted(json=json_)):
            result = set_hyperparameters(
                checkpoint, values, output=output, group=group, key=key,
                scheduler=scheduler, force=force, in_place=in_place, dry_run=dry_run,
                unsafe=unsafe, trial=trial,
                scheduler_values=dict(parse_assignment(s) for s in scheduler_set or []),
                base_lr=base_lr,
            )
        report = set_report(result)
    if not report["changes"]:
        warn("nothing changed: every value already has the requested value")
    if report["trial"] not in (None, "ok"):
        warn(f"torch's load_state_dict + step() on the new state fails: {report['trial']}")
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
        return
    from optstate.render.set_view import set_view

    stdout_console().print(set_view(report))
