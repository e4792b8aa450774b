"""Build the optional C kernel (optstate/_ckernels.c); everything else is in pyproject.toml.

The extension is optional: where no C compiler is available the install still succeeds
and optstate computes the same numbers with its pure-torch path (slower on big files).
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    args = ["/O2", "/fp:precise"]
else:
    # -ffp-contract=off: no fused multiply-add, so each operation rounds as torch's do.
    args = ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("optstate._ckernels", ["optstate/_ckernels.c"],
                             extra_compile_args=args, optional=True)])
