"""torch.save files in remote storage, read by range requests: the structure first, tensor
data only when a statistic looks at it.

The checks are ``load_torch_file``'s (``torch_file.py``): the format, the zip's structure
(``check_zip``), the pre-scan of ``data.pkl``, then ``torch.load(weights_only=True)``, here
with ``map_location="meta"`` on a ``RemoteFile``: torch reads the zip's directory and the
pickle, and no storage data (each meta storage carries ``_checkpoint_offset``, the absolute
offset of its bytes in the file). Every meta tensor then becomes a ``LazyTensor`` whose
loader fetches exactly its storage's byte range (one request) and rebuilds the view
(``as_strided``). Each storage is checked to lie inside its zip record before anything is
fetched. The last two storages used stay in memory, and once reads go in file order the
next one is fetched in one background thread: at most three storages at once.

Each byte once: the structure (the zip's tail and directory, data.pkl and the other small
members) is fetched up front in two or three requests and kept for the whole load
(``StructureFile``), since torch, zipfile and the checks each read it again; small
storages (``step``s, scalars, small moments) are fetched together, concurrently, when the
first of them is needed (``StorageReader._fetch_small``), not one request after another.

Only the zip format (torch >= 1.6) is read remotely; a legacy file is refused with a hint
to copy it locally.

510 lines: the loading, the structure cache and the storage reader belong together
(each relies on the others' offsets and spans).
"""

from __future__ import annotations

import bisect
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.base.limits import current as current_limits
from optstate.io.inert import Inert, InertTensor
from optstate.io.lazy import KEPT, LazyTensor
from optstate.io.remote import ReadStats, RemoteFile, RemotePath, display
from optstate.io.torch_file import LoadedFile, _prescan, _torch_load, detect_format
from optstate.io.torch_zip import TorchZip, check_zip, data_pkl
from optstate.io.walk import walk

# Blocks of the ranged file while reading the structure: the small reads of torch and
# zipfile around the pickle and the zip directory (each read bigger than a block is one
# exact request), without pulling in 2 x 256 KiB of tensor data around them.
STRUCTURE_BLOCK = 8 << 10
# The structure (the zip's tail with its directory, then data.pkl and the other small
# members) is fetched once up front and kept for the whole load: the tail in one request
# (TAIL bytes, or from the directory's start when it is bigger), the members in as few as
# their places allow; none of it when it would exceed STRUCTURE_MAX (then the reads go
# through the block cache as before, and the limits refuse what they refuse).
TAIL = 64 << 10
STRUCTURE_MAX = 64 << 20
# Storages up to SMALL bytes (``step``s, scalars, a bias's moments) are fetched together
# when the first of their size class (up to TINY, up to SMALL) is needed: concurrently
# (FETCHERS requests in flight), neighbours less than GAP bytes apart in one request; and
# kept, up to SMALL_KEPT bytes in all.
TINY = 4 << 10
SMALL = 64 << 10
SMALL_KEPT = 16 << 20
GAP = 4 << 10
FETCHERS = 16


def not_remote_yet(url: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{display(url)} is {what}, which optstate does not read remotely yet",
        hint="copy it to a local folder first (e.g. aws s3 cp / gsutil cp / fsspec) and "
        "give the local path")


