# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. FlashAttention-2 and tensor cores
#
# FlashAttention-2 computes the same thing as Algorithm 1 with the loops turned around
# (labels **F2** and **G2** in `docs/ALGORITHMS.md`):
#
#     F2:L1  for each Q block i, in parallel (one thread block each):
#     F2:L2    load Q_i; O~ = 0, l = 0, m = -inf on chip
#     F2:L3    for j = 1..Tc (causal: only blocks with an unmasked entry):
#     F2:L4-L7   load K_j, V_j; S = tau Q_i K_j^T; update m, l; O~ = e^(m - m_new) O~ + P~ V_j
#     F2:L9    O_i = O~ / l; L_i = m + log(l); write O_i, L_i once
#
# Three things change:
#
# 1. **O_i stays on chip.** It is written once, at F2:L9, instead of read and written at every
#    step (A1:L8, A1:L12). The division by l moves to the end (the unnormalised o~ of notebook 2).
# 2. **Parallel over query blocks.** Each row block is independent, so a GPU runs B x H x Tr
#    thread blocks, not B x H. Algorithm 1's one thread block per head leaves most of an H100's
#    132 SMs idle unless B x H is large.
# 3. **Causal block skipping.** Under the causal mask, a row block stops at the first tile that
#    lies wholly above the diagonal (F2:L3): about half the tiles are never visited.
#
# The backward (G2) puts the K/V blocks outside and in parallel instead: each thread block owns
# one K_j, V_j and their accumulators dK~ and dV~, and the dQ_i contributions of different j are
# added into HBM with atomic adds (G2:L7).

# %%
import json
from pathlib import Path

import numpy as np
from tabulate import tabulate

import flashlab
from flashlab import bench, hbm
from flashlab.hbm import MemoryCounter
from flashlab.launch.device import gpu_available
from flashlab.reference import (fa1_forward, fa1_forward_steps, fa2_backward_steps, fa2_forward,
                                fa2_forward_steps, naive_attention)
from flashlab.viz import draw_loop_order

rng = np.random.default_rng(0)

# %% [markdown]
# ## The loop order, drawn
#
# N = 40 queries and keys in tiles of 8: a 5 x 5 grid of (i, j) tiles, causal. Algorithm 1
# (left) is one loop nest per head: the numbers are the order of its 25 steps, column by column,
# and it visits the wholly masked tiles too (gray): loads them, computes them, and adds nothing. F2 (middle) gives each row block i its own thread block
# (colour) that walks j = 0, 1, ... and stops at the diagonal; G2 (right) gives each column
# block j its own thread block that starts at the diagonal. Hatched tiles are never visited.

# %%
N, d, B = 40, 8, 8
q, k, v, do = (rng.standard_normal((1, 1, N, d)) for _ in range(4))
o, lse = naive_attention(q, k, v, causal=True)
a1 = list(fa1_forward_steps(q, k, v, causal=True, Br=B, Bc=B))
f2 = list(fa2_forward_steps(q, k, v, causal=True, Br=B, Bc=B))
g2 = list(fa2_backward_steps(do, q, k, v, o, lse, causal=True, Br=B, Bc=B))
print(f"steps: A1 {len(a1)}, F2 {len(f2)}, G2 {len(g2)}")

draw_loop_order({"Algorithm 1, causal": a1, "FlashAttention-2 forward, causal": f2,
                 "FlashAttention-2 backward, causal": g2})

# %% [markdown]
# ## What the loop order saves in HBM traffic
#
# The step-throughs count their traffic as they run. One head, N = 256, d = 64, the default
# SRAM of M = 12288 floats (A1:L1 gives Algorithm 1 Br = Bc = 48; F2 sizes its own tiles to fit
# M, Br = 48 and Bc = 34, `flashlab io` prints both): Algorithm 1 reads and writes O (and l, m) at every
# step; F2 writes O once and L once, and reads K and V once per row block. Under the causal mask
# F2 also skips the tiles above the diagonal.

# %%
N2, d2 = 256, 64
x = [rng.standard_normal((1, 1, N2, d2)).astype(np.float32) for _ in range(3)]
rows = []
for name, fn, causal in (("A1", fa1_forward, False), ("F2", fa2_forward, False),
                         ("A1 causal", fa1_forward, True), ("F2 causal", fa2_forward, True)):
    c = MemoryCounter()
    fn(*x, causal=causal, counter=c)
    rows.append([name] + [c.reads.get(t, 0) + c.writes.get(t, 0)
                          for t in ("Q", "K", "V", "O", "l", "m", "L")] + [c.hbm_elements])
print(tabulate(rows, headers=["", "Q", "K", "V", "O", "l", "m", "L", "total elements"]))

