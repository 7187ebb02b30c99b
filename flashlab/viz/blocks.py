"""A variant's mask, entry by entry and tile by tile: what the kernels skip (notebook 8)."""
from __future__ import annotations

import numpy as np

from ._mpl import _done, _pyplot

_FLAGS = ("skipped: no visible entry", "masked per element", "all visible")


def draw_block_mask(visible: np.ndarray, tiles: np.ndarray, Br: int, Bc: int, title: str = ""):
    """visible: (Nq, Nk) bool, one head's mask; tiles: (Tr, Tc) flags as the kernels read them
    (flashlab.mods.kernel.KernelVariant.tiles: 0 skipped, 1 masked per element, 2 all visible).
    Left the entries, right the tiles; the tile grid is drawn over both."""
    from matplotlib.colors import ListedColormap

    plt = _pyplot()
    Nq, Nk = visible.shape
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.4))
    ax0.imshow(visible, cmap="Greys", vmin=0, vmax=1.4, aspect="auto", interpolation="nearest",
               extent=(0, Nk, Nq, 0))
    ax0.set_title("entries: visible (dark) or hidden", fontsize=9)
    cmap = ListedColormap(["#f2f2f2", "#f5b041", "#2e86c1"])
    ax1.imshow(tiles, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest",
               extent=(0, tiles.shape[1] * Bc, tiles.shape[0] * Br, 0))
    for (i, j), f in np.ndenumerate(tiles):
        ax1.text((j + 0.5) * Bc, (i + 0.5) * Br, str(int(f)), ha="center", va="center",
                 fontsize=7)
    ax1.set_title("tiles: " + ", ".join(f"{k} {name}" for k, name in enumerate(_FLAGS)),
                  fontsize=8)
    for ax in (ax0, ax1):
        for x in range(0, Nk + 1, Bc):
            ax.axvline(x, color="k", lw=0.4, gid="tile-grid")
        for y in range(0, Nq + 1, Br):
            ax.axhline(y, color="k", lw=0.4, gid="tile-grid")
        ax.set_xlabel("key (kv_idx)")
        ax.set_ylabel("query (q_idx)")
    fig.suptitle(title or f"block mask, tiles {Br} x {Bc}", fontsize=10)
    fig.tight_layout()
    return _done(plt, fig)
