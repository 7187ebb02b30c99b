"""Shapes and axes: the helpers every op checks its operands with, and the ops that reduce over
axes (Sum, Mean) or rearrange them (Reshape, Permute).

Part of flashlab.autodiff.tensor_functions (which re-exports every name here)."""
from __future__ import annotations

import numpy as np

from .tensor import Function, array_module

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
