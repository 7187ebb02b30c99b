"""gpu_bench: check each CUDA kernel (and torch SDPA peer) against the oracle, then time it.

Which kernels take which dtype, which one is the baseline and which are too slow past some N
are the registry's (spec.takes_dtype, spec.baseline, spec.slow_past_n)."""
from __future__ import annotations

import math

from .. import launch, lowp, registry
from .accuracy import _check, _check_lowp
from .report import BASELINE, Report, Row, attention_flops, set_speedups
from .timing import device_header, time_gpu
from .torch_peers import TORCH_NO_FP32, _torch_backends

#: the kernels that take float16 / bfloat16
LOWP_KERNELS = tuple(dict.fromkeys(registry.for_dtype("float16") + registry.for_dtype("bfloat16")))


def gpu_bench(seqs, kernels, d=64, causal=False, backward=False, batch=None, heads=None,
              tokens=16384, hidden=2048, repeat=10, compare=(), tol=1e-4, progress=None,
              dtype="float32"):
    """Benchmark CUDA kernels (and torch SDPA backends named in `compare`). Returns a Report.

    dtype: "float32" (naive, fa1, fa2), or "float16" / "bfloat16" (tc; torch backends): the
    registry's kernels that take it run, the others are noted.
    """
    import cupy as cp

    from .. import launch

    dtype = "float32" if dtype == "float32" else lowp.lowp_dtype(dtype).name
    low = dtype != "float32"
    report = Report(device_header())
    report.header["dtype"] = dtype
    report.header["causal"] = bool(causal)
    if low:
        report.header["baseline"] = "torch-flash"
        report.header["check"] = "2x rule: error <= 2 x error of 16-bit standard attention (ratio shown)"
    baseline = report.header.get("baseline", BASELINE)
    pool = cp.get_default_memory_pool()
    l2 = cp.cuda.Device().attributes.get("L2CacheSize", 50 * 2**20)
    directions = ["forward"] + (["backward"] if backward else [])
    out_of_memory = set()
    torch_fns = _torch_backends(compare) if compare else {}
    if compare and not torch_fns:
        report.notes.append("--compare torch: torch is not importable here")
    for name in [n for n in compare if n in torch_fns and n in TORCH_NO_FP32 and not low]:
        torch_fns.pop(name)
        report.notes.append(f"{name} is not run: that SDPA backend takes fp16/bf16 only")
    wrong_dtype = [n for n in kernels if not registry.get(n).takes_dtype(dtype)]
    for name in wrong_dtype:
        report.notes.append(f"{name} is not run: it takes {'float16 / bfloat16' if not low else 'float32'}"
                            f" (--dtype {'bfloat16' if not low else 'float32'})")
    kernels = [n for n in kernels if n not in wrong_dtype]
    slow_past = {n: registry.get(n).slow_past_n for n in kernels}

    def release():
        pool.free_all_blocks()
        if torch_fns:
            import torch

            torch.cuda.empty_cache()
    total = len(seqs) * (len(kernels) + len(torch_fns)) * len(directions)
    for N in seqs:
        B = batch or max(1, tokens // N)
        H = heads or max(1, hidden // d)
        tau = 1.0 / math.sqrt(d)
        release()
        set_bytes = 4 * B * H * N * d * (2 if low else 4)
        n_sets = max(1, min(8, math.ceil(2 * l2 / set_bytes)))
        rng = cp.random.default_rng(N)
        sets = [[rng.standard_normal((B, H, N, d), dtype=cp.float32) for _ in range(4)]
                for _ in range(n_sets)]
        if low:
            sets = [[lowp.from_float32(x, dtype) for x in s] for s in sets]
        base_ms = {}
        for name in list(kernels) + list(torch_fns):
            for direction in directions:
                row = Row(N, B, H, d, name, direction)
                report.rows.append(row)
                if progress:
                    progress(f"[{len(report.rows)}/{total}] N={N} {name} {direction}")
                if name in out_of_memory:
                    row.check = "skipped: out of memory at a smaller N"
                    continue
                limit = slow_past.get(name)
                if limit is not None and N > limit:
                    row.check = f"skipped: {name} past N={limit} (seconds a call there)"
                    continue
                try:
                    prepare, fn, peak = _backend(name, direction, causal, torch_fns)
                    release()
                    states = [prepare(*x) for x in sets]  # forward outputs / autograd graphs
                    if low:
                        ratio = _check_lowp(fn(states[0]), sets[0], causal, tau, direction)
                        if not ratio <= 1.0:
                            row.check = f"WRONG (error {ratio:.2f}x the bound); not timed"
                            continue
                        row.check = f"ok ({ratio:.2f} of bound)"
                    else:
                        err = _check(fn(states[0]), sets[0], causal, tau, direction)
                        if not err <= tol:
                            row.check = f"WRONG (err {err:.1e} > {tol:.0e}); not timed"
                            continue
                        row.check = f"ok (err {err:.0e})"
                    pool.free_all_blocks()  # what stays is live: inputs, states
                    mark = pool.total_bytes()
                    peak(reset=True)
                    row.ms, row.host_us = time_gpu(fn, states, repeat=repeat)
                    # CuPy keeps freed blocks, so its total is the high-water mark of the calls
                    row.extra_mb = (pool.total_bytes() - mark + peak()) / 1e6
                    del states
                except (MemoryError, cp.cuda.memory.OutOfMemoryError) as e:
                    row.check = "out of memory"
                    out_of_memory.add(name)
                    report.notes.append(f"{name} ran out of memory at N={N} ({type(e).__name__}); "
                                        "larger N skipped for it")
                    release()
                    continue
                except Exception as e:  # torch backend refusing a shape, etc.
                    if "out of memory" in str(e).lower():
                        out_of_memory.add(name)
                        row.check = "out of memory"
                    else:
                        row.check = f"error: {str(e).splitlines()[0][:60]}"
                    release()
                    continue
                row.tflops = attention_flops(B, H, N, N, d, causal, direction) / (row.ms * 1e-3) / 1e12
                if name == baseline:
                    base_ms[direction] = row.ms
        set_speedups(report, N, base_ms)
        del sets
        release()
    return report


def _backend(name, direction, causal, torch_fns):
    """(prepare(q, k, v, do) -> state, run(state) -> output to check, torch_peak(reset=False))."""
    if name in torch_fns:
        return torch_fns[name](direction, causal)
    no_torch_peak = lambda reset=False: 0  # noqa: E731  (CuPy's pool is measured instead)
    if direction == "forward":
        return ((lambda q, k, v, do: (q, k, v)),
                (lambda s: launch.forward(name, *s, causal)[0]), no_torch_peak)

    def prepare(q, k, v, do):  # the forward pass is not part of the backward timing
        o, lse = launch.forward(name, q, k, v, causal)
        return (do, q, k, v, o, lse)

    return prepare, (lambda s: launch.backward(name, *s, causal)[0]), no_torch_peak
