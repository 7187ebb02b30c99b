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
    ran: np.ndarray | None = None  # (B, H) bool: the heads whose thread block ran it (None: all)

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


class TileVariant:
    """An attention variant in a step-through: the masks (window, mask_mod) and the score_mod of
    flash_attention's keywords, applied to one tile's S_ij as the kernels apply them
    (kernels/tc_mods.cuh, fa2.cu's FL_MODS): S = score_mod(tau q k^T) where visible, -inf where
    hidden. The causal flag stays the step-through's own (scores()).

        tv = TileVariant.of(window=(64, 0))       # None without a variant
        S_ij = tv.scores(Q_i, K_j, tau, causal, r, c)
        tv.hidden(r, c)                           # no head sees any entry: the kernels skip it
    """

    def __init__(self, masks, score):
        self.masks, self.score = masks, score

    @classmethod
    def of(cls, window=None, mask_mod=None, score_mod=None):
        """From flash_attention's keywords, as the kernels read them (KernelVariant.of)."""
        from ..mods.kernel import KernelVariant

        kv = KernelVariant.of(window, mask_mod, score_mod)
        if kv.mask is None and kv.score is None:
            return None
        return cls([kv.mask] if kv.mask is not None else [], kv.score)

    def index(self, shape, r: slice, c: slice):
        """The mods' (b, h, q_idx, kv_idx) index arrays of tile (r, c) of (B, H, ...) arrays."""
        B, H = shape[:2]
        return (np.arange(B)[:, None, None, None], np.arange(H)[None, :, None, None],
                np.arange(r.start, r.stop)[None, None, :, None],
                np.arange(c.start, c.stop)[None, None, None, :])

    def visible(self, shape, r: slice, c: slice) -> np.ndarray:
        """(B or 1, H or 1, br, bc) True where every mask lets the entry be seen."""
        vis = np.ones((1, 1, r.stop - r.start, c.stop - c.start), bool)
        idx = self.index(shape, r, c)
        for m in self.masks:
            vis = vis & m.mask(*idx)
        return vis

    def hidden(self, shape, r: slice, c: slice) -> bool:
        return not self.visible(shape, r, c).any()

    def ran(self, shape, r: slice, c: slice) -> np.ndarray:
        """(B, H) True for the heads that see an entry of the tile: the kernels skip the tile
        for the others (their block mask is per head where the mask reads b or h)."""
        return np.broadcast_to(self.visible(shape, r, c).any(axis=(2, 3)), shape[:2])

    def scores(self, Q_i, K_j, tau, causal, r: slice, c: slice):
        """scores() with the variant: score_mod on the scaled scores, hidden entries -inf."""
        S = scores(Q_i, K_j, tau, causal, r, c)
        if self.score is not None:
            with np.errstate(all="ignore"):  # score_mod of the causal -inf entries is dropped
                S = np.where(np.isneginf(S), S, self.score.score(S, *self.index(S.shape, r, c)))
        return np.where(self.visible(S.shape, r, c), S, S.dtype.type(-np.inf)).astype(S.dtype)

    def score_grad(self, Q_i, K_j, tau, causal, r: slice, c: slice):
        """d score_mod / d score at each visible entry's unmodified score tau q.k (G2:L6
        multiplies dS by it), 0 where the entry is hidden; 1 everywhere without a score_mod."""
        S0 = scores(Q_i, K_j, tau, causal, r, c)
        if self.score is None:
            return S0.dtype.type(1)
        with np.errstate(all="ignore"):  # the causal -inf entries' derivative is dropped
            g = self.score.grad(S0, *self.index(S0.shape, r, c))
        seen = self.visible(S0.shape, r, c) & ~np.isneginf(S0)
        return np.where(seen, g, 0).astype(S0.dtype)


def full_heads(dims, *xs):
    """k, v (or dK, dV) with each key/value head repeated for its group of query heads (GQA:
    query head h reads key/value head h // (H / H_kv)); as given without GQA."""
    G = dims.H // dims.kv_heads
    return xs if G == 1 else tuple(np.repeat(x, G, axis=1) for x in xs)


def safe(m):
    """A row max of -inf (no visible key yet) is used as 0, so exp(-inf - m) gives 0, not NaN."""
    return np.where(np.isneginf(m), m.dtype.type(0), m)


def counter_for(counter, dtype) -> MemoryCounter:
    if counter is None:
        return MemoryCounter(itemsize=np.dtype(dtype).itemsize)
    counter.itemsize = np.dtype(dtype).itemsize
    return counter
