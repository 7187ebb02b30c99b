"""Which tiles a mask leaves anything visible in: the block mask a kernel walks (F2:L3, G2:L3 for
any mask, not only causal), computed once per mask, shape and tile size, and cached.

    bm = block_mask([mods.document(doc), mods.causal()], B, H, Nq, Nk, Br, Bc)
    bm.visit[b, h, i]      # the key tiles j query tile i must visit, in order
    bm.full[b, h, i, j]    # True: every entry visible, the kernel skips the per-element mask

A tile is empty (skipped), full (no element masked: no mask evaluation needed) or partial
(masked per element). Keys past Nk and queries past Nq are not entries: a ragged last tile is
full when all its real entries are visible. The mask is evaluated one tile row at a time, so the
memory is Br x Nk, not Nq x Nk; a mask that reads neither b nor h is evaluated once and shared
by every head (the arrays then have size 1 along B and H and broadcast).
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from . import Mod, mask_mod


def _reads(mods: tuple, name: str) -> bool:
    todo = [m.tree for m in mods]
    while todo:
        n = todo.pop()
        if n.op == "param" and n.value == name:
            return True
        todo.extend(n.args)
    return False


@dataclass(frozen=True)
class BlockMask:
    """any_visible, full: (B or 1, H or 1, Tr, Tc) bool; Br, Bc: the tile sizes."""

    any_visible: np.ndarray
    full: np.ndarray
    Br: int
    Bc: int

    @property
    def partial(self) -> np.ndarray:
        return self.any_visible & ~self.full

    def visit(self, b: int, h: int, i: int) -> np.ndarray:
        """The key tiles query tile i of head (b, h) visits, ascending."""
        bb = min(b, self.any_visible.shape[0] - 1)
        hh = min(h, self.any_visible.shape[1] - 1)
        return np.flatnonzero(self.any_visible[bb, hh, i])

    def density(self) -> float:
        """The share of tiles visited: the work left after skipping."""
        return float(self.any_visible.mean())


def block_mask(masks, B: int, H: int, Nq: int, Nk: int, Br: int, Bc: int) -> BlockMask:
    """The BlockMask of every mask in `masks` together (a key is visible where all say so)."""
    mods = tuple(mask_mod(m) for m in masks)
    for name, v in (("B", B), ("H", H), ("Nq", Nq), ("Nk", Nk), ("Br", Br), ("Bc", Bc)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"block_mask: {name} must be an int >= 1, got {v!r}")
    key = (tuple(m.key for m in mods), int(B), int(H), int(Nq), int(Nk), int(Br), int(Bc))
    hit = _cache.get(key)
    if hit is None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        hit = _cache[key] = _compute(mods, *key[1:])
    return hit


_cache: dict = {}  # (mask digests, sizes, tiles) -> BlockMask
_CACHE_MAX = 64


def _compute(mods: tuple[Mod, ...], B, H, Nq, Nk, Br, Bc) -> BlockMask:
    Bn = B if _reads(mods, "b") else 1
    Hn = H if _reads(mods, "h") else 1
    Tr, Tc = -(-Nq // Br), -(-Nk // Bc)
    any_visible = np.zeros((Bn, Hn, Tr, Tc), bool)
    full = np.zeros((Bn, Hn, Tr, Tc), bool)
    b = np.arange(Bn)[:, None, None, None]
    h = np.arange(Hn)[None, :, None, None]
    kv = np.arange(Nk)[None, None, None, :]
    pad = Tc * Bc - Nk
    for i in range(Tr):
        q = np.arange(i * Br, min((i + 1) * Br, Nq))[None, None, :, None]
        vis = np.ones((Bn, Hn, q.shape[2], Nk), bool)
        for m in mods:
            vis &= m.mask(b, h, q, kv)
        tiles = np.pad(vis, ((0, 0), (0, 0), (0, 0), (0, pad)), constant_values=True)
        real = np.pad(np.ones(Nk, bool), (0, pad))
        tiles = tiles.reshape(Bn, Hn, q.shape[2], Tc, Bc)
        real = real.reshape(Tc, Bc)
        any_visible[:, :, i] = (tiles & real).any(axis=(2, 4))
        full[:, :, i] = tiles.all(axis=(2, 4))
    return BlockMask(any_visible, full & any_visible, Br, Bc)
