"""An attention variant's kernel arguments (flashlab.mods.kernel.KernelVariant), shared by the
launchers that compile one in (fa2, tc): the source with the variant's C in front, and its
arrays on the device (closed-over values, the block mask for the launch's tiles and, for tc,
the range of tiles each block visits), made once per variant, source, device, sizes and tiles.

    source, arrays = device_args(ctx, variant, base, Br, Bc)   # arrays: a VariantArrays
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import lowp
from .device import Launch

_cache: dict = {}  # key -> (Source, VariantArrays)
_CACHE_MAX = 64


@dataclass(frozen=True)
class VariantArrays:
    """On the device: floats, ints (the mods' closed-over arrays), tiles (B or 1, H or 1, Tr,
    Tc) uint8 flags (KernelVariant.tiles), rows / cols: tile_ranges per query block (axis 3) and
    per key block (axis 2); tiles_B, tiles_H: the block mask's batch and head extents."""

    floats: object
    ints: object
    tiles: object
    rows: object
    cols: object
    tiles_B: np.int32
    tiles_H: np.int32


def device_args(ctx: Launch, variant, base, Br: int, Bc: int, fast_math: bool = False):
    """(variant.source(base), VariantArrays) for a launch with tiles Br x Bc."""
    from ..mods.kernel import tile_ranges

    dims = ctx.dims
    key = (variant.key, base.digest, fast_math, ctx.backend, ctx.device, dims.B, dims.H,
           dims.kv_heads, dims.Nq, dims.Nk, Br, Bc)
    hit = _cache.get(key)
    if hit is None:
        floats, ints = variant.buffers()
        tiles = variant.tiles(dims.B, dims.H, dims.Nq, dims.Nk, Br, Bc)
        put = ctx.cp.asarray
        arrays = VariantArrays(put(floats), put(ints), put(np.ascontiguousarray(tiles)),
                               put(tile_ranges(tiles, 3)), put(tile_ranges(tiles, 2)),
                               np.int32(tiles.shape[0]), np.int32(tiles.shape[1]))
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        hit = _cache[key] = (variant.source(base, fast_math=fast_math), arrays)
    return hit


def sum_groups(full, out, kv_heads: int) -> None:
    """GQA's dK or dV: `full` per query head (B, H, Nk, d) summed over each group of H / H_kv
    query heads into out (B, H_kv, Nk, d): in fp32, then rounded to out's dtype (16-bit ones
    through their raw words, which every array library copies)."""
    B, H, Nk, d = full.shape
    name = out.dtype.name
    x = lowp.to_float32(full) if name in lowp.LOWP_DTYPES else full
    s = x.reshape(B, kv_heads, H // kv_heads, Nk, d).sum(axis=2)
    if name in lowp.LOWP_DTYPES:
        out.view("uint16")[...] = lowp.from_float32(s, name).view("uint16")
    else:
        out[...] = s.astype(out.dtype, copy=False)
