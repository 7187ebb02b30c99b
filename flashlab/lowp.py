"""16-bit attention numerics, for NumPy and CuPy arrays alike: the oracle and the yardstick.

The tensor-core kernels take float16 or bfloat16 inputs and accumulate in float32. How far their
results may sit from the truth is FlashAttention's own test rule: the error against a float64
oracle is at most twice the error of *naive attention computed in the same dtype* (S, P and O
stored in 16 bits, as a framework's unfused attention would store them). This module computes
both sides of that rule:

    attention_oracle(q, k, v, do, ...)   float64 o, lse, dq, dk, dv (the truth)
    naive_lowp_forward / _backward       o, lse / dq, dk, dv with every stored matrix rounded
    within_fa_rule(out, oracle, naive)   (ok, error, bound)

bfloat16 is ml_dtypes' NumPy dtype (CuPy uses the same one). Conversions go through the raw
16-bit words, so they behave the same on either array library; rounding is to nearest even,
the rounding of the kernels' cvt.rn instructions.
"""
from __future__ import annotations

import numpy as np

LOWP_DTYPES = ("float16", "bfloat16")


def _xp(x):
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def bfloat16():
    """ml_dtypes' bfloat16 as a NumPy dtype (an ImportError that says what to install if missing)."""
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - a dependency of flashlab
        raise ImportError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from e
    return np.dtype(ml_dtypes.bfloat16)


