"""One step of a tiled algorithm, HBM above and SRAM below: Algorithm 1's forward step
(draw_a1_step, notebook 3) and the backward pass B1's step (draw_backward_step, notebook 5).

HBM panels show whole tensors (rows of one head); the tiles that sit in SRAM during the step are
outlined: query-side tiles (Q_i, O_i, l_i, m_i, dO_i, dQ_i) in orange, key-side tiles (K_j, V_j,
dK_j, dV_j) in blue. Tile indices i, j count from 0, as in the code and in the traces
("step (i=0, j=1)")."""
from __future__ import annotations

import math

import numpy as np

from ._mpl import K_SIDE, Q_SIDE, _done, _pyplot
from .tiles import (_head, _lines_panel, _matrix, _outline, _rows, _tile, _traffic_panel,
                    _vector_cells)


def _a1_state(steps, t, Nq, d, b, h):
    """O, l, m as they stand in HBM after steps[:t+1] (A1:L2 starts them at 0, 0, -inf), and
    l_i, m_i as step t read them (A1:L8)."""
    O = np.zeros((Nq, d))
    l = np.zeros(Nq)
    m = np.full(Nq, -np.inf)
    step = steps[t]
    Br = step.blocks[2]
    r = _rows(step.i, Br, Nq)
    l_old, m_old = np.zeros(r.stop - r.start), np.full(r.stop - r.start, -np.inf)
    for s in steps[: t + 1]:
        rs = _rows(s.i, Br, Nq)
        if s is step:
            l_old, m_old = l[rs].copy(), m[rs].copy()
        O[rs] = _head(s.O_i, b, h)
        l[rs] = _head(s.l_new, b, h)
        m[rs] = _head(s.m_new, b, h)
    return O, l, m, l_old, m_old


