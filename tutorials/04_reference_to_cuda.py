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
# # 4. From the reference to the CUDA kernel
#
# `kernels/fa1.cu` is Algorithm 1 in CUDA C: one thread block walks one head's loop nest, its
# 128 threads share each tile element by element, and the tiles live in shared memory (SRAM).
# It carries the same line labels as the NumPy step-through of notebook 3, so the two can be
# read side by side and, in trace mode, compared tile by tile.
#
# This notebook:
# 1. puts the kernel's source beside the reference's, line by line of A1;
# 2. runs the kernel and checks it against the float64 oracle;
# 3. shows what a trace comparison reports, first with a deliberately wrong Python
#    step-through, then with a bug planted in the kernel source.
#
# The kernel cells run on the GPU where there is one. Without one they run the same
# `kernels/fa1.cu` on the **CPU backend** (`flashlab.cpu`): the CUDA C is compiled with the
# machine's C++ compiler and each CUDA thread runs as a fiber, switching at `__syncthreads`, so
# the tiles, the trace and the planted bug are the kernel's own, only slower.

# %%
import numpy as np

from flashlab import course, flash_attention, trace
from flashlab.cpu import build, host
from flashlab.kernel_check import check_kernel, default_backend
from flashlab.launch import device, plans, sources
from flashlab.reference import Step, fa1_forward_steps, naive_attention
from flashlab.viz import draw_trace_diff, show, source_table

BACKEND = default_backend()  # "gpu" where CuPy sees one, else "cpu"
if BACKEND == "cpu":
    try:
        print(f"No CUDA GPU: the kernels run on the CPU backend ({build.compiler_name()})")
    except RuntimeError as e:  # no C++ compiler either
        BACKEND = None
        print(f"No CUDA GPU and no C++ compiler: the kernel cells will skip ({e})")
else:
    print("CUDA GPU with CuPy: found; the kernels run on it")

# %% [markdown]
# ## The kernel beside the reference
#
# Each row is one line of Algorithm 1: the paper's text, the code `kernels/fa1.cu` tags with
# that label (`// A1:L12`), and the code `flashlab/reference/fa1.py` tags with it
# (`# A1:L12`), with line numbers. A1:L1, the block sizes, is not in the kernel: the launcher
# (`flashlab.launch.plans.fa1_blocks`) applies it to the device's shared memory and passes Br, Bc in.
#
# Read A1:L12 across. The reference multiplies whole tiles (`P_tilde_ij @ V_j`); in the kernel,
# each thread computes some elements of O_i, and `keep[r]` and `add[r]` are the two row factors
# diag(l_i) e^(m_i - m_new) and e^(m~_ij - m_new) of the paper's line, computed at A1:L11.

# %%
source_table("fa1", "A1")

# %% [markdown]
# The kernel's header says what it is and where it is slow:

# %%
print("".join((sources.kernel_dir() / "fa1.cu").read_text().splitlines(keepends=True)[:15]))

# %% [markdown]
# ## Run the kernel
#
# `flashlab.flash_attention` runs the CUDA kernel when it is given CuPy arrays (fp32), and the
# NumPy reference when it is given NumPy arrays, unless `backend="cpu"` says to run the CUDA
# kernel itself on the CPU. The launcher sizes Br and Bc from the device's opt-in shared
# memory, so on an H100 fa1 uses much larger tiles than our 8 x 16 (the CPU backend gives a
# block a T4's 64 KB, the GPU a Colab student gets).

# %%
rng = np.random.default_rng(0)
qh, kh, vh = (rng.standard_normal((2, 4, 300, 64)).astype(np.float32) for _ in range(3))
o_ref, _ = naive_attention(*(x.astype(np.float64) for x in (qh, kh, vh)))
if BACKEND == "gpu":
    import cupy as cp

    o = flash_attention(cp.asarray(qh), cp.asarray(kh), cp.asarray(vh), kernel="fa1").get()
    smem = device.device_limits(cp.cuda.Device().id)["smem_optin"]
elif BACKEND == "cpu":
    o = flash_attention(qh, kh, vh, kernel="fa1", backend="cpu")  # kernels/fa1.cu on the CPU
    smem = host.LIMITS["smem_optin"]
if BACKEND:
    print(f"fa1 tiles ({BACKEND}): {plans.plan('fa1', 64, 'forward', smem)}")
    print(f"max |fa1 - float64 oracle| = {float(np.abs(o - o_ref).max()):.1e}")
else:
    print("Skipped running kernels/fa1.cu: no GPU and no C++ compiler here.")

# %% [markdown]
# ## What a trace comparison finds (CPU)
#
# A trace keeps, for every step (i, j), the state that must match between two implementations:
# for A1, m_i and l_i after A1:L11 and O_i after A1:L12 (`flashlab.trace.SPEC`).
# `trace.compare(expected, actual)` walks the steps in the algorithm's order and reports the
# first that differs, in the algorithm's terms.
#
# To see it work without a GPU, here is a student's version of Algorithm 1 in plain NumPy. With
# `rescale=False` it makes a classic mistake in A1:L12: it forgets the factors e^(m_i - m_new)
# and e^(m~_ij - m_new) that realign the old O_i and the new P~_ij V_j to the new row max.
# (That is the same mistake as the planted kernel bug `no-rescale` below.)

