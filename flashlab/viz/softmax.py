"""The online softmax, one row of scores read a block at a time (notebook 2)."""
from __future__ import annotations

import math

import numpy as np

from ._mpl import _done, _pyplot


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
