"""Time ``optstate inspect`` on checkpoints in S3 against a plain s3fs script (issue #21).

    .venv/bin/python bench/remote_bench.py                          # 32 MB and 300 MB, 2 reps
    .venv/bin/python bench/remote_bench.py --sizes 32 --reps 1 --json out.json
    .venv/bin/python bench/remote_bench.py --workers 2              # + the N-process row

The server is a real S3-compatible one on loopback: moto in server mode (tests/s3server.py,
the one the tests use), in this process; every command runs in a fresh process with
``AWS_ENDPOINT_URL_S3`` pointing at it and dummy credentials. Loopback has no network
latency and a bandwidth no bucket has: the byte counts carry over to a real bucket, the
times are what optstate itself costs (a lower bound of what a user waits).

For each size, a real ``torch.optim.Adam`` state (4 parameters of ``[rows, 1024]`` float32,
one real step; exp_avg + exp_avg_sq make the size) is saved with torch.save and uploaded.
Rows, A B A B (``--reps`` pairs), each a fresh process:

- ``optstate inspect URL --no-stats --json``: the structure only (range requests for the
  zip's central directory and data.pkl);
- ``optstate inspect URL --json``: every tensor's statistics (each storage one exact range
  request, the next one prefetched);
- the baseline, what a user writes today: ``s3fs.S3FileSystem().cat_file(URL)`` (the whole
  object in one GET), ``torch.load(BytesIO, weights_only=True)``, then per state tensor
  ``vector_norm(dtype=float64)``, ``abs().max()``, ``isnan().sum()``, ``isinf().sum()``.

``bytes_read``/``requests`` for optstate come from its own report (``file.bytes_read``,
``file.requests``, which tests/test_remote.py checks against a proxy's log); for the baseline,
the object's size and its one GET. The two sides' norms are checked to agree
(``numeric.tolerance.sum_rtol``) and their NaN/Inf counts and max |x| exactly.

Then a DCP folder of the largest size (the same kind of state, 8 parameters, dcp.save with
max(N, 2) writer threads: that many data files) on the server: ``--no-stats`` (reads
``.metadata``) and full rows. ``--workers N`` adds issue #21's N-process row:
``optstate inspect DIR --json --workers N`` against ``--workers 1`` on that folder, local and
on the server; the two reports' statistics are checked equal within the tolerance. It needs
inspect's ``--workers`` (says so otherwise).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import run as run_process  # noqa: E402  (bench/bench.py: wall time, RssAnon)

STATE_KEYS = ("exp_avg", "exp_avg_sq")


# --------------------------------------------------------------------------- building

def build(path: Path, megabytes: int) -> Path:
    """A real Adam state of about ``megabytes`` MiB (exp_avg + exp_avg_sq), torch.save'd."""
    import torch

    rows = max(1, round(megabytes * 2**20 / (2 * 4 * 4 * 1024)))
    torch.manual_seed(megabytes)
    params = [torch.nn.Parameter(torch.randn(rows, 1024)) for _ in range(4)]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.save(opt.state_dict(), path)
    return path


def build_dcp(folder: Path, megabytes: int, files: int) -> Path:
    """The same kind of state through dcp.save, written as ``files`` data files."""
    import torch
    import torch.distributed.checkpoint as dcp

    rows = max(1, round(megabytes * 2**20 / (2 * 4 * 8 * 1024)))
    torch.manual_seed(megabytes + 1)
    params = [torch.nn.Parameter(torch.randn(rows, 1024)) for _ in range(8)]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": one process on purpose
        dcp.save(opt.state_dict(),
                 storage_writer=dcp.FileSystemWriter(folder, thread_count=files),
                 no_dist=True)
    return folder


# --------------------------------------------------------------------------- the baseline

def baseline(url: str) -> None:
    """The plain-s3fs script (run in its own process by ``--worker baseline URL``)."""
    import s3fs
    import torch

    t0 = time.perf_counter()
    data = s3fs.S3FileSystem().cat_file(url)
    t_fetch = time.perf_counter() - t0
    sd = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    stats = {}
    for pid, entry in sd["state"].items():
        for k in STATE_KEYS:
            t = entry[k]
            stats[f"{pid}.{k}"] = {
                "norm": float(torch.linalg.vector_norm(t, dtype=torch.float64)),
                "max_abs": float(t.abs().max()), "nan": int(t.isnan().sum()),
                "inf": int(t.isinf().sum()), "numel": t.numel()}
    print(json.dumps({"bytes_read": len(data), "requests": 1, "t_fetch": t_fetch,
                      "stats": stats}))


