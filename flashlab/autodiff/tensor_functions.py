"""Every differentiable op: a Function with forward(ctx, ...) and backward(ctx, grad).

Each forward works on plain arrays and takes its array module from them (`xp = array_module(a)`),
so one definition serves NumPy and CuPy. Each backward returns one gradient per positional input
(None for an input that is not a tensor); a gradient shaped like a broadcast output is summed
back to the input's shape by the engine (tensor.unbroadcast).

The ops live in one module per idea; this module gathers them, so `tensor_functions.Add` and
`from flashlab.autodiff.tensor_functions import FlashAttention` work as before:

* shapes.py: the shape and axis helpers, Sum, Mean, Reshape, Permute.
* elementwise.py: Neg, Add, Mul, Div, Exp, Log, GELU.
* layers.py: Softmax, LogSoftmax, NLLLoss, LayerNorm, Embedding, Dropout and `dropout`.
* attention.py: MatMul and the point of the package: `FlashAttention`, whose forward calls
  flashlab.flash_attention and whose backward calls flashlab.flash_attention_backward, beside
  `standard_attention`, the same math built from the ops above it.

Every op here is checked against central differences in tests/test_autodiff.py.
"""
from __future__ import annotations

from .attention import FlashAttention, MatMul, causal_mask, standard_attention
from .elementwise import GELU, GELU_C, Add, Div, Exp, Log, Mul, Neg
from .layers import (Dropout, Embedding, LayerNorm, LogSoftmax, NLLLoss, Softmax, _check_ids,
                     dropout)
from .shapes import (Mean, Permute, Reshape, Sum, _expand, _normalise_axis, _shape,
                     broadcast_shape, shape_arg, swap_axes)
from .tensor import Function, Tensor, array_module, device_of

__all__ = [
    "Neg", "Add", "Mul", "Div", "Exp", "Log", "GELU", "MatMul", "Sum", "Mean", "Reshape",
    "Permute", "Softmax", "LogSoftmax", "NLLLoss", "LayerNorm", "Embedding", "Dropout", "dropout",
    "FlashAttention", "standard_attention", "causal_mask", "broadcast_shape", "device_of",
]
