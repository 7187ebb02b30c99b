"""Ring attention's schedule as a picture: at each step, which rank computes which (query chunk,
key chunk) pair of the sequence (notebook 9)."""
from __future__ import annotations

import numpy as np

from ._mpl import _done, _pyplot


def draw_ring(size: int, causal: bool):
    """One panel per step of the ring: the (query chunk, key chunk) grid of the whole sequence,
    each pair coloured by the rank that computes it at that step (white: not at this step, grey:
    hidden by the causal mask), "d" on a causal diagonal pair. Over all panels every visible
    pair is coloured exactly once (flashlab.ring.schedule)."""
    from matplotlib.colors import ListedColormap

    from ..ring.schedule import DIAG, SKIP, schedule

    plt = _pyplot()
    chunks = 2 * size if causal else size
    steps = schedule(size, causal)
    colours = ["#ffffff", "#d9d9d9"] + [plt.get_cmap("tab10")(r % 10) for r in range(size)]
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(1, size, figsize=(2.6 * size + 0.6, 3.4), squeeze=False)
    for s, (ax, ranks) in enumerate(zip(axes[0], steps)):
        grid = np.zeros((chunks, chunks), int)
        if causal:
            grid[np.triu_indices(chunks, 1)] = 1  # hidden by the mask
        for rank, (_, pairs) in enumerate(ranks):
            for a, b, kind in pairs:
                if kind == SKIP:
                    continue
                grid[a, b] = 2 + rank
                if kind == DIAG:
                    ax.text(b, a, "d", ha="center", va="center", fontsize=7)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(colours) - 1, interpolation="nearest")
        ax.set_xticks(range(chunks))
        ax.set_yticks(range(chunks))
        ax.tick_params(labelsize=6)
        ax.set_title(f"step {s}", fontsize=9)
        ax.set_xlabel("key chunk", fontsize=8)
        if s == 0:
            ax.set_ylabel("query chunk", fontsize=8)
        ax.set_gid(f"ring-step-{s}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[2 + r]) for r in range(size)]
    fig.legend(handles, [f"rank {r}" for r in range(size)], loc="lower center", ncol=size,
               fontsize=8, frameon=False)
    split = "zigzag split: rank r holds chunks r and 2P-1-r" if causal else "contiguous split"
    fig.suptitle(f"ring attention over {size} ranks, {split}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _done(plt, fig)
