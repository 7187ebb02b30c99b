"""The Hopper ladder's schedule as a picture: one row per worker (the producer warpgroup, the
backward's dQ writer, the tensor cores, each consumer warpgroup), a bar per step
(flashlab.reference.schedule.timeline, schedule_bwd.backward_timeline)."""
from __future__ import annotations

from ._mpl import K_SIDE, Q_SIDE, _done, _pyplot

_COLOURS = {"K": K_SIDE, "V": "tab:cyan", "S": "tab:green", "PV": "tab:purple",
            "softmax": Q_SIDE, "rescale": "tab:red",
            # the backward's steps
            "KV": K_SIDE, "QdO": "tab:cyan", "SdP": "tab:green", "pds": Q_SIDE,
            "dVdK": "tab:purple", "dQ": "tab:olive", "store": "tab:red", "atomics": "tab:red",
            "add": "tab:gray"}
_ROWS = ("producer", "dQ writer", "tensor cores", "consumer 0", "consumer 1")


def draw_timeline(events, title: str = ""):
    """A bar per event, coloured by its step (forward: K / V loads, S, P V, softmax, rescale;
    backward: loads, S^T and dP^T, P^T and dS^T, dV~ and dK~, dQ's term, its store or atomics,
    the writer's add), each labelled with its tile. Rows carry a gid "timeline:<who>" so tests
    can find them; the legend names the steps that occur."""
    plt = _pyplot()
    rows = sorted({e.who for e in events}, key=_ROWS.index)
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rows) + 1.2))
    for y, who in enumerate(rows):
        mine = [e for e in events if e.who == who]
        bars = ax.broken_barh([(e.start, e.end - e.start) for e in mine], (y - 0.4, 0.8),
                              facecolors=[_COLOURS[e.what.split("_")[0]] for e in mine],
                              edgecolor="white", linewidth=0.5)
        bars.set_gid(f"timeline:{who}")
        for e in mine:
            if e.end - e.start >= 0.3:
                label = e.what.split(" ")[0] + (e.what[-4:] if "(c" in e.what else "")
                ax.text((e.start + e.end) / 2, y, label, ha="center", va="center", fontsize=6,
                        color="white")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (the model's units: one 64 x 128 x 128 product = 1)", fontsize=8)
    kinds = [k for k in _COLOURS if any(e.what.split("_")[0] == k for e in events)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS[k]) for k in kinds]
    ax.legend(handles, kinds, loc="upper center", bbox_to_anchor=(0.5, -0.35),
              ncol=len(kinds), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _done(plt, fig)
