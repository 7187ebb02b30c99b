"""Every picture flashlab draws (matplotlib, imported only when a picture is asked for).

The tutorials (tutorials/*.py) call these functions and carry no drawing code of their own.
Each `draw_*` function returns a matplotlib Figure, already closed, so a notebook cell that ends
with the call shows it exactly once, and a script can `fig.savefig(...)` it.

HBM panels show whole tensors (rows of one head); the tiles that sit in SRAM during the step are
outlined: query-side tiles (Q_i, O_i, l_i, m_i, dO_i, dQ_i) in orange, key-side tiles (K_j, V_j,
dK_j, dV_j) in blue. Each outline carries a gid "sram:<tile>" so tests can find it. Tile indices
i, j count from 0, as in the code and in the traces ("step (i=0, j=1)").
"""
from __future__ import annotations

import math
import sys

import numpy as np

Q_SIDE = "tab:orange"  # tiles indexed by i (query rows)
K_SIDE = "tab:blue"  # tiles indexed by j (key rows)


def _in_ipython() -> bool:
    ip = sys.modules.get("IPython")
    return bool(ip is not None and getattr(ip, "get_ipython", lambda: None)() is not None)


def _pyplot():
    try:
        import matplotlib

        if not _in_ipython():  # scripts and the CLI draw to files; notebooks keep their backend
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from .install import install_hint
        raise RuntimeError(f"plots need matplotlib: {install_hint('plot')}") from e
    return plt


def _done(plt, fig):
    """Close (so a notebook does not show it twice) and return the figure."""
    plt.close(fig)
    return fig


def show(*figs) -> None:
    """Display figures from inside a block of a notebook cell (a no-op outside Jupyter, where a
    script such as scripts/run_tutorials.py runs the same code)."""
    if _in_kernel():
        from IPython.display import display

        for fig in figs:
            display(fig)