def draw_a1_step(steps, t: int, q, k, v, traffic=None, b: int = 0, h: int = 0):
    """Step t of Algorithm 1 (a list of fa1_forward_steps Steps): what is in HBM, what is in SRAM.

    Top row, HBM: Q, K, V, O, l and m of head (b, h), with the tiles this step holds in SRAM
    outlined (Q_i, O_i, l_i, m_i orange; K_j, V_j blue). O, l and m are drawn as they stand in
    HBM after this step's A1:L12-L13 writes.
    Bottom row, SRAM: S_ij (A1:L9) and P~_ij (A1:L10), the row statistics m_i -> m_new and
    l_i -> l_new (A1:L11), HBM traffic so far, and the lines of A1 this step ran.
    traffic: a Traffic or MemoryCounter snapshot taken right after this step, or a list of them
    (one per step, indexed by t).
    """
    plt = _pyplot()
    step = steps[t]
    if step.algorithm != "A1":
        raise ValueError(f"draw_a1_step draws Algorithm 1 steps; step {t} is {step.algorithm} "
                         "(use draw_backward_step for B1)")
    Nq, Nk, Br, Bc = step.blocks
    i, j = step.i, step.j
    Q, K, V = _head(q, b, h), _head(k, b, h), _head(v, b, h)
    d = Q.shape[-1]
    if isinstance(traffic, (list, tuple)):
        traffic = traffic[t]
    O, l, m, l_old, m_old = _a1_state(steps, t, Nq, d, b, h)
    ri, cj = _rows(i, Br, Nq), _rows(j, Bc, Nk)
    br, bc = ri.stop - ri.start, cj.stop - cj.start
    Tr, Tc = math.ceil(Nq / Br), math.ceil(Nk / Bc)

    fig = plt.figure(figsize=(14, 12.5))
    gs = fig.add_gridspec(3, 1, height_ratios=[1.0, 0.85, 0.62], hspace=0.42)
    top = gs[0].subgridspec(1, 6, width_ratios=[d, d, d, d, 1.4, 1.4], wspace=0.5)
    vmax = float(max(np.abs(Q).max(), np.abs(K).max(), np.abs(V).max(), 1e-9))
    axQ, axK, axV, axO = (fig.add_subplot(top[0, c]) for c in range(4))
    axl, axm = fig.add_subplot(top[0, 4]), fig.add_subplot(top[0, 5])
    _matrix(axQ, Q, f"Q ({Nq} x {d})", Br, vmax=vmax, ylabel="query row")
    _matrix(axK, K, f"K ({Nk} x {d})", Bc, vmax=vmax, ylabel="key row")
    _matrix(axV, V, f"V ({Nk} x {d})", Bc, vmax=vmax)
    _matrix(axO, O, "O after this step", Br, ylabel="query row")
    _vector_cells(axl, l, "l", Br)
    _vector_cells(axm, m, "m", Br)
    _outline(axQ, "Q_i", ri.start, br, d, Q_SIDE, f"Q_{i}")
    _outline(axK, "K_j", cj.start, bc, d, K_SIDE, f"K_{j}")
    _outline(axV, "V_j", cj.start, bc, d, K_SIDE, f"V_{j}")
    _outline(axO, "O_i", ri.start, br, d, Q_SIDE, f"O_{i}")
    _outline(axl, "l_i", ri.start, br, 1, Q_SIDE)
    _outline(axm, "m_i", ri.start, br, 1, Q_SIDE)

    mid = gs[1].subgridspec(1, 4, width_ratios=[max(bc, 3), max(bc, 3), 3.0, 3.0], wspace=0.3)
    axS, axP, axR, axl2 = (fig.add_subplot(mid[0, c]) for c in range(4))
    S = _head(step.S_ij, b, h)
    smax = float(np.max(np.abs(S[np.isfinite(S)]), initial=0.0)) or 1.0
    _tile(axS, S, f"S_ij = tau Q_{i} K_{j}^T  ({br} x {bc}, A1:L9)", cmap="RdBu_r",
          vmin=-smax, vmax=smax)
    _tile(axP, _head(step.P_tilde_ij, b, h),
          "P~_ij = exp(S_ij - m~_ij)  (A1:L10; 1 at each row's max)", cmap="viridis",
          vmin=0.0, vmax=1.0)
    for ax in (axS, axP):
        ax.set_ylabel(f"rows of Q_{i}", fontsize=7)
        ax.set_xlabel(f"rows of K_{j}", fontsize=7)

    rows_ = np.arange(br)
    m_tilde_ij = _head(step.m_tilde_ij, b, h)
    mn = _head(step.m_new, b, h)
    axR.plot(np.where(np.isfinite(m_old), m_old, np.nan), rows_, "o", mfc="none", ms=8,
             color="gray", label="m_i read (A1:L8)")
    axR.plot(m_tilde_ij, rows_, "x", color=K_SIDE, ms=7, label="m~_ij, this tile's max")
    axR.plot(mn, rows_, "|", color="tab:red", ms=16, mew=2.5, label="m_new = max of the two")
    if not np.isfinite(m_old).any():
        axR.text(0.03, 0.97, "m_i = -inf: the first tile\nof this row block", fontsize=7,
                 transform=axR.transAxes, color="gray", va="top")
    axR.set_title("row max m (A1:L11)", fontsize=9)
    ln = _head(step.l_new, b, h)
    axl2.barh(rows_ - 0.2, l_old, height=0.4, color="gray", label="l_i read (A1:L8)")
    axl2.barh(rows_ + 0.2, ln, height=0.4, color="tab:red", label="l_new (A1:L11)")
    axl2.set_title("row sum l (A1:L11)", fontsize=9)
    for ax in (axR, axl2):
        ax.set_ylim(br - 0.5, -0.5)
        ax.set_yticks(rows_)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)

    low = gs[2].subgridspec(1, 2, width_ratios=[1.0, 2.6], wspace=0.3)
    axT, axL = fig.add_subplot(low[0, 0]), fig.add_subplot(low[0, 1])
    _traffic_panel(axT, traffic, ["Q", "K", "V", "O", "l", "m"])
    ran = ["A1:L8", "A1:L9", "A1:L10", "A1:L11", "A1:L12", "A1:L13"]
    if i == 0:
        ran = ["A1:L5", "A1:L6", "A1:L7"] + ran
    head = (f"step {t + 1} of {len(steps)}: tile (i={i}, j={j}) of {Tr} x {Tc}; "
            f"bold: the lines this step ran (it ends on {step.line})")
    _lines_panel(axL, "A1", set(ran), head)
    fig.suptitle(
        f"Algorithm 1, step (i={i}, j={j}): K_{j}, V_{j} (blue) and Q_{i}, O_{i}, l_{i}, m_{i} "
        f"(orange) are in SRAM;\nO_{i}, l_{i}, m_{i} go back to HBM at the end of the step "
        f"(A1:L12-L13)", fontsize=11, y=0.995)
    return _finish_step_figure(plt, fig)


