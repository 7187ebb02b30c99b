"""A1 and B1: FlashAttention forward exactly as the paper's Algorithm 1, and its backward.

Step-through twin of kernels/fa1.cu: the same loop nest (K/V blocks j outer, Q blocks i inner),
the same tile names and the same line tags. O_i, l_i and m_i go to HBM and come back at every
(i, j) step, as the paper writes it; FlashAttention-2 (fa2.py) removes that round trip.

Every tile below is shaped (B, H, rows[, cols]): one step does tile (i, j) for all heads at once.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_backward, check_qkv
from .tiles import Step, ceil_div, counter_for, resolve_blocks, rows, run, safe, scores


def fa1_forward_steps(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, sram=None,
                      counter=None):
    """A1:L1-L16 as a generator of Steps; returns (o, lse, l, m).

    Br, Bc default to A1:L1 with M = `sram` floats. lse = m + log(l), for the backward pass.
    """
    dims = check_qkv(q, k, v, causal, softmax_scale)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc = resolve_blocks(d, Br, Bc, sram)  # A1:L1
    mem = counter_for(counter, q.dtype)
    dt = q.dtype.type
    tau = dt(dims.scale)
    bh = B * H

    O = np.zeros((B, H, Nq, d), q.dtype)  # A1:L2  (B, H, Nq, d) in HBM
    l = np.zeros((B, H, Nq), q.dtype)  # (B, H, Nq)
    m = np.full((B, H, Nq), -np.inf, q.dtype)  # (B, H, Nq)
    mem.write("O", O.size); mem.write("l", l.size); mem.write("m", m.size)

    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)  # A1:L3-L4
    seq = 0
    for j in range(Tc):  # A1:L5
        c = rows(j, Bc, Nk)
        K_j, V_j = k[:, :, c], v[:, :, c]  # A1:L6  (B, H, bc, d) each
        mem.read("K", K_j.size); mem.read("V", V_j.size)
        bc = c.stop - c.start
        mem.hold("K_j", bc * d); mem.hold("V_j", bc * d)
        for i in range(Tr):  # A1:L7
            r = rows(i, Br, Nq)
            br = r.stop - r.start
            Q_i = q[:, :, r]  # A1:L8  (B, H, br, d)
            O_i, l_i, m_i = O[:, :, r].copy(), l[:, :, r].copy(), m[:, :, r].copy()
            mem.read("Q", Q_i.size); mem.read("O", O_i.size)
            mem.read("l", l_i.size); mem.read("m", m_i.size)
            for name, n in (("Q_i", br * d), ("O_i", br * d), ("l_i", br), ("m_i", br),
                            ("S_ij", br * bc), ("m~_ij", br), ("l~_ij", br),
                            ("m_new", br), ("l_new", br)):
                mem.hold(name, n)

            # BEGIN EXERCISE 1.1: A1:L9-L12. Compute S_ij (use scores()), m~_ij, P~_ij, l~_ij, then
            # m_new, l_new and the new O_i. Subtract safe(m) rather than m, so a row with no visible
            # key yet gives exp(-inf) = 0 instead of NaN.
            S_ij = scores(Q_i, K_j, tau, dims.causal, r, c)  # A1:L9  (B, H, br, bc)
            m_tilde_ij = S_ij.max(axis=-1)  # A1:L10  m~_ij (B, H, br)
            P_tilde_ij = np.exp(S_ij - safe(m_tilde_ij)[..., None])  # P~_ij (B, H, br, bc)
            l_tilde_ij = P_tilde_ij.sum(axis=-1)  # l~_ij (B, H, br)
            m_new = np.maximum(m_i, m_tilde_ij)  # A1:L11  (B, H, br)
            alpha = np.exp(m_i - safe(m_new))  # e^(m_i - m_new)
            beta = np.exp(m_tilde_ij - safe(m_new))  # e^(m~_ij - m_new)
            l_new = alpha * l_i + beta * l_tilde_ij
            O_i = ((l_i * alpha)[..., None] * O_i  # A1:L12  (B, H, br, d)
                   + beta[..., None] * (P_tilde_ij @ V_j)) / l_new[..., None]
            # END EXERCISE
            O[:, :, r] = O_i; mem.write("O", O_i.size)
            l[:, :, r] = l_new; m[:, :, r] = m_new  # A1:L13
            mem.write("l", l_new.size); mem.write("m", m_new.size)
            mem.drop("Q_i", "O_i", "l_i", "m_i", "S_ij", "m~_ij", "l~_ij", "m_new", "l_new")
            yield Step("A1", i, j, seq, "A1:L12", {
                "S_ij": S_ij, "m_tilde_ij": m_tilde_ij, "P_tilde_ij": P_tilde_ij,
                "l_tilde_ij": l_tilde_ij, "m_new": m_new, "l_new": l_new, "O_i": O_i.copy()},
                blocks=(Nq, Nk, Br, Bc))
            seq += 1
        mem.drop("K_j", "V_j")
    lse = safe(m) + np.log(l)  # (B, H, Nq); L = m + log(l), what the backward needs
    return O, lse, l, m  # A1:L16


def fa1_forward(q, k, v, causal=False, softmax_scale=None, Br=None, Bc=None, sram=None,
                counter=None):
    """Algorithm 1 run to the end. Returns (o (B, H, Nq, d), lse (B, H, Nq))."""
    o, lse, _, _ = run(fa1_forward_steps(q, k, v, causal, softmax_scale, Br, Bc, sram, counter))
    return o, lse


def fa1_backward_steps(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                       sram=None, counter=None):
    """B1:L1-L16 as a generator of Steps; returns (dq, dk, dv).

    B1:L7 reads l_i and m_i; we pass the logsumexp L_i = m_i + log(l_i) instead, and
    diag(l_i)^-1 exp(S_ij - m_i) = exp(S_ij - L_i) is the same P_ij with one vector, not two.
    """
    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale)
    B, H, Nq, Nk, d = dims.B, dims.H, dims.Nq, dims.Nk, dims.d
    Br, Bc = resolve_blocks(d, Br, Bc, sram)
    mem = counter_for(counter, q.dtype)
    tau = q.dtype.type(dims.scale)
    lse = lse.astype(q.dtype, copy=False)

    dQ = np.zeros((B, H, Nq, d), q.dtype)  # B1:L1  in HBM
    dK = np.zeros((B, H, Nk, d), q.dtype)
    dV = np.zeros((B, H, Nk, d), q.dtype)
    mem.write("dQ", dQ.size); mem.write("dK", dK.size); mem.write("dV", dV.size)

    Tr, Tc = ceil_div(Nq, Br), ceil_div(Nk, Bc)
    seq = 0
    for j in range(Tc):  # B1:L2
        c = rows(j, Bc, Nk)
        bc = c.stop - c.start
        K_j, V_j = k[:, :, c], v[:, :, c]  # B1:L3  (B, H, bc, d)
        mem.read("K", K_j.size); mem.read("V", V_j.size)
        dK_tilde_j = np.zeros_like(K_j)  # dK~_j (B, H, bc, d), on chip
        dV_tilde_j = np.zeros_like(V_j)  # dV~_j (B, H, bc, d), on chip
        for name in ("K_j", "V_j", "dK~_j", "dV~_j"):
            mem.hold(name, bc * d)
        for i in range(Tr):  # B1:L4
            r = rows(i, Br, Nq)
            br = r.stop - r.start
            Q_i, O_i, dO_i = q[:, :, r], o[:, :, r], do[:, :, r]  # B1:L5  (B, H, br, d)
            dQ_i, L_i = dQ[:, :, r].copy(), lse[:, :, r]
            for name, x in (("Q", Q_i), ("O", O_i), ("dO", dO_i), ("dQ", dQ_i), ("L", L_i)):
                mem.read(name, x.size)
            for name, n in (("Q_i", br * d), ("O_i", br * d), ("dO_i", br * d), ("dQ_i", br * d),
                            ("L_i", br), ("S_ij", br * bc), ("dP_ij", br * bc), ("D_i", br)):
                mem.hold(name, n)

            # BEGIN EXERCISE 1.2: B1:L6-L13. Recompute S_ij and P_ij from L_i, then dV~_j, dP_ij,
            # D_i, dS_ij, the new dQ_i and dK~_j. Remember tau in dQ_i and dK~_j.
            S_ij = scores(Q_i, K_j, tau, dims.causal, r, c)  # B1:L6  (B, H, br, bc)
            P_ij = np.exp(S_ij - L_i[..., None])  # B1:L7
            dV_tilde_j = dV_tilde_j + np.swapaxes(P_ij, -1, -2) @ dO_i  # B1:L8  (B, H, bc, d)
            dP_ij = dO_i @ np.swapaxes(V_j, -1, -2)  # B1:L9  (B, H, br, bc)
            D_i = (dO_i * O_i).sum(axis=-1)  # B1:L10  (B, H, br)
            dS_ij = P_ij * (dP_ij - D_i[..., None])  # B1:L11  (B, H, br, bc)
            dQ_i = dQ_i + tau * (dS_ij @ K_j)  # B1:L12  (B, H, br, d)
            dK_tilde_j = dK_tilde_j + tau * (  # B1:L13  (B, H, bc, d)
                np.swapaxes(dS_ij, -1, -2) @ Q_i)
            # END EXERCISE
            dQ[:, :, r] = dQ_i; mem.write("dQ", dQ_i.size)
            mem.drop("Q_i", "O_i", "dO_i", "dQ_i", "L_i", "S_ij", "dP_ij", "D_i")
            yield Step("B1", i, j, seq, "B1:L13", {
                "S_ij": S_ij, "P_ij": P_ij, "dP_ij": dP_ij, "D_i": D_i, "dS_ij": dS_ij,
                "dQ_i": dQ_i.copy(), "dK_tilde_j": dK_tilde_j.copy(),
                "dV_tilde_j": dV_tilde_j.copy()},
                blocks=(Nq, Nk, Br, Bc))
            seq += 1
        dK[:, :, c] = dK_tilde_j; dV[:, :, c] = dV_tilde_j  # B1:L15
        mem.write("dK", dK_tilde_j.size); mem.write("dV", dV_tilde_j.size)
        mem.drop("K_j", "V_j", "dK~_j", "dV~_j")
    return dQ, dK, dV


def fa1_backward(do, q, k, v, o, lse, causal=False, softmax_scale=None, Br=None, Bc=None,
                 sram=None, counter=None):
    """Algorithm 4 of the paper (B1) without dropout, run to the end. Returns (dq, dk, dv)."""
    return run(fa1_backward_steps(do, q, k, v, o, lse, causal, softmax_scale, Br, Bc, sram,
                                  counter))
