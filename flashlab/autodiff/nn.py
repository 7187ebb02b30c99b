"""Modules for a small decoder-only transformer, and Adam.

A Module holds Parameters (leaf tensors with requires_grad=True) and sub-modules; `parameters()`
finds them all, in a fixed order. Every forward is written with Tensor ops only, so autodiff
gives the backward pass; the one exception is where attention is computed, which is the choice
this package is about:

    MultiHeadAttention(attention="flash")     q.flash_attention(k, v, causal=True)
                                              one FlashAttention node: saves O and L only
    MultiHeadAttention(attention="standard")  q.standard_attention(k, v, causal=True)
                                              matmul, scale, mask, softmax, matmul: saves P

Both compute the same function, so with the same seed both models train to the same losses
(up to rounding); tests/test_autodiff.py checks that.

Parameters are created on the CPU from one numpy Generator, then moved to the device and cast:
a seed gives the same initial model on CPU and GPU.
"""
from __future__ import annotations

import math

import numpy as np

from .tensor import Tensor, to_device

ATTENTION = ("flash", "standard")


class Parameter(Tensor):
    """A leaf tensor the optimiser updates (requires_grad=True)."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class: sub-modules and Parameters assigned as attributes are found by
    `parameters()`; `train()` / `eval()` switch dropout on and off."""

    def __init__(self):
        self.training = True

    def children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True):
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Init:
    """Draws initial weights on the CPU (numpy Generator, float64), then puts them on `device` in
    `dtype`: one seed, one model, whatever the device."""

    def __init__(self, seed: int = 0, device: str = "cpu", dtype=np.float64):
        self.rng = np.random.default_rng(seed)
        self.device, self.dtype = device, np.dtype(dtype)

    def param(self, array) -> Parameter:
        return Parameter(to_device(np.asarray(array, np.float64), self.device, self.dtype))

    def normal(self, shape, std) -> Parameter:
        return self.param(self.rng.standard_normal(shape) * std)

    def zeros(self, shape) -> Parameter:
        return self.param(np.zeros(shape))

    def ones(self, shape) -> Parameter:
        return self.param(np.ones(shape))


class Linear(Module):
    """y = x W + b for x (..., in): W (in, out), b (out,). Weights ~ N(0, 1/in)."""

    def __init__(self, init: Init, n_in: int, n_out: int, bias: bool = True, std=None):
        super().__init__()
        self.weight = init.normal((n_in, n_out), std if std is not None else 1 / math.sqrt(n_in))
        self.bias = init.zeros((n_out,)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight  # (..., out)
        return y + self.bias if self.bias is not None else y


class LayerNorm(Module):
    def __init__(self, init: Init, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = init.ones((dim,)), init.zeros((dim,)), eps

    def forward(self, x: Tensor) -> Tensor:
        return x.layer_norm(self.weight, self.bias, self.eps)


class Embedding(Module):
    """A (V, C) table; forward(ids (...)) gives (..., C)."""

    def __init__(self, init: Init, num: int, dim: int, std: float = 0.02):
        super().__init__()
        self.weight = init.normal((num, dim), std)

    def forward(self, ids) -> Tensor:
        return self.weight.embedding(ids)


class Dropout(Module):
    def __init__(self, p: float, generator=None):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout(self.p, self.training, self.generator)


class MultiHeadAttention(Module):
    """Causal self-attention with H heads of size d = C / H.

    x (B, N, C) -> q, k, v each (B, N, C) -> split into heads (B, H, N, d) -> attention ->
    merge heads (B, N, C) -> output projection. `attention` picks the op: "flash" (one
    FlashAttention node) or "standard" (built from matmul and softmax); attention_dtype
    "bfloat16" / "float16" runs the flash node in 16 bits (mixed precision).
    """

    def __init__(self, init: Init, dim: int, heads: int, attention: str = "flash",
                 causal: bool = True, dropout: float = 0.0, generator=None,
                 attention_dtype: str | None = None):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads} "
                             "(head dim = dim / heads)")
        if attention_dtype is not None and (attention != "flash" or attention_dtype not in
                                            ("bfloat16", "float16")):
            raise ValueError(f"attention_dtype {attention_dtype!r}: bfloat16 or float16, with "
                             f"attention='flash' (got attention={attention!r})")
        self.heads, self.attention, self.causal = heads, attention, causal
        self.attention_dtype = attention_dtype
        self.q, self.k, self.v = (Linear(init, dim, dim) for _ in range(3))
        self.proj = Linear(init, dim, dim)
        self.drop = Dropout(dropout, generator)

    def split_heads(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)  # (B, H, N, d)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape  # (B, N, C)
        q, k, v = (self.split_heads(f(x)) for f in (self.q, self.k, self.v))  # (B, H, N, d)
        if self.attention == "flash":
            o = q.flash_attention(k, v, causal=self.causal, dtype=self.attention_dtype)
        else:
            o = q.standard_attention(k, v, causal=self.causal)  # (B, H, N, d)
        o = o.permute(0, 2, 1, 3).reshape(B, N, C)  # (B, N, C)
        return self.drop(self.proj(o))