def optstate_stats(report: dict) -> dict:
    out = {}
    for p in report["params"]:
        for k in STATE_KEYS:
            e = p["state"][k]
            out[f"{p['id']}.{k}"] = {"norm": e["norm"], "max_abs": max(abs(e["min"]),
                                     abs(e["max"])), "nan": e["nan"], "inf": e["inf"],
                                     "numel": e["numel"]}
    return out


def check_agree(a: dict, b: dict, what: str) -> None:
    from optstate.numeric.tolerance import sum_rtol

    assert a.keys() == b.keys(), (what, sorted(a), sorted(b))
    for k in a:
        x, y = a[k], b[k]
        assert (x["nan"], x["inf"], x["max_abs"]) == (y["nan"], y["inf"], y["max_abs"]), \
            (what, k, x, y)
        assert math.isclose(x["norm"], y["norm"], rel_tol=sum_rtol(x["numel"])), (what, k, x, y)


# --------------------------------------------------------------------------- running

def optstate_row(target: str, *extra: str) -> dict:
    r = run_process([PY, "-m", "optstate", "inspect", target, "--json", *extra])
    report = json.loads(r["stdout"])
    f = report["file"]
    return {"wall": r["wall"], "anon_mb": r["anon_mb"], "bytes_read": f.get("bytes_read"),
            "bytes_total": f.get("bytes_total", f.get("bytes")), "requests": f.get("requests"),
            "retries": f.get("retries"), "report": report}


def baseline_row(url: str) -> dict:
    r = run_process([PY, str(Path(__file__).resolve()), "--worker", "baseline", url])
    line = [ln for ln in r["stdout"].splitlines() if ln.startswith("{")][-1]
    return {"wall": r["wall"], "anon_mb": r["anon_mb"], **json.loads(line)}


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def bench_size(server, bucket: str, work: Path, mb: int, reps: int) -> dict:
    path = build(work / f"adam_{mb}mb.pt", mb)
    url = server.put(path, f"s3://{bucket}/run/adam_{mb}mb.pt")
    total = path.stat().st_size
    rows: dict[str, list[dict]] = {"no_stats": [], "full": [], "baseline": []}
    for _ in range(reps):  # A B A B
        rows["baseline"].append(baseline_row(url))
        rows["no_stats"].append(optstate_row(url, "--no-stats"))
        rows["full"].append(optstate_row(url))
    check_agree(rows["baseline"][-1]["stats"], optstate_stats(rows["full"][-1]["report"]),
                f"{mb} MB")
    out = {"size_mb": mb, "bytes_total": total, "url": url}
    for name, rs in rows.items():
        out[name] = {"wall_s": med(rs, "wall"), "anon_mb": med(rs, "anon_mb"),
                     "bytes_read": rs[-1]["bytes_read"], "requests": rs[-1]["requests"],
                     "walls": [round(r["wall"], 3) for r in rs]}
    b = out["baseline"]
    for name in ("no_stats", "full"):
        o = out[name]
        o["time_ratio"] = b["wall_s"] / o["wall_s"]  # > 1: optstate is faster
        o["bytes_ratio"] = (o["bytes_read"] or 0) / b["bytes_read"]
    return out


