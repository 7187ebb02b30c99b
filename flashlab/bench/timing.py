"""Timing on the GPU: CUDA events around queued calls (time_gpu), and the header that says
which GPU, driver and CuPy the numbers came from (device_header). Both need CuPy."""
from __future__ import annotations

import statistics
import time


def device_header() -> dict:
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    return {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "compute_capability": dev.compute_capability,
        "driver": cp.cuda.runtime.driverGetVersion(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def time_gpu(fn, states, warmup=3, repeat=10) -> tuple[float, float]:
    """(median milliseconds of fn(state) over `repeat` calls rotating through `states`, host
    microseconds per call).

    The calls are queued back to back, each between two CUDA events, and the host waits once at
    the end (as triton's do_bench and FlashAttention's benchmarks do): while the host launches
    faster than the GPU runs, an event pair measures the GPU's time for that call, not the
    Python launch overhead in front of it. Where the host is the slower side (small N), the
    GPU idles between calls and that wait is in the number. The host's own time per call is
    the second value."""
    import cupy as cp

    for w in range(warmup):
        fn(states[w % len(states)])
    cp.cuda.Device().synchronize()
    starts = [cp.cuda.Event() for _ in range(repeat)]
    stops = [cp.cuda.Event() for _ in range(repeat)]
    t0 = time.perf_counter()
    for r in range(repeat):
        starts[r].record()
        fn(states[r % len(states)])
        stops[r].record()
    host_us = (time.perf_counter() - t0) / repeat * 1e6
    stops[-1].synchronize()
    times = [cp.cuda.get_elapsed_time(a, b) for a, b in zip(starts, stops)]
    return statistics.median(times), host_us
