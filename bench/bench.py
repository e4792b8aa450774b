"""Benchmark optstate against plain-torch baselines, side by side in one run (issue #6).

Usage::

    .venv/bin/python bench/bench.py                 # the real case: 300M-param Adam, 2.4 GB
    .venv/bin/python bench/bench.py --quick         # 20M params: a minute, for a sanity check
    .venv/bin/python bench/bench.py --workdir /big/disk --reps 7 --only inspect,diff

It builds the checkpoints itself (a real ``torch.optim.Adam`` stepped twice on ~100
parameters; ``a.pt`` after one step, ``b.pt`` after two), keeps them in ``--workdir``
for the next run, and prints one table of times, memory and ratios.

How it measures (the issue's rules):

- every run is a fresh process; optstate and its baseline alternate (A B A B ...), and
  the ratio is taken pair by pair, then the median is reported;
- warm figures read the file(s) just before each run (``cat`` to /dev/null), for both
  sides, because this machine drops page-cache pages idle for about a minute;
- *compute phase*: timed inside the process from "path given" to "result computed"
  (interpreter start and ``import torch`` excluded for both sides); *whole process*:
  the wall time a user waits for at the prompt, for the real ``optstate`` command;
- peak anonymous memory: the parent polls ``RssAnon`` of ``/proc/PID/status`` (resident
  anonymous pages, so memory-mapped file pages do not count) every 2 ms;
- cold cache: ``posix_fadvise(DONTNEED)`` evicts just our files (no root, nothing else
  on the machine is touched), then optstate is compared with ``dd`` reading the file;
- the native reader (issue #22, section ``native``): optstate as a user runs it (the
  reader it picks by itself), optstate with ``OPTSTATE_READER=torch`` and the baseline
  take turns in each round (A B C A B C ...), ratios pair by pair against the baseline;
  its results are checked against the plain-torch baselines' and against the torch
  reader's JSON (float sums within ``numeric.tolerance.sum_rtol``).

One file (~620 lines) on purpose: it is run by path, not imported, and starts itself
again as each measured process (``--worker``), so the baselines it times and the
harness that times them stay side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FULL_PARAMS = 300_000_000
QUICK_PARAMS = 20_000_000


# --------------------------------------------------------------------------- building


def layer_shapes(n_params: int) -> list[tuple[int, ...]]:
    """~100 parameter shapes of a transformer-like model with about ``n_params`` elements:
    an embedding, then 33 layers of (weight, bias, norm weight)."""
    hidden, layers = 1024, 33
    scale = n_params / FULL_PARAMS
    vocab = max(8, int(29_000 * scale))
    out_features = max(8, int(8_000 * scale ** 0.5) // 2 * 2)
    in_features = max(8, int((n_params - vocab * hidden) / layers / out_features))
    shapes: list[tuple[int, ...]] = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(out_features, in_features), (out_features,), (in_features,)]
    return shapes


def build_files(workdir: Path, n_params: int) -> tuple[Path, Path]:
    """a.pt / b.pt: a real Adam's state_dict after one and two steps (reused if present)."""
    a, b, meta = workdir / "a.pt", workdir / "b.pt", workdir / "meta.json"
    want = {"n_params_requested": n_params, "version": 1}
    if a.exists() and b.exists() and meta.exists() and json.loads(meta.read_text()) == want:
        return a, b
    import torch

    workdir.mkdir(parents=True, exist_ok=True)
    print(f"building {n_params / 1e6:.0f}M-param Adam checkpoints in {workdir} ...",
          file=sys.stderr, flush=True)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.empty(s).uniform_(-0.05, 0.05, generator=gen))
              for s in layer_shapes(n_params)]
    opt = torch.optim.Adam(params, lr=1e-3)
    for step, path in ((1, a), (2, b)):
        with torch.no_grad():
            for p in params:  # cheap, deterministic, different every step
                p.grad = p.detach() * (0.5 * step) + 1e-3
        opt.step()
        torch.save(opt.state_dict(), path)
    total = sum(p.numel() for p in params)
    meta.write_text(json.dumps(want))
    print(f"  {len(params)} params, {total / 1e6:.1f}M elements, "
          f"{a.stat().st_size / 1e9:.2f} GB per file", file=sys.stderr, flush=True)
    return a, b


