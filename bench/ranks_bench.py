"""Time ``optstate inspect --workers N`` against one process on a sharded checkpoint (issue #21).

    .venv/bin/python bench/ranks_bench.py                       # N=2, 4 x 2048x2048 Adam, 2 reps
    .venv/bin/python bench/ranks_bench.py --workers 2 --rows 4096 --reps 3 --json out.json

The checkpoint is a real sharded one: ``optstate simulate -O adam --shape RxC (x4) --steps 1
--world-size 2 --save DIR`` (FSDP2, dcp.save by 2 ranks: every tensor in 2 chunks, one per
data file), local. Rows, A B A B (``--reps`` pairs), each a fresh process (start-up included,
as a user waits): ``optstate inspect DIR --json`` and ``optstate inspect DIR --json --workers
N``; the reports' statistics are checked equal within ``numeric.tolerance.sum_rtol`` (the
rest exactly). Printed: the median walls and their ratio. The N processes share this machine's
cores with whatever else runs: on a 2-core machine N=2 is the most that can help.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def run(*args: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-m", "optstate", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"optstate {' '.join(args)} failed: {r.stderr.strip()}")
    return wall, json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}


def check_agree(one: dict, many: dict) -> None:
    from optstate.numeric.tolerance import sum_rtol

    for p1, p2 in zip(one["params"], many["params"], strict=True):
        for k, e1 in p1["state"].items():
            e2 = p2["state"][k]
            for f, v in e1.items():
                if f in ("norm", "mean_abs", "mean") and isinstance(v, float):
                    scale = abs(e1["mean_abs"]) if f == "mean" else abs(v)
                    assert abs(v - e2[f]) <= sum_rtol(e1["numel"]) * scale, (k, f)
                else:
                    assert v == e2[f], (k, f, v, e2[f])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--params", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2, help="A/B pairs")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "sharded"
        shapes = [x for _ in range(args.params) for x in ("--shape", f"{args.rows}x{args.cols}")]
        run("simulate", "-O", "adam", *shapes, "--steps", "1", "--world-size", "2",
            "--save", str(ckpt))
        size = sum(f.stat().st_size for f in ckpt.iterdir())
        ones, manys = [], []
        for _ in range(args.reps):  # A B A B
            w1, r1 = run("inspect", str(ckpt), "--json")
            wn, rn = run("inspect", str(ckpt), "--json", "--workers", str(args.workers))
            check_agree(r1, rn)
            ones.append(w1)
            manys.append(wn)
    one, many = statistics.median(ones), statistics.median(manys)
    out = {"bytes": size, "workers": args.workers, "one_s": round(one, 3),
           "many_s": round(many, 3), "speedup": round(one / many, 3),
           "walls_1": [round(w, 3) for w in ones], "walls_n": [round(w, 3) for w in manys]}
    print(f"sharded DCP, {size / 1e6:.0f} MB in 2 chunks per tensor: inspect 1 process "
          f"{one:.2f} s, --workers {args.workers} {many:.2f} s: {one / many:.2f}x "
          f"(medians of {args.reps}; walls {out['walls_1']} / {out['walls_n']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
