"""Elementwise ops: Neg, Add, Mul, Div (with broadcasting), Exp, Log and GELU.

Part of flashlab.autodiff.tensor_functions (which re-exports every name here)."""
from __future__ import annotations

import math

from .shapes import broadcast_shape
from .tensor import Function, array_module

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