def load_remote_torch(rp: RemotePath, stats: ReadStats, *, unsafe: bool = False) -> LoadedFile:
    """Load a remote torch.save file safely: structure by range requests, tensors as
    ``LazyTensor``s read on first use; then ``walk`` it. Bytes are counted in ``stats``."""
    label = display(rp.url)
    size = rp.size()
    f = StructureFile(rp, stats, block=STRUCTURE_BLOCK, size=size)
    f.prefetch_structure()
    f.seek(0)
    fmt = detect_format(label, f.read(512))  # type: ignore[arg-type]
    if fmt != "zip":
        raise not_remote_yet(rp.url, "a torch.save file in the legacy (pre-1.6, non-zip) "
                             "format")
    zinfo = check_zip(label, f, size)  # type: ignore[arg-type]
    if zinfo.compressed:
        raise not_remote_yet(rp.url, "a zip archive with compressed members (torch.save "
                             "never compresses)")
    limits = current_limits()
    _prescan(label, f, zinfo, limits)  # type: ignore[arg-type]
    pickled = data_pkl(label, f, zinfo)  # type: ignore[arg-type]  (its blocks are cached)
    if b"_rebuild_sparse" in pickled or b"_rebuild_qtensor" in pickled:
        # rebuilt from their values, which a meta load does not have
        raise not_remote_yet(rp.url, "a file holding sparse or quantized tensors")
    _check_byteorder(rp, f, zinfo)
    f.seek(0)
    obj = _torch_load(label, fmt, f, False, unsafe, map_location="meta")  # type: ignore[arg-type]
    # the meta tree first: cycles, depth and size as a tree refused before we rebuild it
    walk(obj, label=label, max_depth=limits.depth, max_nodes=limits.nodes)
    records = _records(f, zinfo, size)
    reader = StorageReader(rp, stats, f)
    obj = _lazy_tree(obj, reader, records, label)
    walked = walk(obj, label=label, max_depth=limits.depth, max_nodes=limits.nodes)
    walked.storages = None
    return LoadedFile(path=label, format=fmt, bytes=size, obj=obj,  # type: ignore[arg-type]
                      walk=walked)


class StructureFile(RemoteFile):
    """A ``RemoteFile`` that also holds whole spans fetched up front (``prefetch_structure``:
    the zip's tail and directory, data.pkl and the other non-tensor members), so torch,
    zipfile and the checks here, which each read the directory and data.pkl again, fetch
    them once. A read inside a held span costs nothing; any other goes through the block
    cache."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spans: list[tuple[int, bytes]] = []  # (start, bytes), sorted, disjoint

    def _hold(self, start: int, data: bytes) -> None:
        if not data:
            return
        bisect.insort(self._spans, (start, data), key=lambda s: s[0])
        merged: list[tuple[int, bytes]] = []
        for s, d in self._spans:  # contiguous spans joined: a read may cross their border
            if merged and merged[-1][0] + len(merged[-1][1]) == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + d)
            else:
                merged.append((s, d))
        self._spans = merged

    def _held(self, start: int, end: int) -> bool:
        return any(s <= start and end <= s + len(d) for s, d in self._spans)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        end = min(start + len(view), self.length)
        for s, d in self._spans:
            if s <= start < s + len(d):
                n = min(end, s + len(d)) - start
                view[:n] = d[start - s:start + n - s]
                if start + n < end:  # the rest, exactly: a block would re-fetch held bytes
                    rest = self.path.read_range(start + n, end, self.stats)
                    view[n:end - start] = rest
                self._pos = end
                return end - start
        return super().readinto(buffer)

    def read_exact(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: the held ones from memory (a storage in the tail), only
        the others fetched, each gap in one range request."""
        out = []
        pos = start
        for s, d in self._spans:
            e = s + len(d)
            if e <= pos or s >= end:
                continue
            if s > pos:
                out.append(self.path.read_range(pos, s, self.stats))
                pos = s
            take = min(e, end)
            out.append(d[pos - s:take - s])
            pos = take
        if pos < end:
            out.append(self.path.read_range(pos, end, self.stats))
        return out[0] if len(out) == 1 else b"".join(out)

    def prefetch_structure(self) -> None:
        """The tail (end of central directory and the directory), then every non-``data/``
        member with its local header, each fetched once. Best effort: on anything
        unexpected (not a zip, a damaged one) it stops and the checks say what is wrong."""
        import struct
        import zipfile

        size = self.length
        tail_start = max(0, size - TAIL)
        self._hold(tail_start, self.path.read_range(tail_start, size, self.stats))
        tail = self._spans[-1][1] if self._spans else b""
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or i + 22 > len(tail):
            return
        _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[i:i + 22])
        j = tail.rfind(b"PK\x06\x06", 0, i)
        if (cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF) and j >= 0 and j + 56 <= len(tail):
            cd_size, cd_offset = struct.unpack("<2Q", tail[j + 40:j + 56])
        if not 0 <= cd_offset < tail_start:
            pass
        elif tail_start - cd_offset <= STRUCTURE_MAX:
            self._hold(cd_offset, self.path.read_range(cd_offset, tail_start, self.stats))
        else:
            return
        try:
            with zipfile.ZipFile(self) as zf:
                infos = sorted(zf.infolist(), key=lambda z: z.header_offset)
                directory = zf.start_dir if hasattr(zf, "start_dir") else cd_offset
        except Exception:  # damaged: check_zip says so
            return
        wanted: list[list[int]] = []
        first_data = True
        for k, info in enumerate(infos):
            start = info.header_offset
            room = infos[k + 1].header_offset if k + 1 < len(infos) else directory
            if info.filename.split("/", 1)[-1].startswith("data/"):
                if not first_data:
                    continue
                # torch reads the first tensor record's local header (30 bytes) to find
                # where the data starts, and places the others from it
                first_data = False
                end = min(start + 30, room, size)
            else:  # local header (30 bytes, the name, an extra field torch pads), data
                end = min(start + 30 + len(info.filename.encode()) + 128 + info.file_size,
                          room, size)
            if end <= start or self._held(start, end):
                continue
            if wanted and start - wanted[-1][1] <= GAP:
                wanted[-1][1] = max(wanted[-1][1], end)
            else:
                wanted.append([start, end])
        if sum(e - s for s, e in wanted) > STRUCTURE_MAX:
            return
        for s, e in wanted:
            for hs, hd in self._spans:  # never fetch a held byte twice
                if hs <= s < hs + len(hd):
                    s = hs + len(hd)
                if s < hs < e:
                    e = hs
            if s < e:
                self._hold(s, self.path.read_range(s, e, self.stats))


