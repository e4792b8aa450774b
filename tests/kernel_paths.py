"""The autouse fixture that runs a test module through every kernel path.

optstate/kernels.py computes with the C kernel (optstate/_ckernels.c: an AVX2 loop and a
2-lane loop) where it is built, else with torch; the numbers must not depend on the path.
"""

from __future__ import annotations

import pytest

from optstate import kernels


@pytest.fixture(autouse=True, params=["c-avx2", "c-2lane", "torch"])
def kernel_path(request, monkeypatch):
    """Every test runs through each path: the C kernel (optstate/_ckernels.c) with its
    AVX2 loop and with its 2-lane loop, and the pure-torch path that replaces it where
    it is not built."""
    if request.param.startswith("c"):
        if kernels._ckernels is None:
            pytest.skip("the C kernel is not built (see test_c_kernel_is_built)")
        wide = request.param == "c-avx2"
        if wide and "avx2" not in kernels._ckernels.vector_paths()[0]:
            pytest.skip("this CPU has no AVX2")
        before = kernels._ckernels.vector_paths()[1] == "avx2"
        kernels._ckernels.vector_paths(wide)
        request.addfinalizer(lambda: kernels._ckernels.vector_paths(before))
    monkeypatch.setattr(kernels, "USE_C", request.param != "torch")
    return request.param
