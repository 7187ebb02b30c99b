"""Shared fixtures. GPU tests carry the `gpu` marker and are skipped where no CUDA device is found."""
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


GPU = _gpu_available()


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU with CuPy found")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
