"""flash_attention / flash_attention_backward: one entry point for every implementation.

NumPy arrays run the references (flashlab.reference); CuPy arrays run a CUDA kernel
(flashlab.cuda_kernel_ops). Mixing the two is an error that says which argument to move.
"""
from __future__ import annotations

import numpy as np

from . import reference as ref

KERNEL_NAMES = ("auto", "naive", "fa1", "fa2")
_REF_FORWARD = {"naive": ref.naive_attention, "fa1": ref.fa1_forward, "fa2": ref.fa2_forward,
                "auto": ref.fa2_forward}


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _route(kernel: str, arrays: dict) -> bool:
    """True for the GPU path. Checks the kernel name and that inputs are all NumPy or all CuPy."""
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {', '.join(KERNEL_NAMES)}, got {kernel!r}")
    kinds = {name: _is_cupy(x) for name, x in arrays.items()}
    if len(set(kinds.values())) > 1:
        gpu = [n for n, c in kinds.items() if c]
        cpu = [n for n, c in kinds.items() if not c]
        raise TypeError(f"{', '.join(gpu)} are CuPy arrays but {', '.join(cpu)} are not: pass all "
                        "inputs as CuPy arrays (GPU kernels) or all as NumPy (references)")
    return any(kinds.values())


def resolve_kernel(kernel: str, q) -> str:
    """"auto" -> the fastest correct GPU kernel for q's head dim: fa2 where it runs, else fa1."""
    if kernel != "auto":
        return kernel
    from .cuda_kernel_ops import FA2_HEAD_DIMS

    return "fa2" if q.ndim == 4 and q.shape[-1] in FA2_HEAD_DIMS else "fa1"


def flash_attention(q, k, v, causal=False, softmax_scale=None, kernel="auto", return_lse=False):
    """Attention softmax(tau q k^T) v over (B, H, N, d) arrays.

    kernel: "naive" (A0), "fa1" (A1), "fa2" (F2) or "auto". CuPy float32 arrays run the CUDA
    kernel; NumPy arrays run the matching reference in their own dtype. Returns o, or (o, lse)
    with return_lse=True (lse is what flash_attention_backward needs).
    """
    if _route(kernel, {"q": q, "k": k, "v": v}):
        from . import cuda_kernel_ops as ops

        o, lse = ops.forward(resolve_kernel(kernel, q), q, k, v, causal, softmax_scale)
    else:
        o, lse = _REF_FORWARD[kernel](q, k, v, causal, softmax_scale)
    return (o, lse) if return_lse else o


def flash_attention_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, kernel="auto"):
    """Gradients (dq, dk, dv) of sum(do * o) for o = flash_attention(q, k, v); lse from forward."""
    arrays = {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse}
    if _route(kernel, arrays):
        from . import cuda_kernel_ops as ops

        return ops.backward(resolve_kernel(kernel, q), do, q, k, v, o, lse, causal,
                            softmax_scale)
    if kernel == "naive":
        return ref.naive_attention_backward(do, q, k, v, causal, softmax_scale)
    bwd = ref.fa1_backward if kernel == "fa1" else ref.fa2_backward
    return bwd(do, q, k, v, o, np.asarray(lse), causal, softmax_scale)


def available_kernels() -> list[str]:
    """Kernels that run on CuPy arrays here; [] without CuPy or a GPU (NumPy always works)."""
    from .cuda_kernel_ops import available_kernels as avail

    return avail()
