"""The zip container of a torch.save file, checked before torch unpickles anything.

torch.save (torch >= 1.6) writes an uncompressed zip archive: ``PREFIX/data.pkl`` (the
pickled structure) and one ``PREFIX/data/N`` record per storage. ``check_zip`` refuses
archives that are not plain checkpoints (TorchScript, duplicate or scattered members, zip
bombs); ``data_pkl`` reads the pickle as torch does, for the pre-scan; and
``mapped_storages_fit`` checks that memory-mapped storages lie inside their records
(torch's mmap path does not).
"""

from __future__ import annotations

import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError, UnsafeCheckpointError
from optstate.io.walk import WalkReport


@dataclass
class TorchZip:
    prefix: str
    sizes: dict[str, int]  # record name below the prefix -> uncompressed size
    compressed: bool
    data_pkl: zipfile.ZipInfo | None = None  # the record torch unpickles
    # record name below the prefix -> offset of its local header (the native reader's)
    headers: dict[str, int] = field(default_factory=dict)
    infos: list[zipfile.ZipInfo] = field(default_factory=list)  # the central directory


def check_zip(path: Path, f: Any, archive_size: int) -> TorchZip:
    """Refuse zip archives that are not plain torch checkpoints, before unpickling."""
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except Exception:  # BadZipFile, NotImplementedError (zip version), struct.error, ...
        raise CheckpointError(
            f"{path} is a damaged zip archive (truncated or corrupt)",
            hint="re-copy or re-save the checkpoint",
        ) from None
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        counts = Counter(names)  # not names.count per name: quadratic on a hostile zip
        dup = min(n for n, c in counts.items() if c > 1)
        raise UnsafeCheckpointError(
            f"{path} holds the member {dup!r} twice; different tools would read different "
            "contents, so optstate refuses it",
            hint="torch reads the first copy and Python's zipfile the last: a file built "
            "to show each a different checkpoint",
        )
    prefixes = {n.split("/", 1)[0] for n in names if "/" in n}
    bases = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in bases or any(b.startswith("code/") for b in bases):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint",
            hint="TorchScript archives hold code; load them with torch.jit.load if you trust them",
        )
    if "data.pkl" not in bases:
        raise CheckpointError(f"{path} is a zip archive but not a torch.save file (no data.pkl)")
    if len(prefixes) != 1 or any("/" not in n for n in names):
        raise UnsafeCheckpointError(
            f"{path} is a zip archive whose members are not all in one folder; torch.save "
            "writes one, and tools disagree on which to read, so optstate refuses it"
        )
    expanded = sum(i.file_size for i in infos)
    if expanded > _MAX_EXPANSION * archive_size + 2**20:
        raise UnsafeCheckpointError(
            f"{path} expands to {_human_bytes(expanded)} from {_human_bytes(archive_size)} "
            "(compressed members: a zip bomb); torch.save never compresses, so optstate "
            "refuses it"
        )
    prefix = next(iter(prefixes))
    return TorchZip(
        prefix=prefix,
        sizes={i.filename.split("/", 1)[1]: i.file_size for i in infos},
        compressed=any(i.compress_type != zipfile.ZIP_STORED for i in infos),
        data_pkl=next((i for i in infos if i.filename == f"{prefix}/data.pkl"), None),
        headers={i.filename.split("/", 1)[1]: i.header_offset for i in infos},
        infos=infos,
    )


# Uncompressed members may add up to this many times the archive size (torch.save
# stores everything uncompressed, so a real checkpoint is at 1x).
_MAX_EXPANSION = 2


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def data_pkl(p: Path, f: Any, zinfo: TorchZip) -> bytes:
    """The bytes of ``data.pkl`` as torch reads them: a stored record is read raw from
    its local header, like torch does (no CRC check: a wrong CRC must not hide the pickle
    from the scan); a compressed one through zipfile (members are at most 2x the file,
    ``check_zip``)."""
    info = zinfo.data_pkl
    try:
        if info is None:
            raise KeyError("data.pkl")
        if info.compress_type != zipfile.ZIP_STORED:
            with zipfile.ZipFile(f) as zf:
                return zf.read(info)
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len)
        return f.read(info.file_size)
    except Exception:  # BadZipFile, bad CRC, zlib.error, struct.error, ...
        raise CheckpointError(f"{p} is a damaged zip archive (its data.pkl cannot be read)",
                              hint="re-copy or re-save the checkpoint") from None


def mapped_storages_fit(f: Any, zinfo: TorchZip | None, walked: WalkReport) -> bool:
    """Whether every memory-mapped storage starts at a data record of the file and fits
    in it. All storages are slices of one mapping of the whole file, so their addresses
    differ from the records' file offsets by the mapping's base address; torch.save
    writes only records that some tensor uses, so the lowest address is the lowest
    record. Sparse tensors hold storages the walk does not see: read those files."""
    if walked.sparse_tensors:
        return False
    storages = walked.storages or {}
    if not storages:
        return True
    records: dict[int, int] = {}  # data offset in the file -> record size
    with zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if info.filename.split("/", 1)[-1].startswith("data/"):
                f.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                records[info.header_offset + 30 + name_len + extra_len] = info.file_size
    if not records:
        return False
    base = min(storages) - min(records)
    return all(records.get(ptr - base, -1) >= nbytes for ptr, nbytes in storages.items())
