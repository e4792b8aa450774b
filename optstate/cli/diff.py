"""``optstate diff``: compare two optimizer checkpoints, structurally and numerically."""

from __future__ import annotations

import sys
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

# Differences the human view lists unless --max-diffs or --verbose says otherwise.
HUMAN_ROWS = 50
_CMP = "Comparing"
_OUT = "Output"


@app.command(no_args_is_help=True, cls=OptstateCommand)
def diff(
    a: Annotated[str, typer.Argument(
        metavar="A", help="First checkpoint (file, checkpoint folder or URL).",
        show_default=False)],
    b: Annotated[str, typer.Argument(
        metavar="B", help="Second checkpoint.", show_default=False)],
    atol: Annotated[float, typer.Option(
        help="Absolute tolerance: a pair is equal when |a−b| <= atol + rtol·|b|.",
        rich_help_panel=_CMP)] = 0.0,
    rtol: Annotated[float, typer.Option(
        help="Relative tolerance (relative to b, as numpy.isclose).",
        rich_help_panel=_CMP)] = 0.0,
    nan_differs: Annotated[bool, typer.Option(
        "--nan-differs", help="Count NaN against NaN as a difference (by default NaN in "
        "the same place is equal).", rich_help_panel=_CMP)] = False,
    ignore: Annotated[list[str] | None, typer.Option(
        metavar="KEY", help="Skip a hyperparameter or state entry by name (foreach, "
        "capturable, step, …), a param by name, or a path or path prefix "
        "(param_groups[1], scheduler). Repeatable.", rich_help_panel=_CMP)] = None,
    key: Annotated[str | None, typer.Option(
        help=KEY_HELP + " Applies to both files.", rich_help_panel=_CMP)] = None,
    key_a: Annotated[str | None, typer.Option(
        help="--key for the first file only.", rich_help_panel=_CMP)] = None,
    key_b: Annotated[str | None, typer.Option(
        help="--key for the second file only.", rich_help_panel=_CMP)] = None,
    match: Annotated[str, typer.Option(
        help="Match parameters by position (as load_state_dict does), by name (needs "
        "param_names in both), or auto: by name when both files carry names. Names derived "
        "from a model only label params matched by position.",
        rich_help_panel=_CMP)] = "auto",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="GLOB|N", help="Compare only the params whose name (or a "
        "tied alias) matches this glob ('conv*', '*.bias'), or at this position; every "
        "group's hyperparameters are still compared. Repeatable.",
        rich_help_panel=_CMP)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="FILE", help=f"A model ({MODEL_FILES_HELP}) to name the "
        "params of optimizer states saved alone; one model for both A and B (each "
        "checkpoint's own param_names win).", rich_help_panel=_CMP)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="List equal items too.", rich_help_panel=_OUT)] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print nothing; only the exit status (stops at the first "
        "difference).", rich_help_panel=_OUT)] = False,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON (schema optstate.diff/1).",
        rich_help_panel=_OUT)] = False,
    max_diffs: Annotated[int | None, typer.Option(
        metavar="N", help="List at most N differences (all are still counted). "
        "\\[default: 50 in the tables, all with --json or --verbose]",
        rich_help_panel=_OUT)] = None,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", help="Split the tensor work over N processes of this "
        "machine (torch.distributed, gloo, CPU): the same result; under torchrun the "
        "ranks split it.")] = 1,
) -> None:
    """Compare two optimizer checkpoints; exit 0 if equal, 1 if they differ.

    Compares groups, hyperparameters, params, state entries and the scheduler
    state. Exit status: 0 equal, 1 different, 2 bad input.

    Example: optstate diff -q step1000.pt step2000.pt && echo same

    Remote: a checkpoint may be a URL: s3://, gs://, az://, hf://, http(s)://
    (pip install 'optstate\\[s3]', or \\[gcs], \\[azure], \\[hub], \\[http]); only
    the byte ranges needed are read. Another S3 server: AWS_ENDPOINT_URL_S3.
    Large checkpoints: --workers N (or torchrun) splits the work.
    """
    # read without torch where it can (issue #22); these options need it: imported now
    with errors_to_exit(torch=unsafe or workers != 1):
        from optstate.io.remote import MODEL_HINT, cli_path, local_only

        # a URL stays text (read remotely); a local argument is the Path it always was
        path_a, path_b = cli_path(a), cli_path(b)
        model_file = local_only(model, "--model", hint=MODEL_HINT)
        from optstate.analysis.diff import DiffOptions, diff_files
        from optstate.analysis.diff_report import diff_report
        from optstate.base.errors import ConfigError

        if quiet and (json_ or verbose):
            raise ConfigError("--quiet prints nothing; it cannot be combined with "
                              f"{'--json' if json_ else '--verbose'}")
        if max_diffs is not None and max_diffs < 0:
            raise ConfigError(f"--max-diffs must be 0 or more, got {max_diffs}")
        options = DiffOptions(atol=atol, rtol=rtol, nan_equal=not nan_differs,
                              ignore=tuple(ignore or ()), match=match,
                              stop_after=1 if quiet else None, params=tuple(param or ()))
        if unsafe:
            warn_unsafe()
        from optstate.render.progress import Progress, progress_wanted

        with Progress("comparing", enabled=progress_wanted(json=json_, quiet=quiet)
                      ) as on_progress:
            result, side_a, side_b = diff_files(
                path_a, path_b, options, key_a=key_a or key, key_b=key_b or key,
                unsafe=unsafe, model=model_file, on_progress=on_progress, workers=workers)
        if max_diffs is None and not (json_ or verbose):
            max_diffs = HUMAN_ROWS  # a summary: the rest is counted, per entry too
        report = diff_report(result, side_a, side_b, verbose=verbose, max_diffs=max_diffs)
    if not quiet:
        if json_:
            from optstate.render.json_view import dumps

            print_json(dumps(report))
        else:
            from optstate.render.diff_view import diff_view

            stdout_console().print(diff_view(report))
            if "hint" in report:
                print(f"Hint: {report['hint']}", file=sys.stderr)
    if not result.equal:
        raise typer.Exit(code=1)

