"""A0, standard attention: the oracle every kernel and step-through is checked against.

It materialises S and P (Theta(N^2) extra memory) and works in the dtype it is given; called in
float64 it is the oracle. Layout (B, H, N, d), as PyTorch's scaled_dot_product_attention.

Masked rows: under the top-left causal mask every query sees key 0, so no row is empty. A row
whose scores are all -inf (only from -inf inputs) gives O = NaN and L = -inf, and the
step-throughs reproduce exactly that. NaN and inf in the inputs propagate as here, with one
exception: a non-finite value in a key/value row that the causal mask hides from a query reaches
that query here (0 * NaN in P @ V) and in any implementation that multiplies the whole tile, but
not where the tile is skipped (F2:L3, G2:L3). Which tiles are skipped depends on Br and Bc.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_backward, check_like, check_qkv
from .tiles import Step, counter_for, run, safe, scores


def naive_attention_steps(q, k, v, causal=False, softmax_scale=None, counter=None):
    """A0 as three stages, each a Step (line A0:L1, A0:L2, A0:L3); returns (o, lse).

    The stage tiles are the whole matrices: S (B, H, Nq, Nk), P (B, H, Nq, Nk), O (B, H, Nq, d).
    """
    dims = check_qkv(q, k, v, causal, softmax_scale)
    mem = counter_for(counter, q.dtype)
    bh, Nq, Nk, d = dims.B * dims.H, dims.Nq, dims.Nk, dims.d
    tau = q.dtype.type(dims.scale)
    everything_q, everything_k = slice(0, Nq), slice(0, Nk)

    S = scores(q, k, tau, dims.causal, everything_q, everything_k)  # A0:L1  (B, H, Nq, Nk)
    mem.read("Q", bh * Nq * d); mem.read("K", bh * Nk * d); mem.write("S", bh * Nq * Nk)
    yield Step("A0", 0, 0, 0, "A0:L1", {"S": S.copy()})

    m = S.max(axis=-1, keepdims=True)  # A0:L2  (B, H, Nq, 1)
    E = np.exp(S - safe(m))
    l = E.sum(axis=-1, keepdims=True)
    P = E / l  # (B, H, Nq, Nk)
    lse = (safe(m) + np.log(l))[..., 0]  # (B, H, Nq): log sum_c exp(S[r, c])
    mem.read("S", bh * Nq * Nk); mem.write("P", bh * Nq * Nk)
    yield Step("A0", 0, 0, 1, "A0:L2", {"P": P.copy(), "lse": lse.copy()})

    O = P @ v  # A0:L3  (B, H, Nq, d)
    mem.read("P", bh * Nq * Nk); mem.read("V", bh * Nk * d); mem.write("O", bh * Nq * d)
    yield Step("A0", 0, 0, 2, "A0:L3", {"O": O.copy()})
    return O, lse


def naive_attention(q, k, v, causal=False, softmax_scale=None, counter=None):
    """Standard attention (A0). Returns (o (B, H, Nq, d), lse (B, H, Nq))."""
    return run(naive_attention_steps(q, k, v, causal, softmax_scale, counter))


def naive_attention_backward(do, q, k, v, causal=False, softmax_scale=None):
    """Gradients of sum(do * o) for o = naive_attention(q, k, v): returns (dq, dk, dv).

    P is recomputed from q and k; dS = P * (dP - rowsum(P * dP)), as in B1:L9-L11.
    """
    dims = check_qkv(q, k, v, causal, softmax_scale)
    check_like("do", do, q.shape, q.dtype, "the gradient of o, shaped like q")
    tau = q.dtype.type(dims.scale)
    S = scores(q, k, tau, dims.causal, slice(0, dims.Nq), slice(0, dims.Nk))
    m = S.max(axis=-1, keepdims=True)
    E = np.exp(S - safe(m))
    P = E / E.sum(axis=-1, keepdims=True)  # (B, H, Nq, Nk)
    dv = np.swapaxes(P, -1, -2) @ do  # (B, H, Nk, d)
    dP = do @ np.swapaxes(v, -1, -2)  # (B, H, Nq, Nk)
    D = (P * dP).sum(axis=-1, keepdims=True)  # (B, H, Nq, 1) == rowsum(dO * O)
    dS = P * (dP - D)
    dq = tau * (dS @ k)  # (B, H, Nq, d)
    dk = tau * (np.swapaxes(dS, -1, -2) @ q)  # (B, H, Nk, d)
    return dq, dk, dv


def naive_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None):
    """naive_attention_backward with the arguments of the other backward references (the
    registry's reference for kernel 'naive'): o and lse are checked, not read (A0 recomputes P).
    Gradients come back in q's dtype (NumPy promotes bfloat16 to float32 on the way)."""
    check_backward(do, q, k, v, o, lse, causal, softmax_scale)
    grads = naive_attention_backward(do, q, k, v, causal, softmax_scale)
    return tuple(g.astype(q.dtype, copy=False) for g in grads)