class MLP(Module):
    """Linear(C, 4C), GELU, Linear(4C, C)."""

    def __init__(self, init: Init, dim: int, dropout: float = 0.0, generator=None):
        super().__init__()
        self.up, self.down = Linear(init, dim, 4 * dim), Linear(init, 4 * dim, dim)
        self.drop = Dropout(dropout, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(self.up(x).gelu()))  # (B, N, C)


class Block(Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, init: Init, dim: int, heads: int, attention: str = "flash",
                 dropout: float = 0.0, generator=None, attention_dtype: str | None = None):
        super().__init__()
        self.ln1, self.ln2 = LayerNorm(init, dim), LayerNorm(init, dim)
        self.attn = MultiHeadAttention(init, dim, heads, attention, True, dropout, generator,
                                       attention_dtype)
        self.mlp = MLP(init, dim, dropout, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))  # (B, N, C)
        return x + self.mlp(self.ln2(x))  # (B, N, C)


class Decoder(Module):
    """A decoder-only transformer (GPT-style) over a vocabulary of V tokens.

    ids (B, N) -> token + position embeddings (B, N, C) -> `layers` Blocks -> LayerNorm ->
    logits (B, N, V). Position n may only attend to positions 0..n (causal), so the logits at n
    predict token n + 1.
    """

    def __init__(self, vocab: int, seq: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 attention: str = "flash", dropout: float = 0.0, seed: int = 0,
                 device: str = "cpu", dtype=np.float64, attention_dtype: str | None = None):
        super().__init__()
        init = Init(seed, device, dtype)
        generator = np.random.default_rng(seed + 1)  # dropout masks
        self.vocab, self.seq, self.device, self.dtype = vocab, seq, device, np.dtype(dtype)
        self.tok = Embedding(init, vocab, dim)
        self.pos = Embedding(init, seq, dim)
        self.blocks = [Block(init, dim, heads, attention, dropout, generator, attention_dtype)
                       for _ in range(layers)]
        self.ln_f = LayerNorm(init, dim)
        self.head = Linear(init, dim, vocab, std=0.02)
        self.drop = Dropout(dropout, generator)

    def forward(self, ids) -> Tensor:
        B, N = ids.shape
        if N > self.seq:
            raise ValueError(f"Decoder: {N} tokens but the model has {self.seq} positions; "
                             f"pass at most {self.seq} (crop the context)")
        xp = self.tok.weight.xp
        ids = to_device(ids, self.tok.weight.device)
        x = self.tok(ids) + self.pos(xp.arange(N))  # (B, N, C) + (N, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)  # (B, N, C)
        return self.head(self.ln_f(x))  # (B, N, V)

    def loss(self, ids, targets) -> Tensor:
        """Mean cross-entropy of the next-token predictions: ids, targets (B, N)."""
        targets = to_device(targets, self.tok.weight.device)
        return self(ids).cross_entropy(targets)


class Adam:
    """Adam (Kingma & Ba): per-parameter step sizes from running means of the gradient (m) and
    of its square (v), with the bias of their zero start corrected.

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [p.xp.zeros_like(p.data) for p in self.params]
        self.v = [p.xp.zeros_like(p.data) for p in self.params]
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            p.data -= self.lr * (m / c1) / (p.xp.sqrt(v / c2) + self.eps)
