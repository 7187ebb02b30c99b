"""The panels the step figures are built from: a tensor as it stands in HBM with block boundaries,
the tiles held in SRAM outlined, an on-chip tile with its values written in, a vector of row
statistics, the algorithm's lines with the ones a step ran in bold, and HBM traffic so far.

Outlines carry a gid "sram:<tile>" so tests can find them."""
from __future__ import annotations

import math

import numpy as np


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
    from ..algorithms import LINES

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