# --------------------------------------------------------------------------- workers
# Each runs in its own process: ``bench.py --worker NAME ARGS...``. It prints one JSON
# line with "compute" (seconds from "path given" to "result computed") and a digest of
# the result, so the two sides can be checked to agree.


def worker(name: str, args: list[str]) -> None:
    import torch  # both sides pay this before the clock starts

    if name == "inspect-base":
        t0 = time.perf_counter()
        sd = torch.load(args[0], mmap=True, weights_only=True)
        digest = {}
        for k, st in sd["state"].items():
            for key, t in st.items():
                if t.dim() > 0:
                    digest[f"{k}.{key}"] = [float(t.norm()), float(t.min()), float(t.max()),
                                            float(t.mean()), int(t.isnan().sum()),
                                            int(t.isinf().sum())]
        out = {"compute": time.perf_counter() - t0, "digest": digest}
    elif name == "inspect-ours":
        from optstate.analysis.inspect import inspect_path

        t0 = time.perf_counter()
        report = inspect_path(args[0])
        elapsed = time.perf_counter() - t0
        out = {"compute": elapsed, "digest": inspect_digest(report)}
    elif name == "diff-base":
        t0 = time.perf_counter()
        sa = torch.load(args[0], mmap=True, weights_only=True)
        sb = torch.load(args[1], mmap=True, weights_only=True)
        digest = {}
        for k, st in sa["state"].items():
            for key, x in st.items():
                y = sb["state"][k][key]
                if x.dim() > 0:
                    digest[f"{k}.{key}"] = [bool(torch.allclose(x, y)),
                                            float((x - y).abs().max())]
        out = {"compute": time.perf_counter() - t0, "digest": digest}
    elif name == "diff-ours":
        from optstate.analysis.diff import DiffOptions, diff_files

        t0 = time.perf_counter()
        # torch.allclose's default tolerances, so the verdicts are comparable
        result, _, _ = diff_files(args[0], args[1], DiffOptions(atol=1e-8, rtol=1e-5))
        elapsed = time.perf_counter() - t0
        digest = {}
        for c in [*result.changes, *result.same]:
            if c.metrics is not None and c.path.startswith("state["):
                k, key = c.path[len("state["):].split("].", 1)
                digest[f"{k}.{key}"] = [c.metrics["outside"] == 0,
                                        float(torch.tensor(c.metrics["max_abs"],
                                                           dtype=torch.float32))]
        out = {"compute": elapsed, "digest": digest}
    elif name in ("sgd-base", "adam-base", "adam-base-durable"):
        import torch._dynamo  # noqa: F401 - the first optimizer imports it; not timed

        out_path = args[0]
        t0 = time.perf_counter()
        torch.manual_seed(0)
        if name == "sgd-base":
            w = torch.nn.Parameter(torch.randn(2, 2))
            opt = torch.optim.SGD([w], lr=0.01, momentum=0.9)
            steps = 10_000
        else:
            w = torch.nn.Parameter(torch.randn(10_000_000))
            opt = torch.optim.Adam([w], lr=1e-3)
            steps = 50
        losses = []
        for _ in range(steps):  # the PyTorch-docs loop, with simulate's default objective
            opt.zero_grad()
            loss = (w * 1.0).sum()  # gradient: all ones (simulate --grad constant)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if name.endswith("-durable"):  # as optstate saves: temp file, fsync, rename
            tmp = out_path + ".tmp"
            with open(tmp, "wb") as f:
                torch.save(opt.state_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out_path)
        else:
            torch.save(opt.state_dict(), out_path)
        out = {"compute": time.perf_counter() - t0, "digest": {}}
    elif name in ("sgd-ours", "adam-ours"):
        import torch._dynamo  # noqa: F401

        from optstate.sim.config import GroupSpec, RunSpec
        from optstate.sim.simulate import simulate

        opt, hyper, shape, steps = _sim_spec(name)
        spec = RunSpec(optimizer=opt, hyperparams=hyper, groups=(GroupSpec(shapes=(shape,)),),
                       steps=steps)
        t0 = time.perf_counter()
        simulate(spec, save=args[0], force=True)
        out = {"compute": time.perf_counter() - t0, "digest": {}}
    else:
        raise SystemExit(f"unknown worker {name}")
    print(json.dumps(out))


