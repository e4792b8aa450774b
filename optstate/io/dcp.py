"""Reading the data of torch.distributed.checkpoint (DCP) folders, one tensor at a time.

Opening a folder (``DcpCheckpoint``) reads only its metadata, checked first
(``dcp_metadata.py``), and the small non-tensor values (hyperparameters, ``params``
lists); each tensor becomes a ``LazyTensor`` whose data is read, when something needs
the numbers, by torch's own engine (``dcp.load`` with ``no_dist=True``: one process, no
process group), one tensor at a time. ``source.open_source`` is how the rest of optstate
opens a DCP folder (with the same ``walk`` as every other read).

Two places where optstate does not use torch's defaults, on purpose:

- ``DefaultLoadPlanner.load_bytes`` runs ``torch.load(weights_only=False)`` on every
  non-tensor value, which executes code from a hostile checkpoint: ``SafeLoadPlanner``
  loads them with ``weights_only=True``, after the torch.save pre-scan. Tensor data itself
  is read with ``weights_only=True`` by torch, each chunk pre-scanned first.
- DCP flattening stores the path of a positional optimizer ``state`` (``{0: ..., 1: ...}``)
  with string keys ``'0'``, and torch's rebuild (``_traverse.set_element``) makes a list
  wherever a path has an integer. ``rebuild`` keeps dicts, turns ``0..n-1`` keyed dicts
  into lists only outside an optimizer's ``state``, and gives ``state`` back the integer
  keys its ``params`` lists name, so the folder reads back as the state that was saved.
  Values are walked before the nested state is rebuilt from them.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

from optstate.base.errors import CheckpointError, UnsafeCheckpointError
from optstate.base.limits import current as current_limits
from optstate.io.dcp_metadata import (
    inside,
    is_index,
    read_metadata,
    short_repr,
    storage_files,
)
from optstate.io.dcp_reader import SafeFileSystemReader
from optstate.io.dcp_tree import rebuild_tree
from optstate.io.lazy import KEPT, LazyTensor
from optstate.io.torch_file import clean_message, prescan_bytes, prescan_stream
from optstate.io.walk import walk

if TYPE_CHECKING:
    from optstate.io.remote import ReadStats, RemotePath


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor values load with ``weights_only=True``."""

    folder: str | None = None  # for messages

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        prescan_bytes(value.getvalue(), f"{self.folder}: the value {short_repr(fqn)}")
        obj = torch.load(value, map_location="cpu", weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    # dcp.load(no_dist=True) warns that no process group exists: that is the point here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Range(io.RawIOBase):
    """Bytes ``start .. start + length`` of the open file ``f``, as a seekable file."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._length - self._pos)
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the whole, and in which file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"offsets": list(self.offsets), "sizes": list(self.sizes), "file": self.file}


class DcpCheckpoint:
    """An open DCP folder: metadata now, tensors on demand (the last ``lazy.KEPT`` kept; the
    0-d scalars all together)."""

    def __init__(self, path: str | Path | RemotePath, *, read: ReadStats | None = None
                 ) -> None:
        self._sizes: dict[str, int] | None = None
        self.read: ReadStats | None = None  # what was fetched (a folder in object storage)
        if not hasattr(path, "read_range"):  # (a RemotePath is PathLike, refusing to be one)
            self.path: Path | RemotePath = Path(path)
            self.where = str(self.path)
            self.metadata = read_metadata(self.path)
            self.reader: SafeFileSystemReader = SafeFileSystemReader(self.path, self.metadata)
        else:  # a RemotePath: the same reading, its bytes by range requests (dcp_remote)
            from optstate.io.dcp_remote import RangeReader, list_folder, read_remote_metadata
            from optstate.io.remote import ReadStats, display

            self.path, self.where = path, display(path.url)
            self.read = read if read is not None else ReadStats()
            self._sizes = list_folder(path)
            self.read.bytes_total = sum(self._sizes.values())
            self.metadata = read_remote_metadata(path, self._sizes, self.read)
            self.reader = RangeReader(path, self.metadata, self.read)
        # chunk (key, offset) -> data file; tensor key -> its chunks' _StorageInfo
        self._files, self._chunk_infos = storage_files(self.path, self.metadata,
                                                       sizes=self._sizes, where=self.where)
        self._cached: OrderedDict[str, torch.Tensor] = OrderedDict()  # the last KEPT loaded
        self._scalars: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ structure

    def keys(self) -> list[str]:
        return list(self.metadata.state_dict_metadata)

    def tensor_keys(self) -> list[str]:
        return [k for k, v in self.metadata.state_dict_metadata.items()
                if isinstance(v, TensorStorageMetadata)]

    def chunks(self, key: str) -> list[Chunk]:
        """How the tensor ``key`` is split into stored chunks (one per rank with FSDP)."""
        md = self.metadata.state_dict_metadata[key]
        if not isinstance(md, TensorStorageMetadata):
            return []
        return [
            Chunk(tuple(c.offsets), tuple(c.sizes), self._files.get((key, tuple(c.offsets))))
            for c in md.chunks
        ]

    def path_of(self, key: str) -> tuple[Any, ...]:
        """Where ``key`` sits in the original nested state dict."""
        pd = getattr(self.metadata, "planner_data", None)
        path = pd.get(key) if isinstance(pd, dict) else None
        if isinstance(path, tuple) and path and all(
                isinstance(p, str) or is_index(p) for p in path):
            return path
        return (key,)

    # ------------------------------------------------------------------ data

    def load_tensor(self, key: str) -> torch.Tensor:
        """The whole tensor ``key`` (all its chunks), through ``dcp.load`` in this process."""
        if key in self._cached:
            self._cached.move_to_end(key)
            return self._cached[key]
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise CheckpointError(f"{self.where} has no tensor {key!r}")
        if len(md.size) == 0:
            return self._scalar(key)
        self._scan_chunks([key])
        target = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        sd = {key: target}
        self._load(sd, f"tensor {key}")
        self._cached[key] = sd[key]
        while len(self._cached) > KEPT:  # a param's moments, looked at again (io/lazy.KEPT)
            self._cached.popitem(last=False)
        return sd[key]

    def _scalar(self, key: str) -> torch.Tensor:
        """0-d tensors (``step``: one per parameter) are read together, in one call, the
        first time one is needed: a few bytes each, and one ``dcp.load`` per parameter
        would cost more than the rest of a ``--no-stats`` inspect."""
        if self._scalars is None:
            sd = {k: torch.empty((), dtype=v.properties.dtype)
                  for k, v in self.metadata.state_dict_metadata.items()
                  if isinstance(v, TensorStorageMetadata) and len(v.size) == 0}
            self._scan_chunks(list(sd))
            self._prefetch(list(sd))  # a few bytes each: one request per run of them
            self._load(sd, "scalar tensors (step counts)")
            self._scalars = sd
        return self._scalars[key]

    def _scan_chunks(self, keys: list[str]) -> None:
        """Each stored chunk is torch.save bytes that torch.load reads: they pass the
        pickle pre-scan first (limits), one small read of each chunk's zip directory. (In
        object storage each chunk is pre-scanned as it arrives: ``dcp_remote``.)"""
        if not isinstance(self.path, Path):
            return
        by_file: dict[str, list[tuple[str, Any]]] = {}
        for fqn in keys:
            for info in self._chunk_infos.get(fqn, ()):
                by_file.setdefault(info.relative_path, []).append((fqn, info))
        for rel, chunks in by_file.items():
            with open(inside(self.path, rel), "rb") as f:
                for fqn, info in chunks:
                    prescan_stream(_Range(f, info.offset, info.length), info.length,
                                   f"{self.where}/{rel}: the chunk of {short_repr(fqn)}")

    def load_values(self, keys: list[str]) -> dict[str, Any]:
        """The non-tensor values (hyperparameters, lists) of ``keys``, loaded safely."""
        if not keys:
            return {}
        sd: dict[str, Any] = {k: 0 for k in keys}  # placeholders, replaced by load_bytes
        self._prefetch(keys)
        self._load(sd, "hyperparameters")
        return sd

    def _load(self, sd: dict[str, Any], what: str) -> None:
        planner = SafeLoadPlanner(allow_partial_load=False)
        planner.folder = self.where
        try:
            with _quiet_torch():
                dcp.load(sd, storage_reader=self.reader, planner=planner, no_dist=True)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            cause = _root_cause(e)
            if isinstance(cause, CheckpointError):
                raise cause from None
            text = str(cause)
            m = re.search(r"GLOBAL\s+([\w.]+)", text)
            if m:
                raise UnsafeCheckpointError(
                    f"{self.where}: the {what} need {m.group(1)}, which safe loading does not "
                    "allow; refused without running it"
                ) from None
            m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            raise CheckpointError(
                f"cannot read the {what} from {self.where}: "
                f"{m.group(1).strip() if m else clean_message(cause)}",
                hint="the checkpoint's data files are damaged or truncated",
            ) from None

    def lazy(self, key: str) -> LazyTensor:
        md = self.metadata.state_dict_metadata[key]
        assert isinstance(md, TensorStorageMetadata)
        return LazyTensor(
            tuple(md.size), md.properties.dtype, lambda: self.load_tensor(key),
            info={"dcp_key": key, "chunks": [c.to_dict() for c in self.chunks(key)],
                  # a local folder: other ranks read the chunks one by one (analysis/ranks)
                  **({"dcp_folder": str(self.path)} if isinstance(self.path, Path) else {})},
        )

    def rebuild(self) -> dict[str, Any]:
        """The nested state dict: lazy tensors, real non-tensor values."""
        md = self.metadata.state_dict_metadata
        values = self.load_values([k for k, v in md.items()
                                   if isinstance(v, BytesStorageMetadata)])
        limits = current_limits()
        for key, value in values.items():
            # before anything walks it as a tree: a value can be a 'billion laughs' or
            # nest 100 000 deep
            walk(value, label=f"{self.where}: the value {short_repr(key)}",
                 max_depth=limits.depth, max_nodes=limits.nodes)
        return rebuild_tree(
            md, values, self.path_of,
            lambda key: self.lazy(key) if isinstance(md[key], TensorStorageMetadata)
            else values[key], limits.depth, self.where)

    def _prefetch(self, keys: list[str]) -> None:
        """In object storage, fetch the stored items of ``keys`` in a few requests."""
        prefetch = getattr(self.reader, "prefetch", None)
        if prefetch is not None:
            wanted = set(keys)
            prefetch(info for index, info in self.metadata.storage_data.items()
                     if index.fqn in wanted)

    @property
    def total_bytes(self) -> int:
        if self._sizes is not None:  # the one listing
            return sum(self._sizes.values())
        assert isinstance(self.path, Path)
        return sum(f.stat().st_size for f in self.path.iterdir()
                   if f.is_file() and not f.is_symlink())


def _root_cause(e: BaseException) -> BaseException:
    """The per-rank error a CheckpointException wraps (the first one)."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        if isinstance(inner, BaseException):
            return inner
        if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
            return inner[0]
    return e


def open_dcp(path: str | Path) -> DcpCheckpoint:
    return DcpCheckpoint(path)
