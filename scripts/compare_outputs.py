"""Record what a fixed set of CLI invocations print and write; compare two recordings.

    python scripts/compare_outputs.py record OUTDIR [--optstate CMD] [--jobs N]
    python scripts/compare_outputs.py compare DIR_A DIR_B

The check that a refactoring changed no behaviour (issue #17): record with the old
checkout's interpreter, record with the new one's, compare. For example::

    /tmp/base/.venv/bin/python scripts/compare_outputs.py record /tmp/golden-before
    .venv/bin/python scripts/compare_outputs.py record /tmp/golden-after
    python scripts/compare_outputs.py compare /tmp/golden-before /tmp/golden-after

``record`` runs every invocation in ``SCENARIOS`` and writes one file per invocation to
OUTDIR (``NNN-scenario-name.txt``): the command line (as ``optstate ...``, whatever
binary ran it), the exit status, stdout, stderr, and the SHA-256 and size of every file
the command created, changed or removed in its working folder (the checkpoint that
``simulate --save`` writes, a converted DCP folder, a partial file a failure left
behind...). ``_inputs.txt`` holds the hashes of the sample checkpoints the invocations
start from, so a recording made from other inputs shows up too.

How it runs: the invocations are grouped in scenarios; each scenario runs in order in its
own folder of one fresh temp folder, which starts with a copy of ``sample_checkpoints/``
and the config files in ``CONFIGS``; later invocations of a scenario use what earlier
ones wrote. Scenarios run ``--jobs`` at a time (default 2); nothing depends on that.
``--optstate`` (default: the ``optstate`` console script beside ``sys.executable``) is the
command run, split like a shell would. The environment is pinned as
``scripts/check_readme.py`` pins it: the variables that change rich's or Python's
output removed, ``COLUMNS=100``, ``LINES=40``, ``NO_COLOR=1``, ``TERM=dumb``, UTF-8,
unbuffered, stdin empty, no ``PYTHONPATH`` (the package is the one installed beside the
interpreter) and one torch thread (``OMP_NUM_THREADS=1``: the same reductions whatever
the machine's load; also what keeps ``--jobs 2`` from oversubscribing two cores).

Normalisations (what legitimately varies from run to run; nothing else is touched):

1. stdout and stderr: the temp folder's absolute path becomes ``<TMP>``;
2. stdout and stderr: durations (a number followed by ``s`` or ``ms``: ``1.2 s``,
   ``35ms``; check_readme.py's pattern, but never an exponent: ``1e-3s``) become ``<T>``;
3. stdout, stderr and written files: the pid and random part of optstate's temp names
   (``.NAME.p0012345.1a2b3c4d.optstate-tmp``, see ``optstate atomic``) become
   ``p<PID>.<RAND>``;
4. written files, before hashing: a DCP folder's ``.metadata`` (a pickle) records the
   temp folder it was written into (3.) and a random ``save_id`` UUID, which becomes
   ``<UUID>``; such a file's line says ``(normalised)``. torch.save zips are hashed as
   they are: they are deterministic (the same state gives the same bytes).

``compare`` prints a unified diff for every recording that differs (or is missing on one
side) and ends with ``N invocations compared, M differ``. Exit status: 0 when none
differ, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
TIMEOUT = 180  # seconds per invocation
COLUMNS, LINES = 100, 40

# check_readme.py's pattern, and not after "-" (the exponent of 1e-3 is no duration)
_DURATION = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?\s?(?:ms|s)(?![\w])")
_TMPNAME = re.compile(r"\.p\d{7}\.[0-9a-f]{8}\.optstate-tmp")
_TMPNAME_B = re.compile(rb"\.p\d{7}\.[0-9a-f]{8}\.optstate-tmp")
_UUID_B = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Config files written into every scenario folder before it starts.
CONFIGS = {
    "adamw.toml": """\
optimizer = "AdamW"
steps = 6
grad = "quadratic"

[hyperparams]
lr = 0.01
betas = [0.9, 0.95]

[[groups]]
shapes = ["2x2"]
names = ["w"]

[[groups]]
shapes = ["3"]
names = ["b"]
weight_decay = 0.0

[scheduler]
name = "StepLR"
step_size = 4
gamma = 0.5
""",
    "run.toml": """\