def inspect_digest(report: dict) -> dict:
    """What ``inspect-base`` computes, from an inspect report (in process or ``--json``)."""
    digest = {}
    for p in report["params"]:
        for key, e in p["state"].items():
            if "norm" in e:
                digest[f"{p['id']}.{key}"] = [e["norm"], e["min"], e["max"], e["mean"],
                                              e["nan"], e["inf"]]
    return digest


def diff_digest(report: dict) -> dict:
    """What ``diff-base`` computes, from ``diff --json --atol 1e-8 --rtol 1e-5`` (torch.allclose's
    tolerances); max |a-b| rounded to float32 as the baseline computes it. Only differing
    tensors are in ``changes``: the two files differ in every one."""
    digest = {}
    for c in report["changes"]:
        if c["metrics"] is not None and c["path"].startswith("state["):
            k, key = c["path"][len("state["):].split("].", 1)
            max_abs = struct.unpack("f", struct.pack("f", c["metrics"]["max_abs"]))[0]
            digest[f"{k}.{key}"] = [c["metrics"]["outside"] == 0, max_abs]
    return digest


def _sim_spec(name: str) -> tuple[str, dict, tuple[int, ...], int]:
    if name.startswith("sgd"):
        return "SGD", {"lr": 0.01, "momentum": 0.9}, (2, 2), 10_000
    return "Adam", {"lr": 1e-3}, (10_000_000,), 50


def sim_cli_args(name: str, out: Path) -> list[str]:
    if name.startswith("sgd"):
        return ["simulate", "--optimizer", "SGD", "--lr", "0.01", "--momentum", "0.9",
                "--shape", "2x2", "--steps", "10000", "--save", str(out), "--force"]
    return ["simulate", "--optimizer", "Adam", "--lr", "0.001", "--shape", "10000000",
            "--steps", "50", "--save", str(out), "--force"]


# --------------------------------------------------------------------------- running


