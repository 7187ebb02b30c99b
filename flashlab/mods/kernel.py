"""A variant as a kernel gets it: the mask (window and mask_mod together; causal stays the
kernels' own flag) and the score_mod, their C in front of the kernel source, their closed-over
arrays in one float and one int buffer, and the block mask of the mask for the kernel's tiles.

    kv = KernelVariant.of(window=(128, 0), score_mod=mods.softcap(30.0))
    source = kv.source(ours("fa2"))                 # FL_MODS (FL_SCORE), PRELUDE, fl_mask_mod, fl_score_mod
    tiles = kv.tiles(B, H, Nq, Nk, Br, Bc)          # (tiles_B, tiles_H, Tr, Tc) uint8

kernels/fa2.cu says what fa2_forward and fa2_backward do with them (FL_MODS).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import PRELUDE, Mod, and_masks, mask_mod, score_mod, sliding_window
from .blocks import block_mask
from .emit import INDEX_LIMIT, PRELUDE_FAST, PRELUDE_FAST_LONG

_NO_MASK = ("__device__ __forceinline__ bool fl_mask_mod(int, int, int, int, const float*, "
            "const int*) { return true; }\n")
_NO_SCORE = ("__device__ __forceinline__ float fl_score_mod(float score, int, int, int, int, "
             "const float*, const int*) { return score; }\n"
             "__device__ __forceinline__ float fl_score_mod_grad(float, int, int, int, int, "
             "const float*, const int*) { return 1.0f; }\n")


@dataclass(frozen=True)
class KernelVariant:
    mask: Mod | None
    score: Mod | None

    @classmethod
    def of(cls, window=None, mask_mod_=None, score_mod_=None):
        """From flash_attention's keywords (None where the call has no variant)."""
        masks = ([sliding_window(*window)] if window is not None else []) + \
            ([mask_mod(mask_mod_)] if mask_mod_ is not None else [])
        mask = None if not masks else masks[0] if len(masks) == 1 else and_masks(*masks)
        score = score_mod(score_mod_) if score_mod_ is not None else None
        return cls(mask, score)

    @property
    def key(self) -> tuple:
        return (self.mask.key if self.mask else None, self.score.key if self.score else None)

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(floats, ints): the mask's data then the score's, each at least one element long
        (a kernel argument must point somewhere)."""
        mods = [m for m in (self.mask, self.score) if m is not None]
        f = np.concatenate([m.float_data for m in mods] + [np.zeros(1, np.float32)])
        i = np.concatenate([m.int_data for m in mods] + [np.zeros(1, np.int32)])
        return f.astype(np.float32), i.astype(np.int32)

    def source(self, base, fast_math: bool = False, longest: int = 0):
        """`base` (a launch.sources.Source) with the variant's C in front and FL_MODS defined;
        fast_math: the mods' exp, log and tanh as MUFU instructions, divisions and small index
        conversions cheapened (emit.PRELUDE_FAST and to_c's fast, for the 16-bit kernels);
        longest: the largest of Nq, Nk, which decides whether fl_i2f's add-and-subtract is exact
        (below emit.INDEX_LIMIT) or the conversion stays."""
        from ..launch.sources import Source

        f0 = len(self.mask.float_data) if self.mask else 0
        i0 = len(self.mask.int_data) if self.mask else 0
        prelude = PRELUDE if not fast_math else \
            PRELUDE_FAST if longest <= INDEX_LIMIT else PRELUDE_FAST_LONG
        head = ["#define FL_MODS"] + (["#define FL_SCORE"] if self.score else []) + [
                prelude,
                self.mask.cuda(fast=fast_math) if self.mask else _NO_MASK,
                self.score.cuda(f0, i0, fast=fast_math) if self.score else _NO_SCORE]
        what = ", ".join(m.name for m in (self.mask, self.score) if m is not None)
        return Source(base.name, "\n".join(head) + '\n#line 1 "' + base.name + '"\n' + base.text,
                      base.variant, origin=f"{base.origin or base.name} with {what}")

    def tiles(self, B, H, Nq, Nk, Br, Bc) -> np.ndarray:
        """The block mask as the kernels read it, (B or 1, H or 1, Tr, Tc) bytes: 0 where a tile
        has no visible entry (skipped), 1 where it has some (masked per element), 2 where every
        entry is visible (the mask is not evaluated)."""
        if self.mask is None:
            return np.full((1, 1, -(-Nq // Br), -(-Nk // Bc)), 2, np.uint8)
        bm = block_mask([self.mask], B, H, Nq, Nk, Br, Bc)
        return (bm.any_visible.astype(np.uint8) + bm.full).astype(np.uint8)


def tile_ranges(tiles: np.ndarray, axis: int) -> np.ndarray:
    """Per query block (axis=3: over the key tiles j of each row i) or per key block (axis=2:
    over the query blocks i of each column j), the first and one past the last tile with a
    visible entry: (B or 1, H or 1, T, 2) int32, [0, 0) where there is none. The kernels' loops
    visit that range (tc_mods.cuh)."""
    seen = tiles > 0
    n = seen.shape[axis]
    any_ = seen.any(axis=axis)
    first = np.where(any_, seen.argmax(axis=axis), 0)
    last = np.where(any_, n - np.flip(seen, axis=axis).argmax(axis=axis), 0)
    return np.ascontiguousarray(np.stack([first, last], axis=-1).astype(np.int32))
