"""``optstate config``: the run config that rebuilds a checkpoint's optimizer."""

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
    warn_unsafe,
)


@app.command(name="config", cls=OptstateCommand)
def config_cmd(
    checkpoint: Annotated[str, typer.Argument(
        metavar="CKPT", help="A torch.save file, a Hugging Face / accelerate checkpoint "
        "folder, or a torch.distributed.checkpoint folder (or its URL: "
        "s3://bucket/ckpt.pt).", show_default=False)],
    key: Annotated[str | None, typer.Option(help=KEY_HELP)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="FILE", help="Name the params from this model "
        f"({MODEL_FILES_HELP}), so the groups list names.",
        show_default=False)] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the config to this file (atomically) instead of "
        "printing it.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing -o file.")
    ] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
    json_: Annotated[bool, typer.Option("--json", help="The same config as JSON (check "
                                        "and simulate read a .json config).")] = False,
) -> None:
    """Write the run config (TOML) that rebuilds a checkpoint's optimizer.

    The optimizer class (inferred from the state's keys), the hyperparameters
    every group shares, one groups table per param group with its
    parameters' shapes (from their state), their names when known, and the
    group's own values; the scheduler when its state is there and its class
    can be told from its settings (LambdaLR cannot: a comment says so).
    Comments say where each part came from. It is the config simulate
    --config and check --config read, so that

        optstate check CKPT --config <(optstate config CKPT)

    exits 0 for a checkpoint of a torch.optim optimizer.

    Exit status: 0 written, 2 bad input or an optimizer a config cannot build.

    Example: optstate config ckpt.pt -o run.toml
    """
    with errors_to_exit():
        from optstate.analysis.config_from import config_from_checkpoint
        from optstate.io.remote import MODEL_HINT, cli_path, local_only

        checkpoint_arg = cli_path(checkpoint)  # a URL stays text: read remotely
        model_file = local_only(model, "--model", hint=MODEL_HINT)
        output_file = local_only(output, "--output")

        if unsafe:
            warn_unsafe()
        derived = config_from_checkpoint(checkpoint_arg, key=key, model_file=model_file,
                                         unsafe=unsafe)
        if json_:
            import json

            text = json.dumps(derived.data, indent=2) + "\n"
        else:
            from optstate.render.config_view import config_toml

            text = config_toml(derived)
        if output_file is not None:
            from optstate.io.torch_file import atomic_write

            atomic_write(output_file, lambda f: f.write(text.encode("utf-8")), force=force)
            print(f"wrote {output_file}", file=sys.stderr)
            return
    sys.stdout.write(text)  # plain text: rich would read [hyperparams] as markup