def _check_byteorder(rp: RemotePath, f: RemoteFile, zinfo: TorchZip) -> None:
    """Storages are rebuilt from their bytes as they are: little-endian files only."""
    import zipfile

    if "byteorder" not in zinfo.sizes:
        return
    with zipfile.ZipFile(f) as zf:
        order = zf.read(f"{zinfo.prefix}/byteorder").strip()
    if order != b"little":
        raise not_remote_yet(rp.url, f"saved {order.decode(errors='replace')}-endian")


def _records(f: RemoteFile, zinfo: TorchZip, size: int) -> list[tuple[int, int, int]]:
    """(first possible data offset, end of the room it has, size) of each ``data/`` record,
    from the zip directory already read: a record's data starts after its local header (30
    bytes and its name) and must end before the next member (or the directory) starts."""
    import zipfile

    with zipfile.ZipFile(f) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        directory = zf.start_dir if hasattr(zf, "start_dir") else size
    out = []
    for i, info in enumerate(infos):
        if not info.filename.split("/", 1)[-1].startswith("data/"):
            continue
        room_end = infos[i + 1].header_offset if i + 1 < len(infos) else directory
        start = info.header_offset + 30 + len(info.filename.encode())
        out.append((start, min(room_end, size), info.file_size))
    return out


def _fits(records: list[tuple[int, int, int]], offset: int, nbytes: int) -> bool:
    starts = [r[0] for r in records]
    i = bisect.bisect_right(starts, offset) - 1
    if i < 0:
        return False
    _, room_end, record_size = records[i]
    return nbytes <= record_size and offset + record_size <= room_end


