"""Time ``optstate timeline`` on a long Adam run against a plain-torch script (issue #20).

    .venv/bin/python bench/timeline_bench.py                       # 100 checkpoints, 10M params
    .venv/bin/python bench/timeline_bench.py --checkpoints 20 --params 2000000 --reps 2
    .venv/bin/python bench/timeline_bench.py --workdir /big/disk --keep --json out.json

It builds the run itself: a 4-layer MLP of ``--params`` parameters trained by a real
``torch.optim.Adam`` (``--every`` real steps between saves), saving
``{"model", "optimizer", "step"}`` as ``step_{i}.pt`` ``--checkpoints`` times, plus one
more checkpoint kept aside for the "one new checkpoint" row. With ``--workdir`` the run is
kept and reused by the next invocation (same sizes); without it, it goes in a temporary
folder that is deleted at the end (``--keep`` keeps it).

Measured, each in a fresh process (the wall time a user waits at the prompt), A B A B:

- ``optstate timeline RUN --json`` with an empty cache (``--cache`` a new folder): reads all;
- the same again with the cache the first run wrote: reads none;
- the same after one new checkpoint appeared in the run folder: reads only it;
- the baseline, what a user writes today: for each file in name order,
  ``torch.load(mmap=True, weights_only=True)`` and, per optimizer-state tensor,
  ``vector_norm(dtype=float64)``, ``abs().max()``, ``isnan().sum()``, ``isinf().sum()``,
  ``(t == 0).sum()`` (statistics only, no findings).

Both read from the page cache: every file of the run is read (``cat``) before each run of
either side. The ratio is baseline / optstate per A/B pair, median over pairs. The two
sides' numbers are checked to agree on the last checkpoint: NaN/Inf counts and max |x|
exactly, norms within ``numeric.tolerance.sum_rtol(numel)``. Peak ``RssAnon`` (resident
anonymous memory: mapped file pages not counted) is polled every 5 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
STEP_FILE = re.compile(r"step_(\d+)\.pt")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import run as run_process  # noqa: E402  (bench/bench.py: wall time, RssAnon)

# --------------------------------------------------------------------------- building


def build(workdir: Path, n_ckpt: int, n_params: int, every: int) -> tuple[Path, Path]:
    """``workdir/run`` with ``n_ckpt`` checkpoints and ``workdir/extra/step_{next}.pt``
    (reused when the sizes match)."""
    run, extra, meta = workdir / "run", workdir / "extra", workdir / "meta.json"
    want = {"checkpoints": n_ckpt, "params": n_params, "every": every, "version": 1}
    if meta.exists() and json.loads(meta.read_text()) == want:
        return run, next(extra.iterdir())
    import torch
    from torch import nn

    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(extra, ignore_errors=True)
    run.mkdir(parents=True)
    extra.mkdir()
    width = int(math.sqrt(n_params / 4))
    torch.manual_seed(0)
    model = nn.Sequential(*(m for _ in range(4) for m in (nn.Linear(width, width), nn.GELU())))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    total = sum(p.numel() for p in model.parameters())
    print(f"building {n_ckpt}+1 checkpoints of a {total / 1e6:.1f}M-param Adam run in "
          f"{workdir} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for k in range(1, n_ckpt + 2):
        for _ in range(every):
            x = torch.randn(8, width)
            loss = (model(x) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        step = k * every
        folder = run if k <= n_ckpt else extra
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                   folder / f"step_{step}.pt")
    meta.write_text(json.dumps(want))
    print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return run, next(extra.iterdir())


# --------------------------------------------------------------------------- baseline


def baseline(run: Path) -> None:
    """The plain-torch script (run as ``--worker RUN``): one JSON line on stdout with
    "compute" (seconds after ``import torch``) and the last checkpoint's numbers."""
    import torch

    t0 = time.perf_counter()
    files = sorted((p for p in run.iterdir() if STEP_FILE.fullmatch(p.name)),
                   key=lambda p: int(STEP_FILE.fullmatch(p.name).group(1)))
    rows = []
    for path in files:
        ckpt = torch.load(path, mmap=True, weights_only=True)
        row = {}
        for k, st in ckpt["optimizer"]["state"].items():
            for key, t in st.items():
                if key != "step":
                    row[f"{k}.{key}"] = [
                        float(torch.linalg.vector_norm(t, dtype=torch.float64)),
                        float(t.abs().max()), int(t.isnan().sum()), int(t.isinf().sum()),
                        int((t == 0).sum()), t.numel()]
        rows.append(row)
    print(json.dumps({"compute": time.perf_counter() - t0, "files": len(files),
                      "last": rows[-1]}))


# --------------------------------------------------------------------------- measuring


def measure(cmd: list[str]) -> dict:
    """Wall time, peak RssAnon (MB) and the JSON stdout of one process (bench.py's run)."""
    res = run_process(cmd)
    return {"wall": res["wall"], "anon_mb": res["anon_mb"], "out": json.loads(res["stdout"])}


def warm(folder: Path) -> None:
    for p in sorted(folder.iterdir()):
        if p.is_file():
            subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)


def timeline_cmd(run: Path, cache: Path) -> list[str]:
    return [PY, "-m", "optstate", "timeline", str(run), "--json", "--cache", str(cache)]


