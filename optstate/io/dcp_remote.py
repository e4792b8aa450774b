"""A DCP folder in object storage (``s3://bucket/run/step_1000/``), read by range requests.

The folder is listed once (its files and their sizes: ``total_bytes``, and what
``dcp_metadata.storage_files`` checks the storage table against); ``.metadata`` is read
through ``remote.RemoteFile`` and goes through the same checks as a local one
(``dcp_metadata.parse_metadata``). Data is read by torch's own engine exactly as for a
local folder (``dcp.DcpCheckpoint``: ``dcp.load`` with ``SafeLoadPlanner``); only where
the bytes come from differs: ``RangeReader._slice_file`` fetches each stored item (a
value, or a tensor chunk: torch.save bytes) with one exact range request, counted in the
``ReadStats``, pre-scans it and hands torch the bytes in memory. The many small items read
together (the non-tensor values, the 0-d step counts) are fetched first, one request per
run of adjacent items, a few requests in flight at once (``prefetch``): ``--no-stats``
reads ``.metadata``, the values and the step counts, never a tensor chunk with data.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from optstate.base.errors import CheckpointError
from optstate.base.limits import LimitError, size_text
from optstate.base.limits import current as current_limits
from optstate.io.dcp_metadata import METADATA_FILE, parse_metadata, short_repr
from optstate.io.dcp_reader import SafeFileSystemReader
from optstate.io.remote import ReadStats, RemoteFile, RemotePath, display
from optstate.io.torch_file import prescan_bytes

# adjacent small items are fetched together, up to this many bytes per request
MERGE_LIMIT = 16 << 20
# requests in flight at once for runs of small items
PARALLEL = 8
# .metadata is refused from its listed size, before it is fetched, above this many bytes
# per ``limits.items`` (its keys and chunks are counted against ``items`` once unpickled;
# one pickled chunk entry is well under 256 bytes): 256 MB with the default limits
METADATA_BYTES_PER_ITEM = 256

# the files of listed folders, tied to the version the listing saw (ETag / VersionId):
# every range read of them asks for that version
_PINNED: dict[str, RemotePath] = {}


def list_folder(folder: RemotePath) -> dict[str, int]:
    """The files directly in ``folder`` and their sizes: one listing (retried, at most
    ``limits.items`` entries); each file is pinned to the version listed (``pinned``)."""
    out: dict[str, int] = {}
    for e in folder.listing():
        if e.get("type") == "file":
            name = posixpath.basename(str(e.get("name", "")).rstrip("/"))
            out[name] = int(e.get("size") or 0)
            path = (folder / name).pinned(e)
            _PINNED[path.url] = path
    return out


def pinned(folder: RemotePath, name: str) -> RemotePath:
    """``folder / name``, tied to the version its listing saw when there was one."""
    path = folder / name
    return _PINNED.get(path.url, path)


def read_remote_metadata(folder: RemotePath, sizes: dict[str, int], stats: ReadStats
                         ) -> Metadata:
    """``.metadata`` of a remote folder, read through ``RemoteFile``, checked as a local
    one is."""
    where = display(folder.url)
    if METADATA_FILE not in sizes:
        raise CheckpointError(f"{where} has no {METADATA_FILE} file; not a DCP checkpoint")
    items = current_limits().items
    if sizes[METADATA_FILE] > items * METADATA_BYTES_PER_ITEM:
        raise LimitError(f"{where}/{METADATA_FILE}",
                         f"is {size_text(sizes[METADATA_FILE])}, more than DCP metadata of "
                         f"{items:,} keys and chunks takes ({METADATA_BYTES_PER_ITEM} bytes "
                         "each); it was not fetched", "items", items)
    with RemoteFile(pinned(folder, METADATA_FILE), stats, size=sizes[METADATA_FILE]) as f:
        data = f.read()
    return parse_metadata(data, f"{where}/{METADATA_FILE}")


class _NoStreams(FileSystem):
    """torch's ``read_data`` opens each data file before slicing items out of it: here
    nothing is opened; ``RangeReader._slice_file`` fetches each item's bytes."""

    def concat_path(self, path: Any, suffix: str) -> Any:
        return suffix

    @contextlib.contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
        yield None


class RangeReader(SafeFileSystemReader):
    """``SafeFileSystemReader`` whose items come from exact range requests."""

    def __init__(self, folder: RemotePath, metadata: Metadata, stats: ReadStats) -> None:
        self.where = display(folder.url)
        super().__init__(self.where, metadata)  # the path only names it
        self.fs = _NoStreams()
        self.folder, self.stats = folder, stats
        self._names = {(info.relative_path, info.offset): index.fqn
                       for index, info in metadata.storage_data.items()}
        self._values = {k for k, v in metadata.state_dict_metadata.items()
                        if isinstance(v, BytesStorageMetadata)}
        self._held: dict[tuple[str, int], bytes] = {}

    def prefetch(self, infos: Iterable[Any]) -> None:
        """Fetch the stored items ``infos`` (``_StorageInfo``s), one request per run of
        adjacent ones in a file; ``_slice_file`` then takes them from memory."""
        by_file: dict[str, list[Any]] = {}
        for info in infos:
            if (info.relative_path, info.offset) not in self._held:
                by_file.setdefault(info.relative_path, []).append(info)
        runs: list[tuple[str, list[Any]]] = []
        for rel, items in by_file.items():
            items.sort(key=lambda i: i.offset)
            run: list[Any] = []
            for info in items:
                if run and (info.offset != run[-1].offset + run[-1].length
                            or info.offset + info.length - run[0].offset > MERGE_LIMIT):
                    runs.append((rel, run))
                    run = []
                run.append(info)
            if run:
                runs.append((rel, run))
        if len(runs) <= 1:
            for rel, run in runs:
                self._fetch(rel, run)
            return
        # dcp.save puts each param's step count between its moments: one run per param,
        # fetched a few at a time (latency, not bandwidth, is their cost)
        with ThreadPoolExecutor(min(PARALLEL, len(runs))) as pool:
            for f in [pool.submit(self._fetch, rel, run) for rel, run in runs]:
                f.result()

    def _fetch(self, rel: str, run: list[Any]) -> None:
        start = run[0].offset
        data = pinned(self.folder, rel).read_range(start, run[-1].offset + run[-1].length,
                                                   self.stats)
        for info in run:
            self._held[(rel, info.offset)] = data[info.offset - start:
                                                  info.offset - start + info.length]

    def _slice_file(self, file: Any, sinfo: Any) -> io.BytesIO:
        rel, offset = sinfo.relative_path, sinfo.offset
        data = self._held.pop((rel, offset), None)
        if data is None:
            data = pinned(self.folder, rel).read_range(offset, offset + sinfo.length,
                                                       self.stats)
        fqn = self._names.get((rel, offset), "?")
        if fqn not in self._values:  # (a value is pre-scanned by SafeLoadPlanner.load_bytes)
            # a tensor chunk: torch.save bytes, pre-scanned as a local chunk is
            prescan_bytes(data, f"{self.where}/{rel}: the chunk of {short_repr(fqn)}")
        return io.BytesIO(data)
