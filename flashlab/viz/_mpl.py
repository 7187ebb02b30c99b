"""What every flashlab.viz module shares: matplotlib imported only when a picture is asked for,
closing a finished figure, showing figures from inside a notebook cell, and the two tile colours.
"""
from __future__ import annotations

import sys

Q_SIDE = "tab:orange"  # tiles indexed by i (query rows)
K_SIDE = "tab:blue"  # tiles indexed by j (key rows)


def _in_ipython() -> bool:
    ip = sys.modules.get("IPython")
    return bool(ip is not None and getattr(ip, "get_ipython", lambda: None)() is not None)


def _in_kernel() -> bool:
    if not _in_ipython():
        return False
    ip = sys.modules["IPython"].get_ipython()
    return getattr(ip, "kernel", None) is not None


def _pyplot():
    try:
        import matplotlib

        if not _in_ipython():  # scripts and the CLI draw to files; notebooks keep their backend
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from ..install import install_hint
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
