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
# # 10. The Hopper ladder: the same F2, a different schedule
#
# Kernel `tc` on an H200 (kernels/tc90.cu) already multiplies on Hopper's warpgroup tensor
# cores (wgmma) and overlaps each tile's softmax with the previous tile's P~ V product. What it
# does not do is split the work: every thread copies a share of K_j and V_j, and a
# `__syncthreads` per tile keeps all of them in step. FlashAttention-3's forward splits it:
#
# - a **producer** warpgroup only loads: one thread asks the Tensor Memory Accelerator (TMA)
#   for Q_i once and for K_j, V_j tile after tile, into a ring of stages in shared memory;
# - two **consumer** warpgroups only compute, 64 query rows each, and wait for the tiles at
#   **mbarriers** (a "full" barrier per stage that the TMA completes, an "empty" one the
#   consumers arrive at when their products have read it), never at a block-wide barrier;
# - the consumers take **turns** to issue their products (ping-pong), so one's softmax can run
#   while the other's products use the tensor cores;
# - **persistent** blocks (one per multiprocessor) take the (query block, head) tiles in turn,
#   so the next tile's loads overlap this tile's last products and its writes.
#
# The arithmetic is F2's, tile for tile (notebook 6); only the order in which the warpgroups do
# it changes. kernels/tc90_ws.cu is that kernel; `flashlab.reference.schedule` plays its
# schedule out on a cost model, step by step.

# %%
import json
from pathlib import Path

from tabulate import tabulate

from flashlab.launch.device import gpu_available
from flashlab.reference import schedule
from flashlab.viz import draw_timeline

# %% [markdown]
# ## The schedule, step by step
#
# Six key tiles, two stages. Costs in the model's units: one 64 x 128 x 128 product = 1, a
# load 0.5, a softmax 1. The table is the step-through: who does what, from when to when.

# %%
events = schedule.timeline(6, pingpong=True, stages=2)
print(tabulate(schedule.table(events)[:24], headers=["who", "step", "start", "end"]))

# %% [markdown]
# Drawn: the tensor cores alternate between the consumers (c0, c1) and are almost never idle,
# the producer runs ahead as far as the two stages let it, and each consumer's softmax sits
# under the other's products.

# %%
draw_timeline(events, "kernels/tc90_ws.cu, 6 key tiles, 2 stages, ping-pong (the model)")

# %% [markdown]
# ## What the model says about ping-pong
#
# Tensor-core time as a share of the whole, with and without turns, as the softmax gets
# dearer against the products. With tc90.cu's overlap inside each warpgroup already there, the
# model finds the turns change almost nothing: the products are the bottleneck until the
# softmax costs more than one of them.

# %%
rows = []
for cost in (0.5, 1.0, 1.5, 2.0):
    on, off = (schedule.timeline(16, pingpong=pp, costs=dict(softmax=cost)) for pp in (True, False))
    rows.append([cost, f"{schedule.busy(on):.3f}", f"{schedule.busy(off):.3f}",
                 schedule.makespan(on), schedule.makespan(off)])
print(tabulate(rows, headers=["softmax cost", "busy, ping-pong", "busy, no turns",
                              "makespan, ping-pong", "makespan, no turns"]))

# %% [markdown]
# ## What the H200 says
#
# The ladder's rows as measured (scripts/ladder_ws.py, committed under docs/results/): TFLOP/s
# of kernel `tc` today (tc90.cu), of tc90_ws.cu as its launcher picks (ws: persistent blocks up
# to N = 4k, a block per tile above), with a block per tile always (ws-1), persistent blocks
# with static turns (ws-p) and with dynamic ones (ws-d), and of torch SDPA's flash and cuDNN
# backends, 16k tokens per batch. The split of the loads from the products is what counts:
# 1.01-1.41x tc90.cu. Persistent blocks help at small N and, in static turns, lose at large N,
# where the hardware's own block order balances the causal tiles better. At d = 64, three
# consumer warpgroups (ws-nc3: 192 query rows share each K/V tile) win 1.08-1.11x from 4k on. An earlier run
# (ladder_ws_v1) also timed ping-pong off and three stages: as the model said, neither moved
# the numbers by more than the noise.

# %%
def latest(pattern):
    """The newest committed ladder run matching `pattern`, printed as a table (TFLOP/s)."""
    path = sorted((Path("..") / "docs" / "results").glob(pattern))[-1]
    run = json.loads(path.read_text())
    names = list(dict.fromkeys(n for r in run["rows"] for n in r["tflops"]))
    print(path.name)
    print(tabulate([[r["dtype"], r["d"], "yes" if r["causal"] else "no", r["N"]] +
                    [round(r["tflops"][n]) if n in r["tflops"] else "-" for n in names]
                    for r in run["rows"]], headers=["dtype", "d", "causal", "N"] + names))
    return run


measured = latest("ladder_ws_v*_h200.json")

# %% [markdown]
# ## Persistent blocks, in turns, against a block per tile
#
# Causal tiles are not equal: query block i visits i + 1 key tiles. A block per tile lets the
# hardware start each new tile where a block finished (dynamic); persistent blocks taking
# tiles in turn (static) pile the longest tiles of every round onto the same blocks. The model
# (`schedule.blocks_makespan`, tile costs in key tiles, no prologue) against the H200's ratio of
# the two, bf16, d = 128, causal. It explains 16k (0.77 against 0.77), misses a further tenth
# at 128k (where the tiles that run together are far apart in L2, which it does not model), and
# says nothing true about 1k-4k, where persistent blocks measured faster: there the prologue
# and epilogue a persistent block hides must cost more than the model assumes (it assumes
# none). An atomic tile counter gives both: persistent blocks, dynamic turns (ws-d: the
# producer takes the next tile, longest first, from a counter in global memory). Measured, it
# wins back what static turns lose at 16k, as the model says, but no more than the hardware's
# own order of a block per tile, and at 1k it is slower than static turns.

