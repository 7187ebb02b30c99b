"""The ops a transformer's layers and loss need beyond the elementwise ones: Softmax, LogSoftmax,
NLLLoss, LayerNorm, Embedding and Dropout (with `dropout`, which draws the mask).

Part of flashlab.autodiff.tensor_functions (which re-exports every name here)."""
from __future__ import annotations

import numpy as np

from .shapes import _shape
from .tensor import Function, Tensor, array_module

# ----------------------------------------------------------------------------- softmax, loss


class Softmax(Function):
    """P = softmax(S) along `axis`. Backward: dS = P * (dP - rowsum(P * dP)), the same formula
    as B1:L11 / G2:L7 (there rowsum(P * dP) is computed as rowsum(dO * O))."""

    @staticmethod
    def forward(ctx, s, axis=-1):
        xp = array_module(s)
        e = xp.exp(s - s.max(axis=axis, keepdims=True))  # -inf entries (a mask) give 0
        p = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(p)
        ctx.axis = axis
        return p

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_values
        return (p * (grad - (p * grad).sum(axis=ctx.axis, keepdims=True)),)


class LogSoftmax(Function):
    """log softmax(x) = x - logsumexp(x), with the row max taken out first so exp never
    overflows. Backward: grad - softmax(x) * rowsum(grad)."""

    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        m = x.max(axis=axis, keepdims=True)
        out = x - (m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True)))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_values
        return (grad - array_module(out).exp(out) * grad.sum(axis=ctx.axis, keepdims=True),)


def _check_ids(op: str, ids, n: int, what: str):
    xp = array_module(ids)
    if not hasattr(ids, "dtype") or not np.issubdtype(np.dtype(ids.dtype), np.integer):
        raise TypeError(f"{op}: {what} must be an integer array, got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(f"{op}: {what} must lie in 0..{n - 1}; got values from {int(ids.min())} "
                         f"to {int(ids.max())}")
    return xp


class NLLLoss(Function):
    """Mean over positions of -logp[..., t]: with logp = log_softmax(logits), the cross-entropy.

    logp (..., V), targets (...) integers. Backward: -1/M at each target entry, 0 elsewhere.
    """

    @staticmethod
    def forward(ctx, logp, targets):
        if _shape(targets) != _shape(logp)[:-1]:
            raise ValueError(f"NLLLoss: targets of shape {_shape(targets)} do not match "
                             f"log-probabilities of shape {_shape(logp)}: targets must have the "
                             "shape of logp without its last (class) axis")
        xp = _check_ids("NLLLoss", targets, logp.shape[-1], "targets")
        flat = logp.reshape(-1, logp.shape[-1])  # (M, V)
        t = targets.reshape(-1)  # (M,)
        rows = xp.arange(t.shape[0])
        ctx.save_for_backward(rows, t)
        ctx.shape = _shape(logp)
        return -flat[rows, t].mean()

    @staticmethod
    def backward(ctx, grad):
        rows, t = ctx.saved_values
        xp = array_module(grad)
        g = xp.zeros((rows.shape[0], ctx.shape[-1]), dtype=grad.dtype)  # (M, V)
        g[rows, t] = -grad / rows.shape[0]
        return g.reshape(ctx.shape), None


# ----------------------------------------------------------------------------- layers


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis of x (..., C).

    With xhat = (x - mean) * rstd and dxhat = grad * weight, the input gradient is
    rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)): the mean and variance depend on
    every entry of the row, which is where the two mean terms come from.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        C = x.shape[-1]
        for name, p in (("weight", weight), ("bias", bias)):
            if _shape(p) != (C,):
                raise ValueError(f"LayerNorm: {name} has shape {_shape(p)}, expected ({C},) for "
                                 f"input of shape {_shape(x)} (normalised over the last axis)")
        xp = array_module(x)
        mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
        rstd = 1.0 / xp.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        xhat = (x - mu) * rstd  # (..., C)
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight + bias

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_values
        lead = tuple(range(grad.ndim - 1))
        dweight = (grad * xhat).sum(axis=lead)  # (C,)
        dbias = grad.sum(axis=lead)  # (C,)
        dxhat = grad * weight
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                     - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, dweight, dbias


class Embedding(Function):
    """out[...] = weight[ids[...]]: a table lookup. Backward adds each position's gradient into
    the row it read (a row read twice gets both), so rows never read get exactly 0."""

    @staticmethod
    def forward(ctx, weight, ids):
        if weight.ndim != 2:
            raise ValueError(f"Embedding: the table must be (V, C), got shape {_shape(weight)}")
        _check_ids("Embedding", ids, weight.shape[0], "ids")
        ctx.save_for_backward(ids)
        ctx.shape = _shape(weight)
        return weight[ids]  # (..., C)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_values
        xp = array_module(grad)
        dweight = xp.zeros(ctx.shape, dtype=grad.dtype)  # (V, C)
        flat_ids, flat_grad = ids.reshape(-1), grad.reshape(-1, ctx.shape[1])
        if hasattr(xp.add, "at"):  # NumPy; CuPy >= 12
            xp.add.at(dweight, flat_ids, flat_grad)  # unbuffered: repeated ids add up
        else:  # older CuPy
            import cupyx

            cupyx.scatter_add(dweight, flat_ids, flat_grad)
        return dweight, None


class Dropout(Function):
    """x * mask, where mask holds 0 or 1/(1-p): the mask is an input, drawn by `dropout`, so the
    Function itself is deterministic (and gradient-checkable)."""

    @staticmethod
    def forward(ctx, x, mask):
        if _shape(mask) != _shape(x):
            raise ValueError(f"Dropout: mask shape {_shape(mask)} differs from input {_shape(x)}")
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_values
        return grad * mask, None


def dropout(x: Tensor, p: float, training: bool = True, generator=None) -> Tensor:
    """Inverted dropout: keep each entry with probability 1 - p and scale it by 1/(1-p).

    The mask is drawn on the CPU from `generator` (a numpy Generator; a fresh unseeded one if
    None) and moved to x's device, so a seed gives the same mask on CPU and GPU.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if p == 0.0 or not training:
        return x
    generator = generator if generator is not None else np.random.default_rng()
    keep = (generator.random(x.shape) >= p) / (1.0 - p)  # (x.shape) of 0 or 1/(1-p)
    mask = x.xp.asarray(keep, dtype=x.dtype)
    return Dropout.apply(x, Tensor(mask))
