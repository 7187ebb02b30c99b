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
# # 3. Algorithm 1, step by step
#
# FlashAttention's forward pass (the paper's Algorithm 1, labels **A1** in `docs/ALGORITHMS.md`)
# cuts Q into Tr row blocks Q_i of Br rows and K, V into Tc blocks K_j, V_j of Bc rows, and walks
# the tiles with K/V blocks outside and Q blocks inside:
#
#     A1:L5   for j = 1..Tc:
#     A1:L6     load K_j, V_j from HBM to SRAM
#     A1:L7     for i = 1..Tr:
#     A1:L8       load Q_i, O_i, l_i, m_i from HBM to SRAM
#     A1:L9       S_ij = tau Q_i K_j^T                          (Br x Bc, on chip)
#     A1:L10      m~_ij = rowmax(S_ij); P~_ij = exp(S_ij - m~_ij); l~_ij = rowsum(P~_ij)
#     A1:L11      m_new = max(m_i, m~_ij); l_new = e^(m_i - m_new) l_i + e^(m~_ij - m_new) l~_ij
#     A1:L12      O_i <- diag(l_new)^-1 (diag(l_i) e^(m_i - m_new) O_i + e^(m~_ij - m_new) P~_ij V_j)
#     A1:L13      l_i <- l_new, m_i <- m_new; write O_i, l_i, m_i to HBM
#
# Each row of a tile does the online softmax of notebook 2; S_ij and P~_ij live only in SRAM
# and are never written to HBM. Here we run it on a problem small enough to look at every
# number: N = 16 queries and keys, d = 8, tiles of Br = 4 query rows and Bc = 8 key rows, so
# Tr = 4, Tc = 2 and 8 steps. (Indices i and j count from 0 here, as in the code and the traces.)

# %%
import numpy as np

from flashlab import hbm
from flashlab.hbm import MemoryCounter
from flashlab.reference import fa1_forward_steps, naive_attention, run
from flashlab.viz import draw_a1_step, step_frames, step_slider

rng = np.random.default_rng(0)
N, d, Br, Bc = 16, 8, 4, 8
q, k, v = (rng.standard_normal((1, 1, N, d)) for _ in range(3))  # (B, H, N, d), one head

# %% [markdown]
# ## Run it and keep every step
#
# `fa1_forward_steps` is Algorithm 1 as a Python generator: it yields a `Step` after each
# (i, j) tile, carrying the tiles the paper names (`S_ij`, `P_tilde_ij`, `m_new`, `l_new`,
# `O_i`, ...). The `MemoryCounter` we pass in is ticked for every element the algorithm reads
# from or writes to HBM. When `next()` hands us a step, the counter holds the traffic up to and
# including that step, so we snapshot it beside the step.

# %%
counter = MemoryCounter()
steps, traffic = [], []
for step in fa1_forward_steps(q, k, v, Br=Br, Bc=Bc, counter=counter):
    steps.append(step)
    traffic.append(counter.traffic())  # a copy: reads and writes per tensor so far
    print(f"step {len(steps)}: (i={step.i}, j={step.j}) ends on {step.line}, "
          f"HBM traffic so far {traffic[-1].total:,} elements")

# %% [markdown]
# ## One step, drawn
#
# Step 5 is (i = 0, j = 1): the second K/V block meets the first Q block, whose O_0, l_0 and
# m_0 were already written once, at step 1. The top row is HBM: the whole Q, K, V of our head,
# and O, l, m as they stand after this step. The tiles that sit in SRAM during the step are
# outlined: Q_i, O_i, l_i, m_i in orange, K_j, V_j in blue. The middle row is SRAM: the scores
# S_ij (A1:L9), P~_ij (A1:L10), and for each row of the tile the max and the sum before and after
# A1:L11. The bottom row is the HBM traffic so far, per tensor, and the lines of A1 this step
# ran.

# %%
draw_a1_step(steps, 4, q, k, v, traffic)

# %% [markdown]
# Things to find in the picture:
#
# * **Row max.** Where the tile's max m~_ij (x) is larger than the max read from HBM (circle),
#   m_new moves right and the old O_0 and l_0 are scaled down by e^(m_i - m_new) (A1:L12).
#   Where it is smaller, the new tile's terms are the ones scaled down.
# * **Traffic.** O is read Tc times and written Tc + 1 times (A1:L2 writes the zeros), Q is
#   read once per step; K and V are read once per j, in all.
# * **P~_ij**: each row has an entry 1.00, at the row's max, because A1:L10 subtracts the tile's
#   own max.
#
# ## Move through the steps
#
# The slider redraws the figure for any step (in Jupyter and Colab). Where widgets do not render
# (a static viewer, an export), the still pictures in the next cell show the same figure for the
# first step and for the last.

# %%
step_slider(len(steps), lambda t: draw_a1_step(steps, t, q, k, v, traffic))

# %%
step_frames(len(steps), lambda t: draw_a1_step(steps, t, q, k, v, traffic), frames=[0, 7])

# %% [markdown]
# ## It is exact, and it moves what the closed form says
#
# After the last step, O in HBM is softmax(tau Q K^T) V: the float64 oracle `naive_attention`
# (A0) agrees to rounding. The counter's totals are the closed form `hbm.a1_traffic` (written
# from the algorithm text), and the SRAM the step-through held at once (`sram_peak`, in floats)
# is what A1:L1's block sizes are chosen to fit.

# %%
o, lse, l, m = run(fa1_forward_steps(q, k, v, Br=Br, Bc=Bc))  # runs every step; A1:L16 returns O

o_oracle, lse_oracle = naive_attention(q, k, v)
print(f"max |O - oracle| = {np.abs(o - o_oracle).max():.1e}")
print(f"max |L - oracle| = {np.abs(lse - lse_oracle).max():.1e}   (L = m + log l, kept for the backward)")
closed = hbm.a1_traffic(1, 1, N, N, d, Br, Bc)
assert counter.traffic() == closed
print(f"reads  {dict(counter.reads)}\nwrites {dict(counter.writes)}")
print(f"peak SRAM: {counter.sram_peak} floats "
      f"(K_j, V_j: {2 * Bc * d}; Q_i, O_i: {2 * Br * d}; S_ij: {Br * Bc}; row vectors: {6 * Br})")

# %% [markdown]
# ## With the causal mask
#
# Under the causal mask, query r sees keys 0..r only (S_ij is -inf above the diagonal). The
# paper's Algorithm 1 still visits every tile; a tile that lies wholly above the diagonal
# contributes nothing (its P~_ij is all zeros and m, l, O do not change), but it is loaded and
# computed all the same. FlashAttention-2 skips those tiles (F2:L3); notebook 6 draws the
# difference.

# %%
causal_steps = list(fa1_forward_steps(q, k, v, causal=True, Br=Br, Bc=Bc))
masked = [(s.i, s.j) for s in causal_steps if np.isneginf(s.S_ij).all()]
print(f"A1 causal: {len(causal_steps)} steps, {len(masked)} of them wholly masked: {masked}")
draw_a1_step(causal_steps, 4, q, k, v)

# %% [markdown]
# **Summary.** S_ij and P~_ij exist only one tile at a time, in SRAM; what travels to HBM per
# step is Q_i in and O_i, l_i, m_i in and out. That round trip of O_i at every step is why
# Algorithm 1 as written is no faster than standard attention at small SRAM sizes (notebook 1).
# Notebook 4 runs the same loops as a CUDA kernel and compares them tile by tile.
