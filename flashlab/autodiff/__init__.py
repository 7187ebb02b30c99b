"""A small reverse-mode autodiff framework in MiniTorch's style, to show where a fused
FlashAttention kernel plugs into autodiff.

* tensor.py: Tensor, Context (save_for_backward), Function (static forward/backward, apply),
  backpropagation over the graph in topological order.
* the ops, each a Function, by idea: shapes.py (broadcasting, Sum, Mean, Reshape, Permute),
  elementwise.py (Add, Mul, Exp, GELU, ...), layers.py (Softmax, LogSoftmax, NLLLoss, LayerNorm,
  Embedding, Dropout) and attention.py (MatMul, FlashAttention, whose forward and backward call
  flashlab.flash_attention / flash_attention_backward, beside standard_attention);
  tensor_functions.py hands them all on under one name.
* nn.py: Linear, LayerNorm, Embedding, MultiHeadAttention(attention="flash" | "standard"), MLP,
  Block, the decoder-only transformer, Adam.
* data.py, train.py: a character-level model of Shakespeare's Sonnets (`flashlab train`).

Tensors hold NumPy arrays (CPU; the attention runs flashlab's NumPy reference) or CuPy arrays
(GPU; float32, the attention runs flashlab's CUDA kernels). Importing it never needs CuPy.
"""
from . import tensor_functions
from .gradcheck import grad_check
from .tensor import Context, Function, History, Tensor, is_grad_enabled, no_grad, tensor

__all__ = ["Tensor", "Context", "Function", "History", "tensor", "no_grad", "is_grad_enabled",
           "tensor_functions", "grad_check"]
