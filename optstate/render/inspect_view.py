"""The human view of an inspect report (rich renderables; never prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text

from optstate.base.values import format_shape
from optstate.render.human import fmt, fmt_values, groups_table
from optstate.render.text_table import TextTable
from optstate.render.wrapped import KEY_WIDTH, Hanging, Header
from optstate.state.names import from_words

FORMAT_LABELS = {
    "zip": "torch.save zip (torch >= 1.6)",
    "legacy": "torch.save legacy pickle (torch < 1.6)",
    "dcp": "torch.distributed.checkpoint folder",
    "deepspeed": "DeepSpeed ZeRO checkpoint (all ranks' files, per param)",
    "fsdp2-ranks": "FSDP2 rank files (one torch.save per rank; DTensors joined)",
}

# Rows of a human view are for reading: past this many params, point to --json.
FOLDER_FORMATS = ("dcp", "fsdp2-ranks")
MAX_PARAMS_SHOWN = 50

# LBFGS keeps up to history_size tensors per list entry; show the first few as rows.
ITEMS_SHOWN = 4


def human_bytes(n: int, exact: bool = True) -> str:
    """'15.3 MiB (16,008,000 B)'; without ``exact``, '15.3 MiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            if unit == "B":
                return f"{n} B"
            return f"{size:.1f} {unit}" + (f" ({n:,} B)" if exact else "")
        size /= 1024
    return f"{n} B"


