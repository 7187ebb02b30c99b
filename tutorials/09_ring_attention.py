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
# # 9. Ring attention: Algorithm 1 with GPUs as the tiles
#
# When a sequence is too long for one GPU, split it over P of them. Each rank keeps its block
# of queries; the key/value blocks travel round a ring, one hop per step, so after P steps
# every query block has met every key block once. Each rank ends with the partial results of P
# key blocks, and they combine exactly as Algorithm 1 combines tiles (A1:L11-L12): by their
# row maxima and sums, here kept as one logsumexp L per row,
#
#     L_new = log(e^L_a + e^L_b)
#     O_new = e^(L_a - L_new) O_a + e^(L_b - L_new) O_b
#
# So the lesson of notebook 3 is also how attention scales past one GPU. Here the ranks are
# threads of this notebook (pipes between them, NumPy blocks); `flashlab.ring` runs the same
# code in processes, or over torch.distributed (gloo on CPUs, NCCL on GPUs).

# %%
import numpy as np

import flashlab
from flashlab import naive_attention, naive_attention_backward
from flashlab.ring import describe, forward_backward, run_in_threads, shard, unshard
from flashlab.viz import draw_ring

rng = np.random.default_rng(0)

# %% [markdown]
# ## Two key blocks, merged by their logsumexp
#
# One query block against two halves of the keys, each half on its own, then merged: the
# result is attention over all the keys.

# %%
q, k, v = (rng.standard_normal((1, 1, 8, 4)) for _ in range(3))
o_a, lse_a = flashlab.flash_attention(q, k[:, :, :4], v[:, :, :4], return_lse=True)
o_b, lse_b = flashlab.flash_attention(q, k[:, :, 4:], v[:, :, 4:], return_lse=True)
lse = np.logaddexp(lse_a, lse_b)
o = np.exp(lse_a - lse)[..., None] * o_a + np.exp(lse_b - lse)[..., None] * o_b
o_all, _ = naive_attention(q, k, v)
print(f"merged against all keys at once: max |difference| = {np.abs(o - o_all).max():.1e}")

# %% [markdown]
# ## Who holds what, step by step
#
# Without a mask, rank r holds chunk r of the sequence. With a causal mask that would be
# unfair: rank 0's queries see one chunk of keys, rank P - 1's see all of them. The zigzag
# split cuts the sequence into 2P chunks and gives rank r chunks r and 2P - 1 - r: one early,
# one late, so at every step every rank has the same work. In the table, `AxB` is query
# chunk A against key chunk B, and `d` a causal diagonal pair (half the work).

# %%
print(describe(4, causal=False))
print()
print(describe(4, causal=True))

# %% [markdown]
# The same schedule drawn: at each step, the pair of chunks each rank computes. Over the
# panels every visible pair is coloured once; grey pairs are hidden by the causal mask and
# never computed.

# %%
draw_ring(4, causal=True)

# %% [markdown]
# ## The ring, forward and backward, against standard attention
#
# Four ranks, a causal mask, N = 96. Each rank gets its two chunks of q, k, v and dO
# (`shard`), runs `ring_forward` and `ring_backward` (`forward_backward`), and the parts are
# put back in order (`unshard`). The backward needs no second ring of softmaxes: with the
# final L of each row, every (query chunk, key chunk) pair's gradient is its own (B1:L7-L13).
# dQ stays with its queries; dK and dV travel with their block and come home with one last hop.

# %%
P, causal = 4, True
q, k, v, do = (rng.standard_normal((1, 2, 96, 16)) for _ in range(4))
parts = run_in_threads(forward_backward, P, [
    (*(shard(x, r, P, causal) for x in (q, k, v, do)), causal) for r in range(P)])
got = [unshard([p[x] for p in parts], causal) for x in range(5)]
want = (*naive_attention(q, k, v, causal), *naive_attention_backward(do, q, k, v, causal))
for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
    print(f"{name:4s} max |ring - standard attention| = {np.abs(a - b).max():.1e}")

# %% [markdown]
# On GPUs the blocks are flashlab's kernels and the hops are NCCL sends overlapped with the
# computation (`flashlab.ring.TorchRing`, one process per GPU under torchrun); that path has
# not run on a machine of several GPUs yet. `flashlab ring --ranks 4 --causal` prints the
# table above and checks a run of processes the same way.
