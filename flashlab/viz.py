"""Every picture flashlab draws (matplotlib, imported only when a picture is asked for)."""
from __future__ import annotations

import math


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install -e '.[plot]'") from e
    return plt


def bench_plot(report, path: str) -> None:
    """Speedup over naive and peak extra memory against N, one line per kernel and pass
    (in the spirit of the seed poster's Figures 3 and 4)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {}
    for r in report.rows:
        series.setdefault((r.kernel, r.direction), []).append(r)
    for (kernel, direction), rows in sorted(series.items()):
        style = "-" if direction == "forward" else "--"
        pts = [(r.N, r.speedup) for r in rows if not math.isnan(r.speedup)]
        if pts and kernel != "naive":
            ax1.plot(*zip(*pts), style, marker="o", label=f"{kernel} {direction}")
        mem = [(r.N, r.extra_mb) for r in rows if not math.isnan(r.extra_mb)]
        if mem:
            ax2.plot(*zip(*mem), style, marker="o", label=f"{kernel} {direction}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.grid(True, alpha=0.3)
    ax1.axhline(1.0, color="gray", lw=0.8)
    ax1.set_ylabel("speedup over naive (same run)")
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