# %% [markdown]
# ## Tensor cores
#
# On an A100 or H100, FlashAttention-2's speed comes from **tensor cores**: units that multiply
# small matrix tiles (fp16 or bf16 inputs, fp32 accumulation) many times faster than ordinary
# fp32 arithmetic. NVIDIA's datasheet for the H100 SXM gives about 990 TFLOP/s of dense fp16/bf16
# tensor-core throughput against about 67 TFLOP/s of fp32 FMA. The two matrix products of every
# step, S = tau Q_i K_j^T and P~ V_j, are exactly the kind of work they do; the softmax stays in
# fp32 on the ordinary units. The F2 order is what makes that work well: each warp can own whole
# rows of S, so the row max and sum need no exchange between warps.
#
# flashlab's tensor-core kernel is `kernels/tc.cu` (`kernel="tc"`, or `"auto"` with float16 /
# bfloat16 inputs on an sm_80+ GPU). Its step-through twin, `flashlab.reference.tc_forward_steps`,
# runs the same decomposition in NumPy, so you can see what changes on tensor cores without one:
#
# * a **warp** (32 threads) is the unit of work: it owns 16-row slabs of the Q block and computes
#   16 x 8 pieces of S with one `mma.sync` instruction;
# * the softmax runs in **base 2** (`exp2` is one hardware instruction): S is scaled by
#   tau log2(e) once;
# * **P~ is rounded to bf16** before P~ V_j (it is an input of the next tensor-core product),
#   while l sums the unrounded fp32 P~. That rounding is where the result differs from fp32.
# * K_j and V_j are **loaded** a whole tile at a time but **computed** in sub-steps: at d = 128
#   each 64-key tile goes through F2:L5-L7 as two 32-key sub-steps (fewer S values in registers;
#   at d = 64, 128-key tiles as two of 64), so each P~ is rounded relative to its own sub-step's
#   running max (`Bk` in the twin).

# %%
import ml_dtypes

from flashlab import lowp
from flashlab.reference import tc_forward_steps
from flashlab.trace import compare, record

bf16 = ml_dtypes.bfloat16
qb, kb, vb = (rng.standard_normal((1, 1, 300, 64)).astype(bf16) for _ in range(3))
first = next(tc_forward_steps(qb, kb, vb, Br=128, Bc=64, warps=4))
print("rows of Q block 0 held by each warp:",
      {w: int((first.warp_of_row == w).sum()) for w in range(4)})
print("P~ dtype", first.P_tilde.dtype, "-> rounded", first.P_rounded_ij.dtype,
      "; largest rounding", float(np.abs(first.P_tilde - first.P_rounded_ij.astype(np.float32)).max()))

# %% [markdown]
# The tile-by-tile comparison works as for the fp32 kernels: the twin's trace against fa2's
# float64 step-through on the same (bf16) inputs, with a tolerance of a few bf16 roundings.

# %%
tc_trace, (o_tc, _) = record(tc_forward_steps(qb, kb, vb, Br=128, Bc=64, warps=4))
ref_trace, _ = record(fa2_forward_steps(*(x.astype(np.float64) for x in (qb, kb, vb)), Br=128, Bc=64))
print("first divergence beyond 10 bf16 roundings:", compare(ref_trace, tc_trace, rtol=0.04, atol=0.04))
o64, *_ = lowp.attention_oracle(qb, kb, vb, qb)
naive16, _ = lowp.naive_lowp_forward(qb, kb, vb)
ok, err, bound = lowp.within_fa_rule(o_tc, o64, naive16)
print(f"FlashAttention's rule: error {err:.2e} <= 2 x (16-bit naive error) = {bound:.2e}: {ok}")

# %% [markdown]
# On an H100 (`bash scripts/gpu_check.sh tc-table`, docs/PERFORMANCE.md), kernel "tc" runs
# `kernels/tc90.cu`, the same loops on Hopper's warpgroup instruction `wgmma` (sm_90a): forward
# 1.14-1.46x torch's flash backend (FlashAttention-2) and backward 1.16-1.32x. On other GPUs it
# runs `kernels/tc.cu` (`mma.sync`, the code above), which on the H100 measured at about
# FlashAttention-2's speed. The notes say how each got there and what comes next. On the command
# line:
# `flashlab bench --dtype bfloat16 --head-dim 128 --backward --compare torch`.

# %% [markdown]
# ## A benchmark table
#
# `flashlab.bench` checks every kernel against the float64 reference before it times it. Without
# a GPU it times the NumPy step-throughs instead: those numbers measure Python and NumPy, not
# memory traffic, so naive (three big NumPy calls) beats the tiled loops here, and the HBM
# traffic table beside them is what carries over to a GPU.

