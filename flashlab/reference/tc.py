"""F2 and G2 as kernels/tc.cu runs them on tensor cores: 16-bit inputs, fp32 sums, warps own slabs.

Step-through twin of kernels/tc.cu. The loop nests are those of fa2.py (ALGORITHMS.md F2, G2);
what changes is who holds which rows and where numbers are rounded to 16 bits:

  - Warps, not threads, own rows. Forward: a thread block of `warps` warps takes Br = 16 * WM *
    warps query rows, and warp w holds rows w*16*WM .. w*16*WM + 16*WM - 1 (WM slabs of 16, the M
    of one mma.sync.m16n8k16), with their m, l and O~ in its registers for the whole F2:L3 loop.
    Backward: a thread block takes Bc = 16 * warps keys, warp w holds keys w*16 .. w*16 + 15 and
    their rows of dK~ and dV~ (G2:L2). Every step yields `warp_of_row` / `warp_of_key` so a reader
    can see the split.
  - The forward softmax runs in base 2 (F2:L6): S is multiplied once by tau * log2(e), m is kept
    in those units and P~ = 2^(S - m_new), which the GPU evaluates in one MUFU instruction. l and
    O~ do not depend on the base; the trace reports m in natural units (m * ln 2), as fa2.py's.
  - Products take 16-bit operands and sum in fp32. Q K^T, dO V^T are exact products of the 16-bit
    inputs summed in fp32 (F2:L5, G2:L5, G2:L6). Four fp32 tiles are rounded to the input dtype
    (round to nearest even, as cvt.rn) just before they become an mma operand:
        F2:L7  P~ -> round16(P~) for O~ += round16(P~) V_j; l sums the *unrounded* P~ (F2:L6),
        G2:L6  P  -> round16(P)  for dV~ += round16(P)^T dO_i,
        G2:L7  dS -> round16(dS) for dQ_i += tau round16(dS) K_j,
        G2:L8  the same round16(dS) for dK~ += round16(dS)^T Q_i.
    The outputs are rounded once more at the end: O = round16(O~ / l) (F2:L9), dQ = round16(tau
    sum_j round16(dS) K_j) after every j has added in, dK = round16(tau dK~), dV = round16(dV~)
    (G2:L10). L and D stay fp32. These roundings are the only places the result may differ from
    fa2.py run in float32 on the same 16-bit inputs (up to the order of fp32 sums).
  - Under the causal mask the backward starts its i loop at i0 = floor(j Bc / Br), the kernel's
    closed form for "the first row block with a visible entry" (G2:L3); it equals fa2.py's
    skipping whenever Bc is a multiple of Br, as in every default configuration.

The fp32 arithmetic is done in float32 NumPy: np.exp2 instead of ex2.approx and NumPy's order of
the fp32 sums instead of the tensor cores', each a few fp32 ulp apart. So the kernel's m and l match
this trace to fp32 rounding (~1e-6), but a tile built from rounded operands (O~, dV~, dQ_ij, dK~)
can differ by about one 16-bit ulp of a P~ or dS entry wherever that fp32 difference tips a value
across a 16-bit rounding boundary. On an H100 (N up to 1024) the kernel was within 3 units of
16-bit roundoff of this trace on O~ and 0.2 units on the backward tiles; fa2.py in float64 on the
same 16-bit inputs is up to ~9 units away on O~ (the unnormalised O~ grows with l).

`naive_lowp_forward` / `naive_lowp_backward` are standard attention (A0) in the same 16-bit dtype,
and `within_fa_rule` is FlashAttention's test rule: a 16-bit kernel may be off the float64 answer
by at most twice as much as naive attention computed in that 16-bit dtype is.

Every tile below is shaped (B, H, rows[, cols]): one step does tile (i, j) for all heads at once.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_backward, check_block, check_qkv
from ..cuda_kernel_ops import TC_BACKWARD, TC_FORWARD
from ..lowp import LOWP_DTYPES
from ..lowp import naive_lowp_backward, naive_lowp_forward, within_fa_rule  # noqa: F401
from .tiles import Step, ceil_div, rows, run, safe

LOG2E = np.float32(1.4426950408889634)  # TC_LOG2E in kernels/tc.cu
LN2 = np.float32(0.6931471805599453)  # TC_LN2
LOWP = LOWP_DTYPES
MMA_K = 16  # mma.sync.m16n8k16: 16-row slabs, 16-wide k slices
f32 = np.float32


def _round16(x, dtype):
    """fp32 -> the 16-bit input dtype, round to nearest even (cvt.rn.f16x2 / cvt.rn.bf16x2)."""
    return np.asarray(x, f32).astype(dtype)


def _up(x):
    """16-bit -> fp32, exact (what an mma operand or to_f32 reads)."""
    return np.asarray(x).astype(f32)


def _check_lowp(dims, q):
    name = np.dtype(q.dtype).name
    if name not in LOWP:
        raise ValueError(
            f"q dtype must be float16 or bfloat16 for the tensor-core reference, got {name}: "
            f"pass q.astype(np.float16) (or ml_dtypes.bfloat16), or use fa2_forward for {name}")
    if dims.d % MMA_K != 0:
        raise ValueError(
            f"head dim d = {dims.d} (q shape {tuple(q.shape)}) must be a multiple of {MMA_K} for "
            f"the tensor-core reference: mma.sync.m16n8k16 takes 16-wide slices of d; pad the "
            f"head dim or use fa2_forward")


def _multiple_of_16(name, value):
    value = check_block(name, value)
    if value % MMA_K != 0:
        raise ValueError(f"{name} = {value} must be a multiple of {MMA_K}: tensor-core tiles are "
                         f"made of 16-row slabs (mma.sync.m16n8k16)")
    return value


def tc_blocks(d: int, direction: str) -> tuple[int, int, int]:
    """(Br, Bc, warps) of kernels/tc.cu's default launch at head dim d (TC_FORWARD/TC_BACKWARD).

    Forward: Br = 16 * WM * warps query rows, Bc keys. Backward: Br query rows, Bc = 16 * warps.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    table = TC_FORWARD if direction == "forward" else TC_BACKWARD
    if d not in table:
        raise ValueError(
            f"kernel 'tc' has no default {direction} tile for head dim {d} (it has "
            f"{', '.join(map(str, sorted(table)))}); pass Br and Bc (multiples of 16)")
    c = table[d]
    if direction == "forward":
        return 16 * c["WM"] * c["NW"], c["BC"], c["NW"]
    return c["BR"], 16 * c["NW"], c["NW"]


