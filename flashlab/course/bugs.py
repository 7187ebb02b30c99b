"""The planted bugs: course content, one exact text replacement each in a kernel source.

`flashlab trace --inject-bug NAME` and the bug hunt (assignment exercises 3.N, where each bug
goes by a neutral name, mystery-N) run a kernel with one of these planted. `patched(name,
kernel)` is our source of `kernel` with the bug's replacement made: a flashlab.launch.sources
Source, which the launcher compiles like any other (it knows nothing of bugs).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..launch.sources import Source, ours


@dataclass(frozen=True)
class Bug:
    """A planted bug: one exact text replacement in a kernel source, and the line it breaks."""

    name: str
    kernel: str
    direction: str  # "forward" or "backward"
    old: str
    new: str
    line: str
    question: str  # what the planted bug teaches (shown with --inject-bug NAME)
    hunt: str = ""  # the neutral name it goes by in the bug hunt (mystery-N)
    race: bool = False  # a data race: the trace may miss it; compute-sanitizer racecheck will not


BUGS = {b.name: b for b in [
    Bug("no-rescale", "fa1", "forward",
        "(keep[r] * O_i[r * p + x] + add[r] * pv) / l_new[r]",
        "(l_i[r] * O_i[r * p + x] + pv) / l_new[r]", "A1:L12",
        "O_i is updated without the factors e^(m_i - m_new) and e^(m~_ij - m_new). "
        "At which step does the output first go wrong, and why not at j = 0?"),
    Bug("causal-off-by-one", "fa1", "forward",
        "S_ij[r * Bc + c] = masked(causal, i * Br + r, j * Bc + c)",
        "S_ij[r * Bc + c] = masked(causal, i * Br + r + 1, j * Bc + c)",
        "A1:L9",
        "The mask lets query r see key r + 1. Which step and which row show it first?"),
    Bug("fa2-no-rescale", "fa2", "forward",
        "for (int xb = 0; xb < XN; ++xb) o[a][xb] *= alpha;      // F2:L7",
        "// (rescale of O~ left out)", "F2:L7",
        "O~ is not multiplied by e^(m - m_new) when the row max grows. Where does it show?"),
    Bug("fa2-causal-off-by-one", "fa2", "forward",
        "s[a][b] = (c >= Nk || masked(causal, r, c))",
        "s[a][b] = (c >= Nk || masked(causal, r + 1, c))", "F2:L5",
        "The mask lets query r see key r + 1. Which step shows it first?"),
    Bug("dk-no-scale", "fa1", "backward",
        "dK_j[c * p + x] += tau * acc;", "dK_j[c * p + x] += acc;", "B1:L13",
        "dK~_j accumulates dS^T Q_i without the softmax scale tau. Which quantity diverges?"),
    Bug("wrong-l-update", "fa1", "forward",
        "l_new[r] = alpha * l_i[r] + beta * l_tilde_ij;", "l_new[r] = l_i[r] + beta * l_tilde_ij;",
        "A1:L11",
        "l_new keeps the old sum l_i without the factor e^(m_i - m_new). Why is step j = 0 right?"),
    Bug("missing-sync", "fa1", "forward",
        "__syncthreads();  // S_ij is complete before the row statistics read it",
        "/* barrier removed */", "A1:L10",
        "The barrier between A1:L9 and A1:L10 is gone: a row's statistics may read scores another "
        "warp has not written yet. Does the first divergence stay at one step from run to run?",
        race=True),
]}
# The bug hunt hands these out under neutral names, so the name gives nothing away.
for _n, _name in enumerate(["no-rescale", "wrong-l-update", "causal-off-by-one", "missing-sync",
                            "fa2-no-rescale", "dk-no-scale"], start=1):
    BUGS[_name] = Bug(**{**BUGS[_name].__dict__, "hunt": f"mystery-{_n}"})
HUNT = {b.hunt: b for b in BUGS.values() if b.hunt}


def find(name: str) -> Bug:
    """The bug called `name`, or going by `name` in the bug hunt (mystery-N)."""
    b = BUGS.get(name) or HUNT.get(name)
    if b is None:
        raise ValueError(f"bug must be one of {sorted(BUGS)}, got {name!r}")
    return b


_patched: dict = {}  # (name, kernel, base Source) -> patched Source


def patched(bug_name: str, kernel: str, base: Source | None = None) -> Source:
    """Our source of `kernel` (or `base`, e.g. a user's file) with bug `bug_name` planted: the
    bug's one exact text replacement. Cached while the base source is unchanged."""
    b = find(bug_name)
    if b.kernel != kernel:
        raise ValueError(f"bug {bug_name!r} is planted in kernel {b.kernel!r}, not {kernel!r}")
    base = ours(kernel) if base is None else base
    key = (bug_name, kernel, base)
    hit = _patched.get(key)
    if hit is None:
        if base.text.count(b.old) != 1:
            raise RuntimeError(f"bug {bug_name!r}: the text it replaces is no longer in "
                               f"{base.name} exactly once; update flashlab/course/bugs.py BUGS")
        hit = Source(base.name, base.text.replace(b.old, b.new), base.variant,
                     origin=f"{base.origin or base.name} with planted bug {bug_name!r}")
        if len(_patched) > 64:  # edited sources leave stale entries behind
            _patched.clear()
        _patched[key] = hit
    return hit
