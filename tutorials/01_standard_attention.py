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
# # 1. Standard attention, and why it is memory-bound
#
# Attention takes queries Q (N x d), keys K and values V (N x d each) and returns
#
#     O = softmax(tau Q K^T) V,      tau = 1 / sqrt(d), softmax row by row.
#
# Standard attention (line labels **A0** in `docs/ALGORITHMS.md`; `flashlab algorithms A0`
# prints them) does it in three passes over the GPU's main memory (HBM):
#
# | line | what it does | HBM traffic |
# | --- | --- | --- |
# | A0:L1 | read Q, K; compute S = tau Q K^T; **write S** (N x N) | 2Nd + N^2 |
# | A0:L2 | **read S**; P = softmax(S); **write P** (N x N) | 2 N^2 |
# | A0:L3 | **read P** and V; O = P V; write O | N^2 + 2Nd |
#
# A GPU has two memories that matter here. **HBM** is large (80 GB on an H100) and moves about
# 3 TB/s. **SRAM** (shared memory, on the chip) is small, at most 228 KB per streaming
# multiprocessor, and an order of magnitude faster. Standard attention keeps S and P, two N x N
# matrices, in HBM: this notebook counts what that costs.
#
# Everything here runs on a CPU. The one cell that needs a GPU says so and skips itself.
# (Setup: from a checkout, `pip install -e ".[tutorials]"`; the README's Tutorials section says
# how to open these notebooks in Jupyter or Colab.)

# %%
import numpy as np
from tabulate import tabulate

from flashlab import hbm
from flashlab.algorithms import describe
from flashlab.launch.device import gpu_available
from flashlab.hbm import MemoryCounter
from flashlab.reference import fa1_forward, fa2_forward, naive_attention, naive_attention_steps
from flashlab.viz import traffic_plot

rng = np.random.default_rng(0)

# %% [markdown]
# ## Count the traffic of one head
#
# `naive_attention_steps` is standard attention as a generator: it yields after each of the
# three lines, and the `MemoryCounter` we pass in is ticked for every element read from or
# written to HBM. fp32 inputs, so the counter counts 4-byte elements.

# %%
N, d = 256, 64
q, k, v = (rng.standard_normal((1, 1, N, d)).astype(np.float32) for _ in range(3))  # (B, H, N, d)

counter = MemoryCounter()
for step in naive_attention_steps(q, k, v, counter=counter):
    print(describe(step.line))
    print(f"    so far: read {dict(counter.reads)}\n            wrote {dict(counter.writes)}")

# %% [markdown]
# Q, K, V and O are 4 N d elements: that much traffic any attention needs. S and P add
# 4 N^2 (each written once and read once). At N = 256 and d = 64 that is already the bigger part,
# and it grows as N^2 while the useful part grows as N. The counter agrees with the closed form
# `hbm.a0_traffic`, written from the algorithm text alone.

# %%
useful = 4 * N * d
print(f"total {counter.hbm_elements:,} elements = useful {useful:,} + S and P {4 * N * N:,}")
assert counter.hbm_elements == useful + 4 * N * N
assert counter.traffic() == hbm.a0_traffic(1, 1, N, N, d)

# %% [markdown]
# ## Memory-bound: too few operations per byte
#
# A pass is **memory-bound** when moving its bytes takes longer than doing its arithmetic. The
# H100 numbers from `docs/PERFORMANCE.md`: about 67 TFLOP/s of fp32 arithmetic (without tensor
# cores) and about 3 TB/s of HBM bandwidth. So a pass needs about 22 operations per byte it moves
# to keep the arithmetic busy. The softmax pass A0:L2 does a handful of operations (max,
# subtract, exp, add, divide) per element of S and moves 8 bytes for it: about 0.6 per byte.
#
# Below: each pass at N = 4096 with 128 heads (batch 4 x 32 heads), the time its arithmetic
# needs at 67 TFLOP/s and the time its bytes need at 3 TB/s. Whichever is larger is the floor.

# %%
FLOPS, BANDWIDTH = 67e12, 3.0e12  # H100 fp32 (no tensor cores), HBM bytes/s: docs/PERFORMANCE.md
n, dh, heads = 4096, 64, 4 * 32
passes = {  # flops, bytes (fp32) of each pass, for all heads
    "A0:L1  S = tau Q K^T": (2 * n * n * dh, 4 * (2 * n * dh + n * n)),
    "A0:L2  P = softmax(S)": (5 * n * n, 4 * (2 * n * n)),
    "A0:L3  O = P V": (2 * n * n * dh, 4 * (n * n + 2 * n * dh)),
}
rows = []
for name, (flops, nbytes) in passes.items():
    t_math, t_mem = heads * flops / FLOPS * 1e3, heads * nbytes / BANDWIDTH * 1e3
    rows.append([name, f"{flops / nbytes:.1f}", f"{t_math:.2f}", f"{t_mem:.2f}",
                 "memory" if t_mem > t_math else "arithmetic"])
