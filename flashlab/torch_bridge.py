"""What flashlab.torch's paths share: the checks of a torch tensor operand, and the crossing to
CuPy (DLPack views, torch's current stream as CuPy's) that the CuPy-API paths (float32, the
attention variants: flashlab.torch_variants) run through.

Importing it needs PyTorch.
"""
from __future__ import annotations

import importlib

import numpy as np

try:
    torch = importlib.import_module("torch")
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("flashlab.torch needs PyTorch (pip install torch); flashlab itself does "
                      "not") from e

DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def check(name: str, x) -> None:
    if isinstance(x, torch.Tensor) and x.is_cuda and x.dtype in DTYPES and x.dim() == 4:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"flashlab.torch.flash_attention: {name} must be a torch.Tensor, got "
                        f"{type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"flashlab.torch.flash_attention: {name} is on {x.device}; the kernels "
                         f"run on CUDA tensors: pass {name}.cuda()")
    if x.dtype not in DTYPES:
        raise TypeError(f"flashlab.torch.flash_attention: {name} has dtype {x.dtype}; the kernels "
                        f"take float16, bfloat16 (tensor cores) or float32: pass "
                        f"{name}.to(torch.bfloat16)")
    if x.dim() != 4:
        raise ValueError(f"flashlab.torch.flash_attention: {name} must be (B, H, N, d), got shape "
                         f"{tuple(x.shape)}")


def to_cupy(x, contiguous: bool = True):
    """A CuPy view of a torch CUDA tensor's buffer (DLPack), made contiguous first unless
    `contiguous` is False (then with the tensor's strides). 16-bit tensors cross as int16 and
    are reinterpreted, so no DLPack dtype support is needed."""
    import cupy

    x = x.detach()
    if contiguous:
        x = x.contiguous()
    if x.dtype == torch.float32:
        return cupy.from_dlpack(x)
    import ml_dtypes

    view = cupy.from_dlpack(x.view(torch.int16))
    return view.view(ml_dtypes.bfloat16 if x.dtype == torch.bfloat16 else np.float16)


def to_torch(a, dtype):
    """The torch tensor sharing CuPy array `a`'s buffer, as `dtype`."""
    if dtype == torch.float32 or a.dtype == np.float32:
        return torch.from_dlpack(a)
    import cupy

    return torch.from_dlpack(a.view(cupy.int16)).view(dtype)


def _external(cupy, ptr: int, index: int):
    """CuPy's view of torch's stream `ptr`: Stream.from_external (CuPy 14, which deprecates
    ExternalStream) given an object with the CUDA stream protocol, else ExternalStream."""
    class _Handle:
        def __cuda_stream__(self):
            return (0, ptr)

    if hasattr(cupy.cuda.Stream, "from_external"):
        try:
            return cupy.cuda.Stream.from_external(_Handle())
        except (TypeError, ValueError, AttributeError):
            pass
    return cupy.cuda.ExternalStream(ptr, index)


class TorchStream:
    """Run CuPy (and so flashlab's kernels) on torch's current stream, on the tensor's device."""

    def __init__(self, device):
        import cupy

        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = cupy.cuda.Device(index)
        ptr = torch.cuda.current_stream(index).cuda_stream
        # torch's default stream is the legacy default stream (handle 0): CuPy's null stream
        self.stream = cupy.cuda.Stream.null if ptr == 0 else _external(cupy, ptr, index)

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)
        return False


def rows_ok(x, address: bool = True) -> bool:
    """x's rows can be read in place by the tensor-core kernels: last dim contiguous, strides
    and address on 16 bytes (launch.device.check_rows says the same of CuPy arrays; address
    False: the strides alone)."""
    st = x.stride()
    return st[3] == 1 and st[0] % 8 == 0 and st[1] % 8 == 0 and st[2] % 8 == 0 \
        and (not address or x.data_ptr() % 16 == 0)


class _Attention(torch.autograd.Function):
    """One differentiable attention call of flashlab.torch's eager paths: `run` is its (forward,
    backward) pair, forward(q, k, v, is_causal, scale, extra) -> (o, lse) and backward(do, q, k,
    v, o, lse, is_causal, scale, extra) -> (dq, dk, dv); `extra` (a window, a variant's
    keywords) rides on ctx as it is."""

    @staticmethod
    def forward(ctx, run, q, k, v, is_causal, scale, extra):
        o, lse = run[0](q, k, v, is_causal, scale, extra)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.run, ctx.is_causal, ctx.scale, ctx.extra = run, is_causal, scale, extra
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        grads = ctx.run[1](do, q, k, v, o, lse, ctx.is_causal, ctx.scale, ctx.extra)
        return (None, *grads, None, None, None)


def attention(run, q, k, v, is_causal: bool, scale: float, extra):
    """o of `run` (_Attention's pair) for checked operands: through autograd where a gradient is
    asked for, else the forward alone (no node)."""
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return run[0](q, k, v, is_causal, scale, extra)[0]
    return _Attention.apply(run, q, k, v, is_causal, scale, extra)