def lowp_dtype(name: str):
    """np.float16 or bfloat16 by name ('float16', 'fp16', 'bfloat16', 'bf16')."""
    name = {"fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        return bfloat16()
    raise ValueError(f"dtype must be float16 or bfloat16, got {name!r}")


def to_float32(x):
    """A float16 / bfloat16 array (NumPy or CuPy) as float32, exactly."""
    xp = _xp(x)
    if x.dtype.name == "bfloat16":
        return (x.view(xp.uint16).astype(xp.uint32) << 16).view(xp.float32)
    return x.astype(xp.float32)


def round_to(x, name: str):
    """float32 values rounded to the nearest float16 / bfloat16 (ties to even), still float32."""
    xp = _xp(x)
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    if name == "float16":
        return x.astype(xp.float16).astype(xp.float32)
    u = x.view(xp.uint32)
    u = (u + xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    return u.view(xp.float32)


def from_float32(x, name: str):
    """float32 values -> a float16 / bfloat16 array (rounded to nearest even)."""
    xp = _xp(x)
    if name == "float16":
        return xp.ascontiguousarray(x, dtype=xp.float32).astype(xp.float16)
    r = round_to(x, name).view(xp.uint32) >> 16
    return r.astype(xp.uint16).view(bfloat16())


def random_inputs(xp, shapes, name: str, seed=0):
    """Standard-normal 16-bit arrays of the given shapes (never zeros), made on the host."""
    rng = np.random.default_rng(seed)
    return [xp.asarray(from_float32(rng.standard_normal(s).astype(np.float32), name)) for s in shapes]


def _mask(xp, Nq, Nk):
    return xp.arange(Nk)[None, :] > xp.arange(Nq)[:, None]  # top-left causal: key c > query r


def attention_oracle(q, k, v, do, causal=False, softmax_scale=None):
    """float64 o, lse, dq, dk, dv of softmax(tau q k^T) v on (B, H, N, d) arrays of any dtype.

    The truth is reference.naive_attention (A0) and naive_attention_backward run in float64 on
    host copies; the results come back on q's side (NumPy, or CuPy for CuPy inputs).
    """
    from .reference.naive import naive_attention, naive_attention_backward

    xp = _xp(q)
    q, k, v, do = (np.asarray(x.get() if xp is not np else x, np.float64)
                   for x in (to_float32(x) if x.dtype.itemsize == 2 else x for x in (q, k, v, do)))
    o, lse = naive_attention(q, k, v, causal, softmax_scale)
    grads = naive_attention_backward(do, q, k, v, causal, softmax_scale)
    return tuple(xp.asarray(x) for x in (o, lse, *grads))


def _lowp_dims(q, k, v, causal, softmax_scale):
    from .checks import check_qkv

    dims = check_qkv(q, k, v, causal, softmax_scale)
    if q.dtype.name not in LOWP_DTYPES:
        raise ValueError(f"q dtype must be float16 or bfloat16 for naive attention in 16 bits, "
                         f"got {q.dtype.name}")
    return dims


def _naive_probs(q, k, dims):
    """S and P of A0, each stored matrix rounded to q's dtype (float32 arrays); lse float32."""
    xp, name = _xp(q), q.dtype.name
    f32 = np.float32
    S = round_to((to_float32(q) @ xp.swapaxes(to_float32(k), -1, -2)) * f32(dims.scale), name)
    if dims.causal:  # A0:L1
        S = xp.where(_mask(xp, dims.Nq, dims.Nk), f32(-np.inf), S)
    m = S.max(axis=-1, keepdims=True)  # A0:L2, the softmax in float32
    m = xp.where(m == -np.inf, f32(0), m)
    E = xp.exp(S - m)
    lsum = E.sum(axis=-1, keepdims=True, dtype=xp.float32)
    P = round_to(E / lsum, name)  # stored in 16 bits
    return P, (m + xp.log(lsum))[..., 0]


def naive_lowp_forward(q, k, v, causal=False, softmax_scale=None):
    """Standard attention (A0) in the inputs' 16-bit dtype: returns (o in q's dtype, lse float32).

    Every matrix A0 stores (S, P, O) is rounded to the input dtype; each product and the softmax
    are computed in float32 from the stored 16-bit values, as a framework's matmul and softmax do.
    """
    dims = _lowp_dims(q, k, v, causal, softmax_scale)
    P, lse = _naive_probs(q, k, dims)
    return from_float32(P @ to_float32(v), q.dtype.name), lse  # A0:L3


def naive_lowp_backward(do, q, k, v, causal=False, softmax_scale=None):
    """Gradients of sum(do * o) through naive_lowp_forward: (dq, dk, dv) in the input dtype.

    Every stored matrix (S, P, dP, dS, dQ, dK, dV) is rounded to the input dtype; the row sums
    D = rowsum(P * dP) are a float32 reduction.
    """
    dims = _lowp_dims(q, k, v, causal, softmax_scale)
    if tuple(do.shape) != tuple(q.shape) or do.dtype != q.dtype:
        raise ValueError(f"do must have q's shape {tuple(q.shape)} and dtype {q.dtype}; got "
                         f"{tuple(do.shape)} {do.dtype}")
    xp, name, tau = _xp(q), q.dtype.name, np.float32(dims.scale)
    P, _ = _naive_probs(q, k, dims)
    do32 = to_float32(do)
    dv = from_float32(xp.swapaxes(P, -1, -2) @ do32, name)  # (B, H, Nk, d)
    dP = round_to(do32 @ xp.swapaxes(to_float32(v), -1, -2), name)  # (B, H, Nq, Nk)
    D = (P * dP).sum(axis=-1, keepdims=True, dtype=xp.float32)  # (B, H, Nq, 1)
    dS = round_to(P * (dP - D), name)
    dq = from_float32(tau * (dS @ to_float32(k)), name)  # (B, H, Nq, d)
    dk = from_float32(tau * (xp.swapaxes(dS, -1, -2) @ to_float32(q)), name)  # (B, H, Nk, d)
    return dq, dk, dv


def _as64(x):
    xp = _xp(x)
    return (to_float32(x) if x.dtype.itemsize == 2 else xp.asarray(x)).astype(xp.float64)


def within_fa_rule(out, ref64, naive_lowp, factor=2.0, slack=None):
    """FlashAttention's test rule: max|out - ref64| <= factor * max|naive_lowp - ref64| + slack.

    out: a 16-bit result (a kernel's or a reference's); ref64: the float64 answer on the same
    16-bit inputs; naive_lowp: naive attention in the same 16-bit dtype. NumPy or CuPy arrays.
    Returns (ok, err, bound). slack defaults to 1e-5 * max|ref64|: far below one 16-bit ulp of
    the largest entry (fp16 ~1e-3, bf16 ~8e-3 relative), so it cannot excuse a rounding error,
    but it keeps the rule from failing on float32 summation-order noise where naive_lowp happens
    to be exact (tiny or all-zero tensors, such as dK of keys that no query sees).
    A NaN anywhere is a ValueError that says where.
    """
    xp = _xp(out)
    a, r, n = (_as64(x) for x in (out, ref64, naive_lowp))
    if not (a.shape == r.shape == n.shape):
        raise ValueError(f"out, ref64 and naive_lowp must have one shape; got {a.shape}, "
                         f"{r.shape}, {n.shape}")
    for name, x in (("out", a), ("ref64", r), ("naive_lowp", n)):
        if bool(xp.isnan(x).any()):
            where = tuple(int(t) for t in xp.argwhere(xp.isnan(x))[0])
            raise ValueError(f"{name} holds NaN (first at index {where}); the rule compares finite "
                             f"results only")
    if a.size == 0:
        return True, 0.0, 0.0
    scale = float(xp.abs(r).max())
    slack = 1e-5 * scale if slack is None else slack
    err = float(xp.abs(a - r).max())
    bound = float(factor * xp.abs(n - r).max() + slack)
    return err <= bound, err, bound
