"""Shared fixtures. GPU tests carry the `gpu` marker and are skipped where no CUDA device is found."""
import os
import zlib

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run and machine (a failure in CI is a failure
# here); the examples still come from hypothesis' search, not from a hand-picked list.
settings.register_profile("flashlab", derandomize=True, print_blob=True)
settings.load_profile("flashlab")


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _cxx_available() -> bool:
    try:
        from flashlab.cpu import build

        build.compiler()
        return True
    except RuntimeError:
        return False


GPU = _gpu_available()
# CI must run the CPU kernel tests: there a missing compiler fails them instead of skipping
CXX = _cxx_available() or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU with CuPy found")
    skip_cxx = pytest.mark.skip(reason="no C++ compiler for the CPU backend (g++, clang++, $CXX)")
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip_gpu)
        if "cpu_kernel" in item.keywords and not CXX:
            item.add_marker(skip_cxx)


def rel_err(x, ref) -> float:
    """max |x - ref| / max(1, max |ref|)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))


@pytest.fixture
def rng(request):
    # a fresh, test-specific stream: no two tests share inputs, every run of a test the same.
    # crc32, not hash(): str hashes are salted per process (PYTHONHASHSEED), so hash() would give
    # every run (and every pytest-xdist worker) different inputs
    seed = zlib.crc32(request.node.nodeid.encode("utf-8"))
    return np.random.default_rng(seed)


def qkv(rng, B, H, Nq, Nk, d, dtype=np.float64):
    q = rng.standard_normal((B, H, Nq, d)).astype(dtype)
    k = rng.standard_normal((B, H, Nk, d)).astype(dtype)
    v = rng.standard_normal((B, H, Nk, d)).astype(dtype)
    return q, k, v
