"""Time optstate's 8-bit dequantization against the libraries' own, on CPU (issue #19).

    /work/fixenv/bin/python bench/dequant_bench.py            # 100M elements, 5 rounds
    /work/fixenv/bin/python bench/dequant_bench.py --numel 20000000 --reps 3

Runs in the fixture venv (it has bitsandbytes and torchao; optstate's .venv never does)
with optstate imported from this checkout. One 8-bit state of ``--numel`` elements is
quantized by bitsandbytes (``quantize_blockwise``, block size 256, the optimizers' size)
and by torchao (``OptimState8bit``, block size 256); then, alternating, each library's
own dequantization and optstate's (``optstate.numeric.dequant``) are timed in this one
process (who goes first alternates; a pause before each run), and the median of the
per-round ratios is printed. The results are compared
bit for bit first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from optstate.numeric import dequant  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numel", type=int, default=100_000_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    args.numel -= args.numel % 256  # torchao needs whole blocks (100M is 390,625 of them)
    import bitsandbytes.functional as F
    from torchao.optim.subclass_8bit import OptimState8bit

    torch.manual_seed(0)
    x = torch.randn(args.numel) * 1e-3
    codes, qs = F.quantize_blockwise(x, blocksize=256)
    absmax, qmap = qs.absmax, qs.code
    ao = OptimState8bit.zeros(x.shape, signed=True, block_size=256)
    ao.copy_(x)
    ao_codes, ao_scale, ao_qmap = ao.codes, ao.scale, ao.qmap
    del x

    cases = {
        "bitsandbytes dequantize_blockwise": (
            lambda: F.dequantize_blockwise(codes, absmax=absmax, code=qmap, blocksize=256),
            lambda: dequant.bnb_8bit(codes, qmap, absmax)[0]),
        "torchao OptimState8bit.dequantize": (
            lambda: ao.dequantize(),
            lambda: dequant.torchao_8bit(ao_codes, ao_scale, ao_qmap, 256)),
    }
    print(f"{args.numel:,} elements, {args.reps} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, (theirs, ours) in cases.items():
        a, b = theirs(), ours()
        assert torch.equal(a, b), f"{name}: not bit for bit equal"
        del a, b
        t_lib, t_ours, ratios = [], [], []
        for i in range(args.reps):
            # who goes first alternates, and each run starts after a pause: bitsandbytes'
            # C kernel runs on OpenMP threads that keep spinning a while after it returns,
            # which slowed whatever ran right after it by 1.5-2x in the first version
            order = (theirs, ours) if i % 2 == 0 else (ours, theirs)
            got = {}
            for fn in order:
                time.sleep(0.5)
                got[fn], out = timed(fn)
                del out
            tl, to = got[theirs], got[ours]
            t_lib.append(tl)
            t_ours.append(to)
            ratios.append(to / tl)
        print(f"{name}: library {statistics.median(t_lib):.3f} s, optstate "
              f"{statistics.median(t_ours):.3f} s, ratio optstate/library "
              f"{statistics.median(ratios):.2f} (median of {args.reps}; bit for bit equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
