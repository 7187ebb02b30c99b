"""Honest attention benchmarks: check first, then time; never the first call, never a copy.

GPU (CuPy): for each sequence length and kernel, one configuration of B*N = `tokens` tokens and
H = hidden / d heads (the FlashAttention papers' setup). Before timing, each kernel's output is
checked against the float64 reference (forward: query rows 0..127 of the first and last head;
backward: dQ for the same rows, which depends on those rows alone); a wrong kernel is reported
as wrong and not timed. Timing: after warm-up (compilation stays out), `repeat` calls queued
back to back with CUDA events around each, the median; inputs rotated over enough copies that
the 50 MB L2 of an H100 cannot serve a repeat. Queued, an event pair times the GPU's work for
the call, not the Python launch overhead in front of it (as triton's do_bench); that overhead
is reported apart, as host_us (JSON). Peak extra memory: CuPy's pool high-water mark minus the
inputs.

float16 / bfloat16 (dtype=...): the tensor-core kernel "tc" and torch's SDPA backends on the
same 16-bit inputs; the check is FlashAttention's rule on those rows (error against the float64
oracle at most 2x that of standard attention computed in the same dtype, flashlab.lowp), and the
speedup column is over torch's flash backend (FlashAttention-2) instead of naive.

CPU (no GPU): the NumPy step-throughs at small sizes, timed with perf_counter (cpu_bench: naive,
fa1, fa2 in float32; the tensor-core step-through tc and 16-bit naive in float16 / bfloat16).
Those numbers measure Python and NumPy, not IO; the HBM traffic table beside them is the lesson.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import hbm, lowp
from . import reference as ref

FA1_MAX_SEQ = 4096
TORCH_NO_FP32 = ("torch-flash", "torch-cudnn")  # fa1 has B*H thread blocks only; past this it takes seconds per call


def attention_flops(B, H, Nq, Nk, d, causal, direction) -> float:
    """docs/ALGORITHMS.md convention: forward 4 B H Nq Nk d (halved when causal); backward 2.5x."""
    f = 4.0 * B * H * Nq * Nk * d * (0.5 if causal else 1.0)
    return f * 2.5 if direction == "backward" else f


@dataclass
class Row:
    N: int
    B: int
    H: int
    d: int
    kernel: str
    direction: str
    ms: float = float("nan")
    tflops: float = float("nan")
    speedup: float = float("nan")  # over naive, same N and direction
    extra_mb: float = float("nan")
    host_us: float = float("nan")  # host (Python) time per call while calls are queued
    check: str = ""  # "ok (err 3e-07)", "WRONG (err ...)", "out of memory", "skipped: ..."

    def table(self):
        return [self.N, self.B, self.H, self.kernel, self.direction,
                _fmt(self.ms, ".3f"), _fmt(self.tflops, ".2f"), _fmt(self.speedup, ".2f") + "x"
                if not math.isnan(self.speedup) else "", _fmt(self.extra_mb, ".0f"), self.check]


HEADERS = ["N", "B", "H", "kernel", "pass", "ms", "TFLOP/s", "vs naive", "extra MB", "check"]
LOWP_KERNELS = ("tc",)  # the kernels that take float16 / bfloat16


def headers(report) -> list:
    """HEADERS, with the speedup column named after the report's baseline."""
    base = report.header.get("baseline", "naive")
    return [f"vs {base}" if h == "vs naive" else h for h in HEADERS]


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


@dataclass
class Report:
    header: dict
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def as_dict(self):
        return {"header": self.header, "rows": [asdict(r) for r in self.rows], "notes": self.notes}


# ----------------------------------------------------------------------------- GPU


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


def _rows_reference(q, k, v, do, causal, tau, rows=128):
    """float64 o and dQ for query rows 0..rows-1 of one head (q, k, v, do: (N, d) NumPy).

    The oracle on those rows alone gives both: under the top-left causal mask rows 0..rows-1 see
    the same keys, and dQ of a row depends on that row's P, dP and D only.
    """
    n = min(rows, q.shape[0])
    q, k, v, do = (x.astype(np.float64)[None, None] for x in (q[:n], k, v, do[:n]))  # (1, 1, ., d)
    o, _ = ref.naive_attention(q, k, v, causal, tau)
    dq, _, _ = ref.naive_attention_backward(do, q, k, v, causal, tau)
    return o[0, 0], dq[0, 0]


