"""Matmul and attention, the teaching pair side by side: `FlashAttention`, one op whose forward
calls flashlab.flash_attention and whose backward calls flashlab.flash_attention_backward, and
`standard_attention`, the same math built from MatMul and the other basic ops, whose graph keeps
the Nq x Nk matrices FlashAttention never stores.

Part of flashlab.autodiff.tensor_functions (which re-exports every name here)."""
from __future__ import annotations

import math

import numpy as np

from .shapes import _shape
from .tensor import Function, Tensor, array_module

# ----------------------------------------------------------------------------- matmul


class MatMul(Function):
    """a @ b over the last two axes, leading axes broadcast (a (..., n, k) @ b (..., k, m)).

    d(a @ b)/da is grad @ b^T and d(a @ b)/db is a^T @ grad: the same matmul with one operand
    transposed, which is all the attention backward is made of too.
    """

    @staticmethod
    def forward(ctx, a, b):
        sa, sb = _shape(a), _shape(b)
        if len(sa) < 2 or len(sb) < 2:
            raise ValueError(f"MatMul: both operands need at least 2 axes; got {sa} and {sb} "
                             "(reshape a vector of n to (1, n) or (n, 1))")
        if sa[-1] != sb[-2]:
            raise ValueError(f"MatMul: cannot multiply shapes {sa} and {sb}: the last axis of the "
                             f"left ({sa[-1]}) must equal the second-to-last of the right "
                             f"({sb[-2]})")
        try:
            np.broadcast_shapes(sa[:-2], sb[:-2])
        except ValueError:
            raise ValueError(f"MatMul: shapes {sa} and {sb}: the leading (batch) axes {sa[:-2]} "
                             f"and {sb[:-2]} cannot broadcast") from None
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_values
        return grad @ b.swapaxes(-1, -2), a.swapaxes(-1, -2) @ grad


# ----------------------------------------------------------------------------- attention


class FlashAttention(Function):
    """Attention softmax(tau Q K^T) V as one op whose backward recomputes instead of storing.

    forward: flashlab.flash_attention(q, k, v, causal, return_lse=True) runs FlashAttention-2's
    forward (F2): on CuPy float32 arrays a CUDA kernel, on NumPy arrays the NumPy reference in the
    arrays' dtype. It returns O (B, H, Nq, d) and the logsumexp L (B, H, Nq); those two are all
    that is saved, with the inputs. Nothing of size Nq x Nk outlives the call.

    backward: flashlab.flash_attention_backward(dO, q, k, v, O, L, causal) runs G2, which
    rebuilds P_ij = exp(S_ij - L_i) tile by tile from Q and K (recomputation) and returns
    dQ, dK, dV. Standard attention's graph (below) instead keeps S and P, Nq x Nk per head.

    The kernels want contiguous float32 arrays; q, k, v arriving from a permute are views, so
    they are made contiguous here (a copy only when needed).

    dtype "bfloat16" / "float16" (mixed precision): the op runs on 16-bit copies of q, k, v, so on
    CuPy arrays the tensor-core kernel (tc) runs; O and the gradients come back in the inputs'
    dtype, the rest of the model untouched. The 16-bit copies are what is saved.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False, dtype=None):
        from .. import lowp
        from ..api import flash_attention

        xp = array_module(q)
        q, k, v = (xp.ascontiguousarray(x) for x in (q, k, v))  # (B, H, N, d) each
        ctx.out_dtype = q.dtype
        if dtype is not None:  # mixed precision: 16-bit copies in, O back in q's dtype
            q, k, v = (lowp.from_float32(x.astype(np.float32, copy=False), dtype)
                       for x in (q, k, v))
        o, lse = flash_attention(q, k, v, causal=causal, return_lse=True)  # (B,H,Nq,d), (B,H,Nq)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o if dtype is None else lowp.to_float32(o).astype(ctx.out_dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        from .. import lowp
        from ..api import flash_attention_backward

        q, k, v, o, lse = ctx.saved_values
        xp = array_module(grad)
        if q.dtype == ctx.out_dtype:
            do = xp.ascontiguousarray(grad, dtype=q.dtype)  # (B, H, Nq, d)
            return flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal)
        do = lowp.from_float32(xp.ascontiguousarray(grad, dtype=np.float32), q.dtype.name)
        grads = flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal)
        return tuple(lowp.to_float32(g).astype(ctx.out_dtype, copy=False) for g in grads)


def causal_mask(xp, Nq: int, Nk: int, dtype):
    """(Nq, Nk) of 0 where key c is visible to query r (c <= r, top-left aligned as flashlab's
    kernels and torch's is_causal) and -inf where it is masked."""
    r = xp.arange(Nq)[:, None]  # (Nq, 1)
    c = xp.arange(Nk)[None, :]  # (1, Nk)
    mask = xp.zeros((Nq, Nk), dtype=dtype)
    mask[c > r] = -np.inf
    return mask


def standard_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """A0 from the basic ops: S = tau q k^T (B, H, Nq, Nk), P = softmax(S), O = P v (B, H, Nq, d).

    The graph this builds saves q, k, S's softmax P and v: the Nq x Nk matrix per head that
    FlashAttention never stores. Its gradients are what FlashAttention's must equal.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"standard_attention: {name} must be (B, H, N, d), got {t.shape}")
    tau = 1.0 / math.sqrt(q.shape[-1])
    S = (q @ k.transpose(-1, -2)) * tau  # (B, H, Nq, Nk)
    if causal:
        S = S + Tensor(causal_mask(q.xp, q.shape[2], k.shape[2], q.dtype))  # -inf above diagonal
    P = S.softmax(axis=-1)  # (B, H, Nq, Nk)
    return P @ v  # (B, H, Nq, d)