optimizer = "AdamW"
[hyperparams]
lr = 3e-4
[[groups]]
shapes = ["4x4", "4"]
[scheduler]
name = "StepLR"
step_size = 10
""",
    "sgd.json": """\
{"optimizer": "SGD", "steps": 7, "seed": 3, "grad": "normal",
 "hyperparams": {"lr": 0.05, "momentum": 0.8, "nesterov": true},
 "groups": [{"shapes": ["3x2", "2"], "names": ["fc.weight", "fc.bias"]}]}
""",
    "broken.toml": "optimizer = \"Adam\"\n[hyperparams\nlr = 0.1\n",
    "notes.txt": "not a checkpoint\n",
}

S = "sample_checkpoints/"

# scenario -> invocations (arguments after ``optstate``), run in this order in one folder.
SCENARIOS: dict[str, list[list[str]]] = {
    "top": [
        [],
        ["--version"],
        ["--help"],
        *[[cmd, "--help"] for cmd in
          ("simulate", "inspect", "diff", "check", "set", "convert", "compare")],
        ["nosuchcommand"],
        ["inspect"],
    ],
    "simulate": [
        ["simulate"],
        ["simulate", "--lr", "0.1", "--momentum", "0.9", "--steps", "10", "--save", "sgd.pt"],
        ["simulate", "-O", "sgd", "--lr", "0.1", "--momentum", "0.9", "--set", "nesterov=true",
         "--steps", "5", "--json"],
        ["simulate", "-O", "adam", "--lr", "0.01", "--steps", "10", "--save", "adam.pt",
         "--json"],
        ["simulate", "-O", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--shape", "4x4",
         "--shape", "4", "--steps", "12", "--scheduler", "StepLR", "--scheduler-arg",
         "step_size=5", "--with-params", "--save", "adamw.pt", "--save-every", "4"],
        ["simulate", "--config", "adamw.toml", "--with-params", "--save", "cfg.pt",
         "--save-every", "3"],
        ["simulate", "--config", "adamw.toml", "--steps", "3", "--resume", "cfg.step000003.pt",
         "--with-params", "--save", "resumed.pt"],
        ["diff", "cfg.pt", "resumed.pt"],
        ["simulate", "--config", "sgd.json", "--json"],
        ["simulate", "-O", "rmsprop", "--grad", "normal", "--shape", "3x3", "--steps", "30",
         "--record-every", "7", "--json"],
        ["simulate", "--lr", "10", "--grad", "rosenbrock", "--shape", "2", "--steps", "50",
         "--json"],
        ["simulate", "-O", "adagrad", "--grad", "quadratic", "--grad-value", "2", "--steps",
         "8", "--record-every", "1"],
        ["simulate", "--momentum", "0.9", "--grad", "none", "--steps", "3", "--zero-grad",
         "zeros"],
        ["simulate", "-O", "Adam", "--lr", "0.01", "--shape", "2x2", "--group", "3 lr=0.001",
         "--set", "amsgrad=true", "--steps", "5", "--save", "groups.pt"],
        ["simulate", "--config", S + "adamw_scheduler.json", "--resume", S + "hf-checkpoint-12",
         "--steps", "3"],
        # errors
        ["simulate", "-O", "adamm"],
        ["simulate", "-O", "adam", "--set", "momentum=0.9"],
        ["simulate", "--shape", "2x0"],
        ["simulate", "--steps", "abc"],
        ["simulate", "--save", "sgd.pt"],
        ["simulate", "-O", "sgd", "--resume", "adam.pt"],
        ["simulate", "--config", "missing.toml"],
        ["simulate", "--config", "broken.toml"],
        ["simulate", "--resume", "notes.txt"],
    ],
    "inspect": [
        ["inspect", S + "sgd_momentum.pt"],
        ["inspect", S + "sgd_momentum.pt", "--json"],
        ["inspect", S + "adam_two_groups.pt"],
        ["inspect", S + "adam_two_groups.pt", "--json"],
        ["inspect", S + "adam_two_groups.pt", "-g", "1", "--max-params", "1"],
        ["inspect", S + "adam_two_groups.pt", "-p", "b1", "--hist"],
        ["inspect", S + "sick_sgd.pt", "--hist"],
        ["inspect", S + "sick_sgd.pt", "--json"],
        ["inspect", S + "adamw_scheduler.pt"],
        ["inspect", S + "lightning.ckpt"],
        ["inspect", S + "lightning.ckpt", "--key", "optimizer_states[0]", "--json"],
        ["inspect", S + "hf-checkpoint-12"],
        ["inspect", S + "model.bin"],
        ["convert", S + "adam_two_groups.pt", "adam_dcp"],
        ["inspect", "adam_dcp"],
        ["inspect", "adam_dcp", "--no-stats", "--layout"],
        ["inspect", "adam_dcp", "--json"],
        # errors
        ["inspect", "missing.pt"],
        ["inspect", "notes.txt"],
        ["inspect", S + "lightning.ckpt", "--key", "optimizer_states[7]"],
        ["inspect", S + "sgd_momentum.pt", "-p", "99"],
        ["inspect", S + "sgd_momentum.pt", "--values", "--group", "3"],
        ["inspect", S + "sgd_momentum.pt", "--max-params", "abc"],
    ],
    "diff": [
        ["simulate", "-O", "adam", "--lr", "0.01", "--steps", "10", "--save", "a.pt"],
        ["simulate", "-O", "adam", "--lr", "0.01", "--steps", "11", "--save", "b.pt"],
        ["diff", "a.pt", "a.pt"],
        ["diff", "a.pt", "b.pt"],
        ["diff", "-q", "a.pt", "b.pt"],
        ["diff", "--json", "a.pt", "b.pt"],
        ["diff", "-v", "a.pt", "b.pt"],
        ["diff", "--atol", "0.01", "a.pt", "b.pt"],
        ["diff", "--rtol", "0.5", "--ignore", "step", "a.pt", "b.pt", "--json"],
        ["diff", "--max-diffs", "1", "a.pt", "b.pt"],
        ["diff", S + "sick_sgd.pt", S + "sick_sgd.pt"],
        ["diff", "--nan-differs", S + "sick_sgd.pt", S + "sick_sgd.pt"],
        ["diff", S + "sgd_momentum.pt", "a.pt"],
        ["diff", S + "lightning.ckpt", "a.pt", "--key-a", "optimizer_states[0]", "--quiet"],
        ["diff", "--match", "name", S + "adam_two_groups.pt", S + "adam_two_groups.pt", "-v"],
        ["diff", S + "adamw_scheduler.pt", S + "hf-checkpoint-12", "--json"],
        # errors
        ["diff", "a.pt", "missing.pt"],
        ["diff", "a.pt", "notes.txt"],
        ["diff", "--atol", "abc", "a.pt", "b.pt"],
        ["diff", "--match", "sideways", "a.pt", "b.pt"],
    ],
    "set-check": [
        ["simulate", "-O", "AdamW", "--lr", "1e-3", "--shape", "4x4", "--shape", "4", "--steps",
         "20", "--scheduler", "StepLR", "--scheduler-arg", "step_size=10", "--save", "run.pt"],
        ["check", "run.pt", "--config", "run.toml"],
        ["check", "run.pt", "--config", "run.toml", "--json"],
        ["set", "run.pt", "-o", "run-fixed.pt", "--base-lr", "0.0003"],
        ["check", "run-fixed.pt", "--config", "run.toml"],
        ["check", S + "adamw_scheduler.pt", "--config", S + "adamw_scheduler.json"],
        ["check", S + "sgd_momentum.pt", "--config", "run.toml"],
        ["check", S + "sgd_momentum.pt", "--config", "run.toml", "--json"],
        ["set", S + "sgd_momentum.pt", "-o", "sgd-lr.pt", "--lr", "0.01", "--json"],
        ["diff", S + "sgd_momentum.pt", "sgd-lr.pt"],
        ["set", S + "adam_two_groups.pt", "-o", "a2.pt", "--set", "betas=0.9,0.95",
         "--group", "1"],
        ["set", "run.pt", "--lr", "0.1", "--dry-run"],
        ["set", "run.pt", "-o", "run-sched.pt", "--scheduler-set", "step_size=5",
         "--lr", "2e-3", "--no-scheduler"],
        ["set", "sgd-lr.pt", "--in-place", "--set", "momentum=0.5"],
        ["set", S + "hf-checkpoint-12", "-o", "hf-out", "--lr", "1e-4"],
        ["set", S + "lightning.ckpt", "-o", "l.ckpt", "--key", "optimizer_states[0]",
         "--lr", "0.5"],
        # errors
        ["set", S + "sgd_momentum.pt", "-o", "sgd-lr.pt", "--lr", "0.02"],
        ["set", S + "sgd_momentum.pt", "-o", "sgd-lr.pt", "--lr", "0.02", "--force"],
        ["set", S + "sgd_momentum.pt", "-o", "x.pt", "--set", "nosuch=1"],
        ["set", "missing.pt", "-o", "x.pt", "--lr", "0.1"],
        ["check", "run.pt"],
    ],
    "convert": [
        ["convert", S + "sgd_momentum.pt", "sgd_dcp"],
        ["convert", "sgd_dcp", "back.pt"],
        ["diff", S + "sgd_momentum.pt", "back.pt"],
        ["convert", S + "adamw_scheduler.pt", "aw_dcp", "--json"],
        ["convert", "aw_dcp", "aw.pt", "--json"],
        ["diff", S + "adamw_scheduler.pt", "aw_dcp"],
        ["convert", S + "lightning.ckpt", "l_dcp"],
        ["convert", S + "sgd_momentum.pt", "sgd_dcp"],
        ["convert", S + "adam_two_groups.pt", "sgd_dcp", "--force"],
        ["convert", "missing.pt", "x_dcp"],
        ["convert", S + "sgd_momentum.pt", "notes.txt", "--force"],
        ["compare", "-O", "sgd,adam", "--steps", "20"],
        ["compare", "-O", "sgd,adam,adamw", "--set", "lr=0.01", "--steps", "30", "--json"],
        ["compare", "-O", "sgd,adamm"],
    ],
}


def default_optstate() -> str:
    """The ``optstate`` console script of the interpreter running this script."""
    return str(Path(sys.executable).parent / "optstate")


def environment(optstate: list[str]) -> dict[str, str]:
    """A quiet, colourless, fixed-size terminal-like environment (as check_readme.py's)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "TERMINAL_WIDTH",
                        "LINES", "COLUMNS", "OPTSTATE_DEBUG", "OPTSTATE_PROGRESS_AFTER",
                        "PYTHONSTARTUP", "PYTHONPATH", "NO_COLOR")}
    bindir = str(Path(optstate[0]).parent) if os.sep in optstate[0] else ""
    path = env.get("PATH", "")
    env.update(PATH=f"{bindir}{os.pathsep}{path}" if bindir else path,
               COLUMNS=str(COLUMNS), LINES=str(LINES), NO_COLOR="1", TERM="dumb",
               PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", LC_ALL="C.UTF-8",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def normalise_text(text: str, tmp: str) -> str:
    text = text.replace(tmp, "<TMP>")  # 1.
    text = _DURATION.sub("<T>", text)  # 2.
    return _TMPNAME.sub(".p<PID>.<RAND>.optstate-tmp", text)  # 3.


def file_digest(path: Path, tmp: str) -> tuple[str, int, bool]:
    """SHA-256 and size of a written file; DCP ``.metadata`` normalised first (4.)."""
    data = path.read_bytes()
    size = len(data)
    normalised = False
    if path.name == ".metadata":
        new = _UUID_B.sub(b"<UUID>", _TMPNAME_B.sub(b".p<PID>.<RAND>.optstate-tmp",
                                                      data.replace(tmp.encode(), b"<TMP>")))
        normalised = new != data
        data = new
    return hashlib.sha256(data).hexdigest(), size, normalised


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes, to see which changed."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def run_one(optstate: list[str], args: list[str], cwd: Path, env: dict[str, str],
            tmp: str) -> str:
    before = snapshot(cwd)
    try:
        r = subprocess.run([*optstate, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=TIMEOUT)
        status, stdout, stderr = str(r.returncode), r.stdout, r.stderr
    except subprocess.TimeoutExpired:
        status, stdout, stderr = f"timed out after {TIMEOUT} s", b"", b""
    after = snapshot(cwd)
    files = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            files.append(f"removed  {name}")
        elif before.get(name) != after[name]:
            digest, size, normalised = file_digest(cwd / name, tmp)
            note = "  (normalised)" if normalised else ""
            files.append(f"{'new' if name not in before else 'changed':8} {name}  "
                         f"{size} bytes  sha256 {digest}{note}")
    parts = [
        "$ " + shlex.join(["optstate", *args]),
        f"exit: {status}",
        "--- stdout",
        normalise_text(stdout.decode("utf-8", "replace"), tmp).rstrip("\n"),
        "--- stderr",
        normalise_text(stderr.decode("utf-8", "replace"), tmp).rstrip("\n"),
        "--- files written",
        *files,
    ]
    return "\n".join(parts) + "\n"


def slug(args: list[str]) -> str:
    text = "-".join(args) or "bare"
    return re.sub(r"[^A-Za-z0-9_.=]+", "_", text)[:60].strip("_")


def record(outdir: Path, optstate_cmd: str, jobs: int) -> int:
    optstate = shlex.split(optstate_cmd)
    if not optstate or (os.sep in optstate[0] and not os.access(optstate[0], os.X_OK)):
        print(f"Error: {optstate_cmd!r} is not an executable", file=sys.stderr)
        return 2
    if outdir.exists() and any(outdir.iterdir()):
        print(f"Error: {outdir} exists and is not empty", file=sys.stderr)
        return 2
    outdir.mkdir(parents=True, exist_ok=True)
    env = environment(optstate)
    numbered: dict[str, list[tuple[int, list[str]]]] = {}
    n = 0
    for scenario, invocations in SCENARIOS.items():
        for args in invocations:
            n += 1
            numbered.setdefault(scenario, []).append((n, args))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare_outputs.") as top:
        tmp = str(Path(top).resolve())
        inputs = []
        for p in sorted(SAMPLES.rglob("*")):
            if p.is_file():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                inputs.append(f"{p.relative_to(SAMPLES).as_posix()}  {digest}")
        (outdir / "_inputs.txt").write_text("\n".join(inputs) + "\n")

        def run_scenario(scenario: str) -> None:
            cwd = Path(tmp) / scenario
            shutil.copytree(SAMPLES, cwd / SAMPLES.name)
            for name, text in CONFIGS.items():
                (cwd / name).write_text(text)
            for i, args in numbered[scenario]:
                out = run_one(optstate, args, cwd, env, tmp)
                (outdir / f"{i:03d}-{scenario}-{slug(args)}.txt").write_text(out)

        # the longest scenarios first, so two workers finish together
        order = sorted(numbered, key=lambda s: -len(numbered[s]))
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            for future in [pool.submit(run_scenario, s) for s in order]:
                future.result()
    print(f"{n} invocations recorded in {outdir} ({time.monotonic() - started:.0f} s)")
    return 0


def compare(a: Path, b: Path, out=sys.stdout) -> int:
    for d in (a, b):
        if not d.is_dir():
            print(f"Error: {d} is not a folder", file=sys.stderr)
            return 2
    names = sorted({p.name for p in a.glob("*.txt")} | {p.name for p in b.glob("*.txt")})
    compared = differ = 0
    inputs_differ = False
    for name in names:
        counted = name[:1].isdigit()
        compared += counted
        pa, pb = a / name, b / name
        la = pa.read_text().splitlines() if pa.exists() else []
        lb = pb.read_text().splitlines() if pb.exists() else []
        if pa.exists() and pb.exists() and la == lb:
            continue
        differ += counted
        inputs_differ = inputs_differ or not counted
        if not pa.exists() or not pb.exists():
            out.write(f"{name}: only in {a if pa.exists() else b}\n")
        out.writelines(ln + "\n" for ln in difflib.unified_diff(
            la, lb, str(pa), str(pb), lineterm="", n=3))
        out.write("\n")
    if inputs_differ:  # the two recordings started from other samples: exit 1 all the same
        out.write("the recordings' inputs differ (_inputs.txt above)\n")
    out.write(f"{compared} invocations compared, {differ} differ\n")
    return 1 if differ or inputs_differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the invocations; write one file each to OUTDIR")
    rec.add_argument("outdir", type=Path)
    rec.add_argument("--optstate", default=default_optstate(),
                     help="the command to run (default: the optstate beside this Python)")
    rec.add_argument("--jobs", type=int, default=2, help="scenarios run at once")
    cmp_ = sub.add_parser("compare", help="diff two recordings; exit 1 if any differ")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.outdir, args.optstate, args.jobs)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
