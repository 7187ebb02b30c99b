# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. FlashAttention inside an autodiff framework
#
# A training framework does not call a backward pass by hand: it records the operations of the
# forward pass and, on `loss.backward()`, calls each operation's backward in reverse order. An
# operation plugs in as a **Function** with two static methods, in the style of minitorch and
# PyTorch:
#
# * `forward(ctx, q, k, v)` computes the output and saves on `ctx` what the backward will need;
# * `backward(ctx, do)` gets the gradient of the loss with respect to the output and returns the
#   gradients with respect to each input.
#
# For attention the choice of what to save is the whole point. A standard implementation saves
# P (N x N per head). FlashAttention saves q, k, v, o and the logsumexp L (N floats per head), and
# its backward recomputes P tile by tile (notebook 5). In outline (a sketch, not code that runs
# here):
#
# ```python
# class FlashAttention(Function):
#     @staticmethod
#     def forward(ctx, q, k, v, causal=False):
#         o, lse = flashlab.flash_attention(q, k, v, causal=causal, return_lse=True)
#         ctx.save_for_backward(q, k, v, o, lse)       # O(N) per head beyond the inputs, no P
#         ctx.causal = causal
#         return o
#
#     @staticmethod
#     def backward(ctx, do):
#         q, k, v, o, lse = ctx.saved_values
#         return flashlab.flash_attention_backward(do, q, k, v, o, lse, causal=ctx.causal)
#
# # and the Tensor method is one line:
# #   def flash_attention(self, k, v, causal=False): return FlashAttention.apply(self, k, v, causal)
# ```
#
# flashlab's own framework is `flashlab.autodiff`: `Tensor`, `Function`, the FlashAttention
# Function in `tensor_functions.py`, `Tensor.flash_attention`, and a small transformer trained with
# `flashlab train`. First the forward and backward pair such a Function wraps, on its own; then the
# same pair inside the framework.

# %%
import numpy as np

from flashlab import flash_attention, flash_attention_backward
from flashlab.viz import loss_plot

rng = np.random.default_rng(0)

# %% [markdown]
# ## The pair a Function wraps, checked like any backward
#
# Every backward is held to the same test: nudge one input entry by +-h, see how much the loss
# moves (a central difference), and compare with the gradient the backward returns. With the loss
# sum(do * o), the gradient with respect to o is do. NumPy float64 inputs run the references, so
# the check is exact to about h^2.

# %%
B, H, N, d = 1, 2, 12, 4
q, k, v, do = (rng.standard_normal((B, H, N, d)) for _ in range(4))  # (B, H, N, d)
o, lse = flash_attention(q, k, v, causal=True, return_lse=True)  # forward: keep o and L
dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal=True)  # backward


def loss(q, k, v):
    return float((do * flash_attention(q, k, v, causal=True)).sum())


h = 1e-6
for name, x, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
    idx = (0, 1, 5, 2)  # batch 0, head 1, row 5, column 2
    plus, minus = x.copy(), x.copy()
    plus[idx] += h
    minus[idx] -= h
    args = {"q": q, "k": k, "v": v}
    numeric = (loss(**{**args, name: plus}) - loss(**{**args, name: minus})) / (2 * h)
    print(f"d loss / d {name}{list(idx)}: backward {grad[idx]:+.8f}, central difference {numeric:+.8f}")

# %% [markdown]
# ## Learning with it
#
# A framework chains many such pairs; one is enough to learn something. Below, the values V are
# learned so that causal attention over fixed queries and keys reproduces a target output: the
# loss is 1/2 |o - target|^2, so do = o - target, and `flash_attention_backward` gives dV. Plain
# gradient descent, ten steps.

# %%
target = flash_attention(q, k, rng.standard_normal(v.shape), causal=True)
v_learned = np.zeros_like(v)
losses = []
for it in range(10):
    o, lse = flash_attention(q, k, v_learned, causal=True, return_lse=True)
    do_step = o - target  # d(1/2 |o - target|^2) / do
    _, _, dv_step = flash_attention_backward(do_step, q, k, v_learned, o, lse, causal=True)
    v_learned -= 0.5 * dv_step  # learning rate 0.5
    losses.append(0.5 * float((do_step ** 2).sum()))