def bench_dcp(server, bucket: str, work: Path, mb: int, files: int, workers: int,
              reps: int) -> dict:
    """A DCP folder of ``mb`` MiB in ``files`` data files on the server: --no-stats and full
    rows; with ``workers`` > 1, --workers 1 against --workers N, local and on the server."""
    folder = build_dcp(work / f"adam_{mb}mb_dcp", mb, files)
    url = server.put_dir(folder, f"s3://{bucket}/run/adam_{mb}mb_dcp")
    out: dict = {"size_mb": mb, "files": files,
                 "bytes_total": sum(p.stat().st_size for p in folder.iterdir()),
                 "metadata_bytes": (folder / ".metadata").stat().st_size}
    for name, extra in (("no_stats", ("--no-stats",)), ("full", ())):
        rs = [optstate_row(url, *extra) for _ in range(reps)]
        out[name] = {"wall_s": med(rs, "wall"), "bytes_read": rs[-1]["bytes_read"],
                     "requests": rs[-1]["requests"], "walls": [round(r["wall"], 3) for r in rs]}
    if workers <= 1:
        return out
    help_text = run_process([PY, "-m", "optstate", "inspect", "--help"])["stdout"]
    if "--workers" not in help_text:
        out["workers"] = {"skipped": "optstate inspect has no --workers option in this tree"}
        return out
    out["workers"] = {"n": workers}
    for where, target in (("local", str(folder)), ("s3", url)):
        one, many = [], []
        for _ in range(reps):  # A B A B
            one.append(optstate_row(target, "--workers", "1"))
            many.append(optstate_row(target, "--workers", str(workers)))
        check_agree(optstate_stats(one[-1]["report"]), optstate_stats(many[-1]["report"]),
                    f"{where} --workers {workers}")
        out["workers"][where] = {
            "one_s": med(one, "wall"), "many_s": med(many, "wall"),
            "speedup": med(one, "wall") / med(many, "wall"),
            "walls_1": [round(r["wall"], 3) for r in one],
            "walls_n": [round(r["wall"], 3) for r in many]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 300], help="MiB")
    ap.add_argument("--reps", type=int, default=2, help="A/B pairs per row")
    ap.add_argument("--workers", type=int, default=0, help="N for the N-process row (0: none)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        baseline(args.worker[1])
        return

    from tests.s3server import S3Server, patched_env

    server = S3Server()
    results: dict = {"sizes": [], "dcp": None}
    try:
        with patched_env(server.env()), tempfile.TemporaryDirectory() as tmp:
            bucket = server.new_bucket("bench")
            for mb in args.sizes:
                print(f"{mb} MiB ...", file=sys.stderr, flush=True)
                results["sizes"].append(bench_size(server, bucket, Path(tmp), mb, args.reps))
            files = max(args.workers, 2)
            print(f"DCP in {files} files ...", file=sys.stderr, flush=True)
            results["dcp"] = bench_dcp(server, bucket, Path(tmp), max(args.sizes), files,
                                       args.workers, args.reps)
    finally:
        server.stop()

    print(f"{'checkpoint':>12} {'command':<34} {'bytes read':>11} {'requests':>8} "
          f"{'wall s':>7} {'anon MB':>8} {'vs s3fs':>8}")
    for s in results["sizes"]:
        label = fmt_bytes(s["bytes_total"])
        for name, cmd in (("no_stats", "optstate inspect URL --no-stats"),
                          ("full", "optstate inspect URL"),
                          ("baseline", "s3fs cat_file + torch.load + stats")):
            r = s[name]
            ratio = "" if name == "baseline" else f"{r['time_ratio']:.2f}x"
            print(f"{label:>12} {cmd:<34} {fmt_bytes(r['bytes_read']):>11} "
                  f"{r['requests'] if r['requests'] is not None else '-':>8} "
                  f"{r['wall_s']:>7.2f} {r['anon_mb']:>8.0f} {ratio:>8}")
        print(f"{'':>12} --no-stats read {100 * s['no_stats']['bytes_ratio']:.3f}% of what "
              f"the baseline read; full stats {100 * s['full']['bytes_ratio']:.1f}%")
    d = results["dcp"]
    label = f"DCP {fmt_bytes(d['bytes_total'])} ({d['files']} files)"
    print(f"{label}: .metadata {fmt_bytes(d['metadata_bytes'])}")
    for name, cmd in (("no_stats", "optstate inspect URL --no-stats"),
                      ("full", "optstate inspect URL")):
        r = d[name]
        print(f"{'':>12} {cmd:<34} {fmt_bytes(r['bytes_read']):>11} "
              f"{r['requests'] if r['requests'] is not None else '-':>8} {r['wall_s']:>7.2f}")
    w = d.get("workers")
    if w and "skipped" in w:
        print(f"N-process row: skipped ({w['skipped']})")
    elif w:
        for where in ("local", "s3"):
            r = w[where]
            print(f"{label} ({where}): inspect --workers 1 {r['one_s']:.2f} s, "
                  f"--workers {w['n']} {r['many_s']:.2f} s: {r['speedup']:.2f}x")
    if args.json:
        for s in results["sizes"]:
            s.pop("url", None)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