def check_cache(r: dict, hits: int, misses: int, what: str) -> None:
    got = (r["out"]["cache"]["hits"], r["out"]["cache"]["misses"])
    if got != (hits, misses):
        raise SystemExit(f"{what}: cache hits/misses {got}, expected {(hits, misses)} "
                         f"(note: {r['out']['cache']['note']})")


def check_agree(report: dict, base: dict) -> str:
    """optstate's last checkpoint against the baseline's: counts and max |x| exactly,
    norms within sum_rtol(numel)."""
    from optstate.analysis.timeline import num
    from optstate.numeric.tolerance import sum_rtol

    last = len(report["checkpoints"]) - 1
    ours = {f"{s['param']}.{s['entry']}": s for s in report["series"]}
    if set(ours) != set(base):
        raise SystemExit(f"entries differ: {sorted(set(ours) ^ set(base))[:5]}")
    worst = 0.0
    for key, (norm, max_abs, nan, inf, _zeros, numel) in base.items():
        s = ours[key]
        if (s["nan"][last], s["inf"][last], num(s["max_abs"][last])) != (nan, inf, max_abs):
            raise SystemExit(f"{key}: optstate {s['nan'][last], s['inf'][last]} "
                             f"{s['max_abs'][last]}, baseline {nan, inf, max_abs}")
        rel = abs(num(s["norm"][last]) - norm) / max(norm, 1e-300)
        if rel > sum_rtol(numel):
            raise SystemExit(f"{key}: norm {s['norm'][last]} vs {norm} (rel {rel:.2e})")
        worst = max(worst, rel)
    return (f"{len(base)} tensors agree: NaN/Inf counts and max |x| identical, norms within "
            f"{worst:.1e} relative")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--every", type=int, default=1, help="Adam steps between saves")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the generated run")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        baseline(args.worker)
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="timeline-bench-"))
    scratch = Path(tempfile.mkdtemp(prefix="timeline-bench-cache-"))
    try:
        return bench(args, workdir, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, workdir: Path, scratch: Path) -> int:
    import torch

    run, extra = build(workdir, args.checkpoints, args.params, args.every)
    n = args.checkpoints
    files = sorted(run.glob("step_*.pt"))
    size = sum(p.stat().st_size for p in files)
    load_before = os.getloadavg()
    print(f"{n} checkpoints, {size / n / 1e6:.0f} MB each ({size / 1e9:.2f} GB), "
          f"{args.params / 1e6:g}M params requested; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; load {load_before[0]:.2f}", flush=True)
    base_cmd = [PY, str(Path(__file__).resolve()), "--worker", str(run)]
    first, cached, appended, base = [], [], [], []
    for rep in range(args.reps):
        cache = scratch / f"cache-{rep}"
        for which in ((0, 1) if rep % 2 == 0 else (1, 0)):  # who goes first alternates
            warm(run)
            if which == 0:
                r = measure(timeline_cmd(run, cache))
                check_cache(r, 0, n, "first run")
                first.append(r)
            else:
                base.append(measure(base_cmd))
        warm(run)
        r = measure(timeline_cmd(run, cache))
        check_cache(r, n, 0, "cached run")
        cached.append(r)
        # one new checkpoint: moved in (a rename keeps its mtime) on a copy of this cache
        grown = scratch / f"grown-{rep}"
        shutil.copytree(cache, grown)
        new = run / extra.name
        os.replace(extra, new)
        try:
            warm(run)
            r = measure(timeline_cmd(run, grown))
        finally:
            os.replace(new, extra)
        check_cache(r, n, 1, "after one new checkpoint")
        appended.append(r)
        print(f"  rep {rep + 1}: first {first[-1]['wall']:.2f} s, cached "
              f"{cached[-1]['wall']:.2f} s, +1 checkpoint {appended[-1]['wall']:.2f} s, "
              f"baseline {base[-1]['wall']:.2f} s", flush=True)
    agree = check_agree(first[-1]["out"], base[-1]["out"]["last"])

    def med(rs: list[dict], key: str = "wall") -> float:
        return statistics.median(r[key] for r in rs)

    def ratio(rs: list[dict]) -> float:
        return statistics.median(b["wall"] / a["wall"] for a, b in zip(rs, base, strict=True))

    rows = [("timeline, first run (empty cache)", first),
            ("timeline, cached rerun", cached),
            ("timeline, after 1 new checkpoint", appended)]
    print(f"\n| measurement ({n} checkpoints) | optstate | baseline | baseline / optstate |")
    print("|---|---|---|---|")
    for name, rs in rows:
        print(f"| {name} | {med(rs):.2f} s | {med(base):.2f} s | "
              f"**{ratio(rs):.1f}x** |")
    print(f"| peak anonymous memory, first run | {med(first, 'anon_mb'):.0f} MB | "
          f"{med(base, 'anon_mb'):.0f} MB | |")
    print(f"\nbaseline compute after import torch: {med([b['out'] for b in base], 'compute'):.2f}"
          f" s; {agree}; medians of {args.reps}; load {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    if args.json:
        args.json.write_text(json.dumps({
            "checkpoints": n, "params_requested": args.params, "bytes": size,
            "reps": args.reps, "torch": torch.__version__,
            "load": [load_before[0], os.getloadavg()[0]], "agree": agree,
            "first": [r["wall"] for r in first], "cached": [r["wall"] for r in cached],
            "appended": [r["wall"] for r in appended], "baseline": [r["wall"] for r in base],
            "anon_mb": {"first": [r["anon_mb"] for r in first],
                        "baseline": [r["anon_mb"] for r in base]},
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
