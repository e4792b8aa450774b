"""Reading torch.distributed.checkpoint (DCP) folders, safely and one tensor at a time.

A DCP checkpoint is a folder with a pickled ``.metadata`` file and one ``*.distcp`` file
per rank. The metadata lists every flattened key (``state.layer.weight.exp_avg``,
``param_groups.0.lr``), the global shape and dtype of each tensor, how it is split into
chunks across ranks, and (``planner_data``) the path of each key in the original nested
state dict. Opening a folder reads only that metadata and the small non-tensor values
(hyperparameters, ``params`` lists); each tensor becomes a ``LazyTensor`` whose data is
read, when something needs the numbers, by torch's own engine (``dcp.load`` with
``no_dist=True``: one process, no process group), one tensor at a time.

Two places where optstate does not use torch's defaults, on purpose:

- ``FileSystemReader.read_metadata`` runs ``pickle.load`` on ``.metadata`` and
  ``DefaultLoadPlanner.load_bytes`` runs ``torch.load(weights_only=False)`` on every
  non-tensor value: both execute code from a hostile checkpoint. ``SafeFileSystemReader``
  unpickles the metadata with an allow-list of the DCP metadata classes, and
  ``SafeLoadPlanner`` loads non-tensor values with ``weights_only=True``. Tensor data
  itself is already read with ``weights_only=True`` by torch.
- DCP flattening stores the path of a positional optimizer ``state`` (``{0: ..., 1: ...}``)
  with string keys ``'0'``, and torch's rebuild (``_traverse.set_element``) makes a list
  wherever a path has an integer. ``rebuild`` keeps dicts, turns ``0..n-1`` keyed dicts
  into lists only outside an optimizer's ``state``, and gives ``state`` back the integer
  keys its ``params`` lists name, so the folder reads back as the state that was saved.

A folder from a stranger reads only itself and costs what it stores (``limits.py``):
every file it names, and ``.metadata``, must resolve to a regular file directly inside it
(``inside``); ``.metadata`` is scanned before it is unpickled (``prescan.scan_any``), then
its keys, paths, shapes and chunks are checked against the limits; a chunk that claims
more data than it stores (an expanded view) is refused before anything is read; values
and chunks pass the torch.save pre-scan before torch.load reads them, and values are
walked before the nested state is rebuilt from them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

from optstate.base.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from optstate.base.limits import LimitError, Limits, size_text
from optstate.base.limits import current as current_limits
from optstate.io.lazy import LazyTensor
from optstate.io.prescan import scan_any
from optstate.io.torch_file import prescan_bytes, prescan_stream
from optstate.io.walk import walk

METADATA_FILE = ".metadata"

# The classes a DCP .metadata pickle is made of (torch 2.4 .. 2.13).
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; refuses any global that is not plain metadata."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name}")


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it is a regular file that really lives in
    ``folder``: a DCP folder from a stranger must not make optstate read (and ``convert``
    copy) a file elsewhere through a symlink or a ``..`` in its metadata."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeCheckpointError(f"{folder} names a data file outside itself: {name!r}; "
                                    "refused")
    path = folder / name
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.dirname(real) != real_folder:
        raise UnsafeCheckpointError(
            f"{path} is a link to {real}, outside the checkpoint folder; refused",
            hint="a DCP folder holds its own files; copy the real files into it if you trust "
            "them",
        )
    return path


def read_metadata(path: Path) -> Metadata:
    """The ``.metadata`` of a DCP folder, unpickled with the allow-list above."""
    file = path / METADATA_FILE
    try:
        if os.path.lexists(file):
            inside(path, METADATA_FILE)
        with open(file, "rb") as f:
            data = f.read()
        scan_any(data, current_limits(), str(file))  # before the C unpickler's memo grows
        md = _MetadataUnpickler(io.BytesIO(data)).load()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path} has no {METADATA_FILE} file; not a DCP checkpoint") from None
    except PermissionError:
        raise CheckpointError(f"permission denied reading {file}") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        if text.startswith("global "):
            raise UnsafeCheckpointError(
                f"{file} needs {text.removeprefix('global ')}, which is not DCP metadata; "
                "refused without running it"
            ) from None
        raise CheckpointError(f"{file} is damaged: {text}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, RecursionError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{file} is damaged or truncated ({type(e).__name__})") from None
    if not isinstance(md, Metadata) or not isinstance(
            getattr(md, "state_dict_metadata", None), dict):
        raise CheckpointError(f"{file} does not hold DCP metadata")
    limits = current_limits()
    entries = md.state_dict_metadata
    if len(entries) > limits.items:
        raise LimitError(str(file), f"lists more than {limits.items:,} keys", "items",
                         limits.items)
    tensors = chunks = 0
    for key, entry in entries.items():
        _check_entry(file, key, entry, limits)
        if isinstance(entry, TensorStorageMetadata):
            tensors += 1
            chunks += len(entry.chunks)
    if tensors > limits.tensors:
        raise LimitError(str(file), f"lists more than {limits.tensors:,} tensors", "tensors",
                         limits.tensors)
    if chunks > limits.items:
        raise LimitError(str(file), f"lists more than {limits.items:,} tensor chunks",
                         "items", limits.items)
    _check_paths(file, md, limits)
    return md


def _check_paths(file: Path, md: Metadata, limits: Limits) -> None:
    """The nested path of every key (``planner_data``): as deep as the ``depth`` limit
    allows, made of short strings and indices."""
    pd = getattr(md, "planner_data", None)
    if not isinstance(pd, dict):
        return
    for key, path in pd.items():
        if not isinstance(path, tuple):
            continue
        if len(path) > limits.depth:
            raise LimitError(f"{file}: the path of key {_short(key)}",
                             f"is {len(path):,} levels deep", "depth", limits.depth)
        for part in path:
            if isinstance(part, str) and len(part) > limits.string:
                raise LimitError(f"{file}: the path of key {_short(key)}",
                                 f"has a part of {len(part):,} characters", "string",
                                 limits.string)


def _short(key: Any, limit: int = 80) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# torch counts elements and bytes in int64: a shape past this is damage, not a tensor
_MAX_ELEMENTS = 2**62


def _check_entry(file: Path, key: Any, entry: Any, limits: Limits) -> None:
    """Metadata a torch-written checkpoint always satisfies; anything else is damage (or
    a crafted file) and gets one line, not an internal error later."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file} is damaged: key {_short(key)} {what}")

    if not isinstance(key, str):
        raise bad("is not a string")
    if len(key) > limits.string:
        raise LimitError(str(file), f"has a key of {len(key):,} characters ({_short(key)})",
                         "string", limits.string)
    if isinstance(entry, BytesStorageMetadata):
        return
    if not isinstance(entry, TensorStorageMetadata):
        raise bad(f"has unknown metadata {type(entry).__name__}")
    size = getattr(entry, "size", None)
    if not isinstance(size, tuple) or not all(_is_index(n) for n in size):
        raise bad(f"has a bad shape {_short(size)}")
    if len(size) > limits.depth:
        raise LimitError(f"{file}: key {_short(key)}", f"has {len(size):,} dimensions",
                         "depth", limits.depth)
    if math.prod(size) > _MAX_ELEMENTS:
        raise bad(f"has a shape of {math.prod(size):,} elements, more than torch can count "
                  f"(shape {_short(list(size))})")
    if not isinstance(getattr(getattr(entry, "properties", None), "dtype", None), torch.dtype):
        raise bad("has no dtype")
    if not isinstance(getattr(entry, "chunks", None), list):
        raise bad("has no chunk list")
    for c in entry.chunks:
        offsets, sizes = getattr(c, "offsets", None), getattr(c, "sizes", None)
        if not (isinstance(offsets, tuple) and isinstance(sizes, tuple)
                and len(offsets) == len(sizes) == len(size)
                and all(_is_index(o) and _is_index(n) and o + n <= whole
                        for o, n, whole in zip(offsets, sizes, size, strict=True))):
            raise bad(f"has a chunk outside its shape {list(size)}")
    if len(entry.chunks) > limits.items:
        raise LimitError(f"{file}: key {_short(key)}", f"has {len(entry.chunks):,} chunks",
                         "items", limits.items)
    if sum(math.prod(c.sizes) for c in entry.chunks) != math.prod(size):
        raise bad(f"has chunks that do not cover its shape {_short(list(size))}")


