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
# # 5. The backward pass, step by step
#
# Training needs the gradients of a loss with respect to Q, K and V, given dO, the gradient with
# respect to the output. With P = softmax(S), S = tau Q K^T, the chain rule gives
#
#     dV = P^T dO         dP = dO V^T         dS = P * (dP - D),  D = rowsum(P * dP)
#     dQ = tau dS K       dK = tau dS^T Q
#
# Standard attention's backward reads P from HBM (N x N, kept from the forward). FlashAttention
# kept only O and, per row, the logsumexp L = m + log l. Its backward (the paper's Algorithm 4,
# labels **B1**) walks the same tiles as the forward and:
#
# * **recomputes** S_ij and P_ij = exp(S_ij - L_i) from Q_i, K_j and L_i (B1:L6-L7): more
#   arithmetic, no N x N matrix in HBM;
# * uses **D_i = rowsum(dO_i * O_i)** (B1:L10), which equals rowsum(P * dP) and needs only
#   rows of O and dO;
# * keeps **dK~_j and dV~_j on chip** for the whole inner loop and writes them once (B1:L8,
#   B1:L13, B1:L15);
# * **accumulates dQ_i in HBM**: each step reads dQ_i, adds tau dS_ij K_j and writes it back
#   (B1:L12), because every K/V block j contributes to every dQ_i.

# %%
import numpy as np

from flashlab import hbm
from flashlab.hbm import MemoryCounter
from flashlab.reference import fa1_backward_steps, fa1_forward, naive_attention_backward
from flashlab.viz import draw_backward_step, step_slider

rng = np.random.default_rng(1)
N, d, Br, Bc = 16, 8, 4, 8
q, k, v, do = (rng.standard_normal((1, 1, N, d)) for _ in range(4))  # (B, H, N, d)
o, lse = fa1_forward(q, k, v, Br=Br, Bc=Bc)  # the forward keeps O and L = m + log(l)

# %% [markdown]
# ## D from rows, not from P
#
# D_i = rowsum(P * dP) would need whole rows of P. Since O = P V and dP = dO V^T,
# rowsum(P * dP) = sum_c P_rc (dO_r . V_c) = dO_r . (sum_c P_rc V_c) = dO_r . O_r: a dot product
# of two rows we have.

# %%
S = q[0, 0] @ k[0, 0].T / np.sqrt(d)
P = np.exp(S - lse[0, 0][:, None])  # exp(S - L) is softmax(S): B1:L7 with L instead of l, m
dP = do[0, 0] @ v[0, 0].T
print("rowsum(P * dP) :", np.round((P * dP).sum(-1)[:6], 5))
print("rowsum(dO * O) :", np.round((do[0, 0] * o[0, 0]).sum(-1)[:6], 5))

# %% [markdown]
# ## Run B1 and keep every step
#
# As in notebook 3: the generator yields one `Step` per (i, j) with the tiles of B1
# (`P_ij`, `dP_ij`, `D_i`, `dS_ij`, `dQ_i`, `dK_tilde_j`, `dV_tilde_j`), and the counter,
# snapshotted after each step, holds the HBM traffic so far.

# %%
counter = MemoryCounter()
steps, traffic = [], []
for step in fa1_backward_steps(do, q, k, v, o, lse, Br=Br, Bc=Bc, counter=counter):
    steps.append(step)
    traffic.append(counter.traffic())
print(f"{len(steps)} steps; HBM traffic {counter.hbm_elements:,} elements; "
      f"peak SRAM {counter.sram_peak} floats")

# %% [markdown]
# ## One step, drawn
#
# Step 4 is (i = 3, j = 0), the last query block against the first K/V block. Top row, HBM:
# the inputs Q, K, V, O, dO, and the gradients as they stand after the step. dQ has rows
# written by every step so far. dK and dV are still all zero: the loop over i for j = 0 ends
# with this step, and B1:L15 writes dK_0 and dV_0 right after it (dashed outline). Middle row,
# SRAM: the recomputed P_ij, dP_ij, D_i, dS_ij, and the accumulators dK~_0 and dV~_0, which now
# hold the contributions of all four query blocks.

# %%
draw_backward_step(steps, 3, q, k, v, o, do, traffic)

# %% [markdown]
# The slider moves through all eight steps (static viewers show the first step only):

# %%
step_slider(len(steps), lambda t: draw_backward_step(steps, t, q, k, v, o, do, traffic),
            frames=[0])

