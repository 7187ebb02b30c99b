"""flashlab.torch.flash_attention's calls with `mask_mod=` or `score_mod=` (flashlab.mods,
FlexAttention's signatures; with any `window=` and `enable_gqa=` beside them), compiled into
the kernels as the CuPy API compiles them. (window= and enable_gqa= alone take flashlab.torch's
own path: prepared calls, the custom op, CUDA graphs.)

    o = flashlab.torch.flash_attention(q, k, v, is_causal=True, window=(1024, 0),
                                       score_mod=flashlab.mods.softcap(30.0))

The call crosses to CuPy (flashlab.torch_bridge: DLPack views, torch's current stream) and runs
flashlab.flash_attention / flash_attention_backward with the same keywords, inside an
autograd.Function: float16 and bfloat16 on tc (rows read in place where the kernel can, as a
packed projection's views), float32 on fa2, each variant compiled in once (cached by its text
and captured values). Eager only for now: a mod is a Python function, which torch.library's
schema cannot carry, so flashlab.torch marks the call torch.compiler.disable: a graph break
under torch.compile, refused with fullgraph=True (FlexAttention is torch's compiled answer).
Not yet through flashlab.native's C++ path: the outputs come from CuPy's memory pool, so a step
with a variant cannot be captured in a CUDA graph.
"""
from __future__ import annotations

from .api import flash_attention as _flash_attention
from .api import flash_attention_backward as _flash_attention_backward
from .torch_bridge import TorchStream, rows_ok, to_cupy, to_torch, torch
from .torch_bridge import attention as _attention


def _in(x):
    """x for the CuPy API: a view of its buffer where the 16-bit kernel reads its rows in
    place, else a contiguous copy (float32's fa2 takes contiguous arrays only)."""
    return to_cupy(x, contiguous=x.dtype == torch.float32 or not rows_ok(x))


def _forward(q, k, v, is_causal: bool, scale: float, variant: dict):
    with TorchStream(q.device):
        o, lse = _flash_attention(_in(q), _in(k), _in(v), causal=is_causal,
                                  softmax_scale=scale, return_lse=True, **variant)
        return to_torch(o, q.dtype), to_torch(lse, torch.float32)


def _backward(do, q, k, v, o, lse, is_causal: bool, scale: float, variant: dict):
    with TorchStream(q.device):
        grads = _flash_attention_backward(_in(do), _in(q), _in(k), _in(v), _in(o),
                                          to_cupy(lse), causal=is_causal, softmax_scale=scale,
                                          **variant)
        return tuple(to_torch(g, q.dtype) for g in grads)


def attention(q, k, v, is_causal: bool, scale: float, variant: dict):
    """flash_attention with a variant, q, k, v already checked (flashlab.torch): GQA where k,
    v have fewer heads (flashlab.torch checked enable_gqa=True), the keywords in `variant` (the
    mods ride on autograd's ctx: they are Python functions, not tensors)."""
    return _attention((_forward, _backward), q, k, v, is_causal, scale, variant)