print(tabulate(rows, headers=["pass", "flops per byte", "ms arithmetic", "ms memory", "bound by"]))
S_and_P = 2 * heads * n * n * 4
print(f"S and P for these 128 heads: {S_and_P / 1e9:.1f} GB of HBM, "
      f"{2 * S_and_P / BANDWIDTH * 1e3:.1f} ms just to write and read them back")

# %% [markdown]
# At this size the two matrix products are (just) arithmetic-bound; the softmax pass is
# memory-bound by a factor of more than 30, and all three passes pay for S and P. FlashAttention
# never writes S or P: it computes them a tile at a time in SRAM (notebook 3). What it still
# moves is set by the tile sizes: Algorithm 1 (A1) reads Q_i and reads and writes O_i, l_i, m_i
# once per (i, j) tile pair, so its traffic is Theta(N^2 d^2 / M) for an SRAM of M floats (the
# paper's Theorem 2). FlashAttention-2's loop order (F2, notebook 6) keeps O_i on chip and reads
# K and V once per row block instead, so it takes tall row blocks (Br = ceil(M / 4d), not capped
# at d as A1:L1 caps A1's) and moves less than Algorithm 1 at every M.
#
# The picture, for an SRAM of M = 49152 floats (192 KiB of fp32; an H100 gives one thread block
# up to 227 KiB). Left: the closed forms of `flashlab.hbm` against N, with the counts our
# step-throughs make (circles) on top of them. Middle: how many times fewer bytes than standard
# attention each flash variant moves at N = 16k, against M. Right: the extra memory each needs
# beyond Q, K, V and O.

# %%
M = 4 * hbm.DEFAULT_SRAM  # 49152 floats; the references' default is hbm.DEFAULT_SRAM = 12288
measured = {"A0": [], "A1": [], "F2": []}
for n_small in (64, 128, 256):
    x = [rng.standard_normal((1, 1, n_small, d)).astype(np.float32) for _ in range(3)]
    for name, fn, tiles in (("A0", naive_attention, {}), ("A1", fa1_forward, {"sram": M}),
                            ("F2", fa2_forward, {"sram": M})):
        c = MemoryCounter()
        fn(*x, counter=c, **tiles)  # A1 and F2 size their tiles for M (A0 has none)
        measured[name].append((n_small, c.hbm_elements))

traffic_plot([64, 256, 1024, 4096, 16384], d=d, sram=M, measured=measured)

# %% [markdown]
# Three things to read off. At a fixed M all three lines rise as N^2 (they are parallel on the
# left): FlashAttention does not change how the traffic grows with N, it divides it by a factor
# set by M / d^2 (Theorem 2). Second, the middle panel shows the factor: about M / 3d^2 for A1
# and M / 2d^2 for F2. At M = 49152 floats Algorithm 1 moves 3.9x fewer bytes than standard
# attention and F2 5.9x fewer. At the references' default M = 12288 floats (48 KiB, Br = Bc = 48
# at d = 64) Algorithm 1 moves a little more than standard attention (4.41 GB against 4.31 GB
# at N = 16k: the constant in Theta(N^2 d^2 / M) is about 12, because O_i, l_i and m_i make a
# round trip per tile) and F2 1.5x fewer. Algorithm 1 breaks even near M = 3d^2. Third, the right
# panel: standard attention's extra memory is 2 N^2 (S and P), 2 GB per head at N = 16k in fp32,
# so a batch of heads does not fit in 80 GB; flash keeps N or 2N floats per head.
#
# The table below is the one `flashlab io` prints, at both SRAM sizes, with the tiles each
# algorithm uses: A1:L1 caps A1's Br at d (64 x 192 at M = 49152), while F2 takes
# Br = ceil(M / 4d) = 192 and the largest Bc that still fits its SRAM (192 x 75). The last two
# columns are the paper's Theta bounds without their constants.

# %%
print(tabulate(hbm.io_rows([1024, 4096, 16384], 64, [12288, 49152]), headers="keys",
               floatfmt=".3g"))

# %% [markdown]
# ## On a GPU: the extra memory column
#
# With a CUDA GPU and CuPy, `flashlab.bench.gpu_bench` times the standard-attention kernel
# (`kernels/naive.cu`) against FlashAttention-2 (`kernels/fa2.cu`) and records the peak extra
# device memory each needed. Without one, this cell says so and skips.

# %%
if gpu_available():
    from flashlab import bench

    report = bench.gpu_bench([1024, 4096], ["naive", "fa2"], d=64, repeat=5)
    print(tabulate([r.table() for r in report.rows], headers=bench.HEADERS,
                   disable_numparse=True))
else:
    print("No CUDA GPU found: skipped the naive-vs-fa2 timing (it runs on a GPU with CuPy).")

# %% [markdown]
# **Summary.** Standard attention writes and reads two N x N matrices. Its softmax pass does
# less than one operation per byte, so it waits on HBM; its memory grows as N^2. The next
# notebook shows the trick that lets FlashAttention compute the softmax one tile at a time
# without ever holding a whole row: the online softmax.
