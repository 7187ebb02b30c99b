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
# # 2. Online softmax on one row
#
# The softmax of a row x of S is
#
#     p_c = e^(x_c - m) / l,     m = max_c x_c,     l = sum_c e^(x_c - m).
#
# Subtracting the max m changes nothing mathematically (it cancels between the numerator and l)
# but keeps every exponent <= 0, so nothing overflows. The catch: m and l are taken over the
# **whole** row, and FlashAttention only ever holds one tile of it, Bc scores, in SRAM.
#
# The online softmax reads the row a block at a time and keeps two numbers per row: the max m so
# far and the sum l so far. This notebook runs it on one row, draws it, and shows why the result
# is exact, not an approximation. Algorithm 1 does exactly this for every row of a tile at once
# (A1:L10-L12).

# %%
import numpy as np

from flashlab.reference import fa1_forward_steps, naive_attention
from flashlab.viz import draw_online_softmax

rng = np.random.default_rng(23)

# %% [markdown]
# ## Why subtract the max
#
# In fp32, e^x overflows past x = 88. Scores that large happen (large activations, no scaling):

# %%
x_big = np.array([90.0, 91.0, 89.0], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    print("e^x / sum e^x          :", np.exp(x_big) / np.exp(x_big).sum())
print("e^(x - m) / sum e^(x-m):", np.exp(x_big - x_big.max()) / np.exp(x_big - x_big.max()).sum())

# %% [markdown]
# ## One row of S, a block at a time
#
# Take one query q against 24 keys: x = tau q K^T is one row of S. Read it in blocks of 6, as
# if Bc = 6. For each block, the new max is the larger of the old max and the block's max
# (A1:L11); the old sum was taken relative to the old max, so it is multiplied by
# e^(m_old - m_new) before the block's terms are added.

# %%
d, n_keys, block = 8, 24, 6
q = rng.standard_normal((1, 1, 1, d))  # (B, H, 1 query, d)
k = rng.standard_normal((1, 1, n_keys, d)) * 1.5  # (B, H, 24 keys, d)
v = rng.standard_normal((1, 1, n_keys, d))
tau = 1 / np.sqrt(d)
x = tau * (q[0, 0, 0] @ k[0, 0].T)  # (24,) one row of S

m, l = -np.inf, 0.0  # A1:L2: m = -inf, l = 0
ms, ls = [], []
for start in range(0, n_keys, block):
    x_b = x[start:start + block]  # the row's slice of one S tile
    m_new = max(m, x_b.max())  # A1:L11
    l = np.exp(m - m_new) * l + np.exp(x_b - m_new).sum()  # rescale the old sum, add the new terms
    m = m_new
    ms.append(m)
    ls.append(l)
    print(f"keys {start:2d}..{start + block - 1:2d}: m = {m:+.3f}, l = {l:.4f}")

p_online = np.exp(x - m) / l
p_exact = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
print(f"max |online - exact| = {np.abs(p_online - p_exact).max():.1e}")

# %% [markdown]
# The picture: the scores block by block with the running max (top), the running sum after each
# block with the factor the old sum was rescaled by whenever the max grew (middle), and the
# probabilities from the final m and l beside the exact softmax (bottom).

# %%
draw_online_softmax(x, block, ms, ls)

# %% [markdown]
# ## Why it is exact
#
# Write m^(t) and l^(t) for m and l after block t (the superscript counts blocks). Then l^(t)
# equals the sum over **every score seen so far** of e^(x_c - m^(t)), with m^(t) the max so far.
# It holds after the first block by definition. If it holds after block t, then after block t + 1
#
#     e^(m^(t) - m^(t+1)) l^(t) + sum_(new c) e^(x_c - m^(t+1))
#       = sum_(old c) e^(x_c - m^(t)) e^(m^(t) - m^(t+1)) + sum_(new c) e^(x_c - m^(t+1))
#       = sum_(all c seen) e^(x_c - m^(t+1)),
#
# because e^(a - b) e^(b - c) = e^(a - c). After the last block, m is the row max and l is the
# softmax's denominator: the same numbers, reached in a different order. The only difference
# from the one-pass softmax is rounding (1e-16 in float64 above). And every factor is e^(something
# <= 0), so nothing overflows on the way. (The black dots in the middle panel recompute that sum
# from scratch after each block: they sit on the bars.)
#
# ## The output row too
#
# Attention does not need p itself, it needs o = sum_c p_c v_c. The same trick carries an
# unnormalised o~ = sum e^(x_c - m) v_c and rescales it with the same factor; dividing by l at
# the end gives o. FlashAttention-2 does exactly this (F2:L7, then F2:L9). Algorithm 1 divides
# by l at every step instead, and so multiplies the old O_i back by l_i before it rescales
# (A1:L12): `O_i <- diag(l_new)^-1 (diag(l_i) e^(m_i - m_new) O_i + e^(m~_ij - m_new) P~_ij V_j)`.

# %%
V = v[0, 0]  # (24, d)
m, l, o = -np.inf, 0.0, np.zeros(d)  # o is o~, unnormalised
for start in range(0, n_keys, block):
    x_b, V_b = x[start:start + block], V[start:start + block]
    m_new = max(m, x_b.max())
    alpha = np.exp(m - m_new)  # e^(m_old - m_new) <= 1
    l = alpha * l + np.exp(x_b - m_new).sum()
    o = alpha * o + np.exp(x_b - m_new) @ V_b  # F2:L7
    m = m_new
o = o / l  # F2:L9

o_exact, _ = naive_attention(q, k, v)  # the float64 oracle, A0
print(f"max |o - oracle| = {np.abs(o - o_exact[0, 0, 0]).max():.1e}")

# %% [markdown]
# ## The same numbers inside Algorithm 1
#
# `fa1_forward_steps` with Bc = 6 reads our 24 keys in the same four blocks. Each step records
# the running max m_new and sum l_new of every row of its tile (A1:L11); for our one query they
# are the m and l printed above.

# %%
steps = list(fa1_forward_steps(q, k, v, Br=1, Bc=block))
print("A1 m_new:", np.round([s.m_new[0, 0, 0] for s in steps], 4))
print("ours m  :", np.round(ms, 4))
print("A1 l_new:", np.round([s.l_new[0, 0, 0] for s in steps], 4))
print("ours l  :", np.round(ls, 4))
assert np.allclose([s.l_new[0, 0, 0] for s in steps], ls)

# %% [markdown]
# **Summary.** Two numbers per row, m and l, are all a tile-at-a-time softmax has to carry, and
# rescaling by e^(m_old - m_new) makes the result exact. Notebook 3 runs Algorithm 1 with these
# rows stacked into tiles and shows what sits in SRAM at each step.
