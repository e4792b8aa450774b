"""How a DCP folder's tensors are stored: chunks, files, ranks (``inspect --layout``).

Reads only the metadata (``dcp_metadata.py``), never tensor data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optstate.base.errors import ConfigError, option
from optstate.io.dcp_metadata import METADATA_FILE, is_dcp_folder
from optstate.io.native_tensor import NativeUnsupported

if TYPE_CHECKING:
    from optstate.io.dcp import DcpCheckpoint


def chunk_layout(obj: Any) -> dict[str, list[dict[str, Any]]]:
    """Flattened DCP key -> its chunks, for every lazy tensor in ``obj`` (verbose views)."""
    from optstate.io.lazy import LazyTensor

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


def layout_report(path: str | Path, *, reader: str = "torch") -> dict[str, Any]:
    """How every tensor of the DCP folder ``path`` is stored: its chunks (offsets and
    sizes within the whole tensor) and the file, hence the rank, each chunk is in. Reads
    only the metadata. Plain data (the ``layout`` section of ``inspect --layout``).
    A URL is a folder in object storage: its listing and ``.metadata`` by range reads.
    ``reader`` as ``source.open_source``'s: "auto" reads a local folder's metadata without
    torch (``native_dcp.layout_native``) where the native reader knows it."""
    from optstate.io.remote import is_url, local_path

    if isinstance(path, str) and is_url(path) and local_path(path) is None:
        return _report(_remote_checkpoint(path))
    if isinstance(path, str) and local_path(path) is not None:
        path = local_path(path)  # type: ignore[assignment]
    if not is_dcp_folder(path):
        raise ConfigError(
            f"{option('layout', True)} describes DCP checkpoint folders; {path} is not one "
            f"(no {METADATA_FILE})",
            hint=f"a torch.save file is one piece: drop {option('layout', True)}",
        )
    if reader != "torch":
        from optstate.io.torch_file import choose_reader

        if choose_reader(reader)[0] == "native":
            from optstate.io.native_dcp import layout_native

            try:
                return layout_native(Path(path))
            except NativeUnsupported:  # torch's reader judges it, with its messages
                pass
    from optstate.io.dcp import DcpCheckpoint

    return _report(DcpCheckpoint(path))


def _remote_checkpoint(url: str) -> DcpCheckpoint:
    from optstate.io.dcp import DcpCheckpoint
    from optstate.io.remote import RemotePath, display

    rp = RemotePath(url)
    if not (rp / METADATA_FILE).exists():
        raise ConfigError(
            f"{option('layout', True)} describes DCP checkpoint folders; {display(url)} is "
            f"not one (no {METADATA_FILE})",
            hint=f"a torch.save file is one piece: drop {option('layout', True)}",
        )
    return DcpCheckpoint(rp)


def _report(ckpt: DcpCheckpoint) -> dict[str, Any]:
    files: dict[str, int] = {}
    if ckpt._sizes is not None:  # remote: the folder's listing, already read
        files = {k: v for k, v in sorted(ckpt._sizes.items()) if k != METADATA_FILE}
    else:
        for f in sorted(ckpt.path.iterdir()):  # type: ignore[union-attr]
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
