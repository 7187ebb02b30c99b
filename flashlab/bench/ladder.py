"""The ladder: every rung of flashlab in one GPU table, what `flashlab bench` shows by default.

Standard attention (naive), FlashAttention (fa1), FlashAttention-2 (fa2) in float32, then the
tensor-core kernel (tc) in bfloat16 (float16 on a T4, whose build takes float16 only), and
torch's SDPA backends beside each where torch imports (math and memory-efficient in float32,
flash and cuDNN in 16 bits): the same shapes, only the kernels that run at this head dim on this
GPU, each row checked before it is timed (gpu_bench's checks: float32 against the float64 oracle
to 1e-4, 16 bits by FlashAttention's 2x rule), and one speedup column over standard attention in
float32 at the same N and pass. A newcomer sees what each idea buys: fusion and tiling (fa1),
the loop order and fewer non-matmul flops (fa2), tensor cores (tc), and where torch stands.

    report = ladder_bench([1024, 4096, 16384], d=64)
"""
from __future__ import annotations

import math

from .. import registry
from .report import BASELINE, Report, set_speedups

#: torch's SDPA backends on each rung's dtype (flash and cuDNN take 16-bit inputs only)
PEERS = {"float32": ["torch-math", "torch-efficient"], "bfloat16": ["torch-flash", "torch-cudnn"],
         "float16": ["torch-flash", "torch-cudnn"]}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def lowp_dtype(d: int, compute_capability: int) -> str | None:
    """The 16-bit dtype of the ladder's tensor-core rung on this GPU: bfloat16 where a kernel
    runs it at head dim d, else float16 (a T4 runs tc's Turing build in float16 only), else None
    (no 16-bit kernel here)."""
    for dtype in ("bfloat16", "float16"):
        if registry.for_auto(dtype, d, compute_capability):
            return dtype
    return None


def merge(reports: dict) -> Report:
    """One Report from gpu_bench's reports per dtype ({"float32": r32, "bfloat16": r16}): each
    row's kernel named with its dtype ("fa2 fp32", "tc bf16"), rows ordered by N, pass and
    rung, speedups over standard attention in float32 (the registry's baseline) at each N and
    pass. Where the baseline did not run at some N (skipped, out of memory), that N's rows have
    no speedup and a note says so."""
    first = next(iter(reports.values()))
    header = {k: v for k, v in first.header.items() if k not in ("dtype", "baseline", "check")}
    header["dtype"] = " and ".join(reports)
    header["baseline"] = f"{BASELINE} {SHORT['float32']}"
    header["check"] = ("float32: max error against the float64 oracle; 16 bits: FlashAttention's "
                       "2x rule (ratio of the bound)")
    out = Report(header)
    order = {}
    for dtype, report in reports.items():
        for row in report.rows:
            row.kernel = f"{row.kernel} {SHORT.get(dtype, dtype)}"
            row.speedup = float("nan")
            order.setdefault(row.kernel, len(order))
            out.rows.append(row)
        out.notes += [n for n in report.notes if n not in out.notes]
    out.rows.sort(key=lambda r: (r.N, r.direction != "forward", order[r.kernel]))
    for N in sorted({r.N for r in out.rows}):
        base = {r.direction: r.ms for r in out.rows
                if r.N == N and r.kernel == out.header["baseline"] and not math.isnan(r.ms)}
        if base:
            set_speedups(out, N, base)
        else:
            out.notes.append(f"N={N}: {out.header['baseline']} did not run there, so no speedups")
    return out


def compute_capability() -> int:
    """The current CUDA device's compute capability (x10)."""
    import cupy as cp

    from ..launch import device

    return int(device.device_limits(cp.cuda.Device().id)["compute_capability"])


def ladder_bench(seqs, d=64, causal=False, backward=False, batch=None, heads=None,
                 tokens=16384, repeat=10, progress=None) -> Report:
    """gpu_bench of the float32 kernels and of the 16-bit ones on the same shapes, with torch's
    SDPA backends where torch imports, merged into one table (merge)."""
    from .gpu import gpu_bench
    from .torch_peers import _torch_backends

    has_torch = bool(_torch_backends(["torch-math"]))
    cc = compute_capability()
    low = lowp_dtype(d, cc)
    reports = {}
    for dtype in ("float32",) + ((low,) if low else ()):
        kernels = [n for n in registry.for_dtype(dtype) if registry.get(n).runs(dtype, d, cc)]
        reports[dtype] = gpu_bench(seqs, kernels, d, causal, backward, batch, heads, tokens,
                                   repeat=repeat, compare=PEERS[dtype] if has_torch else [],
                                   progress=progress, dtype=dtype)
    out = merge(reports)
    if low is None:
        out.notes.append(f"no 16-bit kernel runs at head dim {d} on compute capability "
                         f"{cc / 10:g}: the table is float32 only")
    if not has_torch:
        out.notes.append("torch is not importable here: its SDPA backends are not in the table "
                         "(pip install torch to see them)")
    return out