class SafeFileSystemReader(FileSystemReader):
    """torch's FileSystemReader with safe (allow-listed, cached) metadata reading."""

    def __init__(self, path: str | os.PathLike, metadata: Metadata | None = None) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError("per-rank DCP metadata files are not supported")
        if self._metadata is None:
            self._metadata = read_metadata(Path(self.path))
        return self._metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor values load with ``weights_only=True``."""

    folder: Path | None = None  # for messages

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        prescan_bytes(value.getvalue(), f"{self.folder}: the value {_short(fqn)}")
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
    """An open DCP folder: metadata now, tensors on demand (one cached at a time; the
    0-d scalars all together)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.reader = SafeFileSystemReader(self.path, self.metadata)
        self._chunk_infos: dict[str, list[Any]] = {}  # tensor key -> its chunks' _StorageInfo
        self._files = self._storage_files()
        self._cached: tuple[str, torch.Tensor] | None = None
        self._scalars: dict[str, torch.Tensor] | None = None

    def _storage_files(self) -> dict[tuple[str, Any], str]:
        """Chunk (key, offset) -> data file name; every named file must exist."""
        out: dict[tuple[str, Any], str] = {}
        storage = getattr(self.metadata, "storage_data", None)
        if not isinstance(storage, dict):
            raise CheckpointError(f"{self.path}/{METADATA_FILE} has no storage table")
        missing: set[str] = set()
        sizes: dict[str, int] = {}
        lengths: dict[tuple[str, Any], int] = {}
        for index, info in storage.items():
            if not (isinstance(getattr(index, "fqn", None), str)
                    and (index.offset is None or isinstance(index.offset, tuple))):
                raise CheckpointError(f"{self.path}/{METADATA_FILE} is damaged: a bad "
                                      "storage index")
            rel = getattr(info, "relative_path", None)
            if not isinstance(rel, str) or "/" in rel or rel in ("", ".", ".."):
                raise CheckpointError(f"{self.path}/{METADATA_FILE} names a bad data file: {rel!r}")
            if rel not in sizes:
                f = self.path / rel
                if os.path.lexists(f):
                    inside(self.path, rel)
                sizes[rel] = f.stat().st_size if f.is_file() else -1
            if sizes[rel] < 0:
                missing.add(rel)
            elif not (_is_index(getattr(info, "offset", None))
                      and _is_index(getattr(info, "length", None))
                      and info.offset + info.length <= sizes[rel]):
                raise CheckpointError(
                    f"{self.path}/{rel} is truncated: it ends before the data of {index.fqn}",
                    hint="re-copy the checkpoint folder",
                )
            where = (index.fqn, tuple(index.offset) if index.offset is not None else None)
            out[where] = rel
            if index.offset is not None:
                self._chunk_infos.setdefault(index.fqn, []).append(info)
            lengths[where] = info.length if _is_index(getattr(info, "length", None)) else 0
        if missing:
            names = sorted(missing)
            raise CheckpointError(
                f"{self.path} is an incomplete DCP checkpoint: {', '.join(names[:3])}"
                + (f" and {len(names) - 3} more" if len(names) > 3 else "") + " missing",
                hint="copy every *.distcp file of the checkpoint, not only some ranks'",
            )
        for key, entry in self.metadata.state_dict_metadata.items():
            if isinstance(entry, TensorStorageMetadata):
                if any((key, tuple(c.offsets)) not in out for c in entry.chunks):
                    raise CheckpointError(
                        f"{self.path}/{METADATA_FILE} is damaged: a chunk of {key} has no data")
            elif (key, None) not in out:
                raise CheckpointError(
                    f"{self.path}/{METADATA_FILE} is damaged: the value {key} has no data")
        self._check_expansion(lengths)
        return out

    def _check_expansion(self, lengths: dict[tuple[str, Any], int]) -> None:
        """Each chunk is read whole into a tensor of the shape the metadata gives it. A
        chunk stored as a view (a 2 KB ``torch.zeros(1).expand(2**30)``) would become
        gigabytes: chunks may add at most the ``expand`` limit to the bytes stored."""
        limit = current_limits().expand
        extra, worst = 0, None
        for key, entry in self.metadata.state_dict_metadata.items():
            if not isinstance(entry, TensorStorageMetadata):
                continue
            itemsize = entry.properties.dtype.itemsize
            for c in entry.chunks:
                claimed = math.prod(c.sizes) * itemsize
                stored = lengths.get((key, tuple(c.offsets)), 0)
                if claimed > stored:
                    extra += claimed - stored
                    if worst is None or claimed - stored > worst[1] - worst[2]:
                        worst = (key, claimed, stored)
        if extra > limit and worst is not None:
            key, claimed, stored = worst
            raise LimitError(
                str(self.path),
                f"has tensor chunks that claim more data than they store ({key}: "
                f"{claimed:,} bytes from {stored:,} stored); reading them would add "
                f"{size_text(extra)}", "expand", limit)

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
                isinstance(p, str) or _is_index(p) for p in path):
            return path
        return (key,)

    # ------------------------------------------------------------------ data

    def load_tensor(self, key: str) -> torch.Tensor:
        """The whole tensor ``key`` (all its chunks), through ``dcp.load`` in this process."""
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise CheckpointError(f"{self.path} has no tensor {key!r}")
        if len(md.size) == 0:
            return self._scalar(key)
        self._scan_chunks([key])
        target = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        sd = {key: target}
        self._load(sd, f"tensor {key}")
        self._cached = (key, sd[key])
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
            self._load(sd, "scalar tensors (step counts)")
            self._scalars = sd
        return self._scalars[key]

    def _scan_chunks(self, keys: list[str]) -> None:
        """Each stored chunk is torch.save bytes that torch.load reads: they pass the
        pickle pre-scan first (limits), one small read of each chunk's zip directory."""
        by_file: dict[str, list[tuple[str, Any]]] = {}
        for fqn in keys:
            for info in self._chunk_infos.get(fqn, ()):
                by_file.setdefault(info.relative_path, []).append((fqn, info))
        for rel, chunks in by_file.items():
            with open(inside(self.path, rel), "rb") as f:
                for fqn, info in chunks:
                    prescan_stream(_Range(f, info.offset, info.length), info.length,
                                   f"{self.path / rel}: the chunk of {_short(fqn)}")

    def load_values(self, keys: list[str]) -> dict[str, Any]:
        """The non-tensor values (hyperparameters, lists) of ``keys``, loaded safely."""
        if not keys:
            return {}
        sd: dict[str, Any] = {k: 0 for k in keys}  # placeholders, replaced by load_bytes
        self._load(sd, "hyperparameters")
        return sd

    def _load(self, sd: dict[str, Any], what: str) -> None:
        planner = SafeLoadPlanner(allow_partial_load=False)
        planner.folder = self.path
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
                    f"{self.path}: the {what} need {m.group(1)}, which safe loading does not "
                    "allow; refused without running it"
                ) from None
            m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            raise CheckpointError(
                f"cannot read the {what} from {self.path}: "
                f"{m.group(1).strip() if m else _first_line(cause)}",
                hint="the checkpoint's data files are damaged or truncated",
            ) from None

    def lazy(self, key: str) -> LazyTensor:
        md = self.metadata.state_dict_metadata[key]
        assert isinstance(md, TensorStorageMetadata)
        return LazyTensor(
            tuple(md.size), md.properties.dtype, lambda: self.load_tensor(key),
            info={"dcp_key": key, "chunks": [c.to_dict() for c in self.chunks(key)]},
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
            walk(value, label=f"{self.path}: the value {_short(key)}",
                 max_depth=limits.depth, max_nodes=limits.nodes)
        loaded = {id(v) for v in values.values() if isinstance(v, (dict, list, tuple))}
        root: dict[Any, Any] = {}
        for key, meta in md.items():
            value = self.lazy(key) if isinstance(meta, TensorStorageMetadata) else values[key]
            node = root
            path = self.path_of(key)
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[path[-1]] = value
        try:
            return _restore_positions(_lists_back(root, skip=loaded), loaded)
        except RecursionError:  # only with the depth limit raised past Python's stack
            raise CheckpointError(f"{self.path} nests its keys too deeply to read "
                                  f"(limit depth={limits.depth})") from None

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir()
                   if f.is_file() and not f.is_symlink())