def bench_plot(report, path: str) -> None:
    """Speedup over the report's baseline (naive; torch-flash for 16-bit runs) and peak extra
    memory against N, one line per kernel and pass (in the spirit of the seed poster's Figures
    3 and 4)."""
    plt = _pyplot()
    base = getattr(report, "header", {}).get("baseline", "naive")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {}
    for r in report.rows:
        series.setdefault((r.kernel, r.direction), []).append(r)
    for (kernel, direction), rows in sorted(series.items()):
        style = "-" if direction == "forward" else "--"
        pts = [(r.N, r.speedup) for r in rows if not math.isnan(r.speedup)]
        if pts and kernel != base:
            ax1.plot(*zip(*pts), style, marker="o", label=f"{kernel} {direction}")
        mem = [(r.N, r.extra_mb) for r in rows if not math.isnan(r.extra_mb)]
        if mem:
            ax2.plot(*zip(*mem), style, marker="o", label=f"{kernel} {direction}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.grid(True, alpha=0.3)
    ax1.axhline(1.0, color="gray", lw=0.8)
    ax1.set_ylabel(f"speedup over {base} (same run)")
    ax2.set_yscale("log")
    ax2.set_ylabel("peak extra device memory (MB)")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured here", ha="center", transform=ax.transAxes)
    h = report.header
    fig.suptitle(f"flashlab bench on {h.get('gpu', h.get('device', '?'))}, {h.get('date', '')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- notebook 1

def traffic_plot(seqs, d: int = 64, sram=None, itemsize: int = 4, measured=None, srams=None):
    """HBM traffic and extra memory of standard attention (A0), Algorithm 1 (A1) and the
    FlashAttention-2 order (F2), per head, from the closed forms in flashlab.hbm.

    Left: traffic against N at an SRAM of `sram` floats (default hbm.DEFAULT_SRAM), each
    algorithm with its own tiles (A1:L1 for A1, hbm.f2_block_sizes for F2). All three grow as
    N^2 at a fixed M, so the lines are parallel on these axes; middle: how many times fewer bytes
    than A0 each flash variant moves at the longest N, against M (`srams`, default 2k..128k
    floats): about M / 3d^2 for A1 and M / 2d^2 for F2, below 1 where flash moves more. Right:
    the extra memory each needs beyond Q, K, V and O.

    measured: optional {"A0": [(N, elements), ...], ...} counted by a MemoryCounter (at the
    same M); drawn as circles on the closed-form lines they should sit on.
    """
    from . import hbm

    plt = _pyplot()
    M = hbm.DEFAULT_SRAM if sram is None else sram
    Br, Bc = hbm.block_sizes(d, M)
    fBr, fBc = hbm.f2_block_sizes(d, M)
    seqs = sorted(seqs)
    mb = itemsize / 1e6

    def totals(N, m):
        return (hbm.a0_traffic(1, 1, N, N, d).total,
                hbm.a1_traffic(1, 1, N, N, d, *hbm.block_sizes(d, m)).total,
                hbm.f2_traffic(1, 1, N, N, d, *hbm.f2_block_sizes(d, m)).total)

    per_n = [totals(N, M) for N in seqs]
    styles = {  # colour, line style, marker: told apart even where two lines lie close
        "A0": ("tab:red", "-", "s"), "A1": ("tab:purple", "--", "^"),
        "F2": ("tab:green", "-.", "D")}
    names = {"A0": "A0 standard attention", "A1": f"A1 Algorithm 1 ({Br} x {Bc} tiles)",
             "F2": f"F2 FlashAttention-2 order ({fBr} x {fBc} tiles)"}
    fig, (ax1, axr, ax2) = plt.subplots(1, 3, figsize=(16, 4.6))
    for k, key in enumerate(("A0", "A1", "F2")):
        color, ls, marker = styles[key]
        ax1.plot(seqs, [t[k] * mb for t in per_n], ls, color=color, marker=marker, ms=5, lw=1.6,
                 label=names[key])
    ax1.plot(seqs, [hbm.theta_standard(N, d) * mb for N in seqs], ":", color="tab:red", lw=1,
             label="N d + N^2 (bound, standard)")
    ax1.plot(seqs, [hbm.theta_flash(N, d, M) * mb for N in seqs], ":", color="tab:purple", lw=1,
             label="N^2 d^2 / M (bound, flash)")
    for key, pts in (measured or {}).items():
        color = styles.get(str(key)[:2], ("k",))[0]
        if pts:
            xs, ys = zip(*pts)
            ax1.plot(xs, [y * mb for y in ys], "o", color=color, mfc="none", ms=9, mew=1.4,
                     label=f"{key} counted by MemoryCounter")
    N = seqs[-1]
    a0, a1, f2 = per_n[-1]
    ax1.text(0.97, 0.04, f"at N = {N}: A0 moves {a0 / a1:.1f}x the bytes of A1,\n"
             f"{a0 / f2:.1f}x those of F2", transform=ax1.transAxes, ha="right", va="bottom",
             fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax1.set_title(f"HBM traffic per head (d = {d}, M = {M} floats)", fontsize=10)
    ax1.set_ylabel(f"MB read + written (fp{8 * itemsize})")

    ms = sorted({int(m) for m in srams or [2048 * 2 ** (k / 2) for k in range(11)]}
                | {M, hbm.DEFAULT_SRAM})
    ratio = [totals(N, m) for m in ms]
    for k, key in ((1, "A1"), (2, "F2")):
        color, ls, marker = styles[key]
        axr.plot(ms, [t[0] / t[k] for t in ratio], ls, color=color, marker=marker, ms=4,
                 label=f"A0 / {key}")
    axr.plot(ms, [hbm.theta_standard(N, d) / hbm.theta_flash(N, d, m) for m in ms], ":",
             color="gray", lw=1, label="ratio of the bounds, about M / d^2")
    axr.axhline(1.0, color="black", lw=0.8, label="1: flash moves as many bytes as A0")
    marks = {M: "left panel"}
    marks.setdefault(hbm.DEFAULT_SRAM, "the references' default")
    for m, why in marks.items():
        axr.axvline(m, color="gray", lw=0.8, ls="--")
        axr.annotate(f"M = {m}\n({why})", (m, 1.0), xytext=(4, -28), textcoords="offset points",
                     fontsize=7, color="dimgray")
    axr.set_xscale("log", base=2)
    axr.set_yscale("log")
    axr.set_xlabel("SRAM size M (floats)")
    axr.set_ylabel("A0's bytes / flash's bytes")
    axr.set_title(f"how many times fewer bytes than A0 (N = {N}, d = {d})", fontsize=10)
    axr.grid(True, alpha=0.3)
    axr.legend(fontsize=7, loc="upper left")

    extra = {
        "A0: S and P (2 N^2)": [2 * n * n * mb for n in seqs],
        "A1: l and m (2 N)": [2 * n * mb for n in seqs],
        "F2: L (N)": [n * mb for n in seqs],
    }
    for (name, ys), key in zip(extra.items(), ("A0", "A1", "F2")):
        color, ls, marker = styles[key]
        ax2.plot(seqs, ys, ls, color=color, marker=marker, ms=5, label=name)
    ax2.set_title("extra HBM memory per head, beyond Q, K, V, O", fontsize=10)
    ax2.set_ylabel("MB")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _done(plt, fig)


# ----------------------------------------------------------------------------- notebook 2

def draw_online_softmax(x, block: int, ms, ls):
    """One row of scores x processed `block` entries at a time (the online softmax).

    ms, ls: the running max m and sum l after each block (what A1:L11 keeps per row).
    Top: the scores by block and the running max. Middle: the running sum l after each block,
    with the rescale factor e^(m_old - m_new) applied when the max grew. Bottom: softmax from the
    final m and l beside the exact softmax.
    """
    plt = _pyplot()
    x = np.asarray(x, dtype=np.float64)
    ms, ls = np.asarray(ms, dtype=np.float64), np.asarray(ls, dtype=np.float64)
    n, nb = x.size, len(ms)
    if nb != math.ceil(n / block) or len(ls) != nb:
        raise ValueError(f"ms and ls need one value per block: {math.ceil(n / block)} blocks of "
                         f"{block} in {n} scores, got {len(ms)} and {len(ls)}")
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8.2), sharex=False)
    palette = ["#8fb8de", "#f4b183"]
    idx = np.arange(n)
    for t in range(nb):
        sl = slice(t * block, min((t + 1) * block, n))
        ax1.bar(idx[sl], x[sl], color=palette[t % 2], edgecolor="k", lw=0.4,
                label="scores x (block by block)" if t == 0 else None)
        ax1.hlines(ms[t], sl.start - 0.45, sl.stop - 0.55, color="tab:red", lw=2.2,
                   label="running max m after the block" if t == 0 else None)
        if t > 0:
            ax1.axvline(sl.start - 0.5, color="gray", ls="--", lw=0.8)
            if ms[t] > ms[t - 1]:
                ax1.annotate(f"m grows: old terms\nx e^(m_old - m_new) = "
                             f"{math.exp(ms[t - 1] - ms[t]):.2g}",
                             (sl.start - 0.5, ms[t]), xytext=(4, -4), textcoords="offset points",
                             fontsize=7, color="tab:red", va="top")
    ax1.set_title("one row of S, read a block at a time (A1:L10-L11)", fontsize=10)
    ax1.set_ylabel("score")
    lo, hi = float(x.min()), float(x.max())
    ax1.set_ylim(min(lo, 0) - 0.15 * (hi - lo), hi + 0.25 * (hi - lo))
    ax1.legend(fontsize=7, loc="best")

    ends = [min((t + 1) * block, n) - 1 for t in range(nb)]
    centers = [(t * block + e) / 2 for t, e in enumerate(ends)]
    prefix = [float(np.exp(x[: e + 1] - ms[t]).sum()) for t, e in enumerate(ends)]
    ax2.bar(centers, ls, width=block * 0.8, color="tab:gray", alpha=0.6,
            label="l after the block (online)")
    ax2.plot(centers, prefix, "k.", ms=9,
             label="sum of e^(x - m) over all the scores seen so far (recomputed)")
    exact = float(np.exp(x - x.max()).sum())
    ax2.axhline(exact, color="tab:green", ls="--", lw=1, label="exact l = sum e^(x - max x)")
    for t in range(1, nb):
        if ms[t] > ms[t - 1]:
            ax2.annotate(f"old l x {math.exp(ms[t - 1] - ms[t]):.2g}", (centers[t], ls[t]),
                         xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7)
    ax2.set_title("running sum l: old terms rescaled when m grows, new terms added", fontsize=10)
    ax2.set_ylabel("l")
    ax2.set_ylim(0, max(max(ls), exact) * 1.45)
    ax2.legend(fontsize=7, loc="upper center", ncol=3)

    p_online = np.exp(x - ms[-1]) / ls[-1]
    p_exact = np.exp(x - x.max()) / exact
    ax3.bar(idx, p_exact, color="tab:green", alpha=0.5, label="exact softmax(x)")
    ax3.plot(idx, p_online, "k_", ms=12, mew=2, label="e^(x - m) / l from the final m, l")
    err = float(np.max(np.abs(p_online - p_exact)))
    ax3.set_title(f"the same probabilities: max difference {err:.1e}", fontsize=10)
    ax3.set_xlabel("key index")
    ax3.set_ylabel("probability")
    ax3.legend(fontsize=7)
    for ax in (ax1, ax2, ax3):
        ax.set_xlim(-0.7, n - 0.3)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _done(plt, fig)


# ----------------------------------------------------------------------------- tile pictures

def _rows(t, B, N):
    return slice(t * B, min((t + 1) * B, N))


def _head(x, b, h):
    x = np.asarray(x)
    return x[b, h] if x.ndim >= 3 else x


def _outline(ax, gid, start, n, width, color, label=None, dashed=False):
    """A rectangle over rows start..start+n-1 of a matrix drawn with imshow (cell centres on ints).
    dashed: a tile about to be written (the fill is left out)."""
    from matplotlib.patches import Rectangle

    rect = Rectangle((-0.5, start - 0.5), width, n, fill=True, facecolor=color,
                     alpha=0.0 if dashed else 0.18, edgecolor=color, lw=2.5, gid=f"sram:{gid}",
                     zorder=3)
    ax.add_patch(rect)
    edge = Rectangle((-0.5, start - 0.5), width, n, fill=False, edgecolor=color, lw=2.5, zorder=4,
                     ls="--" if dashed else "-")
    ax.add_patch(edge)
    if label:
        ax.text(width - 0.5, start + n / 2 - 0.5, " " + label, color=color, fontsize=8,
                fontweight="bold", va="center", ha="left", zorder=5, clip_on=False)
    return rect


def _block_lines(ax, N, B, cols):
    for t in range(1, math.ceil(N / B)):
        ax.axhline(t * B - 0.5, color="k", lw=0.9)


def _matrix(ax, M, title, B, cmap="RdBu_r", vmax=None, ylabel=None):
    """A (rows, cols) matrix as in HBM, block boundaries every B rows."""
    M = np.asarray(M, dtype=np.float64)
    finite = M[np.isfinite(M)]
    v = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    ax.imshow(np.where(np.isfinite(M), M, np.nan), cmap=cmap, vmin=-v, vmax=v, aspect="auto",
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(range(0, M.shape[0], B))
    ax.tick_params(labelsize=7)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    _block_lines(ax, M.shape[0], B, M.shape[1])


def _vector_cells(ax, vec, title, B, fmt="{:.2g}"):
    """A length-N vector (l, m, L, D) as one column of cells with their values written in."""
    vec = np.asarray(vec, dtype=np.float64)
    shown = np.where(np.isfinite(vec), vec, np.nan)
    finite = vec[np.isfinite(vec)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ax.imshow(shown[:, None], cmap="Greys", vmin=lo - 1e-9, vmax=hi + (hi - lo) + 1e-9,
              aspect="auto", interpolation="nearest")
    if vec.size <= 40:
        for r, val in enumerate(vec):
            text = "-inf" if np.isneginf(val) else fmt.format(val)
            ax.text(0, r, text, ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    _block_lines(ax, vec.size, B, 1)


def _tile(ax, T, title, cmap="viridis", annotate=True, vmin=None, vmax=None, fmt="{:.2f}"):
    """An on-chip tile (rows, cols); -inf (masked) cells drawn hatched and written '-inf'."""
    from matplotlib.colors import to_rgba

    import matplotlib

    T = np.asarray(T, dtype=np.float64)
    finite = np.isfinite(T)
    data = np.where(finite, T, np.nan)
    cm = matplotlib.colormaps[cmap].with_extremes(bad=to_rgba("lightgray"))
    ax.imshow(data, cmap=cm, aspect="auto", interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(T.shape[1]))
    ax.set_yticks(range(T.shape[0]))
    ax.tick_params(labelsize=6, length=0)
    if annotate and T.size <= 96:
        vals = data[finite]
        lo = vmin if vmin is not None else (float(vals.min()) if vals.size else 0.0)
        hi = vmax if vmax is not None else (float(vals.max()) if vals.size else 1.0)
        for (r, c), val in np.ndenumerate(T):
            if np.isneginf(val):
                ax.text(c, r, "-inf", ha="center", va="center", fontsize=5.5, color="dimgray")
                continue
            x = (val - lo) / ((hi - lo) or 1.0)  # where the value sits on the colour map
            dark = x < 0.45 if cmap == "viridis" else (x < 0.2 or x > 0.8)
            ax.text(c, r, fmt.format(val), ha="center", va="center", fontsize=5.5,
                    color="white" if dark else "black")


def _lines_panel(ax, algorithm, ran, headline):
    """The algorithm's lines (from flashlab.algorithms.LINES), the ones this step ran in bold."""
    from .algorithms import LINES

    labels = [lab for lab in LINES if lab.startswith(algorithm + ":")]
    ax.axis("off")
    ax.text(0, 1.0, headline, fontsize=9, fontweight="bold", va="top", transform=ax.transAxes)
    y = 0.88
    step = 0.88 / max(1, len(labels))
    for lab in labels:
        on = lab in ran
        text = f"{'>' if on else ' '} {lab:<7} {LINES[lab]}"
        ax.text(0, y, text, fontsize=7.2,
                family="monospace", va="top", transform=ax.transAxes,
                fontweight="bold" if on else "normal", color="black" if on else "gray")
        y -= step


def _traffic_panel(ax, traffic, names):
    """Elements read from and written to HBM so far, per tensor (a Traffic or MemoryCounter)."""
    ax.set_title("HBM traffic so far (elements)", fontsize=9)  # a total is added below
    if traffic is None:
        ax.text(0.5, 0.5, "pass traffic= to see it", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)
        ax.set_xticks([]); ax.set_yticks([])
        return
    reads, writes = dict(traffic.reads), dict(traffic.writes)
    names = [n for n in names if reads.get(n) or writes.get(n)] + sorted(
        (set(reads) | set(writes)) - set(names))
    y = np.arange(len(names))
    r = [reads.get(n, 0) for n in names]
    w = [writes.get(n, 0) for n in names]
    ax.barh(y - 0.2, r, height=0.4, color="tab:cyan", label="read")
    ax.barh(y + 0.2, w, height=0.4, color="tab:pink", label="written")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=6)
    total = sum(r) + sum(w)
    title = f"HBM traffic so far: {total:,} elements"
    peak = getattr(traffic, "sram_peak", 0)
    if peak:  # elements one thread block held on chip at once (hbm.MemoryCounter.hold)
        size = getattr(traffic, "itemsize", 0)
        title += f"\npeak SRAM so far: {peak:,} elements" + (f" ({peak * size:,} bytes)"
                                                              if size else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


# ----------------------------------------------------------------------------- notebook 3

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
    mt = _head(step.m_tilde_ij, b, h)
    mn = _head(step.m_new, b, h)
    axR.plot(np.where(np.isfinite(m_old), m_old, np.nan), rows_, "o", mfc="none", ms=8,
             color="gray", label="m_i read (A1:L8)")
    axR.plot(mt, rows_, "x", color=K_SIDE, ms=7, label="m~_ij, this tile's max")
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


def step_slider(n: int, draw_fn, frames=None, widgets=None, description="step"):
    """Move through n steps: an ipywidgets slider that redraws draw_fn(t) where widgets work,
    else still pictures of `frames` (default: the first, a middle and the last step).

    widgets: None picks ipywidgets when it imports and a Jupyter kernel is running; False
    forces the still pictures; True forces the slider.
    Returns the widget (a notebook shows it), or a Frames list of figures that shows itself.
    """
    if n < 1:
        raise ValueError(f"step_slider needs at least one step, got n={n}")
    w = None
    if widgets is not False:
        try:
            import ipywidgets as w
        except ImportError:
            if widgets:
                raise
            w = None
        if w is not None and widgets is None and not _in_kernel():
            w = None
    if w is None:
        return step_frames(n, draw_fn, frames)
    from IPython.display import display

    slider = w.IntSlider(value=0, min=0, max=n - 1, step=1, description=description,
                         continuous_update=False)
    out = w.Output()

    def show(_change=None):
        fig = draw_fn(slider.value)
        with out:
            out.clear_output(wait=True)
            display(fig)

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, out])


class Frames(list):
    """Figures that a notebook shows one after another (the still-picture fallback)."""

    def _ipython_display_(self):
        from IPython.display import display

        for fig in self:
            display(fig)


def step_frames(n: int, draw_fn, frames=None) -> Frames:
    """draw_fn(t) for each t in `frames` (default: first, middle, last), as still pictures."""
    picks = sorted(set(frames)) if frames is not None else sorted({0, (n - 1) // 2, n - 1})
    bad = [t for t in picks if not 0 <= t < n]
    if bad:
        raise ValueError(f"frames {bad} are out of range for {n} steps (0..{n - 1})")
    return Frames(draw_fn(t) for t in picks)


def _in_kernel() -> bool:
    if not _in_ipython():
        return False
    ip = sys.modules["IPython"].get_ipython()
    return getattr(ip, "kernel", None) is not None


# ----------------------------------------------------------------------------- notebook 4

def draw_trace_diff(expected, actual, divergence=None, b: int = 0, h: int = 0):
    """Where two traces (flashlab.trace.Trace) differ: one Tr x Tc grid per traced quantity,
    coloured by the largest |actual - expected| in each tile, the first divergence outlined."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    from .trace import SPEC

    plt = _pyplot()
    specs = SPEC[expected.algorithm]
    fig, axes = plt.subplots(1, len(specs), figsize=(4.0 * len(specs), 3.6), squeeze=False)
    for ax, (name, _, line, _, _) in zip(axes[0], specs):
        grid = np.full((expected.Tr, expected.Tc), np.nan)
        for i in range(expected.Tr):
            for j in range(expected.Tc):
                if expected.seq[b, h, i, j] < 0 and actual.seq[b, h, i, j] < 0:
                    continue
                n = expected.valid_rows(name, i, j)
                e = expected.values[name][b, h, i, j, :n]
                a = actual.values[name][b, h, i, j, :n]
                with np.errstate(invalid="ignore"):
                    diff = np.abs(a - e)
                diff = np.where(np.isnan(e) & np.isnan(a), 0.0, diff)
                diff = np.where(np.isnan(diff), np.inf, diff)
                grid[i, j] = float(diff.max()) if diff.size else 0.0
        shown = np.where(np.isfinite(grid), np.maximum(grid, 1e-17), np.nan)
        ax.imshow(shown, cmap="Reds", norm=LogNorm(vmin=1e-17, vmax=max(1.0, np.nanmax(shown))),
                  aspect="auto", interpolation="nearest")
        for (i, j), val in np.ndenumerate(grid):
            text = "skipped" if np.isnan(val) else f"{val:.0e}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if val > 1e-6 else "black")
        if divergence is not None and divergence.quantity in (name, "step") and \
                (divergence.b, divergence.h) == (b, h):
            ax.add_patch(Rectangle((divergence.j - 0.5, divergence.i - 0.5), 1, 1, fill=False,
                                   edgecolor="k", lw=3, gid="first-divergence"))
        ax.set_title(f"{name} ({line}): max |actual - expected|", fontsize=9)
        ax.set_xlabel("j (key block)")
        ax.set_ylabel("i (query block)")
        ax.set_xticks(range(expected.Tc))
        ax.set_yticks(range(expected.Tr))
    where = str(divergence).splitlines()[0] if divergence is not None else "no divergence"
    fig.suptitle(f"{actual.label} against {expected.label}: {where}", fontsize=9)
    fig.tight_layout()
    return _done(plt, fig)


# ----------------------------------------------------------------------------- notebook 5

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


# ----------------------------------------------------------------------------- notebook 6

_ORDER_TITLES = {
    "A1": "A1: j outer, i inner; one thread block per head walks every tile",
    "F2": "F2: one thread block per row block i (in parallel), j inner",
    "B1": "B1: j outer, i inner; one thread block per head",
    "G2": "G2: one thread block per column block j (in parallel), i inner",
}


def draw_loop_order(runs: dict):
    """The order in which each algorithm visits the (i, j) tiles: one panel per run.

    runs: {title: list of Steps} (fa1_*_steps, fa2_*_steps). A1/B1 tiles carry their place in
    the one loop nest; F2/G2 tiles carry `block:seq`, the thread block (i for F2, j for G2) and
    the step within it. Tiles a run never visits (causal block skipping, F2:L3, G2:L3) are
    hatched; visited tiles that the causal mask hides entirely are gray ("all masked").
    """
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    import matplotlib

    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.4), squeeze=False)
    cmap = matplotlib.colormaps["tab20"]
    for ax, (title, steps) in zip(axes[0], runs.items()):
        if not steps:
            raise ValueError(f"run {title!r} has no steps")
        Nq, Nk, Br, Bc = steps[0].blocks
        Tr, Tc = math.ceil(Nq / Br), math.ceil(Nk / Bc)
        alg = steps[0].algorithm
        parallel_i, parallel_j = alg == "F2", alg == "G2"
        ax.set_xlim(-0.5, Tc - 0.5)
        ax.set_ylim(Tr - 0.5, -0.5)
        seen = set()
        for n, s in enumerate(steps):
            seen.add((s.i, s.j))
            owner = s.i if parallel_i else s.j if parallel_j else 0
            color = cmap(owner % 20) if (parallel_i or parallel_j) else "#cfe2f3"
            label = f"{owner}:{s.seq}" if (parallel_i or parallel_j) else str(n)
            if "S_ij" in s.tiles and np.isneginf(s.tiles["S_ij"]).all():
                color, label = "#e6e6e6", label + "\nall masked"  # visited, contributes nothing
            ax.add_patch(Rectangle((s.j - 0.5, s.i - 0.5), 1, 1, facecolor=color,
                                   edgecolor="k", lw=0.6, gid="visited"))
            ax.text(s.j, s.i, label, ha="center", va="center", fontsize=7)
        for i in range(Tr):
            for j in range(Tc):
                if (i, j) not in seen:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white",
                                           edgecolor="gray", hatch="///", lw=0.4, gid="skipped"))
        if parallel_i or parallel_j:
            note = "label block:step; colour = thread block"
        else:
            note = "label = position in the loop nest"
        ax.set_title(f"{title}\n{_ORDER_TITLES.get(alg, alg)}\n({note})", fontsize=8)
        ax.set_xlabel("j (K/V block)")
        ax.set_ylabel("i (Q block)")
        ax.set_xticks(range(Tc))
        ax.set_yticks(range(Tr))
        ax.set_aspect("equal")
    fig.tight_layout()
    return _done(plt, fig)


# ----------------------------------------------------------------------------- notebook 4

class SourceTable:
    """Kernel and reference code side by side, one row per algorithm line. Shows as an HTML
    table in a notebook and as plain text anywhere else (str())."""

    def __init__(self, rows, headers):
        self.rows = list(rows)
        self.headers = list(headers)

    def __str__(self) -> str:
        out = []
        for label, paper, kern, ref in self.rows:
            out.append(f"=== {label}  {paper}")
            for name, code in ((self.headers[2], kern), (self.headers[3], ref)):
                out.append(f"--- {name}")
                out.append(code or "      (not tagged)")
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in self.headers)
        body = []
        for label, paper, kern, ref in self.rows:
            cells = [f"<td style='vertical-align:top'><b>{escape(label)}</b></td>",
                     f"<td style='vertical-align:top;max-width:16em'>{escape(paper)}</td>"]
            for code in (kern, ref):
                cells.append("<td style='vertical-align:top;text-align:left'>"
                             f"<pre style='margin:0;font-size:11px'>{escape(code)}</pre></td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def source_table(kernel: str = "fa1", algorithm: str = "A1") -> SourceTable:
    """kernels/<kernel>.cu beside flashlab/reference/<kernel>.py, line by line of `algorithm`
    (the code each file tags with that line's label, e.g. `// A1:L12` and `# A1:L12`)."""
    from pathlib import Path

    from .algorithms import side_by_side
    from .cuda_kernel_ops import kernel_dir

    cu = kernel_dir() / f"{kernel}.cu"
    py = Path(__file__).resolve().parent / "reference" / f"{kernel}.py"
    for path in (cu, py):
        if not path.is_file():
            raise ValueError(f"no source {path} for kernel {kernel!r}")
    rows = side_by_side(cu.read_text(), py.read_text(), algorithm)
    if not rows:
        raise ValueError(f"neither {cu.name} nor {py.name} tags any line of {algorithm!r}")
    return SourceTable(rows, ["line", "paper", f"kernels/{cu.name}", f"flashlab/reference/{py.name}"])


# ----------------------------------------------------------------------------- notebook 7

def loss_plot(losses, title: str = "training loss"):
    """A loss against the step, log scale when it spans more than a factor of 10."""
    plt = _pyplot()
    losses = [float(x) for x in losses]
    if not losses:
        raise ValueError("loss_plot needs at least one loss value")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(len(losses)), losses, "o-", color="tab:blue")
    if min(losses) > 0 and max(losses) / min(losses) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _done(plt, fig)
