"""``optstate convert``: torch.save file <-> torch.distributed.checkpoint (DCP) folder;
a DeepSpeed ZeRO checkpoint -> either."""

from __future__ import annotations

from typing import Annotated

import typer

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


@app.command(cls=OptstateCommand)
def convert(
    src: Annotated[str, typer.Argument(
        metavar="SRC", help="A torch.save file (or Hugging Face checkpoint folder), a DCP "
        "folder (with .metadata), a DeepSpeed ZeRO checkpoint (run folder with 'latest', tag "
        "folder, or a rank file) or a folder of one FSDP2 run's rank<N>.pt files.",
        show_default=False)],
    dst: Annotated[str, typer.Argument(
        metavar="DST", help="Where to write. A name ending in .pt, .pth, .bin or .ckpt is "
        "one torch.save file; any other name a DCP folder. A DCP folder becomes a file, a "
        "torch.save file a DCP folder; DeepSpeed and FSDP2 rank files either. SRC and DST "
        "may be URLs (s3://bucket/run/step_100/): DST is written and checked locally, then "
        "uploaded.",
        show_default=False)],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace DST if it is a checkpoint of the kind written: a "
        "torch.save file, or a DCP folder (never any other file or folder).")] = False,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON (schema optstate.convert/1).")] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
) -> None:
    """Convert a torch.save file <-> a DCP folder; DeepSpeed or FSDP2 to either.

    Example, there and back:
      optstate convert adam.pt adam_dcp/
      optstate convert adam_dcp/ adam.pt

    A DeepSpeed ZeRO checkpoint becomes a file or a DCP folder, as DST is named:
      optstate convert run/ optimizer.pt

    torch.load(f)["optimizer"] is then a torch.optim state_dict, with
    fp32_master_weights and deepspeed beside it. A folder of FSDP2 rank
    files becomes the whole state, each DTensor joined from its shards.
    torchao's low-bit entries are written dequantized (float32).

    Uses torch.distributed.checkpoint in this one process (no process group).
    The copy is written beside DST, read back and compared with the source bit
    for bit, then renamed into place: DST is never left half written, and a
    crash leaves the old DST or the new one.

    SRC and DST may be URLs (s3://, gs://, az://, any fsspec URL):
      optstate convert s3://bucket/run/step_100/ step_100.pt

    A URL DST is written and checked locally (in TMPDIR), then uploaded: one
    object by one PUT, or a DCP folder's data files first and .metadata last
    (deleted again if an upload fails). An existing folder URL is not replaced.
    """
    with errors_to_exit():
        if unsafe:
            warn_unsafe()
        from optstate.edit.convert import convert as run
        from optstate.render.progress import Progress, progress_wanted

        with Progress("converting", enabled=progress_wanted(json=json_)):
            result = run(src, dst, force=force, unsafe=unsafe)
    report = result.to_dict()
    for w in report["warnings"]:
        warn(w)
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
        return
    line = (f"converted {report['source']} ({result.source_words or report['source_format']})"
            f" -> "
            f"{report['destination']} ({report['destination_format']}): "
            f"{report['tensors_verified']} tensors verified bit for bit, "
            f"{report['bytes']:,} bytes")
    console = stdout_console()
    if console.is_terminal:  # wrapped between words, never inside a path or number
        from rich.text import Text

        console.print(Text(line))
    else:  # one plain line for pipes and scripts
        print_json(line)