def _finish_step_figure(plt, fig):
    """The row labels and margins every step figure (A1, B1) shares."""
    fig.text(0.01, 0.935, "HBM (whole tensors, one head)", fontsize=10, fontweight="bold",
             color="dimgray")
    fig.text(0.01, 0.585, "SRAM (the tiles of this step)", fontsize=10, fontweight="bold",
             color="dimgray")
    fig.subplots_adjust(left=0.05, right=0.965, top=0.9, bottom=0.03)
    return _done(plt, fig)


def _b1_state(steps, t, Nq, Nk, d, b, h, final=False):
    """dQ, dK, dV as they stand in HBM after step t: dQ_i is written at every step (B1:L12),
    dK_j and dV_j once, after the last step of the loop over i (B1:L15), so after step t only
    for the j that ended before it (final=True: after the whole run)."""
    dQ, dK, dV = np.zeros((Nq, d)), np.zeros((Nk, d)), np.zeros((Nk, d))
    Nq_, Nk_, Br, Bc = steps[t].blocks
    Tr = math.ceil(Nq / Br)
    for n, s in enumerate(steps[: t + 1]):
        dQ[_rows(s.i, Br, Nq)] = _head(s.dQ_i, b, h)
        if s.i == Tr - 1 and (n < t or final):
            c = _rows(s.j, Bc, Nk)
            dK[c] = _head(s.dK_tilde_j, b, h)
            dV[c] = _head(s.dV_tilde_j, b, h)
    return dQ, dK, dV


