"""torch's scaled_dot_product_attention backends as benchmark peers of the CUDA kernels, on the
same CuPy arrays (zero-copy through DLPack)."""
from __future__ import annotations

import numpy as np

from .. import lowp

TORCH_NO_FP32 = ("torch-flash", "torch-cudnn")  # SDPA backends that take fp16 / bf16 only


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