def _lazy_tree(obj: Any, reader: StorageReader, records: list[tuple[int, int, int]],
               label: str) -> Any:
    """``obj`` with every meta tensor (in dicts, lists, tuples and inert objects) replaced
    by a LazyTensor reading its storage; a tensor met twice gives the same LazyTensor."""
    import torch

    done: dict[int, Any] = {}

    def lazy(t: Any) -> Any:
        if t.layout != torch.strided or t.is_quantized:
            raise not_remote_yet(label, "a file holding sparse or quantized tensors")
        st = t.untyped_storage()
        nbytes = st.nbytes()
        offset = getattr(st, "_checkpoint_offset", None)
        if nbytes and (offset is None or not _fits(records, int(offset), nbytes)):
            raise CheckpointError(f"{label} is damaged: a tensor's data lies outside its "
                                  "zip record", hint="re-copy or re-save the checkpoint")
        span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) \
            if t.numel() else 0
        if t.numel() and (t.storage_offset() + span) * t.element_size() > nbytes:
            raise CheckpointError(f"{label} is damaged: a tensor needs more bytes than its "
                                  "data holds", hint="re-copy or re-save the checkpoint")
        shape, stride, start, dtype = tuple(t.shape), t.stride(), t.storage_offset(), t.dtype
        if nbytes:
            reader.register(int(offset), nbytes)

        def load() -> torch.Tensor:
            if not nbytes:
                return torch.empty_strided(shape, stride, dtype=dtype)
            storage = reader.storage(int(offset), nbytes)
            flat = torch.empty(0, dtype=dtype)
            return flat.set_(storage, start, shape, stride)

        return LazyTensor(shape, dtype, load, {"offset": offset, "bytes": nbytes},
                          stride=stride)

    def visit(o: Any) -> Any:
        key = id(o)
        if key in done:
            return done[key]
        if isinstance(o, torch.Tensor):
            out = lazy(o) if o.is_meta else o
        elif isinstance(o, dict):
            done[key] = o
            for k, v in list(o.items()):
                new = visit(v)
                if new is not v:
                    o[k] = new
            out = o
        elif isinstance(o, list):
            done[key] = o
            for i, v in enumerate(o):
                new = visit(v)
                if new is not v:
                    o[i] = new
            out = o
        elif isinstance(o, tuple):
            items = [visit(v) for v in o]
            out = o
            if any(a is not b for a, b in zip(items, o, strict=True)):
                out = type(o)(*items) if hasattr(o, "_fields") else type(o)(items)
        elif isinstance(o, Inert):
            done[key] = o
            o.args = tuple(visit(v) for v in o.args)
            for k, v in list(o.state.items()):
                o.state[k] = visit(v)
            out = o
        elif isinstance(o, InertTensor):
            done[key] = o
            for k, v in list(o.state.items()):
                o.state[k] = visit(v)
            out = o
        else:
            out = o
        done[key] = out
        return out

    return visit(obj)  # depth bounded: the meta tree was walked (limits.depth)