def draw_backward_step(steps, t: int, q, k, v, o, do, traffic=None, b: int = 0, h: int = 0):
    """Step t of the backward pass B1 (a list of fa1_backward_steps Steps).

    Top row, HBM: Q, K, V, O, dO and the gradients dQ, dK, dV of head (b, h) as they stand after
    this step: dQ_i goes back to HBM at every step (B1:L12); dK_j and dV_j stay on chip until the
    loop over i ends (B1:L15). Bottom row, SRAM: P_ij recomputed from S_ij (B1:L6-L7), dP_ij
    (B1:L9), D_i (B1:L10), dS_ij (B1:L11), the on-chip accumulators dK~_j and dV~_j, HBM
    traffic so far and the lines of B1 this step ran.
    """
    plt = _pyplot()
    step = steps[t]
    if step.algorithm != "B1":
        raise ValueError(f"draw_backward_step draws B1 steps (fa1_backward_steps); step {t} is "
                         f"{step.algorithm}")
    Nq, Nk, Br, Bc = step.blocks
    i, j = step.i, step.j
    Q, K, V, O, dO = (_head(x, b, h) for x in (q, k, v, o, do))
    d = Q.shape[-1]
    if isinstance(traffic, (list, tuple)):
        traffic = traffic[t]
    dQ, dK, dV = _b1_state(steps, t, Nq, Nk, d, b, h)
    ri, cj = _rows(i, Br, Nq), _rows(j, Bc, Nk)
    br, bc = ri.stop - ri.start, cj.stop - cj.start
    Tr, Tc = math.ceil(Nq / Br), math.ceil(Nk / Bc)

    fig = plt.figure(figsize=(15, 12.5))
    gs = fig.add_gridspec(3, 1, height_ratios=[1.0, 0.85, 0.62], hspace=0.42)
    top = gs[0].subgridspec(1, 8, wspace=0.45)
    axes = [fig.add_subplot(top[0, c]) for c in range(8)]
    vmax = float(max(np.abs(x).max() for x in (Q, K, V)) or 1.0)
    final = _b1_state(steps, len(steps) - 1, Nq, Nk, d, b, h, final=True)
    gmax = float(max(np.abs(x).max() for x in final) or 1.0)
    written = [("dK_j", cj, K_SIDE)] if i == Tr - 1 else []  # B1:L15 writes them right after
    specs = [("Q", Q, Br, vmax, [("Q_i", ri, Q_SIDE)]),
             ("K", K, Bc, vmax, [("K_j", cj, K_SIDE)]),
             ("V", V, Bc, vmax, [("V_j", cj, K_SIDE)]),
             ("O", O, Br, None, [("O_i", ri, Q_SIDE)]),
             ("dO", dO, Br, None, [("dO_i", ri, Q_SIDE)]),
             ("dQ (B1:L12)", dQ, Br, gmax, [("dQ_i", ri, Q_SIDE)]),
             ("dK (B1:L15)", dK, Bc, gmax, written),
             ("dV (B1:L15)", dV, Bc, gmax, [(n.replace("K", "V"), r, c) for n, r, c in written])]
    for ax, (name, M, B, vm, outlines) in zip(axes, specs):
        _matrix(ax, M, name, B, vmax=vm)
        for gid, rows_, color in outlines:
            label = gid.replace("_i", f"_{i}").replace("_j", f"_{j}")
            if gid in ("dK_j", "dV_j"):
                _outline(ax, gid, rows_.start, rows_.stop - rows_.start, d, color,
                         label + "\nnext", dashed=True)
            else:
                _outline(ax, gid, rows_.start, rows_.stop - rows_.start, d, color, label)
    axes[0].set_ylabel("query row", fontsize=8)
    axes[1].set_ylabel("key row", fontsize=8)

    mid = gs[1].subgridspec(1, 6, width_ratios=[bc, bc, 1.3, bc, 0.75 * d, 0.75 * d],
                            wspace=0.45)
    axP, axdP, axD, axdS, axdK, axdV = (fig.add_subplot(mid[0, c]) for c in range(6))
    _tile(axP, _head(step.P_ij, b, h), "P_ij = exp(S_ij - L_i)\nrecomputed (B1:L6-L7)",
          vmin=0.0, vmax=1.0)
    dP = _head(step.dP_ij, b, h)
    dS = _head(step.dS_ij, b, h)
    pm = float(np.abs(dP).max()) or 1.0
    sm = float(np.abs(dS).max()) or 1.0
    _tile(axdP, dP, "dP_ij = dO_i V_j^T\n(B1:L9)", cmap="RdBu_r", vmin=-pm, vmax=pm)
    _vector_cells(axD, _head(step.D_i, b, h), "D_i\n(B1:L10)", br)
    _tile(axdS, dS, "dS_ij = P_ij * (dP_ij - D_i)\n(B1:L11)", cmap="RdBu_r", vmin=-sm, vmax=sm)
    for ax in (axP, axdP, axdS):
        ax.set_xlabel(f"rows of K_{j}", fontsize=7)
    axP.set_ylabel(f"rows of Q_{i}", fontsize=7)
    for ax, name, T, line in ((axdK, "dK", step.dK_tilde_j, "B1:L13"),
                              (axdV, "dV", step.dV_tilde_j, "B1:L8")):
        T = _head(T, b, h)
        tm = float(np.abs(T).max()) or 1.0
        _tile(ax, T, f"{name}~_{j} on chip\n({line})", cmap="RdBu_r", vmin=-tm, vmax=tm,
              annotate=False)
        ax.set_xticks([])
        ax.set_ylabel(f"rows of K_{j}", fontsize=7)

    low = gs[2].subgridspec(1, 2, width_ratios=[1.0, 2.6], wspace=0.3)
    axT, axL = fig.add_subplot(low[0, 0]), fig.add_subplot(low[0, 1])
    _traffic_panel(axT, traffic, ["Q", "K", "V", "O", "dO", "L", "dQ", "dK", "dV"])
    ran = {f"B1:L{n}" for n in range(5, 14)}
    if i == 0:
        ran |= {"B1:L2", "B1:L3", "B1:L4"}
    head = (f"step {t + 1} of {len(steps)}: tile (i={i}, j={j}) of {Tr} x {Tc}; "
            "bold: the lines this step ran")
    if i == Tr - 1:
        head += f"; next, B1:L15 writes dK_{j}, dV_{j}"
    _lines_panel(axL, "B1", ran, head)
    fig.suptitle(
        f"Backward (B1), step (i={i}, j={j}): K_{j}, V_{j}, dK~_{j}, dV~_{j} (blue) stay in SRAM "
        f"for the whole loop over i;\nQ_{i}, O_{i}, dO_{i}, dQ_{i} (orange) come in, and dQ_{i} "
        f"goes back to HBM at every step (B1:L12)", fontsize=11, y=0.995)
    return _finish_step_figure(plt, fig)
