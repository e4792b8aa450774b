"""``optstate convert``: torch.save file <-> torch.distributed.checkpoint (DCP) folder;
a DeepSpeed ZeRO checkpoint -> either."""

from __future__ import annotations

from pathlib import Path
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
    src: Annotated[Path, typer.Argument(
        metavar="SRC", help="A torch.save file (or Hugging Face checkpoint folder) to turn "
        "into a DCP folder, a DCP folder (with .metadata) to turn into one torch.save file, "
        "or a DeepSpeed ZeRO checkpoint (run folder with 'latest', tag folder, or a rank "
        "file) to turn into either.",
        show_default=False)],
    dst: Annotated[Path, typer.Argument(
        metavar="DST", help="Where to write: a folder for DCP output, a file for torch.save "
        "output. From DeepSpeed, a name ending in .pt, .pth, .bin or .ckpt is one torch.save "
        "file; any other name a DCP folder.",
        show_default=False)],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace DST if it is a checkpoint of the kind written: a "
        "torch.save file, or a DCP folder (never any other file or folder).")] = False,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON (schema optstate.convert/1).")] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help=UNSAFE_HELP)] = False,
) -> None:
    """Convert a torch.save file <-> a DCP folder, or DeepSpeed to either.

    Example, there and back:
      optstate convert adam.pt adam_dcp/
      optstate convert adam_dcp/ adam.pt

    A DeepSpeed ZeRO checkpoint becomes a file or a DCP folder, as DST is named:
      optstate convert run/ optimizer.pt

    torch.load(f)["optimizer"] is then a torch.optim state_dict, with
    fp32_master_weights and deepspeed beside it.

    Uses torch.distributed.checkpoint in this one process (no process group).
    The copy is written beside DST, read back and compared with the source bit
    for bit, then renamed into place: DST is never left half written, and a
    crash leaves the old DST or the new one.
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
    line = (f"converted {report['source']} ({report['source_format']}) -> "
            f"{report['destination']} ({report['destination_format']}): "
            f"{report['tensors_verified']} tensors verified bit for bit, "
            f"{report['bytes']:,} bytes")
    console = stdout_console()
    if console.is_terminal:  # wrapped between words, never inside a path or number
        from rich.text import Text

        console.print(Text(line))
    else:  # one plain line for pipes and scripts
        print_json(line)