print(f"loss: {losses[0]:.4f} at step 0, {losses[-1]:.4f} at step {len(losses) - 1}")

loss_plot(losses, "learning V through flash_attention_backward")

# %% [markdown]
# ## The same pair on the GPU
#
# Given CuPy arrays, the same two calls run the CUDA kernels (`kernel="auto"` picks fa2 for
# d = 64); the gradients agree with the float64 reference to fp32 rounding.

# %%
from flashlab.launch.device import gpu_available

if gpu_available():
    import cupy as cp

    xs = [rng.standard_normal((2, 4, 256, 64)) for _ in range(4)]  # q, k, v, do: (B, H, N, d)
    g = [cp.asarray(x, dtype=cp.float32) for x in xs]
    o_gpu, lse_gpu = flash_attention(*g[:3], causal=True, return_lse=True)
    grads_gpu = flash_attention_backward(g[3], *g[:3], o_gpu, lse_gpu, causal=True)
    o_ref, lse_ref = flash_attention(*xs[:3], causal=True, return_lse=True)
    grads_ref = flash_attention_backward(xs[3], *xs[:3], o_ref, lse_ref, causal=True)
    for name, a, b in zip(("dq", "dk", "dv"), grads_gpu, grads_ref):
        print(f"{name}: max |GPU - float64 reference| = {float(np.abs(a.get() - b).max()):.1e}")
else:
    print("No CUDA GPU: skipped the forward/backward pair on CuPy arrays (the fa2 kernels).")

# %% [markdown]
# ## Inside flashlab.autodiff
#
# `q.flash_attention(k, v, causal=True)` records one FlashAttention node in the graph (its forward
# keeps o and the logsumexp, not P). `backward()` walks the graph in topological order and fills
# `q.grad`, `k.grad`, `v.grad`: they must equal the pair's gradients above. The loss here is
# sum(do * o), so the gradient arriving at o is do.

# %%
from flashlab.autodiff import Tensor

qt, kt, vt = (Tensor(x, requires_grad=True) for x in (q, k, v))
out = qt.flash_attention(kt, vt, causal=True)  # (B, H, N, d), one graph node
(out * Tensor(do)).sum().backward()
o, lse = flash_attention(q, k, v, causal=True, return_lse=True)
expected = flash_attention_backward(do, q, k, v, o, lse, causal=True)
print("forward: max |Tensor.flash_attention - flash_attention| =",
      f"{np.abs(out.data - o).max():.1e}")
for name, t, g in (("q", qt, expected[0]), ("k", kt, expected[1]), ("v", vt, expected[2])):
    print(f"backward: max |{name}.grad - flash_attention_backward| = {np.abs(t.grad.data - g).max():.1e}")

# %% [markdown]
# ## Training the small transformer, flash against standard attention
#
# The same decoder-only transformer, trained on Shakespeare's Sonnets with the same seed, once
# with `attention="flash"` (one FlashAttention node per layer) and once with `"standard"`
# (matmul, mask, softmax, matmul: P is saved for the backward). In float64 on the CPU the two
# loss curves agree to rounding: the same function, computed another way. `flashlab train
# --compare` does this from the command line.

# %%
from flashlab.autodiff.train import TrainConfig, train

runs = {kind: train(TrainConfig(attention=kind, steps=8, batch=4, seq=32, layers=1, heads=2,
                                dim=32, sample=0))
        for kind in ("flash", "standard")}
for kind, r in runs.items():
    print(f"{kind:>8}: loss {r.losses[0]:.6f} -> {r.losses[-1]:.6f}, "
          f"{1e3 * r.seconds_per_step:.1f} ms per step, peak {r.peak_memory / 1e6:.1f} MB ({r.memory_what})")
worst = max(abs(a - b) / abs(b) for a, b in zip(runs["flash"].losses, runs["standard"].losses))
print(f"largest relative difference between the two loss curves: {worst:.1e}")
loss_plot(runs["flash"].losses, "small transformer, flash attention (float64, CPU)")

# %% [markdown]
# **Summary.** To a framework, FlashAttention is one Function: a forward that keeps o and the
# N-float logsumexp instead of the N x N P, and a backward that recomputes P from them. Checked
# by central differences like any other operation, it trains a model like any other operation,
# with memory that grows as N instead of N^2.
