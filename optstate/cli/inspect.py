"""``optstate inspect``: see everything an optimizer checkpoint holds."""

from __future__ import annotations

from typing import Annotated

import typer

from optstate.base.paths import KEY_HELP
from optstate.cli import (
    MODEL_FILES_HELP,
    UNSAFE_HELP,
    OptstateCommand,
    app,
    errors_to_exit,
    print_json,
    stdout_console,
    warn_unsafe,
)

_FOCUS = "Focus"


@app.command(cls=OptstateCommand)
def inspect(
    path: Annotated[str, typer.Argument(
        metavar="CKPT", help="A torch.save file (.pt .pth .pkl .bin .ckpt .tar ...), a "
        "Hugging Face Trainer / accelerate checkpoint folder, or a "
        "torch.distributed.checkpoint folder; or a URL (s3:// ...).",
        show_default=False)],
    key: Annotated[str | None, typer.Option(
        "--key", "-k", help=KEY_HELP)] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="N|NAME|GLOB", help="Show only this parameter: a position, "
        "a name, or a glob over names ('encoder.*', '*.bias'; quote it) where names are "
        "known. Repeatable.", rich_help_panel=_FOCUS)] = None,
    group: Annotated[list[int] | None, typer.Option(
        "--group", "-g", metavar="N", help="Show only this param group. Repeatable.",
        rich_help_panel=_FOCUS)] = None,
    values: Annotated[bool, typer.Option(
        "--values", help="Print tensor values too (all of a small tensor; the first and last "
        "few of a big one).", rich_help_panel=_FOCUS)] = False,
    max_params: Annotated[int, typer.Option(
        "--max-params", metavar="N", help="Human view: show the first N parameters (0: all); "
        "--json always has all.", rich_help_panel=_FOCUS)] = 50,
    no_stats: Annotated[bool, typer.Option(
        "--no-stats", help="Structure only: shapes, dtypes, sizes; no tensor data is read "
        "(fast on huge files).", rich_help_panel=_FOCUS)] = False,
    hist: Annotated[bool, typer.Option(
        "--hist", help="A small histogram of each state buffer's values (16 bins, min to "
        "max), to spot one that collapsed to zero or exploded; in --json under each "
        "entry's \"histogram\".", rich_help_panel=_FOCUS)] = False,
    layout: Annotated[bool, typer.Option(
        "--layout", help="DCP folders: how each tensor is split into chunks across ranks "
        "and files (from the metadata; in --json under \"layout\").",
        rich_help_panel=_FOCUS)] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="FILE", help="Name the params from this model "
        f"({MODEL_FILES_HELP}): for an optimizer file saved alone, without param_names "
        "and without the model beside it.",
        show_default=False)] = None,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print one JSON document (schema optstate.inspect/1) on stdout.")
    ] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", help="Split the tensor work over N processes of this "
        "machine (torch.distributed, gloo, CPU): the same result; under torchrun the "
        "ranks split it.")] = 1,
) -> None:
    """Show what an optimizer checkpoint holds: kind, groups, per-param stats.

    Example: optstate inspect sgd.pkl --param 0 --values

    Finds the optimizer state by itself: a plain optimizer.state_dict(),
    a dict holding one ('optimizer_state_dict' as in the PyTorch tutorial,
    'optimizer', ...), a Lightning .ckpt (optimizer_states[0]), a Hugging
    Face / accelerate folder, a DCP folder. Loading never runs code from
    the file: zip files and DCP folders are read by optstate's own
    unpickler, without torch; others by torch.load(weights_only=True).
    GPU tensors are read on the CPU.

    Remote: a checkpoint may be a URL: s3://, gs://, az://, hf://, http(s)://
    (pip install 'optstate\\[s3]', or \\[gcs], \\[azure], \\[hub], \\[http]); only
    the byte ranges needed are read. Another S3 server: AWS_ENDPOINT_URL_S3.
    Large checkpoints: --workers N (or torchrun) splits the work.

    Exit status: 0 shown, 2 bad input or no optimizer state found.
    """
    # read without torch where it can (issue #22); these options need it: imported now
    with errors_to_exit(torch=hist or unsafe or workers != 1):
        from optstate.io.remote import MODEL_HINT, cli_path, local_only

        target = cli_path(path)  # a URL stays text
        model_file = local_only(model, "--model", hint=MODEL_HINT)
        if unsafe:
            warn_unsafe()
        from optstate.analysis.inspect import inspect_path

        if hist and no_stats:
            from optstate.base.errors import ConfigError

            raise ConfigError("--hist reads tensor data; it cannot go with --no-stats")
        from optstate.analysis.histogram import BINS
        from optstate.render.progress import Progress, progress_wanted

        with Progress("reading", enabled=progress_wanted(json=json_)) as on_progress:
            report = inspect_path(target, key=key, unsafe=unsafe, stats=not no_stats,
                                  params=param, groups=group, values=values,
                                  hist_bins=BINS if hist else None, on_progress=on_progress,
                                  model=model_file, workers=workers)
        # Extra sections (e.g. histograms) are added to ``report`` here, before rendering.
        if layout:  # DCP storage layout: optstate/io/dcp_layout.py
            from optstate.io.dcp_layout import layout_report

            report["layout"] = layout_report(target, reader="auto")
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
        return
    from optstate.render.inspect_view import inspect_view

    console = stdout_console()
    console.print(inspect_view(report, max_params=max_params))
    if layout:
        from optstate.render.dcp_view import layout_table

        console.print(layout_table(report["layout"]))