def _forward_blocks(d, Br, Bc, warps):
    """Br, Bc, warps, WM for the forward; Br must split into `warps` warps of WM 16-row slabs."""
    if Br is None or Bc is None:
        dBr, dBc, dW = tc_blocks(d, "forward")
        Br = dBr if Br is None else Br
        Bc = dBc if Bc is None else Bc
    else:  # both given: the kernel's warp count where it has one for this d
        dW = TC_FORWARD[d]["NW"] if d in TC_FORWARD else 4
    Br, Bc = _multiple_of_16("Br", Br), _multiple_of_16("Bc", Bc)
    slabs = Br // MMA_K
    if warps is None:  # the default warp count, or the largest smaller one that splits Br evenly
        warps = max(w for w in range(1, min(dW, slabs) + 1) if slabs % w == 0)
    warps = check_block("warps", warps)
    if slabs % warps != 0:
        raise ValueError(f"Br = {Br} is {slabs} slabs of 16 rows, which {warps} warps cannot share "
                         f"evenly (Br = 16 * WM * warps); pick Br a multiple of {16 * warps}")
    return Br, Bc, warps, slabs // warps


def _backward_blocks(d, Br, Bc, warps):
    """Br, Bc, warps for the backward; each warp owns 16 keys, so Bc = 16 * warps."""
    if Br is None or (Bc is None and warps is None):
        dBr, dBc, _ = tc_blocks(d, "backward")
        Br = dBr if Br is None else Br
        Bc = dBc if Bc is None and warps is None else Bc
    Br = _multiple_of_16("Br", Br)
    if Bc is None:
        warps = check_block("warps", warps)
        Bc = 16 * warps
    Bc = _multiple_of_16("Bc", Bc)
    if warps is None:
        warps = Bc // MMA_K
    warps = check_block("warps", warps)
    if Bc != 16 * warps:
        raise ValueError(f"Bc = {Bc} with warps = {warps}: in the backward each warp owns 16 keys, "
                         f"so Bc must be 16 * warps = {16 * warps}")
    return Br, Bc, warps


