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
# # 8. Attention variants: the same online softmax with a different S_ij
#
# Sliding windows, document masks, ALiBi, softcapping, GQA: the attention people actually run
# differs from notebook 6's in one place, the score matrix before the softmax (F2:L5):
#
#     S_ij = score_mod(tau Q_i K_j^T)   where mask_mod says the key is visible
#     S_ij = -inf                       where it does not
#
# Everything after F2:L5 (m, l, the rescale of O~, the division at F2:L9) is unchanged. Two
# things follow:
#
# 1. **Tiles a mask hides entirely are skipped**, as causal's are (F2:L3 for any mask). A
#    block mask, computed once per mask and shape, says for each tile: nothing visible
#    (skipped), some (masked entry by entry) or all (no mask work at all).
# 2. **A row with no visible key** has m = -inf and l = 0 at the end: its output is 0 and its
#    logsumexp -inf (not NaN).
#
# The functions are FlexAttention's: `mask_mod(b, h, q_idx, kv_idx) -> bool` and
# `score_mod(score, b, h, q_idx, kv_idx) -> score`, written in Python. flashlab reads them
# once (`flashlab.mods`): NumPy evaluates them for the references, and they are translated to
# CUDA C and compiled into the kernels.

# %%
import numpy as np

import flashlab
from flashlab import mods
from flashlab.kernel_check import check_kernel, default_backend
from flashlab.launch.device import gpu_available
from flashlab.mods.kernel import KernelVariant
from flashlab.reference import variant_attention
from flashlab.reference.fa2 import fa2_forward_steps
from flashlab.viz import draw_block_mask

rng = np.random.default_rng(0)
B, H, N, d = 1, 2, 96, 16
q, k, v = (rng.standard_normal((B, H, N, d)) for _ in range(3))

# %% [markdown]
# ## A mask_mod and a score_mod, and the C they become
#
# Packed sequences: three documents in one row of 96 positions, each query sees only keys of
# its own document, causally. And Gemma-2's softcap on the scores.

# %%
doc_ids = np.repeat([0, 1, 2], [40, 24, 32])


def same_document_causal(b, h, q_idx, kv_idx):
    return (doc_ids[q_idx] == doc_ids[kv_idx]) & (kv_idx <= q_idx)


cap = mods.softcap(5.0)
print(mods.mask_mod(same_document_causal).cuda())
print(cap.cuda())

# %% [markdown]
# ## The block mask the kernels walk
#
# With tiles of 16 x 16, most of the matrix is tiles no query of the block can see: they are
# never loaded. The orange tiles cross a document boundary or the diagonal and are masked
# entry by entry; the blue ones run as plain attention.

# %%
kv = KernelVariant.of(None, same_document_causal, None)
tiles = kv.tiles(B, H, N, N, 16, 16)[0, 0]
visible = mods.mask_mod(same_document_causal).mask(0, 0, np.arange(N)[:, None],
                                                   np.arange(N)[None, :])
print(f"tiles visited: {int((tiles > 0).sum())} of {tiles.size}")
draw_block_mask(visible, tiles, 16, 16, "three documents, causal: 16 x 16 tiles")

# %% [markdown]
# ## The step-through with the variant
#
# `fa2_forward_steps` takes the same keywords as `flash_attention`. Each step's `S_ij` is the
# modified one; the hidden tiles yield no step at all. The result is the float64 oracle's
# (standard attention with the variant, S materialised).

# %%
steps = []
gen = fa2_forward_steps(q, k, v, Br=16, Bc=16, mask_mod=same_document_causal, score_mod=cap)
while True:
    try:
        steps.append(next(gen))
    except StopIteration as stop:
        o, lse = stop.value
        break
ref, _ = variant_attention(q, k, v, mask_mod=same_document_causal, score_mod=cap)
print(f"steps: {len(steps)} (of {tiles.size} tiles); max |o - oracle| = "
      f"{np.abs(o - ref).max():.1e}")
first = steps[0]
print(f"step (i={first.i}, j={first.j}): S_ij in [{first.S_ij[np.isfinite(first.S_ij)].min():.2f}, "
      f"{first.S_ij.max():.2f}] (softcap keeps every score within +-5)")

# %% [markdown]
# ## A row no key is visible to
#
# A mask that hides query 10's row entirely: its output is 0 and its lse -inf.

# %%
hide_row = lambda b, h, q_idx, kv_idx: q_idx != 10  # noqa: E731
o, lse = flashlab.flash_attention(q, k, v, kernel="fa2", return_lse=True, mask_mod=hide_row)
print(f"row 10: |o| max {np.abs(o[0, 0, 10]).max()}, lse {lse[0, 0, 10]}; "
      f"row 11: lse {lse[0, 0, 11]:.3f}")

# %% [markdown]
# ## The kernel, traced against the step-through
#
# `check_kernel` compiles the variant into `kernels/fa2.cu` (the C above, in front of it),
# runs its trace build and compares every tile's m, l and O~ with the step-through's, and which
# tiles each ran. Without a GPU the CUDA C runs on the CPU backend.

# %%
try:
    div, actual, expected = check_kernel("fa2", "forward", Nq=130, d=16, causal=True,
                                         window=(40, 0), backend=default_backend())
    print(f"fa2 ({default_backend()}) with a window of 40, causal: "
          + ("all steps match" if div is None else str(div)))
    print(f"tiles run: {int((actual.seq >= 0).sum())} of {actual.seq.size}")
except RuntimeError as e:  # no GPU and no C++ compiler
    print(f"skipped the kernel check: {e}")

# %% [markdown]
# ## On a GPU: the tensor-core kernel
#
# With float16 / bfloat16 CuPy arrays the same keywords run kernel `tc`
# (`kernels/tc_mods.cuh`), forward and backward; `flashlab bench --variant all --compare flex`
# times it against FlexAttention.

# %%
if gpu_available():
    import cupy as cp

    from flashlab import lowp

    x = lowp.random_inputs(cp, [(2, 8, 1024, 64)] * 3, "bfloat16")
    o = flashlab.flash_attention(*x, window=(256, 0))
    o64, _ = variant_attention(*(lowp.to_float32(t.get()).astype(np.float64) for t in x),
                               window=(256, 0))
    print(f"tc, bf16, window 256: max |o - oracle| = "
          f"{np.abs(lowp.to_float32(o.get()) - o64).max():.2e}")
else:
    print("No CUDA GPU: skipped tc with a variant (it runs on fp16 / bf16 CuPy arrays).")