# %% [markdown]
# ## Where dQ accumulates
#
# Each step adds one term tau dS_ij K_j to dQ_i in HBM (B1:L12). Take query block i = 1: after
# j = 0 it holds the contribution of the first 8 keys only; after j = 1, of all 16, and it equals
# the gradient of standard attention (the float64 oracle, A0's backward).

# %%
dq_oracle, dk_oracle, dv_oracle = naive_attention_backward(do, q, k, v)
rows_1 = slice(1 * Br, 2 * Br)
for s in steps:
    if s.i == 1:
        gap = np.abs(s.dQ_i[0, 0] - dq_oracle[0, 0, rows_1]).max()
        print(f"after step (i=1, j={s.j}): max |dQ_1 - oracle dQ_1| = {gap:.1e}")

dq, dk, dv = (np.zeros_like(q) for _ in range(3))  # rebuild the outputs from the last steps
for s in steps:
    dq[:, :, s.i * Br:(s.i + 1) * Br] = s.dQ_i
    dk[:, :, s.j * Bc:(s.j + 1) * Bc] = s.dK_tilde_j
    dv[:, :, s.j * Bc:(s.j + 1) * Bc] = s.dV_tilde_j
for name, got, want in (("dQ", dq, dq_oracle), ("dK", dk, dk_oracle), ("dV", dv, dv_oracle)):
    print(f"{name}: max |B1 - oracle| = {np.abs(got - want).max():.1e}")

# %% [markdown]
# ## What it costs
#
# The traffic the counter saw is the closed form `hbm.b1_traffic`: dQ is read Tc times and
# written Tc + 1 times (the zeros of B1:L1, then once per step), like O in the forward. With
# small tiles that round trip makes B1 move about as many bytes as a standard backward, for the
# same reason as A1 in notebook 1. What it saves for certain is memory: nothing N x N is kept or
# made, where standard attention keeps P from the forward and builds dP and dS (N^2 each). The
# price is arithmetic: S_ij and P_ij are computed a second time.

# %%
assert counter.traffic() == hbm.b1_traffic(1, 1, N, N, d, Br, Bc)
print(f"reads  {dict(counter.reads)}\nwrites {dict(counter.writes)}")
for n_big in (1024, 16384):
    b1 = hbm.b1_traffic(1, 1, n_big, n_big, 64, 48, 48).total * 4 / 1e6
    print(f"N = {n_big:5d}, d = 64, fp32, one head: B1 moves {b1:7.1f} MB with 48 x 48 tiles; "
          f"extra memory: B1 {n_big * 4 / 1e6:.3f} MB (L), standard {n_big**2 * 4 / 1e6:7.1f} MB "
          f"per N x N matrix")

# %% [markdown]
# ## On a GPU: the backward kernels against their step-throughs
#
# `kernel_check.check_kernel(kernel, "backward")` traces `fa1_backward` (B1) and `fa2_backward`
# (G2, notebook 6) on the GPU and compares them with these step-throughs tile by tile. The planted
# bug `dk-no-scale` drops tau from B1:L13; the trace names dK~_j.

# %%
from flashlab.course import BUGS
from flashlab.launch.device import device_limits, gpu_available
from flashlab.launch.plans import plan

if gpu_available():
    import cupy as cp

    from flashlab.kernel_check import check_kernel

    smem = device_limits(cp.cuda.Device().id)["smem_optin"]
    n_gpu = 2 * plan("fa1", 64, "backward", smem)["Bc"] + 17  # three K/V blocks, one ragged
    for kernel in ("fa1", "fa2"):
        div, kern_trace, _ = check_kernel(kernel, "backward", H=2, Nq=n_gpu, d=64)
        print(f"{kernel} backward (Br = {kern_trace.Br}, Bc = {kern_trace.Bc}, N = {n_gpu}):",
              "all steps match" if div is None else div)
    print(BUGS["dk-no-scale"].question)
    div, _, _ = check_kernel("fa1", "backward", H=2, Nq=n_gpu, d=64, bug="dk-no-scale")
    print(div)
else:
    print("No CUDA GPU: skipped tracing fa1_backward and fa2_backward (and the planted bug "
          "dk-no-scale) against the step-throughs.")

# %% [markdown]
# **Summary.** The backward pass recomputes P a tile at a time from L, gets D from rows of O and
# dO, keeps dK~_j and dV~_j on chip and sends dQ_i through HBM at every step. Notebook 6 turns
# both loops around (FlashAttention-2).
