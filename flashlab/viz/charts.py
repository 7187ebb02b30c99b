"""Charts of numbers: benchmark speedups and memory (the CLI's `flashlab bench --plot`), the
HBM traffic of standard attention against FlashAttention (notebook 1), the order the algorithms
visit the (i, j) tiles in (notebook 6) and a training loss (notebook 7)."""
from __future__ import annotations

import math

import numpy as np

from ._mpl import _done, _pyplot


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
    from .. import hbm

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