def _check(kernel_out, inputs, causal, tau, direction):
    """Largest error, relative to max(1, |ref|), on rows 0..127 of the first and last head."""
    q, k, v, do = (x.get() for x in inputs)
    worst = 0.0
    for b, h in ((0, 0), (q.shape[0] - 1, q.shape[1] - 1)):
        o_ref, dq_ref = _rows_reference(q[b, h], k[b, h], v[b, h], do[b, h], causal, tau)
        want = o_ref if direction == "forward" else dq_ref
        got = kernel_out[b, h, : want.shape[0]].get().astype(np.float64)
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        worst = max(worst, err if np.isfinite(got).all() else float("inf"))
    return worst


def _check_lowp(kernel_out, inputs, causal, tau, direction, rows=128):
    """FlashAttention's rule on rows 0..rows-1 of the first and last head: the worst ratio of
    the error against the float64 oracle to the bound 2 x (error of 16-bit naive attention)."""
    worst = 0.0
    for b, h in ((0, 0), (inputs[0].shape[0] - 1, inputs[0].shape[1] - 1)):
        q, k, v, do = (x[b, h][None, None].get() for x in inputs)
        q, do = q[:, :, :rows], do[:, :, :rows]  # rows 0..rows-1 see the same keys either way
        o64, _, dq64, _, _ = lowp.attention_oracle(q, k, v, do, causal, tau)
        if direction == "forward":
            want, naive = o64, lowp.naive_lowp_forward(q, k, v, causal, tau)[0]
        else:
            want, naive = dq64, lowp.naive_lowp_backward(do, q, k, v, causal, tau)[0]
        try:
            _, err, bound = lowp.within_fa_rule(kernel_out[b, h, :rows][None, None].get(), want,
                                                naive)
        except ValueError:  # a NaN in the output
            return float("inf")
        worst = max(worst, err / bound)
    return worst


def gpu_bench(seqs, kernels, d=64, causal=False, backward=False, batch=None, heads=None,
              tokens=16384, hidden=2048, repeat=10, compare=(), tol=1e-4, progress=None,
              dtype="float32"):
    """Benchmark CUDA kernels (and torch SDPA backends named in `compare`). Returns a Report.

    dtype: "float32" (naive, fa1, fa2), or "float16" / "bfloat16" (tc; torch backends).
    """
    import cupy as cp

    from . import cuda_kernel_ops as ops

    dtype = "float32" if dtype == "float32" else lowp.lowp_dtype(dtype).name
    low = dtype != "float32"
    report = Report(device_header())
    report.header["dtype"] = dtype
    report.header["causal"] = bool(causal)
    if low:
        report.header["baseline"] = "torch-flash"
        report.header["check"] = "2x rule: error <= 2 x error of 16-bit standard attention (ratio shown)"
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
    wrong_dtype = [n for n in kernels if (n in LOWP_KERNELS) != low]
    for name in wrong_dtype:
        report.notes.append(f"{name} is not run: it takes {'float16 / bfloat16' if not low else 'float32'}"
                            f" (--dtype {'bfloat16' if not low else 'float32'})")
    kernels = [n for n in kernels if n not in wrong_dtype]

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
                if name == "fa1" and N > FA1_MAX_SEQ:
                    row.check = f"skipped: fa1 past N={FA1_MAX_SEQ} (B*H blocks only; seconds a call)"
                    continue
                try:
                    prepare, fn, peak = _backend(name, direction, causal, torch_fns, ops)
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
                if name == report.header.get("baseline", "naive"):
                    base_ms[direction] = row.ms
        for row in report.rows:
            if row.N == N and row.direction in base_ms and not math.isnan(row.ms):
                row.speedup = base_ms[row.direction] / row.ms
        del sets
        release()
    return report


def _backend(name, direction, causal, torch_fns, ops):
    """(prepare(q, k, v, do) -> state, run(state) -> output to check, torch_peak(reset=False))."""
    if name in torch_fns:
        return torch_fns[name](direction, causal)
    no_torch_peak = lambda reset=False: 0  # noqa: E731  (CuPy's pool is measured instead)
    if direction == "forward":
        return ((lambda q, k, v, do: (q, k, v)),
                (lambda s: ops.forward(name, *s, causal)[0]), no_torch_peak)

    def prepare(q, k, v, do):  # the forward pass is not part of the backward timing
        o, lse = ops.forward(name, q, k, v, causal)
        return (do, q, k, v, o, lse)

    return prepare, (lambda s: ops.backward(name, *s, causal)[0]), no_torch_peak