def run(cmd: list[str], *, capture: bool = True, env: dict | None = None) -> dict:
    """Run ``cmd``; wall time, peak RssAnon (MB) from polling, its stdout, and its JSON
    line if any (a ``--worker`` of this script). ``env``: variables to set (a value of
    None removes the variable)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    # Output goes to files, not pipes: a pipe nobody reads blocks a big --json at 64 KiB.
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out_f if capture else subprocess.DEVNULL,
                            stderr=err_f, env=env, cwd=ROOT)
    peak = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
                        break
        except OSError:
            pass
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read().decode(), err_f.read().decode()
    out_f.close()
    err_f.close()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    res = {"wall": wall, "anon_mb": peak / 1024, "stdout": out}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if capture and lines and cmd[1:3] == [str(Path(__file__).resolve()), "--worker"]:
        res.update(json.loads(lines[-1]))
    return res


def warm(*paths: Path) -> None:
    for p in paths:
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)


def evict(*paths: Path) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def w(name: str, *args: Path | str) -> list[str]:
    return [PY, str(Path(__file__).resolve()), "--worker", name, *map(str, args)]


def ours(*args: Path | str) -> list[str]:
    return [PY, "-m", "optstate", *map(str, args)]


def pairs(reps: int, a_cmd: list[str], b_cmd: list[str], files: tuple[Path, ...] = (),
          cold: bool = False) -> tuple[list[dict], list[dict]]:
    """Alternate optstate (a) and baseline (b) runs, preparing the cache before each."""
    ra, rb = [], []
    for _ in range(reps):
        for cmd, acc in ((a_cmd, ra), (b_cmd, rb)):
            (evict if cold else warm)(*files)
            acc.append(run(cmd))
    return ra, rb


def rounds(reps: int, cmds: list[tuple[list[str], dict]], files: tuple[Path, ...] = ()
           ) -> list[list[dict]]:
    """``pairs`` for more than two sides: each (command, env) once per round, in turn."""
    out: list[list[dict]] = [[] for _ in cmds]
    for _ in range(reps):
        for (cmd, env), acc in zip(cmds, out, strict=True):
            warm(*files)
            acc.append(run(cmd, env=env))
    return out


def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def ratio(ra: list[dict], rb: list[dict], key: str) -> float:
    """Median over pairs of baseline / optstate (above 1: optstate is faster)."""
    return statistics.median(b[key] / a[key] for a, b in zip(ra, rb, strict=True))


def check_digests(ra: list[dict], rb: list[dict], what: str) -> str:
    """Do both sides report the same numbers? diff: verdict and max |a-b| (rounded to
    float32, as the baseline computes it) per tensor. inspect: min, max and the NaN/Inf
    counts exactly; norm and mean only approximately, because the baseline accumulates
    in float32 (``t.norm()``), optstate in float64 (tests: equal to ``t.double().norm()``)."""
    da, db = ra[0]["digest"], rb[0]["digest"]
    if set(da) != set(db):
        return f"{what}: different tensor sets ({len(da)} vs {len(db)})"
    if what == "diff":
        bad = [k for k in da if da[k] != db[k]]
    else:
        bad = [k for k in da if da[k][1:3] != db[k][1:3] or da[k][4:] != db[k][4:]]
    if bad:
        return (f"{what}: {len(bad)} of {len(da)} tensors disagree, e.g. {bad[0]}: "
                f"{da[bad[0]]} vs {db[bad[0]]}")
    if what == "diff":
        return f"diff: verdict and max |a-b| identical to the baseline for all {len(da)} tensors"
    worst = max(abs(da[k][0] - db[k][0]) / abs(da[k][0]) for k in da if da[k][0])
    return (f"inspect: min, max, NaN and Inf counts identical to the baseline for all "
            f"{len(da)} tensors; the float32 baseline's norms are off by up to {worst:.1e} "
            "(relative) from optstate's float64 ones")


# --------------------------------------------------------------------------- native reader

# optstate as a user runs it (it picks the native reader by itself; an OPTSTATE_READER
# inherited from the caller's shell is removed) and with the torch reader forced
AS_USER = {"OPTSTATE_READER": None}
TORCH_READER = {"OPTSTATE_READER": "torch"}


def native_section(reps: int, fa: Path, fb: Path, row, notes: list[str], raw: dict) -> None:
    """Issue #22's goals, in one run: ``inspect --no-stats`` <= 0.25x ``import torch``;
    ``inspect`` >= 5x and ``diff`` >= 15x faster than plain torch (whole process); peak
    anonymous memory <= 200 MB. Each beside the same command with the torch reader."""
    size_gb = fa.stat().st_size / 1e9
    cases = (
        ("nostats", "`inspect --no-stats`", ours("inspect", fa, "--no-stats"),
         [PY, "-c", "import torch"], (fa,), "import torch"),
        ("inspect", f"`inspect` ({size_gb:.1f} GB)", ours("inspect", fa),
         w("inspect-base", fa), (fa,), "plain-torch script"),
        ("diff", f"`diff` (2 x {size_gb:.1f} GB)", ours("diff", fa, fb), w("diff-base", fa, fb),
         (fa, fb), "plain-torch script"),
    )
    for key, label, cmd, base, files, base_label in cases:
        rn, rt, rb = rounds(reps, [(cmd, AS_USER), (cmd, TORCH_READER), (base, {})], files)
        raw[f"native_{key}"] = [rn, rt, rb]
        if key == "nostats":
            for rs, who, target in ((rn, "native reader", "<= 0.25x"),
                                    (rt, "OPTSTATE_READER=torch", "(context)")):
                row(f"{label}, {who} (wall)", f"{med(rs, 'wall'):.2f} s",
                    f"{med(rb, 'wall'):.2f} s ({base_label})",
                    f"{1 / ratio(rs, rb, 'wall'):.2f}x the import", target)
        else:
            for rs, who, target in ((rn, "native reader", ">= 5x" if key == "inspect"
                                     else ">= 15x"),
                                    (rt, "OPTSTATE_READER=torch", "(context)")):
                row(f"{label}, {who}, whole process", f"{med(rs, 'wall'):.2f} s",
                    f"{med(rb, 'wall'):.2f} s ({base_label})",
                    f"{ratio(rs, rb, 'wall'):.2f}x faster", target)
        row(f"{label}, peak anonymous memory", f"{med(rn, 'anon_mb'):.0f} MB",
            f"{med(rb, 'anon_mb'):.0f} MB ({base_label})",
            f"torch reader: {med(rt, 'anon_mb'):.0f} MB", "<= 200 MB")
        if key != "nostats":
            notes.append(native_agreement(key, fa, fb, rb))
    notes.append("`inspect --no-stats` / `inspect` / `diff` with the native reader: "
                 + ", ".join(f"{what} {imports_torch(args)}" for what, args in (
                     ("--no-stats", ["inspect", str(fa), "--no-stats"]),
                     ("inspect", ["inspect", str(fa)]), ("diff", ["diff", str(fa), str(fb)]))))


def native_agreement(key: str, fa: Path, fb: Path, rb: list[dict]) -> str:
    """The native reader's ``--json`` against the plain-torch baseline's digest (as
    ``check_digests``) and against optstate's torch reader (the equivalence test's rules:
    tests/test_reader_equivalence.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_reader_equivalence import differences

    args = (["inspect", fa, "--json"] if key == "inspect"
            else ["diff", fa, fb, "--json", "--atol", "1e-8", "--rtol", "1e-5"])
    reports = []
    for env in (AS_USER, TORCH_READER):
        reports.append(json.loads(run(ours(*args), env=env)["stdout"]))
    native, torch_json = reports
    side = native["file"] if key == "inspect" else native["a"]
    reader = f"reader {side.get('reader', '(not said)')}"
    digest = inspect_digest(native) if key == "inspect" else diff_digest(native)
    vs_base = check_digests([{"digest": digest}], rb, key)
    diffs = differences(torch_json, native)
    vs_torch = ("JSON identical to OPTSTATE_READER=torch's (float sums within sum_rtol)"
                if not diffs else f"{len(diffs)} differences from OPTSTATE_READER=torch's "
                f"JSON, e.g. {diffs[0]}")
    return f"native {key} ({reader}): {vs_base}; {vs_torch}"