# %%
def student_fa1_steps(q, k, v, Br, Bc, rescale=True):
    """Algorithm 1 for (B, H, N, d) arrays, yielding the Steps a trace records."""
    B, H, N, d = q.shape
    tau = 1 / np.sqrt(d)
    O, l, m = np.zeros_like(q), np.zeros((B, H, N)), np.full((B, H, N), -np.inf)  # A1:L2
    seq = 0
    for j in range(-(-N // Bc)):  # A1:L5
        K_j, V_j = k[:, :, j * Bc:(j + 1) * Bc], v[:, :, j * Bc:(j + 1) * Bc]  # A1:L6
        for i in range(-(-N // Br)):  # A1:L7
            r = slice(i * Br, (i + 1) * Br)
            Q_i, O_i, l_i, m_i = q[:, :, r], O[:, :, r], l[:, :, r], m[:, :, r]  # A1:L8
            S_ij = tau * Q_i @ K_j.swapaxes(-1, -2)  # A1:L9
            m_tilde_ij = S_ij.max(-1)  # A1:L10
            P_tilde_ij = np.exp(S_ij - m_tilde_ij[..., None])
            m_new = np.maximum(m_i, m_tilde_ij)  # A1:L11
            alpha, beta = np.exp(m_i - m_new), np.exp(m_tilde_ij - m_new)
            l_new = alpha * l_i + beta * P_tilde_ij.sum(-1)
            if rescale:  # A1:L12
                O_i = ((alpha * l_i)[..., None] * O_i
                       + beta[..., None] * (P_tilde_ij @ V_j)) / l_new[..., None]
            else:
                O_i = (l_i[..., None] * O_i + P_tilde_ij @ V_j) / l_new[..., None]
            O[:, :, r], l[:, :, r], m[:, :, r] = O_i, l_new, m_new  # A1:L13
            yield Step("A1", i, j, seq, "A1:L12", {"m_new": m_new, "l_new": l_new, "O_i": O_i},
                       blocks=(N, N, Br, Bc))
            seq += 1
    return O


q, k, v = (rng.standard_normal((1, 2, 40, 8)) for _ in range(3))  # 2 heads, N = 40, d = 8
Br, Bc = 8, 16  # Tr = 5, Tc = 3 (the last K/V block has 8 rows)
expected, _ = trace.record(fa1_forward_steps(q, k, v, Br=Br, Bc=Bc))
print("rescale=True :", trace.compare(expected, trace.record(student_fa1_steps(q, k, v, Br, Bc))[0]))
wrong, _ = trace.record(student_fa1_steps(q, k, v, Br, Bc, rescale=False), label="student A1")
divergence = trace.compare(expected, wrong)
print("rescale=False:", divergence)

# %% [markdown]
# The report names the step, the line, the quantity, the row and column, and the values. Why
# (i = 0, j = 1) and not j = 0? At j = 0 every row starts from m_i = -inf and l_i = 0, so
# e^(m~_ij - m_new) = 1 and the old O_i is multiplied by l_i = 0: the missing factors are 1 or
# multiply zero. The first step where they matter is the first step with an old O_i, (0, 1).
# m_i and l_i stay right (A1:L11 is correct), which is why O_i is the quantity named.
#
# The picture: for each traced quantity, each tile coloured by the largest difference, the
# first divergence outlined. Every step after (0, 1) is wrong too; the first one is where to look.

# %%
draw_trace_diff(expected, wrong, divergence)

# %% [markdown]
# ## The same for the kernel: a bug planted in its source
#
# `flashlab.course.BUGS` holds known bugs as exact text edits of a kernel source. `no-rescale`
# makes in `kernels/fa1.cu` the edit our student made:

# %%
bug = course.BUGS["no-rescale"]
print(f"{bug.kernel} {bug.direction}, {bug.line}:\n  - {bug.old}\n  + {bug.new}\n{bug.question}")

# %% [markdown]
# `kernel_check.check_kernel` compiles the kernel in trace mode (`-DFLASHLAB_TRACE`, which writes
# each step's m_i, l_i, O_i to a buffer), runs it on random inputs and compares its trace with the
# float64 step-through run with the kernel's own Br and Bc. The kernel's Bc depends on the
# device's shared memory (about 227 on an H100 at d = 64, 51 on the CPU backend's 64 KB), so we
# size N for three K/V blocks, the last one ragged: the bug needs j = 1 to show.

# %%
if BACKEND:
    tiles = plans.plan("fa1", 64, "forward", smem)
    n = 2 * tiles["Bc"] + 17
    ok, kernel_trace, reference_trace = check_kernel("fa1", "forward", H=2, Nq=n, d=64,
                                                     backend=BACKEND)
    print(f"fa1 (Br = {kernel_trace.Br}, Bc = {kernel_trace.Bc}, N = {n}, {BACKEND}):",
          "all steps match" if ok is None else ok)
    found, kernel_trace, reference_trace = check_kernel(
        "fa1", "forward", H=2, Nq=n, d=64, bug="no-rescale", backend=BACKEND)
    print(found)
    show(draw_trace_diff(reference_trace, kernel_trace, found))
else:
    print("Skipped kernel_check.check_kernel('fa1', bug='no-rescale'): no GPU and no C++ "
          "compiler. It reports the first divergence at step (i=0, j=1), A1:L12.")

# %% [markdown]
# From the command line, the same two checks are
# `flashlab trace --kernel fa1 --seq 600` and
# `flashlab trace --kernel fa1 --seq 600 --inject-bug no-rescale`; `flashlab check my_fa1.cu
# --algorithm fa1` does it for your own kernel file.
#
# **Summary.** The kernel and the reference share loop nest, tile names and line labels, so a
# wrong kernel is found at its first wrong tile, with the paper's line beside it. Notebook 5
# does the backward pass.