# %%
from flashlab.launch import plans

table = []
for r in measured["rows"]:
    if r["dtype"] != "bfloat16" or r["d"] != 128 or not r["causal"]:
        continue
    Tr, BH = r["N"] // 128, r["B"] * r["H"]
    work = schedule.tile_work(Tr, Tr, BH, True, plans.tc_head_group(50 * 2**20, r["N"], 128, BH))
    model = schedule.blocks_makespan(work, 132, True) / schedule.blocks_makespan(work, 132, False)
    tf = r["tflops"]
    table.append([r["N"], f"{model:.2f}", f"{tf['ws-p'] / tf['ws-1']:.2f}" if "ws-p" in tf else "-",
                  f"{tf['ws-d'] / tf['ws-1']:.2f}" if "ws-d" in tf else "-"])
print(tabulate(table, headers=["N", "static turns / block per tile, model", "measured",
                               "dynamic turns / block per tile, measured"]))

# %% [markdown]
# ## The backward
#
# kernels/tc90_ws_bwd.cu does the same for G2: a producer thread loads K_j and V_j once and
# then Q_i, dO_i, L_i and D_i step after step; two consumer warpgroups (64 keys each) compute
# S^T, dP^T, dV~, dK~ and the dQ term, meeting once a step at a named barrier. The first rung
# added dQ's term into global memory with fp32 atomics, as tc90.cu does (ws-atomic): barely
# faster than tc90.cu. The second gives dQ to a writer: the consumers store the term into
# shared memory, and warp 1 of the producer asks the TMA unit to add the whole tile into global
# memory (`cp.reduce.async.bulk.tensor`) while they go on (ws).

# %%
backward = latest("ladder_ws_bwd_*_h200.json")

# %% [markdown]
# The backward's schedule, step by step (`flashlab.reference.schedule_bwd`, the same cost
# model): per query block the two consumers' S^T and dP^T, their exponentials one at a time,
# dV~ and dK~, the named barrier, dQ's term, and then either their atomics or a store into the
# buffer that the writer adds out while they go on.

# %%
from flashlab.reference.schedule_bwd import backward_timeline

bwd_events = backward_timeline(4, writer=True)
print(tabulate(schedule.table(bwd_events)[:26], headers=["who", "step", "start", "end"]))
draw_timeline(bwd_events, "kernels/tc90_ws_bwd.cu, 4 query blocks, the dQ writer (the model)")

# %% [markdown]
# What the model says the writer is worth, against what the H200 measured (ws against
# ws-atomic, bf16, 16k tokens): the model finds 1.05-1.06x; the H200 gives 1.10-1.23x. The
# model has the consumers' time to issue the atomics but no memory system: on the GPU the
# 8-byte reductions also queue in L2, where the TMA unit's adds move whole 128-byte rows.

# %%
model = [schedule.makespan(backward_timeline(n, writer=False)) /
         schedule.makespan(backward_timeline(n, writer=True)) for n in (8, 32, 128)]
measured_bwd = [r["tflops"]["ws"] / r["tflops"]["ws-atomic"] for r in backward["rows"]
                if r["dtype"] == "bfloat16" and "ws-atomic" in r["tflops"]]
print(f"model, 8 / 32 / 128 query blocks: {', '.join(f'{m:.2f}x' for m in model)}")
print(f"H200, bf16 cells: {min(measured_bwd):.2f}-{max(measured_bwd):.2f}x")

# %% [markdown]
# ## On this machine
#
# On an H100 or H200 (compute capability 9.0) the kernels run here, checked against float64
# under FlashAttention's rule; anywhere else the cell says so.

# %%
if gpu_available():
    import cupy as cp
    import numpy as np

    from flashlab import lowp
    from flashlab.launch import tc_ws

    if cp.cuda.Device().compute_capability == "90":
        q, k, v = lowp.random_inputs(cp, [(1, 4, 1000, 128)] * 3, "bfloat16")
        do = lowp.random_inputs(cp, [q.shape], "bfloat16", seed=1)[0]
        o, lse = tc_ws.forward(q, k, v, causal=True)
        dq = tc_ws.backward(do, q, k, v, o, lse, causal=True)[0]
        o64, _, dq64, _, _ = lowp.attention_oracle(q, k, v, do, True)
        ok, err, bound = lowp.within_fa_rule(o, o64, lowp.naive_lowp_forward(q, k, v, True)[0])
        print(f"tc90_ws.cu, causal, N = 1000, d = 128: error {err:.2e}, bound {bound:.2e}, ok = {ok}")
        ok, err, bound = lowp.within_fa_rule(dq, dq64,
                                             lowp.naive_lowp_backward(do, q, k, v, True)[0])
        print(f"tc90_ws_bwd.cu, dQ: error {err:.2e}, bound {bound:.2e}, ok = {ok}")
    else:
        print("This GPU is not compute capability 9.0: kernels/tc90_ws.cu needs sm_90a.")
else:
    print("No CUDA GPU: skipped the ladder's forward (kernels/tc90_ws.cu needs an H100 or H200).")