def imports_torch(args: list[str]) -> str:
    """'imports torch' or 'no torch', for ``optstate ARGS`` run as a user runs it."""
    probe = subprocess.run(
        [PY, "-c", "import sys, runpy; sys.argv = ['optstate', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('optstate', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)", *args],
        capture_output=True, text=True, cwd=ROOT,
        env={k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT)}.items()
             if k != "OPTSTATE_READER"})
    return "no torch" if "NO-TORCH" in probe.stderr else "imports torch"


# --------------------------------------------------------------------------- main


def kernel_path() -> str:
    """Which reduction code optstate ran: the C kernel's loop, or the torch fallback."""
    out = subprocess.run([PY, "-c", "from optstate.numeric.kernel_switch import current_path; "
                          "print(current_path())"],
                         capture_output=True, text=True, check=False).stdout.strip()
    loops = {"c-avx2": "C kernel, avx2 loop", "c-2lane": "C kernel, 2-lane loop",
             "torch": "no C kernel: torch fallback"}
    return loops.get(out, f"unknown ({out or 'optstate did not import'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--small", action="store_true",
                    help=f"{QUICK_PARAMS / 1e6:.0f}M params instead of "
                    f"{FULL_PARAMS / 1e6:.0f}M")
    ap.add_argument("--params", type=int, help="parameter count (overrides --quick)")
    ap.add_argument("--workdir", type=Path, help="where to build/keep the checkpoints "
                    "(default: a folder in the system temp dir, kept for the next run)")
    ap.add_argument("--reps", type=int, default=5, help="runs per side (default 5)")
    ap.add_argument("--only", default="startup,inspect,diff,nostats,native,simulate,cold",
                    help="comma-separated sections to run")
    ap.add_argument("--json", type=Path, help="also write all raw measurements here")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1:])
        return

    # compiled bytecode, as an installed copy has it (PYTHONDONTWRITEBYTECODE would
    # otherwise make every optstate run recompile its modules)
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "optstate")], check=False)
    n = a.params or (QUICK_PARAMS if a.quick else FULL_PARAMS)
    workdir = a.workdir or Path(tempfile.gettempdir()) / f"optstate-bench-{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    reps = a.reps
    rows: list[tuple[str, str, str, str, str]] = []
    notes: list[str] = []
    raw: dict[str, object] = {}

    def row(name: str, ours_v: str, base_v: str, ratio_v: str, target: str) -> None:
        rows.append((name, ours_v, base_v, ratio_v, target))
        print(f"  {name}: {ours_v} | {base_v} | {ratio_v} | {target}", file=sys.stderr,
              flush=True)

    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    fa = fb = None
    if only & {"inspect", "diff", "nostats", "native", "cold"}:
        fa, fb = build_files(workdir, n)
        size_gb = fa.stat().st_size / 1e9
        # One page-cache state for every run, as a sequential read (a copy, `cat`) leaves
        # it: files faulted in piecemeal through mmap (by an earlier process) sit in small
        # pages, and mapping them costs every mmap reader, optstate's and torch's, more
        # (here ~0.1 s per 4.8 GB to fault in, as much again to unmap at exit).
        evict(fa, fb)
        warm(fa, fb)

    if "startup" in only:
        ra, rb = pairs(reps * 2, ours("--help"), [PY, "-c", "import typer, rich"])
        row("`optstate --help` (wall)", f"{med(ra, 'wall'):.3f} s",
            f"{med(rb, 'wall'):.3f} s (import typer, rich)",
            f"{1 / ratio(ra, rb, 'wall'):.2f}x the import", "<= 1.3x")
        raw["help"] = [ra, rb]
        ra, rb = pairs(reps * 2, ours("--version"), [PY, "-c", "import typer, rich"])
        row("`optstate --version` (wall)", f"{med(ra, 'wall'):.3f} s",
            f"{med(rb, 'wall'):.3f} s (import typer, rich)",
            f"{1 / ratio(ra, rb, 'wall'):.2f}x the import", "<= 1.3x")
        probe = subprocess.run(
            [PY, "-c", "import sys, runpy; sys.argv = ['optstate', '--help']\n"
             "try:\n    runpy.run_module('optstate', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        notes.append("`optstate --help` imports torch: "
                     + ("yes (BAD)" if "NO-TORCH" not in probe.stderr else "no"))

    if "inspect" in only:
        ra, rb = pairs(reps, w("inspect-ours", fa), w("inspect-base", fa), (fa,))
        row(f"inspect, compute phase ({size_gb:.1f} GB)", f"{med(ra, 'compute'):.2f} s",
            f"{med(rb, 'compute'):.2f} s", f"{ratio(ra, rb, 'compute'):.2f}x faster",
            ">= 3x")
        row("inspect, peak anonymous memory", f"{med(ra, 'anon_mb'):.0f} MB",
            f"{med(rb, 'anon_mb'):.0f} MB", "", "<= 400 MB")
        notes.append(check_digests(ra, rb, "inspect"))
        raw["inspect_compute"] = [ra, rb]
        ra, rb = pairs(reps, ours("inspect", fa, "--json"), w("inspect-base", fa), (fa,))
        row("inspect, whole process", f"{med(ra, 'wall'):.2f} s", f"{med(rb, 'wall'):.2f} s",
            f"{ratio(ra, rb, 'wall'):.2f}x faster", ">= 1.5x")
        row("inspect CLI, peak anonymous memory", f"{med(ra, 'anon_mb'):.0f} MB",
            f"{med(rb, 'anon_mb'):.0f} MB", "", "<= 400 MB")
        raw["inspect_whole"] = [ra, rb]

    if "diff" in only:
        ra, rb = pairs(reps, w("diff-ours", fa, fb), w("diff-base", fa, fb), (fa, fb))
        row(f"diff, compute phase (2 x {size_gb:.1f} GB)", f"{med(ra, 'compute'):.2f} s",
            f"{med(rb, 'compute'):.2f} s", f"{ratio(ra, rb, 'compute'):.2f}x faster", ">= 4x")
        row("diff, peak anonymous memory", f"{med(ra, 'anon_mb'):.0f} MB",
            f"{med(rb, 'anon_mb'):.0f} MB", "", "<= 400 MB")
        notes.append(check_digests(ra, rb, "diff"))
        raw["diff_compute"] = [ra, rb]
        ra, rb = pairs(reps, ours("diff", fa, fb, "--json"), w("diff-base", fa, fb),
                       (fa, fb))
        row("diff, whole process", f"{med(ra, 'wall'):.2f} s", f"{med(rb, 'wall'):.2f} s",
            f"{ratio(ra, rb, 'wall'):.2f}x faster", ">= 2.5x")
        row("diff CLI, peak anonymous memory", f"{med(ra, 'anon_mb'):.0f} MB",
            f"{med(rb, 'anon_mb'):.0f} MB", "", "<= 400 MB")
        raw["diff_whole"] = [ra, rb]

    if "nostats" in only:
        # the second baseline pauses the cyclic collector during imports as optstate's
        # start-up does (optstate/_entry.py): it shows what optstate itself adds
        gc_torch = "import gc; gc.disable(); import torch; gc.freeze(); gc.enable()"
        for key, base, label, base_label, target in (
                ("nostats", "import torch", "`inspect --no-stats` (wall)",
                 " (import torch)", "<= +0.2 s"),
                ("nostats_gc", gc_torch, "`inspect --no-stats` vs a GC-paused import torch",
                 "", "(context)")):
            ra, rb = pairs(reps, ours("inspect", fa, "--no-stats"), [PY, "-c", base], (fa,))
            extra = statistics.median(x["wall"] - y["wall"]
                                      for x, y in zip(ra, rb, strict=True))
            row(label, f"{med(ra, 'wall'):.2f} s", f"{med(rb, 'wall'):.2f} s{base_label}",
                f"{extra:+.2f} s", target)
            raw[key] = [ra, rb]

    if "native" in only:
        native_section(reps, fa, fb, row, notes, raw)

    if "simulate" in only:
        out = workdir / "sim.pt"
        for name, label, target in (("sgd", "SGD 2x2, 10 000 steps", "<= +10 %"),
                                    ("adam", "Adam 10M params, 50 steps", "<= +3 %")):
            ra, rb = pairs(reps, w(f"{name}-ours", out), w(f"{name}-base", out))
            row(f"simulate {label}, loop (compute)", f"{med(ra, 'compute'):.2f} s",
                f"{med(rb, 'compute'):.2f} s (hand loop)",
                f"{(1 / ratio(ra, rb, 'compute') - 1) * 100:+.1f} %", target)
            raw[f"sim_{name}_compute"] = [ra, rb]
            if name == "adam":
                # context: the same hand loop saving as durably as optstate does (a temp
                # file, fsync, rename; torch.save alone leaves the data in the page cache)
                ra, rb = pairs(reps, w("adam-ours", out), w("adam-base-durable", out))
                row(f"simulate {label}, loop vs a hand loop that saves durably",
                    f"{med(ra, 'compute'):.2f} s", f"{med(rb, 'compute'):.2f} s",
                    f"{(1 / ratio(ra, rb, 'compute') - 1) * 100:+.1f} %", "(context)")
                raw["sim_adam_durable"] = [ra, rb]
            ra, rb = pairs(reps, ours(*sim_cli_args(name, out)), w(f"{name}-base", out))
            row(f"simulate {label}, whole process", f"{med(ra, 'wall'):.2f} s",
                f"{med(rb, 'wall'):.2f} s (hand loop)",
                f"{(1 / ratio(ra, rb, 'wall') - 1) * 100:+.1f} %", target)
            raw[f"sim_{name}_whole"] = [ra, rb]

    if "cold" in only:
        dd = ["dd", f"if={fa}", "of=/dev/null", "bs=16M"]
        ra, rb = pairs(max(3, reps // 2), ours("inspect", fa, "--json"), dd, (fa,), cold=True)
        speed_a = [fa.stat().st_size / r["wall"] / 1e9 for r in ra]
        speed_b = [fa.stat().st_size / r["wall"] / 1e9 for r in rb]
        row("cold cache: inspect vs dd (whole process)",
            f"{statistics.median(speed_a):.2f} GB/s", f"{statistics.median(speed_b):.2f} GB/s",
            f"{statistics.median(x / y for x, y in zip(speed_a, speed_b, strict=True)):.2f}x dd",
            ">= 0.8x")
        raw["cold"] = [ra, rb]

    load = os.getloadavg()
    print()
    print(f"optstate benchmark: {n / 1e6:.0f}M-param Adam checkpoints ({workdir}), "
          f"{reps} runs per side, medians; ratios are per A/B pair")
    print(f"machine: {os.cpu_count()} cores, load average after the run {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; torch threads default; {kernel_path()}")
    print()
    print("| measurement | optstate | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for note in notes:
        print(f"- {note}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "notes": notes, "raw": raw}, indent=1))


if __name__ == "__main__":
    main()
