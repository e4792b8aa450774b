"""``optstate check``: will load_state_dict work for the optimizer a config builds?"""

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


@app.command(cls=OptstateCommand)
def check(
    checkpoint: Annotated[str, typer.Argument(
        metavar="CKPT", help="A torch.save file or a Hugging Face / accelerate checkpoint "
        "folder (or its URL: s3://bucket/ckpt.pt).", show_default=False)],
    config: Annotated[str, typer.Option(
        "--config", "-c", help="The TOML or JSON run config (the one simulate reads) that "
        "builds the optimizer to load into.", show_default=False)],
    key: Annotated[str | None, typer.Option(
        help=KEY_HELP)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="FILE", help="Name the checkpoint's params from this model "
        f"({MODEL_FILES_HELP}), to compare them with the names the config lists.",
        show_default=False)] = None,
    trial: Annotated[bool, typer.Option(
        "--trial/--no-trial", help="Also let torch do it: load_state_dict and one step() "
        "on copies (costs one copy of the state).")] = True,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
) -> None:
    """Check whether a checkpoint loads into the optimizer a config builds.

    Reports, in plain words: a different number of param groups or of params
    in a group (torch refuses), state shapes that do not fit the configured
    parameters (torch accepts them and fails at step()), state of another
    optimizer kind, dtype casts, hyperparameters and scheduler settings the
    checkpoint will override, and parameters reordered by name (torch matches
    by position only): with names on both sides (the checkpoint's found as
    inspect finds them, or from --model; the config's groups list them), a
    move reads "`fc2.weight` gets the state of `fc1.weight`" and a count
    mismatch names what the config lacks or adds. Under a scheduler the
    config's lr is the base lr: it is compared with the checkpoint's
    initial_lr / base_lrs, and the lr the scheduler has reached is shown as
    information. An `optstate set` line is
    printed only when it would make the checkpoint fit.

    Exit status: 0 it loads and matches, 1 it loads with differences worth
    knowing, 2 it would fail (or bad input).

    Example: optstate check ckpt.pt --config run.toml
    """
    with errors_to_exit():
        from optstate.analysis.check import check_checkpoint, check_report
        from optstate.io.remote import MODEL_HINT, cli_path, local_only

        target = cli_path(checkpoint)  # a URL stays text: read remotely
        config_file = local_only(config, "--config")
        model_file = local_only(model, "--model", hint=MODEL_HINT)
        from optstate.render.progress import Progress, progress_wanted

        if unsafe:
            warn_unsafe()
        with Progress("checking", enabled=progress_wanted(json=json_)):  # load + torch trial
            report = check_report(check_checkpoint(target, config_file, key=key,
                                                   unsafe=unsafe, trial=trial,
                                                   model_file=model_file))
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
    else:
        from optstate.render.check_view import check_view

        stdout_console().print(check_view(report))
    raise typer.Exit(code=report["exit_code"])
