"""cpu_bench: without a GPU, the NumPy step-throughs (each kernel's reference in the registry,
spec.reference_fn) checked against the float64 oracle, then timed with perf_counter.

In float16 / bfloat16 the registry's baseline (standard attention) runs as lowp.naive_lowp_*,
with S, P, O stored in that dtype: the yardstick of FlashAttention's 2x rule, a named special
case here on purpose."""
from __future__ import annotations

import inspect
import statistics
import time

import numpy as np

from .. import lowp, registry
from .report import Report, Row, attention_flops, set_speedups


def cpu_kernels(dtype="float32") -> tuple:
    """The step-throughs cpu_bench times by default (and all it can time) in `dtype`: the
    kernels that take it, and in float16 / bfloat16 also the baseline (the 2x rule's yardstick)."""
    takes = registry.for_dtype(dtype)
    if dtype == "float32":
        return takes
    return tuple(n for n in registry.names() if n in takes or registry.get(n).baseline)


CPU_LOWP_KERNELS = cpu_kernels("float16")  # on CPU, 16-bit naive is lowp.naive_lowp_* (the 2x rule's yardstick)


def _cpu_fns(name, low):
    """(forward(q, k, v, causal) -> (o, lse), backward(do, q, k, v, o, lse, causal) -> (dq, ...))."""
    spec = registry.get(name)
    if low and spec.baseline:  # standard attention in 16 bits: the 2x rule's yardstick
        fwd, bwd = lowp.naive_lowp_forward, lowp.naive_lowp_backward
    else:
        fwd, bwd = spec.reference_fn("forward"), spec.reference_fn("backward")
    if "lse" not in inspect.signature(bwd).parameters:  # it recomputes P from q, k (A0)
        return fwd, (lambda do, q, k, v, o, lse, causal: bwd(do, q, k, v, causal))
    return fwd, bwd


def cpu_bench(seqs, d=64, causal=False, backward=False, repeat=3, kernels=None, batch=None,
              heads=None, tokens=None, dtype="float32", progress=None):
    """Time the NumPy step-throughs with perf_counter (median of `repeat` calls). Returns a Report.

    float32 (default kernels naive, fa1, fa2): the references of A0, A1/B1 and F2/G2 run in
    float32 NumPy, each checked against float64 naive attention (the oracle) before timing.
    float16 / bfloat16 (default, and only, kernels naive, tc): tc is reference.tc_forward /
    tc_backward (16-bit inputs, fp32 sums, rounded where kernels/tc.cu rounds), naive is standard
    attention with S, P, O stored in that dtype (lowp.naive_lowp_*); both are held to
    FlashAttention's 2x rule, as gpu_bench holds tc. Kernels that take the other dtype are not
    run (a note says so). Inputs are (B, H, N, d): B = batch, else tokens // N when tokens is
    given, else 1; H = heads or 1. The backward check is dQ, as on the GPU.
    """
    dtype = "float32" if dtype == "float32" else lowp.lowp_dtype(dtype).name
    low = dtype != "float32"
    report = Report({"device": "CPU (no CUDA device found)", "dtype": dtype,
                     "causal": bool(causal),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    if low:
        report.header["check"] = "2x rule: error <= 2 x error of 16-bit standard attention (ratio shown)"
    can = cpu_kernels(dtype)
    kernels = list(dict.fromkeys(can if kernels is None else kernels))
    for name in [n for n in kernels if n not in can]:
        report.notes.append(f"{name} is not run: on the CPU it takes "
                            f"{'float32' if low else 'float16 / bfloat16'} "
                            f"(--dtype {'float32' if low else 'bfloat16'})")
    kernels = [n for n in kernels if n in can]
    for name in list(kernels):
        dims = registry.get(name).reference_head_dims()  # where it walks the kernel's tiles
        if dims is not None and d not in dims:
            kernels.remove(name)
            report.notes.append(f"{name} is not run: its step-through has the kernel's tiles for "
                                f"head dims {', '.join(map(str, dims))} only, not {d}")
    directions = ["forward"] + (["backward"] if backward else [])
    total = len(seqs) * len(kernels) * len(directions)
    rng = np.random.default_rng(0)
    failed = set()
    for N in seqs:
        B = batch or (max(1, tokens // N) if tokens else 1)
        H = heads or 1
        x32 = [rng.standard_normal((B, H, N, d)).astype(np.float32) for _ in range(4)]
        q, k, v, do = (lowp.from_float32(x, dtype) for x in x32) if low else x32
        o64, _, dq64, _, _ = lowp.attention_oracle(q, k, v, do, causal)
        if low:
            yard = {"forward": lowp.naive_lowp_forward(q, k, v, causal)[0],
                    "backward": lowp.naive_lowp_backward(do, q, k, v, causal)[0]}
        base_ms = {}
        for name in kernels:
            fwd, bwd = _cpu_fns(name, low)
            for direction in directions:
                row = Row(N, B, H, d, name, direction)
                report.rows.append(row)
                if progress:
                    progress(f"[{len(report.rows)}/{total}] N={N} {name} {direction}")
                try:
                    if direction == "forward":
                        call = lambda: fwd(q, k, v, causal)  # noqa: E731
                    else:
                        o, lse = fwd(q, k, v, causal)
                        call = lambda: bwd(do, q, k, v, o, lse, causal)  # noqa: E731
                    got = call()[0]
                except ValueError as e:  # e.g. a head dim a step-through does not take
                    row.check = f"error: {str(e).splitlines()[0][:60]}"
                    if name not in failed:
                        failed.add(name)
                        report.notes.append(f"{name}: {str(e).splitlines()[0]}")
                    continue
                want = o64 if direction == "forward" else dq64
                if low:
                    try:
                        _, err, bound = lowp.within_fa_rule(got, want, yard[direction])
                        ratio = err / bound
                    except ValueError:  # a NaN in the output
                        ratio = float("inf")
                    row.check = (f"ok ({ratio:.2f} of bound)" if ratio <= 1.0 else
                                 f"WRONG (error {ratio:.2f}x the bound)")
                else:
                    err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
                    row.check = f"ok (err {err:.0e})" if err < 1e-4 else f"WRONG (err {err:.1e})"
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - t0) * 1e3)
                row.ms = statistics.median(times)
                row.tflops = attention_flops(B, H, N, N, d, causal, direction) / (row.ms * 1e-3) / 1e12
                if registry.get(name).baseline:
                    base_ms[direction] = row.ms
        set_speedups(report, N, base_ms)
    if low:
        report.notes.extend(["; ".join(_what_runs(n, dtype) for n in kernels)] if kernels else [])
    else:
        report.notes.append("the step-throughs run in float32 NumPy; each is checked against "
                            "float64 naive attention before it is timed")
    report.notes.append("CPU timings measure NumPy and Python loop overhead, not HBM traffic; "
                        "the traffic table below is what the GPU kernels are about.")
    return report


def _what_runs(name, dtype) -> str:
    """One clause of the 16-bit note: what `name` is on the CPU."""
    spec = registry.get(name)
    if spec.baseline:
        return f"{name} is standard attention with S, P, O stored in {dtype}"
    where = spec.reference[0].replace(":", ".")
    return f"{name} is the tensor-core step-through ({where}) on {dtype} inputs with fp32 sums"