def _torch_backends(names):
    """SDPA backends as bench functions over CuPy arrays (zero-copy through DLPack)."""
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa
    except ImportError:
        return {}
    table = {"torch-math": SDPBackend.MATH, "torch-efficient": SDPBackend.EFFICIENT_ATTENTION,
             "torch-flash": SDPBackend.FLASH_ATTENTION, "torch-cudnn": SDPBackend.CUDNN_ATTENTION}

    torch.zeros(1, device="cuda")  # make torch's CUDA context current before autograd threads run

    def peak(reset=False):
        if reset:
            torch.cuda.reset_peak_memory_stats()
            return 0
        return torch.cuda.max_memory_allocated()

    def make(backend):
        def for_direction(direction, causal):
            def prepare(q, k, v, do):
                tq, tk, tv, tdo = (_to_torch(x) for x in (q, k, v, do))
                if direction == "forward":
                    return (tq, tk, tv)
                tq, tk, tv = (t.detach().requires_grad_() for t in (tq, tk, tv))
                with sdpa_kernel(backend):
                    o = sdpa(tq, tk, tv, is_causal=causal)
                return (o, tq, tk, tv, tdo)

            def run(state):
                with sdpa_kernel(backend):
                    if direction == "forward":
                        with torch.no_grad():
                            return _to_cupy(sdpa(*state, is_causal=causal))
                    o, tq, tk, tv, tdo = state
                    dq, _, _ = torch.autograd.grad(o, (tq, tk, tv), tdo, retain_graph=True)
                    return _to_cupy(dq)

            return prepare, run, peak
        return for_direction

    return {name: make(table[name]) for name in names if name in table}


def _to_torch(x):
    """A CuPy array as a torch tensor, zero-copy (bfloat16 travels as int16 bits)."""
    import torch

    if x.dtype.name == "bfloat16":
        return torch.from_dlpack(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_dlpack(x)


def _to_cupy(t):
    import cupy as cp
    import torch

    if t.dtype == torch.bfloat16:
        return cp.from_dlpack(t.contiguous().view(torch.int16)).view(lowp.bfloat16())
    return cp.from_dlpack(t.contiguous())


# ----------------------------------------------------------------------------- CPU


CPU_LOWP_KERNELS = ("naive", "tc")  # on CPU, 16-bit naive is lowp.naive_lowp_* (the 2x rule's yardstick)


def cpu_kernels(dtype="float32") -> tuple:
    """The step-throughs cpu_bench times by default (and all it can time) in `dtype`."""
    return ("naive", "fa1", "fa2") if dtype == "float32" else CPU_LOWP_KERNELS


def _cpu_fns(name, low):
    """(forward(q, k, v, causal) -> (o, lse), backward(do, q, k, v, o, lse, causal) -> (dq, ...))."""
    if name == "naive":
        fwd, bwd = ((lowp.naive_lowp_forward, lowp.naive_lowp_backward) if low else
                    (ref.naive_attention, ref.naive_attention_backward))
        return fwd, (lambda do, q, k, v, o, lse, causal: bwd(do, q, k, v, causal))
    return {"fa1": (ref.fa1_forward, ref.fa1_backward), "fa2": (ref.fa2_forward, ref.fa2_backward),
            "tc": (ref.tc_forward, ref.tc_backward)}[name]


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
    from .cuda_kernel_ops import TC_BACKWARD, TC_FORWARD

    tc_dims = sorted(set(TC_FORWARD) & set(TC_BACKWARD))
    if "tc" in kernels and d not in tc_dims:
        kernels.remove("tc")
        report.notes.append(f"tc is not run: its step-through has kernels/tc.cu's tiles for head "
                            f"dims {', '.join(map(str, tc_dims))} only, not {d}")
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
                except ValueError as e:  # e.g. tc at a head dim its tiles do not take
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
                if name == "naive":
                    base_ms[direction] = row.ms
        for row in report.rows:
            if row.N == N and row.direction in base_ms and not math.isnan(row.ms):
                row.speedup = base_ms[row.direction] / row.ms
    if low:
        said = {"tc": "tc is the tensor-core step-through (flashlab.reference.tc_forward) on "
                      f"{dtype} inputs with fp32 sums",
                "naive": f"naive is standard attention with S, P, O stored in {dtype}"}
        report.notes.extend(["; ".join(said[n] for n in kernels)] if kernels else [])
    else:
        report.notes.append("the step-throughs run in float32 NumPy; each is checked against "
                            "float64 naive attention before it is timed")
    report.notes.append("CPU timings measure NumPy and Python loop overhead, not HBM traffic; "
                        "the traffic table below is what the GPU kernels are about.")
    return report


def traffic_rows(seqs, d, causal, sram=hbm.DEFAULT_SRAM):
    return hbm.io_rows(seqs, d, [sram], causal=causal)