# %%
report = bench.cpu_bench([64, 128], d=64, repeat=5)
print(tabulate([r.table() for r in report.rows], headers=bench.HEADERS, disable_numparse=True))
print()
print(tabulate(bench.traffic_rows([1024, 4096, 16384], 64, causal=False), headers="keys",
               floatfmt=".3g"))

# %% [markdown]
# On a GPU the same function times the CUDA kernels (calls queued back to back, CUDA events
# around each, median of the repeats, inputs rotated past the L2 cache), forward and backward,
# at a small configuration here:

# %%
if gpu_available():
    gpu_report = bench.gpu_bench([1024, 2048], ["naive", "fa1", "fa2"], d=64, backward=True,
                                 repeat=5)
    for key, value in gpu_report.header.items():
        print(f"{key}: {value}")
    print(tabulate([r.table() for r in gpu_report.rows], headers=bench.HEADERS,
                   disable_numparse=True))
else:
    print("No CUDA GPU: skipped bench.gpu_bench (naive, fa1, fa2 at N = 1024, 2048, forward and "
          "backward). The measured H100 numbers follow.")

# %% [markdown]
# ## Measured on an H100
#
# `docs/PERFORMANCE.md` records full runs of `flashlab bench` on an H100 80GB HBM3; the raw rows
# are in `docs/results/*.json`. Here is the d = 64, non-causal run, read from its JSON file:
# TFLOP/s forward / backward (FLOPs: forward 4 B H N^2 d, backward 2.5x that; B N = 16k tokens,
# H = 32), and the peak extra memory of the forward pass.

# %%
results_file = Path(flashlab.__file__).resolve().parents[1] / "docs" / "results" / "h100-fp32-d64.json"
if results_file.is_file():
    results = json.loads(results_file.read_text())
    cell = {(r["N"], r["kernel"], r["direction"]): r for r in results["rows"]}
    kernels = ["naive", "fa1", "fa2", "torch-efficient"]

    def tflops(n, kernel, direction):
        r = cell.get((n, kernel, direction))
        return "-" if r is None or r["tflops"] != r["tflops"] else f"{r['tflops']:.1f}"

    def ratio(n, a, b, direction):
        ra, rb = cell.get((n, a, direction)), cell.get((n, b, direction))
        ok = ra and rb and ra["tflops"] == ra["tflops"] and rb["tflops"] == rb["tflops"]
        return f"{ra['tflops'] / rb['tflops']:.2f}x" if ok else "-"

    def extra(n, kernel):
        r = cell.get((n, kernel, "forward"))
        return "-" if r is None or r["extra_mb"] != r["extra_mb"] else f"{r['extra_mb']:,.0f}"

    table = [[n] + [f"{tflops(n, kn, 'forward')} / {tflops(n, kn, 'backward')}" for kn in kernels]
             + [f"{ratio(n, 'fa2', 'naive', 'forward')} / {ratio(n, 'fa2', 'naive', 'backward')}",
                extra(n, "naive"), extra(n, "fa2")]
             for n in sorted({key[0] for key in cell})]
    print(f"{results['header']['gpu']}, {results['header']['date']}, fp32, d = 64")
    print(tabulate(table, headers=["N"] + kernels + ["fa2 / naive", "naive MB", "fa2 MB"],
                   disable_numparse=True))
    for note in results.get("notes", []):
        print("note:", note)
else:
    print(f"{results_file} is not here (an installed package has no docs/): see docs/PERFORMANCE.md "
          "in the repository.")

# %% [markdown]
# Reading the table:
#
# * **fa2 is about 2x naive** forward and backward at every N, and its extra memory stays near
#   136 MB while naive's grows as N^2 (it does not fit the backward at 16k).
# * **fa1, Algorithm 1 as written, is about 0.2x naive**: one thread block per head (128 blocks
#   for 132 SMs) and O_i through HBM at every step. It is the lesson; fa2 is the same algorithm
#   in FlashAttention-2's order, 8x faster.
# * **fa2 is not yet at PyTorch's speed**: about 0.7-0.8x of the fp32 memory-efficient backend
#   forward. `docs/PERFORMANCE.md` says what was tried and what is next (asynchronous copies of
#   K_j and V_j, larger tiles).
# * All of this is fp32 without tensor cores, below half of the 67 TFLOP/s FMA peak; the
#   tensor-core kernels run at 186-436 TFLOP/s forward and 150-370 backward (wgmma, bf16 and
#   fp16, N = 1k-16k) on the same GPU.
#
# **Summary.** The F2 order keeps O on chip, parallelises over query blocks and skips masked
# tiles; with fp32 arithmetic that is worth 2x over standard attention here, and on tensor cores
# (bf16, fp32 accumulation) the same loops run about 9x faster again at N = 16k. Notebook 7 puts the forward and backward pair inside an autodiff framework.
