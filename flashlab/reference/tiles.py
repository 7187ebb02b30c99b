"""What every step-through shares: the step record, tile slicing, the causal mask, block sizes.

A step-through is a generator: it yields one `Step` per (i, j) tile update and `return`s its
outputs, so `run(gen)` gives the outputs and `flashlab.trace.record(gen)` gives the trace too.
All tiles carry the batch and head axes in front: a tile of Q_i is (B, H, Br, d), and one step
updates that tile for every (batch, head) at once, exactly as one thread block per head would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checks import check_block
from ..hbm import (DEFAULT_SRAM, MemoryCounter, block_sizes, causal_visits,  # noqa: F401
                   f2_block_sizes)


@dataclass
class Step:
    """One tile update (i, j): the algorithm line it ends on and every tile the lines name.

    `seq` is the step's position in its thread block's loop (the order a kernel runs it);
    tiles are NumPy arrays shaped (B, H, rows[, cols]) and are copies, safe to keep.
    """

    algorithm: str
    i: int
    j: int
    seq: int
    line: str
    tiles: dict = field(default_factory=dict)
    blocks: tuple = ()  # (Nq, Nk, Br, Bc): enough to lay the step out in a trace

    def __getattr__(self, name):
        tiles = self.__dict__.get("tiles", {})
        if name in tiles:
            return tiles[name]
        raise AttributeError(f"step {self.algorithm} (i={self.i}, j={self.j}) has no tile {name!r}; "
                             f"it has {sorted(tiles)}")

    def __getitem__(self, name):
        return self.tiles[name]


def run(steps):
    """Run a step-through generator to the end and return what it returns (its outputs)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def resolve_blocks(d: int, Br, Bc, sram, rule=block_sizes) -> tuple[int, int]:
    """Br and Bc as given, or `rule`'s default from the SRAM size M (in floats): A1:L1
    (hbm.block_sizes) unless the caller passes another (F2: hbm.f2_block_sizes)."""
    dBr, dBc = rule(d, check_block("sram", DEFAULT_SRAM if sram is None else sram))
    Br = dBr if Br is None else check_block("Br", Br)
    Bc = dBc if Bc is None else check_block("Bc", Bc)
    return Br, Bc


def rows(t: int, B: int, N: int) -> slice:
    """Rows of tile t when N rows are cut into tiles of B (the last may be ragged)."""
    return slice(t * B, min((t + 1) * B, N))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def causal_mask(r: slice, c: slice) -> np.ndarray:
    """True where the entry is masked: key c after query r (top-left aligned, torch is_causal)."""
    qi = np.arange(r.start, r.stop)[:, None]
    kj = np.arange(c.start, c.stop)[None, :]
    return kj > qi


def scores(Q_i, K_j, tau, causal, r: slice, c: slice):
    """S_ij = tau Q_i K_j^T with the causal mask applied (-inf where masked)."""
    S = tau * (Q_i @ np.swapaxes(K_j, -1, -2))  # (B, H, br, bc)
    if causal:
        S = np.where(causal_mask(r, c), S.dtype.type(-np.inf), S)
    return S


def safe(m):
    """A row max of -inf (no visible key yet) is used as 0, so exp(-inf - m) gives 0, not NaN."""
    return np.where(np.isneginf(m), m.dtype.type(0), m)


def counter_for(counter, dtype) -> MemoryCounter:
    if counter is None:
        return MemoryCounter(itemsize=np.dtype(dtype).itemsize)
    counter.itemsize = np.dtype(dtype).itemsize
    return counter
