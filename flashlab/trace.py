"""The one trace format: per tile step (i, j), the state that must match between implementations.

A trace is written by a step-through reference (`record`) and, in trace mode, by a CUDA kernel
(the launchers in flashlab.launch fill the same arrays). `compare(expected, actual)` walks the
steps in the order the algorithm runs them and returns the first divergence, or None. Running a
kernel against its step-through is flashlab.kernel_check's (this module imports no launcher).

What each algorithm records after step (i, j) (rows are queries, but keys for dK~ and dV~):

    A1 forward   m_i, l_i (A1:L11, written at L13)   O_i (A1:L12, normalised, written to HBM)
    F2 forward   m_i, l_i (F2:L6)                    O~ (F2:L7, the unnormalised accumulator)
    B1 backward  dV~_j (B1:L8)   dQ_i (B1:L12, the running sum in HBM)   dK~_j (B1:L13)
    G2 backward  dV~ (G2:L6)   dQ_ij (G2:L7, this step's term tau dS K_j)   dK~ (G2:L8)

The names are spelled as docs/ALGORITHMS.md writes them (its section "What the traces record"):
a tilde quantity as the listing of its own algorithm does (B1's dK~_j, G2's dK~), its Step tile
the same name with the word tilde for the ~ (dK_tilde_j, dK_tilde).

G2 records the term, not the sum: on the GPU the thread blocks of other j add into dQ_i in no
fixed order, so only each block's own contribution is reproducible.

Layout: `values[name]` is (B, H, Tr, Tc, R, C) with R = Br (query rows) or Bc (key rows) and
C = d or 1; rows past the end of a ragged tile are NaN and never compared. `seq[b, h, i, j]` is
the step's position in its thread block's loop, -1 where the step never ran (causal skipping).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .algorithms import LINES

#: algorithm -> [(trace name, Step tile name, algorithm line, row axis 'q' or 'k', columns 'd'/1)]
SPEC = {
    "A1": [("m_i", "m_new", "A1:L11", "q", 1), ("l_i", "l_new", "A1:L11", "q", 1),
           ("O_i", "O_i", "A1:L12", "q", "d")],
    "F2": [("m_i", "m_new", "F2:L6", "q", 1), ("l_i", "l_i", "F2:L6", "q", 1),
           ("O~", "O_tilde", "F2:L7", "q", "d")],
    "B1": [("dV~_j", "dV_tilde_j", "B1:L8", "k", "d"), ("dQ_i", "dQ_i", "B1:L12", "q", "d"),
           ("dK~_j", "dK_tilde_j", "B1:L13", "k", "d")],
    "G2": [("dV~", "dV_tilde", "G2:L6", "k", "d"), ("dQ_ij", "dQ_ij", "G2:L7", "q", "d"),
           ("dK~", "dK_tilde", "G2:L8", "k", "d")],
}


def _ceil(a, b):
    return -(-a // b)


@dataclass
class Trace:
    """Per-step state of one run of algorithm `algorithm` ("A1", "F2", "B1" or "G2")."""

    algorithm: str
    label: str  # who ran it: "reference A1", "fa1 forward", ...
    B: int
    H: int
    Nq: int
    Nk: int
    d: int
    Br: int
    Bc: int
    seq: np.ndarray  # (B, H, Tr, Tc) int
    values: dict  # name -> (B, H, Tr, Tc, R, C)
    order: tuple = ()  # the (i, j) steps in the order the reference ran them

    @property
    def Tr(self) -> int:
        return _ceil(self.Nq, self.Br)

    @property
    def Tc(self) -> int:
        return _ceil(self.Nk, self.Bc)

    @classmethod
    def empty(cls, algorithm, label, B, H, Nq, Nk, d, Br, Bc) -> "Trace":
        """A trace with every step unrun and every value NaN (the poison a kernel overwrites)."""
        if algorithm not in SPEC:
            raise ValueError(f"algorithm must be one of {sorted(SPEC)}, got {algorithm!r}")
        Tr, Tc = _ceil(Nq, Br), _ceil(Nk, Bc)
        values = {}
        for name, _, _, axis, cols in SPEC[algorithm]:
            R = Br if axis == "q" else Bc
            C = d if cols == "d" else 1
            values[name] = np.full((B, H, Tr, Tc, R, C), np.nan)
        seq = np.full((B, H, Tr, Tc), -1, dtype=np.int64)
        return cls(algorithm, label, B, H, Nq, Nk, d, Br, Bc, seq, values)

    def valid_rows(self, name: str, i: int, j: int) -> int:
        """How many rows of tile (i, j) of quantity `name` lie inside the matrix."""
        axis = next(s[3] for s in SPEC[self.algorithm] if s[0] == name)
        if axis == "q":
            return min(self.Br, self.Nq - i * self.Br)
        return min(self.Bc, self.Nk - j * self.Bc)

    def step(self, i: int, j: int, b: int = 0, h: int = 0) -> dict:
        """The recorded state after step (i, j) of head (b, h): name -> (rows, cols) array."""
        return {name: v[b, h, i, j, : self.valid_rows(name, i, j)] for name, v in self.values.items()}


def record(steps, label: str | None = None):
    """Run a step-through generator, keeping its trace. Returns (trace, outputs)."""
    collected = []
    while True:
        try:
            collected.append(next(steps))
        except StopIteration as stop:
            outputs = stop.value
            break
    if not collected:
        raise ValueError("the step-through ran no step; nothing to trace")
    first = collected[0]
    algorithm = first.algorithm
    if algorithm not in SPEC:
        raise ValueError(f"{algorithm} steps carry no trace (traced algorithms: {sorted(SPEC)})")
    Nq, Nk, Br, Bc = first.blocks
    B, H = first.tiles[SPEC[algorithm][0][1]].shape[:2]
    d = next(first.tiles[t].shape[-1] for _, t, _, _, c in SPEC[algorithm] if c == "d")
    tr = Trace.empty(algorithm, label or f"reference {algorithm}", B, H, Nq, Nk, d, Br, Bc)
    for s in collected:
        tr.seq[:, :, s.i, s.j] = s.seq if s.ran is None else np.where(s.ran, s.seq, -1)
        for name, tile, _, _, cols in SPEC[algorithm]:
            x = np.asarray(s.tiles[tile], dtype=np.float64)
            if cols == 1:
                x = x[..., None]
            tr.values[name][:, :, s.i, s.j, : x.shape[2], : x.shape[3]] = x
    tr.order = tuple((s.i, s.j) for s in collected)
    return tr, outputs


@dataclass
class Divergence:
    """The first place where `actual` differs from `expected`, in the algorithm's own terms."""

    label: str  # the run that diverged
    reference: str  # the run it was held to
    algorithm: str
    i: int
    j: int
    b: int
    h: int
    quantity: str  # trace name (O_i, O~, dK~_j, ...), or "step": a step ran that should not, or not
    line: str
    row: int = -1  # row inside the tile
    col: int = -1
    index: int = -1  # the query (for *_i) or key (for *_j) that row is
    expected: float = float("nan")
    actual: float = float("nan")
    tolerance: float = 0.0
    detail: str = ""

    def __str__(self) -> str:
        where = f"step (i={self.i}, j={self.j})"
        head = f"{self.label} diverges at {where}, {self.line}"
        if self.quantity == "step":
            return f"{head}: {self.detail}"
        col = f" col {self.col}" if self.col >= 0 else ""
        msg = (f"{head}, {self.quantity} row {self.row}{col}: "
               f"expected {self.expected:.6g}, got {self.actual:.6g}")
        axis = next((s[3] for s in SPEC.get(self.algorithm, ()) if s[0] == self.quantity), "q")
        who = "query" if axis == "q" else "key"
        heads = f", batch {self.b}, head {self.h}"
        msg += (f"\n  (row {self.row} of that tile is {who} {self.index}{heads}; "
                f"allowed difference {self.tolerance:.2g}; "
                f"compared with {self.reference})")
        text = LINES.get(self.line)
        if text:
            msg += f"\n  {self.line} computes: {text}"
        return msg


