"""``optstate timeline``: where a training run went wrong, across its checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
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
    warn_unsafe,
)

_READ = "Reading"
_OUT = "Output"


class _RunsCommand(OptstateCommand):
    """The help names RUN's type as one path (``<path>``), as for any argument: typer
    0.29 writes a repeated argument's Python type, ``<list[Path]>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        if not self._help_view:
            return params
        shown = []
        for p in params:
            if getattr(p, "param_type_name", "") == "argument" and p.nargs != 1:
                p = copy.copy(p)  # for the help only: parsing keeps the real one
                p.display_type = lambda ctx: "<path>"
            shown.append(p)
        return shown


@app.command(no_args_is_help=True, cls=_RunsCommand)
def timeline(
    paths: Annotated[list[str], typer.Argument(  # str: an empty path is an error, not "."
        metavar="RUN", help="A run's folder (its checkpoints are the files and "
        "checkpoint folders directly in it), or checkpoints of one run.",
        show_default=False)],
    spike: Annotated[float, typer.Option(
        metavar="X", help="A norm growing more than X times since the checkpoint before "
        "is a finding (Adam's moments bias-corrected first). Must be > 1.")] = 10.0,
    key: Annotated[str | None, typer.Option(
        "--key", "-k", help=KEY_HELP + " Applies to every checkpoint.",
        rich_help_panel=_READ)] = None,
    cache: Annotated[Path | None, typer.Option(
        metavar="DIR", help="Keep the cache of per-checkpoint statistics in DIR. "
        "\\[default: RUN/.optstate]", rich_help_panel=_READ)] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Read every checkpoint; neither use nor write the cache.",
        rich_help_panel=_READ)] = False,
    workers: Annotated[int | None, typer.Option(
        metavar="N", help="Read N checkpoints at a time (1 to 64). \\[default: the CPU "
        "count, at most 4]", rich_help_panel=_READ)] = None,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the whole report as JSON (schema optstate.timeline/1): "
        "every checkpoint and every series.", rich_help_panel=_OUT)] = False,
    plot: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Draw norm-over-step curves of the top entries and the lr, "
        "findings marked (.png, .svg or .pdf; needs matplotlib).",
        rich_help_panel=_OUT)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite the --plot file.", rich_help_panel=_OUT)] = False,
    max_rows: Annotated[int, typer.Option(
        metavar="N", help="Table rows at most (the first and last checkpoints and every "
        "one with a finding), and findings listed (the first N; 0: all); --json has "
        "all.", rich_help_panel=_OUT)] = 40,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
) -> None:
    """Find where a training run went wrong across its checkpoints.

    Reads every checkpoint of one run (step_1000.pt, checkpoint-500/,
    epoch=3-step=900.ckpt, global_step2000/, DCP folders) and reports
    the first NaN/Inf, norm spikes, an lr off its schedule or reset,
    step counters that go back or skip (a resume from the wrong file),
    changed hyperparameters, second moments collapsing, lost state.

    Order: by the step the checkpoints record (the run's, else the
    optimizer's, else the scheduler's); the numbers in the file names
    only when they record none, and the output says so.

    Statistics are inspect's; a cache beside the run (RUN/.optstate),
    keyed by each file's size and times and signed with a key of yours,
    rereads only new or changed checkpoints.

    Exit status: 0 no finding, 1 findings, 2 bad input.

    Example: optstate timeline runs/exp3 --plot exp3.png
    """
    # read without torch where it can (issue #22); these options need it: imported now
    with errors_to_exit(torch=unsafe):
        from optstate.io.remote import display, is_url, local_path

        for p in paths:  # a run folder is listed and cached locally: no URLs (yet)
            if is_url(p) and local_path(p) is None:
                from optstate.base.errors import ConfigError

                raise ConfigError(f"timeline reads local files and folders only, not URLs: "
                                  f"{display(p)}", hint="copy the run's checkpoints to a "
                                  "local folder first")
        paths = [str(local_path(p) or p) if is_url(p) else p for p in paths]
        if max_rows < 0:
            from optstate.base.errors import ConfigError

            raise ConfigError(f"--max-rows must be 0 or more, got {max_rows}")
        if plot is not None:
            from optstate.render.plot import check_plot_target

            check_plot_target(plot, force)  # before reading anything
        if unsafe:
            warn_unsafe()
        from optstate.analysis.timeline import timeline as run_timeline
        from optstate.render.progress import Progress, progress_wanted

        with Progress("reading", enabled=progress_wanted(json=json_)) as on_progress:
            report = run_timeline(paths, spike=spike, cache_dir=cache,
                                  use_cache=not no_cache, workers=workers, key=key,
                                  unsafe=unsafe, on_progress=on_progress)
        written = None
        if plot is not None:
            from optstate.render.plot import write_timeline_plot

            written = write_timeline_plot(report, plot, force=force)
        # the answer is made here too: anything failing in it is one Error line
        if json_:
            from optstate.render.json_view import dumps

            print_json(dumps(report))
        else:
            from optstate.render.timeline_view import timeline_view

            console = stdout_console()
            console.print(timeline_view(report, max_rows=max_rows))
            if written is not None:
                console.print(f"wrote {written}", style="green")
        if report["findings"]:
            raise typer.Exit(code=1)