def _lists_back(node: Any, parent: dict[Any, Any] | None = None, key: Any = None,
               skip: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    """Turn dicts keyed exactly 0..n-1 back into lists (param_groups), except an optimizer's
    ``state``, which torch keys by position in a dict. Values loaded whole (``skip``: by
    id) came back with their types and are left alone."""
    if not isinstance(node, dict) or id(node) in skip:
        return node
    for k in list(node):
        node[k] = _lists_back(node[k], node, k, skip)
    is_opt_state = key == "state" and parent is not None and "param_groups" in parent
    if node and not is_opt_state and list(node) == list(range(len(node))):
        return [node[i] for i in range(len(node))]
    return node


def _restore_positions(node: Any, skip: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    """DCP flattening writes an optimizer's positional state keys (0, 1, ...) as strings;
    the ``params`` lists (stored whole, types intact) say which keys were integers. And it
    drops empty containers, so an optimizer that has not stepped loses ``state: {}``.
    Values loaded whole (``skip``) are not entered."""
    if id(node) in skip:
        return node
    if isinstance(node, dict):
        for k in list(node):
            node[k] = _restore_positions(node[k], skip)
        state, groups = node.get("state"), node.get("param_groups")
        if state is None and "state" not in node and isinstance(groups, list) and groups and all(
            isinstance(g, dict) and "params" in g for g in groups
        ):
            # DCP stores no empty containers: a fresh optimizer's empty state vanishes.
            node = {"state": {}, **node}
        elif isinstance(state, dict) and isinstance(groups, list):
            ints = {str(p): p for g in groups if isinstance(g, dict)
                    for p in (g.get("params") or []) if isinstance(p, int)}
            if ints and all(isinstance(k, str) and k in ints for k in state):
                node["state"] = {ints[k]: v for k, v in state.items()}
    elif isinstance(node, list):
        return [_restore_positions(v, skip) for v in node]
    return node


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


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def is_dcp_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


def open_dcp(path: str | Path) -> DcpCheckpoint:
    return DcpCheckpoint(path)


def open_dcp_source(path: str | Path) -> Any:
    """A ``Source`` for a DCP folder (the object tree holds ``LazyTensor``s)."""
    from optstate.io.source import Source

    ckpt = DcpCheckpoint(path)
    p = Path(path)
    return Source(path=p, file=p, format="dcp", bytes=ckpt.total_bytes, obj=ckpt.rebuild())


def chunk_layout(obj: Any) -> dict[str, list[dict[str, Any]]]:
    """Flattened DCP key -> its chunks, for every lazy tensor in ``obj`` (verbose views)."""
    out: dict[str, list[dict[str, Any]]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, LazyTensor) and "dcp_key" in node.info:
            out[node.info["dcp_key"]] = node.info["chunks"]
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(obj)
    return out


_RANK_FILE = re.compile(r"__(\d+)_\d+\.distcp")


def layout_report(path: str | Path) -> dict[str, Any]:
    """How every tensor of the DCP folder ``path`` is stored: its chunks (offsets and
    sizes within the whole tensor) and the file, hence the rank, each chunk is in. Reads
    only the metadata. Plain data (the ``layout`` section of ``inspect --layout``)."""
    if not is_dcp_folder(path):
        raise ConfigError(
            f"--layout describes DCP checkpoint folders; {path} is not one (no {METADATA_FILE})",
            hint="a torch.save file is one piece: drop --layout",
        )
    ckpt = DcpCheckpoint(path)
    files: dict[str, int] = {}
    for f in sorted(ckpt.path.iterdir()):
        if f.is_file() and not f.is_symlink() and f.name != METADATA_FILE:
            files[f.name] = f.stat().st_size
    tensors = []
    for key in ckpt.tensor_keys():
        md = ckpt.metadata.state_dict_metadata[key]
        chunks = []
        for c in ckpt.chunks(key):
            m = _RANK_FILE.fullmatch(c.file or "")
            chunks.append({**c.to_dict(), "rank": int(m.group(1)) if m else None})
        tensors.append({
            "key": key,
            "path": [p if isinstance(p, (int, str)) else str(p) for p in ckpt.path_of(key)],
            "shape": list(md.size),
            "dtype": str(md.properties.dtype).removeprefix("torch."),
            "chunks": chunks,
        })
    ranks = sorted({c["rank"] for t in tensors for c in t["chunks"] if c["rank"] is not None})
    return {"format": "dcp", "files": files, "ranks": ranks, "tensors": tensors}
