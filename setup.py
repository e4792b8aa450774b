"""Build the optional C kernel (optstate/numeric/_ckernels.c); everything else is in pyproject.toml.

Both extensions are optional: where no C compiler is available (or it fails) the install
still succeeds, with a warning per extension, and optstate runs its pure-torch path
(slower on big files): the same counts, minima, maxima and max differences, and norms and
means within the float64 bound stated in optstate/numeric/tolerance.py (they differ in
the last digits, ~1e-15 relative: another summation order). OPTSTATE_NO_C=1 at run time
keeps built extensions from being imported (optstate/base/native.py). Shown by:
CC=false pip wheel --no-deps --no-build-isolation -w DIR .  (a wheel without .so files).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the optional extensions with GCC-like compilers only (GCC, Clang, MinGW). The
    C kernel's vector loops use GCC/Clang vector extensions (``__attribute__((vector_size))``,
    ``__builtin_cpu_supports``), which MSVC does not have (and _sigbus handles a POSIX
    signal Windows does not send), so with MSVC they are skipped with a note instead of
    failing to compile; optstate then runs without them."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            print("optstate: MSVC cannot compile the optional C kernel (it uses GCC/Clang "
                  "vector extensions); optstate will use its torch path")
            self.extensions = []
            return
        for ext in self.extensions:
            # -ffp-contract=off: no fused multiply-add, so each operation rounds as torch's.
            ext.extra_compile_args = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
        super().build_extensions()


setup(ext_modules=[Extension("optstate.numeric._ckernels", ["optstate/numeric/_ckernels.c"],
                             optional=True),
                   # SIGBUS from a truncated input: a message and exit 2 (readguard.py)
                   Extension("optstate.io._sigbus", ["optstate/io/_sigbus.c"], optional=True)],
      cmdclass={"build_ext": OptionalBuildExt})
