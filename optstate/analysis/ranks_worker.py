"""One worker of ``inspect``/``diff --workers N`` (``python -m optstate.analysis.ranks_worker
JOB RANK``), started by ``ranks.py`` through ``io/launch.py``.

It joins the parent's loopback store as rank RANK of a gloo group, runs the command's
analysis on the job's paths and options (``ranks.ranked``: every rank records the tensor
work, does its share, all-gathers, merges), rank 0 writes the merged results for the
parent, and the worker leaves through ``launch.exit_now``. An error is written for the
parent (``launch.write_error``), which reports it as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from optstate.analysis import ranks
from optstate.base.testhook import pause_at
from optstate.io import launch


def run(job: dict[str, Any], rank: int) -> None:
    torch.set_num_threads(1)  # N workers share this machine's cores
    store = launch.join_store(job["port"], job["world_size"])
    ranks.init_from_store(store, rank, job["world_size"], Path(job["work"]) / "results.json")
    pause_at("worker")  # test hook: the workers are up, the parent waits for them
    if job["command"] == "inspect":
        from optstate.analysis.inspect import inspect_path

        inspect_path(job["path"], key=job["key"], unsafe=job["unsafe"], **job["options"])
    else:
        from optstate.analysis.diff import DiffOptions, diff_files

        o = job["options"]
        options = DiffOptions(**{**o, "ignore": tuple(o["ignore"]),
                                 "params": tuple(o["params"])})
        diff_files(job["path_a"], job["path_b"], options, key_a=job["key_a"],
                   key_b=job["key_b"], unsafe=job["unsafe"], model=job["model"])


def _main(argv: list[str]) -> int:
    return launch.worker_main(argv, run)


if __name__ == "__main__":
    launch.exit_now(_main(sys.argv[1:]))  # see launch.exit_now