def _close(e, a, rtol, atol):
    """|a - e| <= atol + rtol |e|, with NaN matching NaN and equal infinities matching."""
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - e) <= atol + rtol * np.abs(e)
    both_nan = np.isnan(e) & np.isnan(a)
    same_inf = np.isinf(e) & (a == e)
    return ok | both_nan | same_inf


def compare(expected: Trace, actual: Trace, rtol: float = 1e-5, atol: float = 1e-8):
    """The first divergence of `actual` from `expected` (step order, then line order), or None."""
    keys = ("algorithm", "B", "H", "Nq", "Nk", "d", "Br", "Bc")
    for key in keys:
        if getattr(expected, key) != getattr(actual, key):
            raise ValueError(
                f"cannot compare traces with different {key}: "
                f"{expected.label} has {getattr(expected, key)}, {actual.label} has {getattr(actual, key)}"
            )
    alg = expected.algorithm
    order = list(expected.order) or [
        (i, j) for i in range(expected.Tr) for j in range(expected.Tc) if (expected.seq[..., i, j] >= 0).any()
    ]
    for i, j in order:
        es, as_ = expected.seq[:, :, i, j], actual.seq[:, :, i, j]
        if (es != as_).any():
            b, h = (int(x) for x in np.argwhere(es != as_)[0])
            if as_[b, h] < 0:
                detail = (f"this step never ran (batch {b}, head {h}); "
                          f"the reference runs it as step {es[b, h]} of its thread block's loop")
            else:
                detail = (f"this step ran as step {as_[b, h]} of its thread block's loop "
                          f"(batch {b}, head {h}); the reference runs it as step {es[b, h]}")
            return Divergence(actual.label, expected.label, alg, i, j, b, h, "step",
                              SPEC[alg][0][2].split(":")[0] + ":loop", detail=detail)
        for name, _, line, axis, cols in SPEC[alg]:
            n = expected.valid_rows(name, i, j)
            e = expected.values[name][:, :, i, j, :n]
            a = actual.values[name][:, :, i, j, :n]
            bad = ~_close(e, a, rtol, atol)
            bad &= (es >= 0)[:, :, None, None]
            if bad.any():
                b, h, r, c = (int(x) for x in np.argwhere(bad)[0])
                start = i * expected.Br if axis == "q" else j * expected.Bc
                ev, av = float(e[b, h, r, c]), float(a[b, h, r, c])
                return Divergence(actual.label, expected.label, alg, i, j, b, h, name, line,
                                  row=r, col=c if cols == "d" else -1, index=start + r,
                                  expected=ev, actual=av, tolerance=atol + rtol * abs(ev))
    # steps the actual run made that the reference skips (e.g. a kernel that ignores F2:L3)
    extra = (expected.seq < 0) & (actual.seq >= 0)
    if extra.any():
        b, h, i, j = (int(x) for x in np.argwhere(extra)[0])
        return Divergence(actual.label, expected.label, alg, i, j, b, h, "step",
                          SPEC[alg][0][2].split(":")[0] + ":loop",
                          detail=f"this step ran (batch {b}, head {h}) but the reference skips it: "
                                 "under the causal mask (or a variant's mask) the tile holds no "
                                 "visible entry")
    return None