def _scores_base2(Q_i, K_j, sl2, causal, r: slice, c: slice):
    """S = Q_i K_j^T in fp32 (exact 16-bit products), times tau log2(e), masked (F2:L5)."""
    S = (_up(Q_i) @ np.swapaxes(_up(K_j), -1, -2)) * sl2  # (B, H, br, bc) fp32
    if causal:
        hidden = np.arange(c.start, c.stop)[None, :] > np.arange(r.start, r.stop)[:, None]
        S = np.where(hidden, f32(-np.inf), S)
    return S


def tc_forward_steps(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, warps=None):
    """F2:L1-L9 as kernels/tc.cu's tc_forward runs it, as a generator of Steps; returns (o, lse).

    q, k, v: (B, H, N, d) float16 or bfloat16. o comes back in that dtype, lse (B, H, Nq) in
    float32 and natural-log units. Br, Bc, warps default to the kernel's launch for head dim d.
    """
    dims = check_qkv(q, k, v, causal, softmax_scale)
    _check_lowp(dims, q)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc, warps, WM = _forward_blocks(d, Br, Bc, warps)
    dt = q.dtype
    sl2 = f32(f32(dims.scale) * LOG2E)  # tau log2(e): S in base-2 units

    O = np.empty((B, H, Nq, d), dt)  # (B, H, Nq, d) 16-bit, written once per row block
    L = np.empty((B, H, Nq), f32)  # (B, H, Nq) fp32, natural units
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    for i in range(Tr):  # F2:L1  (a thread block each)
        r = rows(i, Br, Nq)
        br = r.stop - r.start
        warp_of_row = np.arange(br) // (16 * WM)  # warp w holds rows w*16*WM .. +16*WM-1
        Q_i = q[:, :, r]  # F2:L2  (B, H, br, d) 16-bit, in shared memory
        O_t = np.zeros((B, H, br, d), f32)  # O~ (B, H, br, d) fp32, in the warps' registers
        l_i = np.zeros((B, H, br), f32)  # (B, H, br)
        m_i = np.full((B, H, br), -np.inf, f32)  # (B, H, br), base-2 units
        jend = min(Tc, (r.stop - 1) // Bc + 1) if dims.causal else Tc  # F2:L3 causal skipping
        for j in range(jend):  # F2:L3
            c = rows(j, Bc, Nk)
            K_j, V_j = k[:, :, c], v[:, :, c]  # F2:L4  (B, H, bc, d) 16-bit
            S2 = _scores_base2(Q_i, K_j, sl2, dims.causal, r, c)  # F2:L5  (B, H, br, bc)
            m_new = np.maximum(m_i, S2.max(axis=-1))  # F2:L6  (B, H, br)
            base = safe(m_new)
            alpha = np.exp2(m_i - base)  # 2^(m - m_new)
            P_t = np.exp2(S2 - base[..., None])  # P~ (B, H, br, bc) fp32
            l_i = alpha * l_i + P_t.sum(axis=-1, dtype=f32)  # sums the unrounded P~
            P_16 = _round16(P_t, dt)  # the A operand of the next mma: P~ in 16 bits
            O_t = alpha[..., None] * O_t + _up(P_16) @ _up(V_j)  # F2:L7  (B, H, br, d)
            m_i = m_new
            yield Step("F2", i, j, j, "F2:L7", {
                "S_ij": S2 * LN2, "S_base2_ij": S2.copy(), "m_new": m_new * LN2, "l_i": l_i.copy(),
                "P_tilde_ij": P_t, "P_rounded_ij": P_16, "O_tilde_i": O_t.copy(),
                "warp_of_row": warp_of_row.copy()},
                blocks=(Nq, Nk, Br, Bc))
        inv = f32(1) / l_i  # F2:L9
        O[:, :, r] = _round16(O_t * inv[..., None], dt)
        L[:, :, r] = (safe(m_i) + np.log2(l_i)) * LN2
    return O, L


def tc_forward(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, warps=None):
    """The tensor-core forward run to the end. Returns (o (B, H, Nq, d) 16-bit, lse fp32)."""
    return run(tc_forward_steps(q, k, v, causal, softmax_scale, Br, Bc, warps))


def tc_backward_steps(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                      warps=None):
    """G2:L0-L10 as kernels/tc.cu's tc_backward runs it, as a generator of Steps; returns grads.

    do, o like q (16-bit), lse (B, H, Nq) natural units (any float dtype; read as fp32). Each
    step records dQ_ij = tau round16(dS) K_j, this (i, j)'s fp32 term of dQ_i (G2:L7), and
    dK~ with tau applied. Returns (dq, dk, dv) in the input dtype.
    """
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale)
    _check_lowp(dims, q)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc, warps = _backward_blocks(d, Br, Bc, warps)
    dt = q.dtype
    tau = f32(dims.scale)
    sl2 = f32(tau * LOG2E)
    L2 = np.asarray(lse, f32) * LOG2E  # (B, H, Nq) logsumexp in base-2 units

    D = (_up(do) * _up(o)).sum(axis=-1, dtype=f32)  # G2:L0  (B, H, Nq) fp32
    dQacc = np.zeros((B, H, Nq, d), f32)  # fp32 accumulator in HBM (atomic adds)
    dK = np.empty((B, H, Nk, d), dt)
    dV = np.empty((B, H, Nk, d), dt)
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    for j in range(Tc):  # G2:L1  (a thread block each)
        c = rows(j, Bc, Nk)
        bc = c.stop - c.start
        warp_of_key = np.arange(bc) // 16  # warp w holds keys w*16 .. w*16+15
        K_j, V_j = k[:, :, c], v[:, :, c]  # G2:L2  (B, H, bc, d) 16-bit
        dK_t = np.zeros((B, H, bc, d), f32)  # dK~ (B, H, bc, d) fp32, tau not yet applied
        dV_t = np.zeros((B, H, bc, d), f32)  # dV~ (B, H, bc, d) fp32
        i0 = min(Tr, (j * Bc) // Br) if dims.causal else 0  # G2:L3 causal skipping
        for i in range(i0, Tr):  # G2:L3
            r = rows(i, Br, Nq)
            Q_i, dO_i = q[:, :, r], do[:, :, r]  # G2:L4  (B, H, br, d) 16-bit
            L_i, D_i = L2[:, :, r], D[:, :, r]  # (B, H, br) fp32
            S2 = _scores_base2(Q_i, K_j, sl2, dims.causal, r, c)  # G2:L5  (B, H, br, bc)
            P_ij = np.exp2(S2 - L_i[..., None])  # exp(S - L); masked entries give 2^-inf = 0
            P_16 = _round16(P_ij, dt)
            dV_t = dV_t + np.swapaxes(_up(P_16), -1, -2) @ _up(dO_i)  # G2:L6  (B, H, bc, d)
            dP_ij = _up(dO_i) @ np.swapaxes(_up(V_j), -1, -2)  # (B, H, br, bc) fp32
            dS_ij = P_ij * (dP_ij - D_i[..., None])  # fp32
            dS_16 = _round16(dS_ij, dt)  # through shared memory for dQ, registers for dK~
            term = _up(dS_16) @ _up(K_j)  # G2:L7  (B, H, br, d): what this block adds to dQ_i
            dQacc[:, :, r] += term
            dK_t = dK_t + np.swapaxes(_up(dS_16), -1, -2) @ _up(Q_i)  # G2:L8  (B, H, bc, d)
            yield Step("G2", i, j, i - i0, "G2:L8", {
                "S_ij": S2 * LN2, "S_base2_ij": S2.copy(), "P_ij": P_ij, "P_rounded_ij": P_16,
                "dP_ij": dP_ij, "D_i": D_i.copy(), "dS_ij": dS_ij, "dS_rounded_ij": dS_16,
                "dQ_ij": tau * term, "dK_tilde_j": tau * dK_t, "dV_tilde_j": dV_t.copy(),
                "warp_of_key": warp_of_key.copy()},
                blocks=(Nq, Nk, Br, Bc))
        dK[:, :, c] = _round16(tau * dK_t, dt)  # G2:L10 (keys no query sees get zeros)
        dV[:, :, c] = _round16(dV_t, dt)
    dQ = _round16(tau * dQacc, dt)  # after every thread block has added in
    return dQ, dK, dV


def tc_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                warps=None):
    """The tensor-core backward run to the end. Returns (dq, dk, dv) in the input dtype."""
    return run(tc_backward_steps(do, q, k, v, o, lse, causal, softmax_scale, Br, Bc, warps))


# ---------------------------------------------------------------------------- FlashAttention's rule
# naive_lowp_forward, naive_lowp_backward and within_fa_rule live in flashlab.lowp (NumPy and
# CuPy alike) and are imported above: the GPU tests and the benchmark use the same yardstick.
