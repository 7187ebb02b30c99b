"""Where two traces (flashlab.trace.Trace) differ, tile by tile (notebook 4)."""
from __future__ import annotations

import numpy as np

from ._mpl import _done, _pyplot


def draw_trace_diff(expected, actual, divergence=None, b: int = 0, h: int = 0):
    """Where two traces (flashlab.trace.Trace) differ: one Tr x Tc grid per traced quantity,
    coloured by the largest |actual - expected| in each tile, the first divergence outlined."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    from ..trace import SPEC

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
