"""``optstate compare``: several optimizers on one objective, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from optstate.cli import OptstateCommand, app, errors_to_exit, print_json, stdout_console

_RUN = "Run (shared by every optimizer)"


@app.command(no_args_is_help=True, cls=OptstateCommand)
def compare(
    optimizers: Annotated[str, typer.Option(
        "--optimizers", "-O", metavar="NAMES", help="Comma-separated torch.optim names; "
        "label=name runs one optimizer twice: slow=sgd,fast=sgd.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="[LABEL.]KEY=VALUE", help="A hyperparameter, repeatable: lr=0.01 "
        "sets every optimizer's, adam.lr=0.01 only adam's (that one wins); tuples "
        "comma-separated: adam.betas=0.9,0.95.")] = None,
    grad: Annotated[str, typer.Option(
        help="Objective: rosenbrock or quadratic (drawn as contour plots in 2-D), constant, "
        "normal, none (see simulate --help).", rich_help_panel=_RUN)] = "rosenbrock",
    grad_value: Annotated[float | None, typer.Option(
        help="quadratic: the optimum; constant: the gradient value. \\[default: 1.0]",
        rich_help_panel=_RUN)] = None,
    shape: Annotated[list[str] | None, typer.Option(
        metavar="SHAPE", help="Parameter shape, repeatable. \\[default: 2, one point in the plane]",
        rich_help_panel=_RUN)] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps for each run.",
                                       rich_help_panel=_RUN)] = 100,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the shared start point. \\[default: 0]", rich_help_panel=_RUN)] = None,
    init: Annotated[str | None, typer.Option(
        help="Start point: normal (seeded), zeros, ones, constant (--init-value). "
        "\\[default: normal]", rich_help_panel=_RUN)] = None,
    init_value: Annotated[float | None, typer.Option(
        help="Value for --init constant. \\[default: 0.0]", rich_help_panel=_RUN)] = None,
    record_every: Annotated[str | None, typer.Option(
        metavar="N", help="Record each run's history at the start, at every multiple of N "
        "steps and at the last step, as simulate --record-every does (best loss: the best "
        "recorded). \\[default: auto]", rich_help_panel=_RUN)] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Draw the trajectories (2-D objectives) and the loss curves to this .png, "
        ".svg or .pdf (needs matplotlib: pip install 'optstate\\[plot]').")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")
                     ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")
                     ] = False,
) -> None:
    """Run several optimizers from one start on one objective; compare them.

    Example:
      optstate compare -O sgd,adam,adamw,rmsprop --set lr=0.01 --plot cmp.png

    Each run is the optstate simulate run of the same flags: same seeded start,
    same gradients. In the table, a star marks the lowest final loss and
    "diverged" a run whose loss or parameters became NaN or Inf.
    """
    with errors_to_exit():
        from optstate.sim.compare import compare as run
        from optstate.sim.compare import compare_report, contenders_from_flags
        from optstate.sim.config import GroupSpec, RunSpec, parse_shape
        from optstate.sim.simulate import parse_record_every
        from optstate.sim.spec_text import apply_overrides

        every = parse_record_every(record_every)
        contenders = contenders_from_flags(optimizers, set_ or [])
        base = apply_overrides(
            RunSpec(groups=(GroupSpec(shapes=((2,),)),)),
            shapes=[parse_shape(s) for s in shape] if shape else None,
            steps=steps, seed=seed, grad=grad, grad_value=grad_value, init=init,
            init_value=init_value,
        )
        if plot is not None:
            from optstate.render.plot import check_plot_target

            check_plot_target(plot, force)
        from optstate.render.progress import Progress, progress_wanted

        with Progress("running", enabled=progress_wanted(json=json_)) as progress:
            started = iter(range(len(contenders)))
            on_run = None if progress is None else (  # runs done so far, and the next one
                lambda c: progress(next(started), len(contenders), label=f"running {c.label}"))
            runs = run(base, contenders, on_run=on_run, record_every=every)
        report = compare_report(base, runs)
        report["plot"] = None
        if plot is not None:
            from optstate.render.plot import write_compare_plot

            report["plot"] = str(write_compare_plot(report, plot, force=force))
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
    else:
        from optstate.render.compare import compare_view

        stdout_console().print(compare_view(report))