class StorageReader:
    """The storages of one remote file, each fetched in one exact range request. The
    last ``KEPT`` used stay (views share them; a param's two moments are looked at again
    for underflowed elements and histograms), and small ones (``step``s, scalars: up to
    ``SMALL_KEPT`` bytes in all) stay, since structure and statistics both look at them.
    Once two storages were read one after the other in file order (statistics going
    through the tensors, not ``--no-stats`` reading the scalar ``step``s), the next one
    is fetched in a background thread meanwhile: at most three big ones in memory."""

    def __init__(self, rp: RemotePath, stats: ReadStats,
                 structure: StructureFile | None = None) -> None:
        self.rp = rp
        self.structure = structure  # spans already fetched: never fetched again
        self.stats = stats
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # offset -> bytes of every storage asked about
        self._offsets: list[int] = []
        self._recent: OrderedDict[int, Any] = OrderedDict()  # the last KEPT, oldest first
        self._small: dict[int, Any] = {}
        self._small_bytes = 0
        self._next: tuple[int, Future[Any]] | None = None

    def register(self, offset: int, nbytes: int) -> None:
        with self._lock:
            if offset not in self._sizes:
                self._sizes[offset] = nbytes
                bisect.insort(self._offsets, offset)

    def _read(self, start: int, end: int) -> bytes:
        if self.structure is not None:
            return self.structure.read_exact(start, end)
        return self.rp.read_range(start, end, self.stats)

    def _fetch(self, offset: int, nbytes: int) -> Any:
        import torch

        data = bytearray(self._read(offset, offset + nbytes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.frombuffer(data, dtype=torch.uint8).untyped_storage()

    def storage(self, offset: int, nbytes: int) -> Any:
        self.register(offset, nbytes)
        small = self._small.get(offset)
        if small is None and nbytes <= SMALL:
            self._fetch_small(offset, nbytes)
            small = self._small.get(offset)
        if small is not None:
            return small
        with self._lock:
            found = self._recent.get(offset)
            previous = next(reversed(self._recent)) if self._recent else None
            pending = self._next
            if pending is not None and (found is not None or pending[0] != offset):
                pending = None
            elif pending is not None:
                self._next = None
        if found is None and pending is not None:
            found = pending[1].result()  # its error, if any, is this read's error
        elif found is None:
            with self._lock:  # read out of file order: a guess in flight was wrong
                if self._next is not None and self._next[0] != offset:
                    self._next = None
            found = self._fetch(offset, nbytes)
        with self._lock:
            if nbytes <= SMALL and self._small_bytes + nbytes <= SMALL_KEPT:
                self._small[offset] = found
                self._small_bytes += nbytes
            else:
                self._recent[offset] = found
                self._recent.move_to_end(offset)
                while len(self._recent) > KEPT:
                    self._recent.popitem(last=False)
            i = bisect.bisect_left(self._offsets, offset)
            in_order = previous is not None and i > 0 and self._offsets[i - 1] == previous
        if in_order:
            self._prefetch_after(offset)
        return found

    def _fetch_small(self, offset: int, nbytes: int) -> None:
        """The storages of ``nbytes``'s size class (up to TINY, or TINY to SMALL) not
        fetched yet, from ``offset`` on in file order (then those before it), as many as
        SMALL_KEPT allows: neighbours less than GAP apart in one range request, the
        requests FETCHERS at a time. Nothing when ``offset`` itself does not fit."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        tiny = nbytes <= TINY
        with self._lock:
            room = SMALL_KEPT - self._small_bytes
            i = bisect.bisect_left(self._offsets, offset)
            order = self._offsets[i:] + self._offsets[:i]
            chosen = []
            for o in order:
                n = self._sizes[o]
                if o in self._small or not n or (n <= TINY) != tiny or n > SMALL or n > room:
                    continue
                chosen.append((o, n))
                room -= n
        if not chosen or chosen[0][0] != offset:
            return
        chosen.sort()
        runs: list[list[tuple[int, int]]] = []
        for o, n in chosen:
            if runs and o - (runs[-1][-1][0] + runs[-1][-1][1]) <= GAP:
                runs[-1].append((o, n))
            else:
                runs.append([(o, n)])

        def fetch(run: list[tuple[int, int]]) -> list[tuple[int, Any]]:
            start, end = run[0][0], run[-1][0] + run[-1][1]
            data = self._read(start, end)
            out = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for o, n in run:
                    piece = bytearray(data[o - start:o - start + n])
                    out.append((o, torch.frombuffer(piece, dtype=torch.uint8)
                                .untyped_storage()))
            return out

        if len(runs) == 1:
            results = [fetch(runs[0])]
        else:
            with ThreadPoolExecutor(min(FETCHERS, len(runs)),
                                    thread_name_prefix="optstate-remote-small") as pool:
                results = list(pool.map(fetch, runs))
        with self._lock:
            for run in results:
                for o, st in run:
                    if o not in self._small:
                        self._small[o] = st
                        self._small_bytes += self._sizes[o]

    def _prefetch_after(self, offset: int) -> None:
        with self._lock:
            if self._next is not None:
                return  # one in flight at a time
            i = bisect.bisect_right(self._offsets, offset)
            while i < len(self._offsets) and self._offsets[i] in self._small:
                i += 1  # (the small ones were fetched together: no guess needed)
            if i >= len(self._offsets):
                return
            nxt = self._offsets[i]
            future: Future[Any] = Future()
            self._next = (nxt, future)
            nbytes = self._sizes[nxt]
        _start(lambda: self._fetch(nxt, nbytes), future)


def _start(fn: Callable[[], Any], future: Future[Any]) -> None:
    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # handed to whoever asks for this storage
            future.set_exception(e)

    threading.Thread(target=run, name="optstate-remote-prefetch", daemon=True).start()
