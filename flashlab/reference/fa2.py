"""F2 and G2: the FlashAttention-2 loop order, forward and backward.

Step-through twin of kernels/fa2.cu. The forward puts the Q blocks outside (one thread block
per (batch, head, i)), keeps O~, l and m on chip for the whole row block and writes O_i and the
logsumexp L_i once. The backward gives each thread block one K/V block j; dQ_i collects the
contributions of every j (atomic adds on the GPU). Under the causal mask both skip the tiles
that hold no unmasked entry (F2:L3, G2:L3).

Default tiles for an SRAM of `sram` floats: the forward sizes its own (hbm.f2_block_sizes:
Br = ceil(M / 4d), not capped at d as A1:L1 caps it, and the largest Bc that fits), the backward
keeps A1:L1 (hbm.block_sizes). `flashlab io` counts F2 with the same rule.

Every tile below is shaped (B, H, rows[, cols]): one step does tile (i, j) for all heads at once.

Attention variants (flash_attention's keywords window=, mask_mod=, score_mod=, and k, v with
fewer heads: GQA) change S_ij as the kernels do (tiles.TileVariant: score_mod where visible,
-inf where hidden), and a tile no head sees any entry of is skipped; a row with no visible key
gives O = 0 and lse -inf. The backward takes them all: P from the modified scores, and dS
multiplied by score_mod's derivative at the unmodified score (G2:L6), as kernels/fa2.cu does.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_backward, check_qkv
from . import tiles
from .tiles import (Step, TileVariant, causal_visits, ceil_div, counter_for, f2_block_sizes,
                    full_heads, resolve_blocks, rows, run, safe)


def fa2_forward_steps(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, sram=None,
                      counter=None, *, window=None, mask_mod=None, score_mod=None, gqa=False):
    """F2:L1-L9 as a generator of Steps; returns (o, lse).

    Br, Bc default to hbm.f2_block_sizes with M = `sram` floats. window, mask_mod, score_mod
    and GQA (k, v with fewer heads: with gqa=True or a variant keyword): the module
    docstring."""
    tv = TileVariant.of(window, mask_mod, score_mod)
    scores = tv.scores if tv is not None else tiles.scores  # S_ij (F2:L5), with the variant's
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=gqa or tv is not None)
    k, v = full_heads(dims, k, v)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc = resolve_blocks(d, Br, Bc, sram, rule=f2_block_sizes)
    mem = counter_for(counter, q.dtype)
    tau = q.dtype.type(dims.scale)

    O = np.empty((B, H, Nq, d), q.dtype)  # (B, H, Nq, d) in HBM, written once per row block
    L = np.empty((B, H, Nq), q.dtype)  # (B, H, Nq)
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    for i in range(Tr):  # F2:L1  (a thread block each, in parallel)
        r = rows(i, Br, Nq)
        br = r.stop - r.start
        Q_i = q[:, :, r]  # F2:L2  (B, H, br, d)
        mem.read("Q", Q_i.size)
        O_tilde = np.zeros((B, H, br, d), q.dtype)  # O~ (B, H, br, d), on chip
        l_i = np.zeros((B, H, br), q.dtype)  # (B, H, br)
        m_i = np.full((B, H, br), -np.inf, q.dtype)  # (B, H, br)
        for name, n in (("Q_i", br * d), ("O~", br * d), ("l", br), ("m", br)):
            mem.hold(name, n)
        for j in range(Tc):  # F2:L3
            if dims.causal and not causal_visits(i, Br, Nq, j, Bc):
                break  # every later tile lies wholly above the diagonal too
            c = rows(j, Bc, Nk)
            bc = c.stop - c.start
            if tv is not None and tv.hidden(q.shape, r, c):
                continue  # a variant's block mask: no entry of this tile is visible
            K_j, V_j = k[:, :, c], v[:, :, c]  # F2:L4  (B, H, bc, d)
            mem.read("K", K_j.size); mem.read("V", V_j.size)
            for name, n in (("K_j", bc * d), ("V_j", bc * d), ("S", br * bc), ("m_new", br)):
                mem.hold(name, n)
            # BEGIN EXERCISE 1.3: F2:L5-L7. S_ij, then m_new, P~ and the running l_i, then rescale the
            # accumulator O~ (O_tilde) and add P~ V_j; finally m_i = m_new. O~ stays unnormalised.
            S_ij = scores(Q_i, K_j, tau, dims.causal, r, c)  # F2:L5  (B, H, br, bc)
            m_new = np.maximum(m_i, S_ij.max(axis=-1))  # F2:L6  (B, H, br)
            P_tilde = np.exp(S_ij - safe(m_new)[..., None])  # P~ (B, H, br, bc)
            alpha = np.exp(m_i - safe(m_new))  # e^(m - m_new)
            l_i = alpha * l_i + P_tilde.sum(axis=-1)
            O_tilde = alpha[..., None] * O_tilde + P_tilde @ V_j  # F2:L7  (B, H, br, d)
            m_i = m_new
            # END EXERCISE
            mem.drop("K_j", "V_j", "S", "m_new")
            yield Step("F2", i, j, j, "F2:L7", {
                "S_ij": S_ij, "m_new": m_new, "P_tilde": P_tilde, "l_i": l_i, "O_tilde": O_tilde},
                blocks=(Nq, Nk, Br, Bc), ran=None if tv is None else tv.ran(q.shape, r, c))
        if tv is None:
            O[:, :, r] = O_tilde / l_i[..., None]  # F2:L9
            L[:, :, r] = safe(m_i) + np.log(l_i)
        else:  # a row with no visible key (l = 0): O = 0, L = -inf
            seen = l_i > 0
            O[:, :, r] = np.where(seen[..., None], O_tilde / np.where(seen, l_i, 1)[..., None], 0)
            with np.errstate(divide="ignore"):
                L[:, :, r] = np.where(seen, safe(m_i) + np.log(np.where(seen, l_i, 1)), -np.inf)
        mem.write("O", br * d * B * H); mem.write("L", br * B * H)
        mem.drop("Q_i", "O~", "l", "m")
    return O, L


def fa2_forward(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, sram=None,
                counter=None, **variant):
    """FlashAttention-2 forward run to the end. Returns (o (B, H, Nq, d), lse (B, H, Nq))."""
    return run(fa2_forward_steps(q, k, v, causal, softmax_scale, Br, Bc, sram, counter,
                                 **variant))


def fa2_backward_steps(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                       sram=None, counter=None, *, window=None, mask_mod=None, score_mod=None,
                       gqa=False):
    """G2:L0-L10 as a generator of Steps; returns (dq, dk, dv).

    Each step records dQ_ij = tau dS K_j, the contribution this (i, j) adds to dQ_i (G2:L7): on
    the GPU several thread blocks add into dQ_i in no fixed order, but each contribution is fixed.
    window, mask_mod, score_mod and GQA (as the forward's): the module docstring (dk, dv then
    have k's heads); with a score_mod, dS_ij carries its derivative.
    """
    tv = TileVariant.of(window, mask_mod, score_mod)
    scores = tv.scores if tv is not None else tiles.scores  # S_ij (G2:L5), with the variant's
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale, gqa=gqa or tv is not None)
    k, v = full_heads(dims, k, v)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc = resolve_blocks(d, Br, Bc, sram)
    mem = counter_for(counter, q.dtype)
    tau = q.dtype.type(dims.scale)
    lse = lse.astype(q.dtype, copy=False)
    if tv is not None:  # rows with no visible key (lse -inf): every S is -inf, so P = e^-inf = 0
        lse = np.where(np.isneginf(lse), 0, lse)

    D = (do * o).sum(axis=-1)  # G2:L0  (B, H, Nq), the pre-pass kernel
    mem.read("dO", do.size); mem.read("O", o.size); mem.write("D", D.size)
    dQ = np.zeros((B, H, Nq, d), q.dtype)  # fp32 accumulator in HBM
    mem.write("dQ", dQ.size)
    dK = np.empty((B, H, Nk, d), q.dtype)
    dV = np.empty((B, H, Nk, d), q.dtype)
    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    for j in range(Tc):  # G2:L1  (a thread block each, in parallel)
        c = rows(j, Bc, Nk)
        bc = c.stop - c.start
        K_j, V_j = k[:, :, c], v[:, :, c]  # G2:L2  (B, H, bc, d)
        mem.read("K", K_j.size); mem.read("V", V_j.size)
        dK_tilde = np.zeros_like(K_j)  # dK~ (B, H, bc, d), on chip
        dV_tilde = np.zeros_like(V_j)  # dV~ (B, H, bc, d), on chip
        for name in ("K_j", "V_j", "dK~", "dV~"):
            mem.hold(name, bc * d)
        i0 = None  # the first query block causal lets this key block see: step i - i0
        for i in range(Tr):  # G2:L3
            if dims.causal and not causal_visits(i, Br, Nq, j, Bc):
                continue  # the first rows lie wholly above the diagonal: skip to the first visible
            i0 = i if i0 is None else i0
            r = rows(i, Br, Nq)
            if tv is not None and tv.hidden(q.shape, r, c):
                continue  # a variant's block mask: no entry of this tile is visible
            br = r.stop - r.start
            Q_i, dO_i = q[:, :, r], do[:, :, r]  # G2:L4  (B, H, br, d)
            L_i, D_i = lse[:, :, r], D[:, :, r]  # (B, H, br)
            for name, x in (("Q", Q_i), ("dO", dO_i), ("L", L_i), ("D", D_i)):
                mem.read(name, x.size)
            for name, n in (("Q_i", br * d), ("dO_i", br * d), ("L_i", br), ("D_i", br),
                            ("S/P", br * bc), ("dP/dS", br * bc)):
                mem.hold(name, n)
            # BEGIN EXERCISE 1.4: G2:L5-L8. S_ij and P_ij = exp(S_ij - L_i), dV~, dP_ij, dS_ij, this
            # step's contribution dQ_ij = tau dS_ij K_j, and dK~.
            S_ij = scores(Q_i, K_j, tau, dims.causal, r, c)  # G2:L5  (B, H, br, bc)
            P_ij = np.exp(S_ij - L_i[..., None])
            dV_tilde = dV_tilde + np.swapaxes(P_ij, -1, -2) @ dO_i  # G2:L6  (B, H, bc, d)
            dP_ij = dO_i @ np.swapaxes(V_j, -1, -2)  # (B, H, br, bc)
            dS_ij = P_ij * (dP_ij - D_i[..., None])
            if tv is not None and tv.score is not None:  # d score_mod / d score (G2:L6)
                dS_ij = dS_ij * tv.score_grad(Q_i, K_j, tau, dims.causal, r, c)
            dQ_ij = tau * (dS_ij @ K_j)  # G2:L7  (B, H, br, d)
            dK_tilde = dK_tilde + tau * (np.swapaxes(dS_ij, -1, -2) @ Q_i)  # G2:L8  (B, H, bc, d)
            # END EXERCISE
            dQ[:, :, r] += dQ_ij
            mem.read("dQ", dQ_ij.size); mem.write("dQ", dQ_ij.size)  # atomic read-modify-write
            mem.drop("Q_i", "dO_i", "L_i", "D_i", "S/P", "dP/dS")
            yield Step("G2", i, j, i - i0, "G2:L8", {
                "S_ij": S_ij, "P_ij": P_ij, "dP_ij": dP_ij, "D_i": D_i, "dS_ij": dS_ij,
                "dQ_ij": dQ_ij, "dK_tilde": dK_tilde.copy(), "dV_tilde": dV_tilde.copy()},
                blocks=(Nq, Nk, Br, Bc), ran=None if tv is None else tv.ran(q.shape, r, c))
        dK[:, :, c] = dK_tilde; dV[:, :, c] = dV_tilde  # G2:L10
        mem.write("dK", dK_tilde.size); mem.write("dV", dV_tilde.size)
        mem.drop("K_j", "V_j", "dK~", "dV~")
    if dims.kv_heads != H:  # GQA: each key/value head's gradient sums its group's
        G = H // dims.kv_heads
        dK, dV = (x.reshape(B, dims.kv_heads, G, Nk, d).sum(axis=2) for x in (dK, dV))
    return dQ, dK, dV


def fa2_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                 sram=None, counter=None, **variant):
    """FlashAttention-2 backward run to the end. Returns (dq, dk, dv)."""
    return run(fa2_backward_steps(do, q, k, v, o, lse, causal, softmax_scale, Br, Bc, sram,
                                  counter, **variant))
