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

Which kernels run, in which dtype, against which baseline, are flashlab.registry's. Modules:
report (Row, Report, HEADERS, attention_flops, traffic_rows), timing (time_gpu, device_header),
accuracy (the check before the timing), gpu (gpu_bench), torch_peers (torch's SDPA backends),
cpu (cpu_bench), variants (attention variants against FlexAttention: flashlab bench --variant),
ladder (every kernel in one table, float32 and bfloat16: flashlab bench's default on a GPU),
poster (the seed poster's training figure: flash against standard attention in flashlab.autodiff,
by sequence length; scripts/poster_figures.py).
"""
from .. import registry as _registry
from .accuracy import _check, _check_lowp, _rows_reference  # noqa: F401
from .cpu import CPU_LOWP_KERNELS, _cpu_fns, cpu_bench, cpu_kernels  # noqa: F401
from .gpu import LOWP_KERNELS, _backend, gpu_bench  # noqa: F401
from .report import BASELINE, HEADERS, Report, Row, attention_flops, headers, traffic_rows  # noqa: F401
from .timing import device_header, time_gpu  # noqa: F401
from .torch_peers import TORCH_NO_FP32, _to_cupy, _to_torch, _torch_backends  # noqa: F401

#: kept importable: where bench stops timing fa1 (the registry's slow_past_n is its home)
FA1_MAX_SEQ = _registry.get("fa1").slow_past_n

__all__ = ["BASELINE", "CPU_LOWP_KERNELS", "FA1_MAX_SEQ", "HEADERS", "LOWP_KERNELS", "Report",
           "Row", "TORCH_NO_FP32", "attention_flops", "cpu_bench", "cpu_kernels", "device_header",
           "gpu_bench", "headers", "time_gpu", "traffic_rows"]
