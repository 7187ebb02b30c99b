"""Every differentiable op: a Function with forward(ctx, ...) and backward(ctx, grad).

Each forward works on plain arrays and takes its array module from them (`xp = array_module(a)`),
so one definition serves NumPy and CuPy. Each backward returns one gradient per positional input
(None for an input that is not a tensor); a gradient shaped like a broadcast output is summed
back to the input's shape by the engine (tensor.unbroadcast).

The last section is the point of the package: `FlashAttention`, whose forward calls
flashlab.flash_attention and whose backward calls flashlab.flash_attention_backward, beside
`standard_attention`, the same math built from the ops above it.

Every op here is checked against central differences in tests/test_autodiff.py.
"""
from __future__ import annotations

import math

import numpy as np

from .tensor import Function, Tensor, array_module, device_of

# ----------------------------------------------------------------------------- shape helpers


def _shape(x) -> tuple:
    return tuple(int(n) for n in x.shape)


def broadcast_shape(op: str, a, b) -> tuple:
    """The shape a op b broadcasts to, or a ValueError naming the op and both shapes."""
    try:
        return tuple(np.broadcast_shapes(_shape(a), _shape(b)))
    except ValueError:
        raise ValueError(f"{op}: shapes {_shape(a)} and {_shape(b)} cannot broadcast (from the "
                         "last axis back, sizes must be equal or 1); reshape one of them") from None


def shape_arg(args) -> tuple:
    """x.reshape(2, 3) and x.reshape((2, 3)) both mean (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(int(a) for a in args)


def swap_axes(ndim: int, a: int, b: int) -> tuple:
    """The permutation of range(ndim) that swaps axes a and b."""
    axes = list(range(ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return tuple(axes)


def _normalise_axis(op: str, axis, ndim: int) -> tuple:
    """axis (None, an int or a tuple) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} axes")
        out.append(int(a) % ndim)
    return tuple(sorted(set(out)))


def _expand(grad, shape: tuple, axes: tuple, keepdims: bool):
    """Undo a reduction over `axes`: put the reduced axes back as size 1, broadcast to `shape`."""
    xp = array_module(grad)
    if not keepdims:
        for a in axes:
            grad = xp.expand_dims(grad, a)
    return xp.broadcast_to(grad, shape)


# ----------------------------------------------------------------------------- elementwise


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return (-grad,)


class Add(Function):
    """a + b with broadcasting; the gradient flows unchanged to both (summed where broadcast)."""

    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("Add", a, b)
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class Mul(Function):
    """a * b with broadcasting: d(ab)/da = b, d(ab)/db = a."""

    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("Mul", a, b)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_values
        return grad * b, grad * a


class Div(Function):
    """a / b with broadcasting: d/da = 1/b, d/db = -a/b^2."""

    @staticmethod
    def forward(ctx, a, b):
        broadcast_shape("Div", a, b)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_values
        return grad / b, -grad * a / (b * b)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_values
        return (grad * out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_values
        return (grad / a,)


GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Function):
    """GELU(x) = x Phi(x) in the tanh form GPT-2 uses:
    0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)."""

    @staticmethod
    def forward(ctx, x):
        xp = array_module(x)
        t = xp.tanh(GELU_C * (x + 0.044715 * x ** 3))
        ctx.save_for_backward(x, t)
        return 0.5 * x * (1 + t)

    @staticmethod
    def backward(ctx, grad):
        x, t = ctx.saved_values
        du = GELU_C * (1 + 3 * 0.044715 * x * x)  # du/dx
        return (grad * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du),)


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


# ----------------------------------------------------------------------------- reductions, shapes


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = _normalise_axis("Sum", axis, a.ndim)
        ctx.shape, ctx.keepdims = _shape(a), keepdims
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        # every entry that was added gets the gradient of the sum
        return (_expand(grad, ctx.shape, ctx.axes, ctx.keepdims),)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = _normalise_axis("Mean", axis, a.ndim)
        ctx.shape, ctx.keepdims = _shape(a), keepdims
        ctx.count = int(np.prod([ctx.shape[i] for i in ctx.axes]))
        return a.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return (_expand(grad / ctx.count, ctx.shape, ctx.axes, ctx.keepdims),)


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape=()):
        ctx.shape = _shape(a)
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"Reshape: cannot reshape {ctx.shape} ({a.size} numbers) to "
                             f"{tuple(shape)}") from None

    @staticmethod
    def backward(ctx, grad):
        return (grad.reshape(ctx.shape),)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes=()):
        axes = tuple(int(x) % a.ndim if -a.ndim <= x < a.ndim else x for x in axes)
        if sorted(axes) != list(range(a.ndim)):
            raise ValueError(f"Permute: axes {tuple(axes)} are not a permutation of "
                             f"0..{a.ndim - 1} for shape {_shape(a)}")
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        inverse = tuple(int(a) for a in np.argsort(ctx.axes))
        return (grad.transpose(inverse),)


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
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        from ..api import flash_attention

        xp = array_module(q)
        q, k, v = (xp.ascontiguousarray(x) for x in (q, k, v))  # (B, H, N, d) each
        o, lse = flash_attention(q, k, v, causal=causal, return_lse=True)  # (B,H,Nq,d), (B,H,Nq)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, grad):
        from ..api import flash_attention_backward

        q, k, v, o, lse = ctx.saved_values
        do = array_module(grad).ascontiguousarray(grad, dtype=q.dtype)  # (B, H, Nq, d)
        dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal)
        return dq, dk, dv


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


__all__ = [
    "Neg", "Add", "Mul", "Div", "Exp", "Log", "GELU", "MatMul", "Sum", "Mean", "Reshape",
    "Permute", "Softmax", "LogSoftmax", "NLLLoss", "LayerNorm", "Embedding", "Dropout", "dropout",
    "FlashAttention", "standard_attention", "causal_mask", "broadcast_shape", "device_of",
]