def decimal_bytes(n: int) -> str:
    """'6.3 kB', '24.0 MB' (powers of 1000, as transfer sizes are counted)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def read_line(file: dict[str, Any]) -> Text | None:
    """'read 6.3 kB of 24.0 MB (0.03%) in 3 requests, 1 retry' for a remote source (the
    ``bytes_read`` ... fields of a report's ``file``); None for a local one."""
    got = file.get("bytes_read")
    if got is None:
        return None
    total = file.get("bytes_total") or 0
    requests, retries = file.get("requests") or 0, file.get("retries") or 0
    text = f"read {decimal_bytes(got)} of {decimal_bytes(total)}"
    if total:
        pct = 100 * got / total
        text += f" ({pct:.0f}%)" if pct >= 10 else f" ({pct:.1f}%)" if pct >= 1 \
            else f" ({pct:.2f}%)"
    text += f" in {requests} request{'s' * (requests != 1)}"
    if retries:
        text += f", {retries} retr{'ies' if retries != 1 else 'y'}"
    return Text(text, style="dim")


def reader_line(file: dict[str, Any]) -> Text | None:
    """'read with torch: legacy format' when torch read a checkpoint another reader was
    asked for (``reader_note`` of a report's ``file``: why); None when read without torch
    (the usual case says nothing)."""
    if not file.get("reader_note"):
        return None
    if file.get("reader") != "torch":  # a sibling file read with torch: the note says so
        return Text(file["reader_note"], style="dim")
    return Text(f"read with torch: {file['reader_note']}", style="dim")


def _zeros(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}" if 0 < value < 1 else f"{value:.0%}"


def header(report: dict[str, Any]) -> Header:
    f = report["file"]
    rows = Header()
    rows.add("file", Text(f["path"], style="bold"))
    inside = f["read"] != f["path"]  # a checkpoint folder: the optimizer file in it
    if inside:
        read = Text(Path(f["read"]).name)
        for role, sib in f.get("siblings", {}).items():
            read.append(f" (+ {Path(sib).name}: {role})")
        rows.add("read", read)
    rows.add("format", Text(FORMAT_LABELS.get(f["format"], f["format"])))
    if f.get("summary"):
        rows.add("", Text(f["summary"]))
    rows.add("size", Text(human_bytes(f["bytes"])))
    # a folder read as one state (DCP, FSDP2 rank files) is not "the whole file"
    what = "checkpoint" if f["format"] in FOLDER_FORMATS else "file"
    whole = f"{Path(f['read']).name} (the whole file)" if inside else \
        f"top level (the whole {what} is the optimizer state)"
    found = Text(report["location"] or whole)
    others = [c for c in report["locations"] if c != report["location"]]
    if others:
        found.append(f"  (also: {', '.join(c or 'top level' for c in others)})", style="dim")
    rows.add("found at", found)
    opt = report["optimizer"]
    rows.add("optimizer", Text.assemble((opt["kind"], "bold"),
                                        f"  confidence {opt['confidence']}: {opt['reason']}"))
    naming = report.get("naming")
    if naming is not None:
        rows.add("names", names_line(naming, indent=""))
    return rows


# Where names came from, in words, by ``naming.source`` (``optstate.state.names``).
def names_line(naming: dict[str, Any], indent: str = " " * KEY_WIDTH) -> Text:
    """``12 of 12 from the model state_dict at 'model_state_dict' (matched by order and
    shape)``, or ``none: <reason>``, with how to give a model when none was found; each
    note on a line of its own, after ``indent``."""
    text = Text()
    if not naming["named"]:
        if not naming["total"]:
            return Text("none (no params)", style="dim")
        text.append(f"none: {naming['reason'] or 'unknown'}")
        if naming["model"] is None:  # nothing to name them from: say how to give one
            text.append(" (--model FILE names them)", style="dim")
    else:
        text.append(from_words(naming))
        if naming.get("matched"):
            text.append(f" (matched by {naming['matched']})", style="dim")
        if naming["reason"]:
            text.append(f"; {naming['reason']}")
    for note in naming.get("notes", []):
        text.append(f"\n{indent}{note}", style="dim")
    return text


def _num(value: Any, digits: int) -> str:
    """A float to ``digits`` significant digits, exponent without padding (8.92e-5)."""
    if isinstance(value, float):
        text = f"{value:.{digits}g}"
        if "e" in text:
            mant, exp = text.split("e")
            text = f"{mant}e{int(exp)}"
        return text
    return fmt(value)


def _lead(p: dict[str, Any], show_group: bool, show_name: bool,
          show_id: bool = False) -> list[str]:
    lead = [str(p["position"])] + [str(p["id"])] * show_id
    if show_group:
        lead.append(str(p["group"]))
    if show_name:
        aliases = p.get("aliases") or []
        lead.append((p["name"] or "") + (f" (= {', '.join(aliases)})" if aliases else ""))
    return lead


def _flat_entries(state: dict[str, Any], prefix: str = ""):  # noqa: ANN202
    """(entry label, report) pairs, list items (LBFGS) expanded up to ITEMS_SHOWN."""
    for entry, rep in state.items():
        name = f"{prefix}{entry}"
        if "items" in rep:
            items = rep["items"]
            yield name, {"list": len(items)}
            for i, item in enumerate(items[:ITEMS_SHOWN]):
                yield from _flat_entries({f"{name}[{i}]": item})
            if len(items) > ITEMS_SHOWN:
                yield f"{name}[{ITEMS_SHOWN}:]", {"more": len(items) - ITEMS_SHOWN}
        else:
            yield name, rep


def structure_table(report: dict[str, Any]) -> TextTable:
    """One row per state entry: shape, dtype, numel, bytes; scalars by value."""
    params = report["params"]
    show_group = len({p["group"] for p in params}) > 1 or len(report["param_groups"]) > 1
    show_name = any(p["name"] for p in params)
    show_value = any("value" in rep for p in params for _, rep in _flat_entries(p["state"]))
    show_id = bool(report.get("legacy_ids"))  # the id(param) keys of torch < 1.6
    cols = ["param"] + ["id"] * show_id + ["group"] * show_group + ["name"] * show_name + [
        "entry", "shape", "dtype", "numel", "bytes"] + ["value"] * show_value
    table = TextTable("state", [
        (col, "right" if col in ("param", "id", "group", "numel", "bytes") else "left", 0)
        for col in cols], head=len(cols) - 5 - show_value, sub=1)
    for p in params:
        lead = _lead(p, show_group, show_name, show_id)
        blank = [""] * len(lead)
        rows = []
        for name, rep in _flat_entries(p["state"]):
            if "list" in rep:
                rows.append([name, f"list of {rep['list']}", "", "", "", ""])
            elif "more" in rep:
                rows.append([Text(f"{name} ({rep['more']} more)", style="dim")])
            elif "value" in rep:
                # a plain value (a Python int, a set, None) has no tensor shape or dtype
                tensor = "dtype" in rep
                rows.append([name, format_shape(()) if tensor else "", rep.get("dtype", ""),
                             "", "", fmt(rep["value"])])
            else:
                low = "dtype_stored" in rep  # low-bit: the bytes it takes in the file
                rows.append([name, format_shape(rep["shape"]), rep["dtype"] + low * f" (from "
                             f"{rep.get('dtype_stored')})", f"{rep['numel']:,}",
                             f"{rep['bytes_stored' if low else 'bytes']:,}", ""])
        if not rows:
            rows = [[Text("(no state)", style="dim")]]
        for i, row in enumerate(rows):
            row = (row + [""] * (6 - len(row)))[:5 + show_value]
            table.add_row(*(lead if i == 0 else blank), *row)
    return table


def stats_table(report: dict[str, Any], digits: int = 6) -> TextTable | None:
    """One row per tensor entry: norm, min, max, mean, mean|x| (over finite elements),
    NaN and Inf counts, fraction of zeros. The digits are the same at every width: a
    narrow console gets the table folded (optstate/render/fit.py), never fewer digits."""
    show_name = any(p.get("name") for p in report["params"])
    cols = ("param", *("name",) * show_name, "entry", "norm", "min", "max", "mean", "mean|x|",
            "NaN", "Inf", "zeros")
    table = TextTable("statistics (norm, min, max, mean over finite elements)", [
        (col, "left" if col in ("entry", "name") else "right",
         len(col) if col not in ("entry", "name") else 6)
        for col in cols], padding=0, head=1 + show_name, sub=1)
    any_row = False
    for p in report["params"]:
        first = True
        for name, rep in _flat_entries(p["state"]):
            if "norm" not in rep:
                continue
            any_row = True
            nan = Text(str(rep["nan"]), style="bold red" if rep["nan"] else "")
            inf = Text(str(rep["inf"]), style="bold red" if rep["inf"] else "")
            lead = [str(p["position"]) if first else ""]
            if show_name:
                lead.append((p.get("name") or "") if first else "")
            table.add_row(*lead, name,
                          *[_num(rep[k], digits) for k in ("norm", "min", "max", "mean",
                                                           "mean_abs")],
                          nan, inf, _zeros(rep["zeros"]))
            first = False
    return table if any_row else None


def storage_section(report: dict[str, Any]) -> Text | None:
    """One line per view that repeats stored elements (expand, overlapping strides): its
    statistics are over the distinct stored elements (optstate/numeric/stats.py)."""
    lines = []
    for p in report["params"]:
        for entry, rep in _flat_entries(p["state"]):
            if rep.get("over") == "storage":
                n = rep["stored"]
                lines.append(f"state[{p['position']}].{entry}: stats over {n:,} stored "
                             f"element{'s' * (n != 1)} of {rep['numel']:,} "
                             f"({rep['view']} view)")
    return Text("\n".join(lines), style="dim") if lines else None


def stored_section(report: dict[str, Any]) -> Text | None:
    """One line per entry not stored as itself (``params[].stored``: low-bit, sharded):
    how it is stored (``state.packed.describe_stored``); the statistics above are of the
    entry as the optimizer means it (dequantized, the local shard)."""
    from optstate.analysis.findings import at
    from optstate.state.packed import describe_stored

    lines = Text()
    for p in report["params"]:
        for entry, d in (p.get("stored") or {}).items():
            if d.get("format") == "bitsandbytes-32bit" and "stacked_in" not in d:
                continue  # stored as itself, only nested: nothing to say
            if d.get("format") == "nested" and "object" not in d:
                continue  # its name is its path in a dict: nothing to add
            if lines:
                lines.append("\n")
            lines.append(f"{at(p['position'], entry)}: {describe_stored(d)}",
                         style="yellow" if d.get("error") else "")
    title = Text("stored as", style="bold")
    title.append(" (the statistics are of the values the optimizer uses)\n", style="dim")
    return title + lines if lines else None


def values_section(report: dict[str, Any]) -> Text | None:
    lines = []
    for p in report["params"]:
        for entry, rep in _flat_entries(p["state"]):
            where = f"state[{p['position']}].{entry}"
            if "values" in rep:
                lines.append(f"{where} = {fmt_values(rep['values'])}")
            elif rep.get("values_truncated"):
                lines.append(f"{where} = {fmt_values(rep['values_first'])} … "
                             f"{fmt_values(rep['values_last'])}"
                             f"  (first and last {len(rep['values_first'])} of "
                             f"{rep['numel']:,}, flattened)")
    if not lines:
        return None
    return Text("values\n", style="bold") + Text("\n".join(lines))


def totals_line(report: dict[str, Any]) -> Text:
    t = report["totals"]
    by = ", ".join(f"{k} {human_bytes(v, exact=False)}"  # as in the file: low-bit's format
                   for k, v in t["bytes_stored_by_format"].items()) or "none"
    return Text(
        f"totals: {t['groups']} group{'s' * (t['groups'] != 1)}, {t['params']} param"
        f"{'s' * (t['params'] != 1)} ({t['params_with_state']} with state), "
        f"{t['state_tensors']} state tensor{'s' * (t['state_tensors'] != 1)} + "
        f"{t['state_scalars']} scalar{'s' * (t['state_scalars'] != 1)}, "
        f"{t['numel']:,} elements, {human_bytes(t['bytes_stored'])}"
        f"{' as stored' * bool(t.get('low_bit'))} ({by})" + _low_bit(t.get("low_bit"))
    )


def _low_bit(low: dict[str, Any] | None) -> str:
    """'; 2 entries stored low-bit in 12.2 KiB, 28.1 KiB less than float32 (30%)'."""
    if not low:
        return ""
    n = low["entries"]
    return (f"; {n} entr{'ies' if n != 1 else 'y'} stored low-bit in "
            f"{human_bytes(low['bytes_stored'], exact=False)} instead of "
            f"{human_bytes(low['bytes_float32'], exact=False)} as float32: "
            f"{human_bytes(low['bytes_saved'], exact=False)} saved")


def scheduler_line(s: dict[str, Any]) -> Text:
    text = Text("scheduler ", style="bold")
    text.append(f"{s['kind']} at {s['location']}: last_epoch {fmt(s['last_epoch'])}, "
                f"last lr {fmt(s['last_lr'])}, base lrs {fmt(s['base_lrs'])}")
    if s["settings"]:
        text.append("  (" + ", ".join(f"{k}={fmt(v)}" for k, v in s["settings"].items()) + ")",
                    style="dim")
    return text


def inspect_view(report: dict[str, Any], max_params: int = MAX_PARAMS_SHOWN) -> Group:
    """The whole report, at any console width (tables too wide fold into ``header: value``
    lines). Tables show the first ``max_params`` parameters (0: all); the report itself
    keeps every one."""
    parts: list[Any] = [header(report)]
    if report["param_groups"]:
        parts.append(groups_table(report["param_groups"]))
    hidden = 0
    if 0 < max_params < len(report["params"]):
        hidden = len(report["params"]) - max_params
        report = {**report, "params": report["params"][:max_params]}
    if report["params"]:
        parts.append(structure_table(report))
        stats = stats_table(report)
        if stats is not None:
            parts.append(stats)
            over_storage = storage_section(report)
            if over_storage is not None:
                parts.append(over_storage)
        from optstate.render.histogram import histogram_table  # inspect --hist

        hist = histogram_table(report)
        if hist is not None:
            parts.append(hist)
    elif report["selection"]["params"] is not None:
        parts.append(Text("(no parameter matches the selection)", style="dim"))
    stored = stored_section(report)
    if stored is not None:
        parts.append(stored)
    values = values_section(report)
    if values is not None:
        parts.append(values)
    if hidden:
        parts.append(Text(f"… {hidden} more param{'s' * (hidden != 1)} not shown (--max-params "
                          "0 shows all; --param / --group focus; --json has every one). "
                          "Totals and warnings below cover all.", style="dim"))
    parts.append(totals_line(report))
    if report["scheduler"]:
        parts.append(scheduler_line(report["scheduler"]))
    if not report["stats"]:
        parts.append(Text("--no-stats: structure only, tensor data not read", style="dim"))
    for line in (read_line(report["file"]), reader_line(report["file"])):
        if line is not None:
            parts.append(line)
    for w in report["warnings"]:
        parts.append(Hanging(Text.assemble(("warning ", "bold yellow"),
                                           (f"[{w['code']}] ", "yellow"), w["message"]), 8))
    for n in report["notes"]:
        parts.append(Hanging(Text.assemble(("note ", "bold"), (f"[{n['code']}] ", "dim"),
                                           n["message"]), 5))
    return Group(*parts)
