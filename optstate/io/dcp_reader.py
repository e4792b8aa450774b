"""torch's ``FileSystemReader`` for DCP folders, with the safe metadata reading of
``dcp_metadata`` (allow-listed unpickling, limits, cached): the torch reader's engine
(``dcp.py``; ``dcp_remote.py`` reads the same way by range requests). Apart from
``dcp_metadata`` because that module is torch-free at import (the native reader uses
its checks) and this class needs torch to be defined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata

from optstate.base.errors import CheckpointError
from optstate.io.dcp_metadata import read_metadata


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
