"""flashlab's CUDA kernels inside PyTorch autograd: `flashlab.torch.flash_attention`.

    import flashlab.torch
    o = flashlab.torch.flash_attention(q, k, v, causal=True)   # q, k, v: torch CUDA float32
    o.sum().backward()                                         # q.grad, k.grad, v.grad

It is the same plug as tensor_functions.FlashAttention, written for torch: a
torch.autograd.Function whose forward runs flashlab's FlashAttention forward kernel and saves O
and the logsumexp, and whose backward runs the backward kernel. Tensors cross between torch and
CuPy through DLPack, which shares the GPU buffer (zero-copy): no data moves, only a pointer and
a shape. The kernels run on torch's current CUDA stream, so they are ordered with torch's own
work.

This module is named flashlab.torch; the real PyTorch is imported with
importlib.import_module("torch") (an absolute import), never this file. Importing it needs
PyTorch; using it needs CuPy and a CUDA GPU.
"""
from __future__ import annotations

import importlib

from .api import flash_attention as _flash_attention
from .api import flash_attention_backward as _flash_attention_backward

try:
    torch = importlib.import_module("torch")
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("flashlab.torch needs PyTorch (pip install torch); flashlab itself does "
                      "not") from e


def _check(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"flashlab.torch.flash_attention: {name} must be a torch.Tensor, got "
                        f"{type(x).__name__}")
    if not x.is_cuda:
        raise ValueError(f"flashlab.torch.flash_attention: {name} is on {x.device}; the kernels "
                         f"run on CUDA tensors: pass {name}.cuda()")
    if x.dtype != torch.float32:
        raise TypeError(f"flashlab.torch.flash_attention: {name} has dtype {x.dtype}; the kernels "
                        f"take float32: pass {name}.float()")
    if x.dim() != 4:
        raise ValueError(f"flashlab.torch.flash_attention: {name} must be (B, H, N, d), got shape "
                         f"{tuple(x.shape)}")


def _to_cupy(x):
    """A CuPy view of a torch CUDA tensor's buffer (DLPack; detached, made contiguous first)."""
    import cupy

    return cupy.from_dlpack(x.detach().contiguous())


class _Stream:
    """Run CuPy (and so flashlab's kernels) on torch's current stream, on the tensor's device."""

    def __init__(self, device):
        import cupy

        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = cupy.cuda.Device(index)
        ptr = torch.cuda.current_stream(index).cuda_stream
        # torch's default stream is the legacy default stream (handle 0): CuPy's null stream
        self.stream = (cupy.cuda.Stream.null if ptr == 0
                       else cupy.cuda.ExternalStream(ptr, index))

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)
        return False


class FlashAttentionFunction(torch.autograd.Function):
    """forward: O, L = FlashAttention forward kernel; save (q, k, v, O, L).
    backward: dQ, dK, dV = FlashAttention backward kernel (recomputes P tile by tile)."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, softmax_scale=None):
        q, k, v = (x.detach().contiguous() for x in (q, k, v))  # (B, H, N, d) each
        with _Stream(q.device):
            o, lse = _flash_attention(_to_cupy(q), _to_cupy(k), _to_cupy(v), causal=causal,
                                      softmax_scale=softmax_scale, return_lse=True)
        o, lse = torch.from_dlpack(o), torch.from_dlpack(lse)  # (B, H, Nq, d), (B, H, Nq)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.softmax_scale = causal, softmax_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        with _Stream(q.device):
            dq, dk, dv = _flash_attention_backward(
                _to_cupy(do), _to_cupy(q), _to_cupy(k), _to_cupy(v), _to_cupy(o), _to_cupy(lse),
                causal=ctx.causal, softmax_scale=ctx.softmax_scale)
        return torch.from_dlpack(dq), torch.from_dlpack(dk), torch.from_dlpack(dv), None, None


def flash_attention(q, k, v, causal: bool = False, softmax_scale=None):
    """softmax(tau q k^T) v for torch CUDA float32 tensors q (B, H, Nq, d), k, v (B, H, Nk, d),
    differentiable with torch autograd. Same layout and causal convention (top-left) as
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x)
    if not (q.device == k.device == v.device):
        raise ValueError(f"flashlab.torch.flash_attention: q, k, v must be on one device; got "
                         f"{q.device}, {k.device}, {v.device}")
    return FlashAttentionFunction.apply(q, k, v, bool(causal), softmax_scale)
