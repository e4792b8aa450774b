"""One worker of ``inspect``/``diff --workers N`` (``python -m optstate.analysis.ranks_worker
JOB RANK``), started by ``ranks.py`` through ``io/launch.py``.

It joins the parent's loopback store as rank RANK of a gloo group, runs the command's
analysis on the job's paths and options (``ranks.ranked``: every rank records the tensor
work, does its share, all-gathers, merges), rank 0 writes the merged results for the
parent, and the worker leaves through ``launch.exit_now``. An error is written for the
parent (``launch.write_error``), which reports it as one line.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
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
    job = json.loads(Path(argv[0]).read_text())
    rank = int(argv[1])
    launch.die_with_parent(job.get("parent"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(job, rank)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit 1
        traceback.print_exc()
        launch.write_error(Path(job["work"]), rank, e)
        return 1
    return 0


if __name__ == "__main__":
    launch.exit_now(_main(sys.argv[1:]))  # see launch.exit_now
