"""The one place that words a `pip install` hint for an optional extra (cuda13, plot, nvrtc, ...).

From a source checkout (the package directory sits beside flashlab's pyproject.toml: a clone, or
an editable `pip install -e .`) the extra is installed from that checkout; from a wheel or sdist
it comes from the package index.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

_NAME = re.compile(r"""^\s*name\s*=\s*["']flashlab["']""", re.M)


def checkout_root() -> Path | None:
    """The source checkout flashlab runs from (the directory holding its pyproject.toml), or
    None when it runs from an installed wheel or sdist."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return root if _NAME.search(text) else None


def from_source_checkout() -> bool:
    """True when flashlab is imported from a source checkout (a clone or an editable install)."""
    return checkout_root() is not None


def install_hint(extra: str) -> str:
    """The command that installs flashlab's optional `extra`, e.g. install_hint("cuda13"):

    from a checkout  pip install -e '.[cuda13]'   (the checkout's path instead of '.' when the
                                                   working directory is elsewhere)
    otherwise        pip install 'flashlab[cuda13]'
    """
    if from_source_checkout():
        root = checkout_root()
        try:
            here = root is None or Path.cwd().resolve() == root
        except OSError:  # the working directory was removed
            here = False
        return f"pip install -e {shlex.quote(('.' if here else str(root)) + f'[{extra}]')}"
    return f"pip install {shlex.quote(f'flashlab[{extra}]')}"
