"""An attention variant's kernel arguments (flashlab.mods.kernel.KernelVariant), shared by the
launchers that compile one in (fa2, tc): the source with the variant's C in front, and its
arrays on the device (closed-over values, the block mask for the launch's tiles and, for tc,
the range of tiles each block visits), made once per variant, source, device, sizes and tiles.

    source, arrays = device_args(ctx, variant, base, Br, Bc)   # arrays: a VariantArrays
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .device import Launch

_cache: dict = {}  # key -> (Source, VariantArrays)
_CACHE_MAX = 64


@dataclass(frozen=True)
class VariantArrays:
    """On the device: floats, ints (the mods' closed-over arrays), tiles (B or 1, H or 1, Tr,
    Tc) uint8 flags (KernelVariant.tiles), rows / cols: tile_ranges per query block (axis 3) and
    per key block (axis 2); tiles_B, tiles_H: the block mask's batch and head extents;
    host_tiles: the flags on the host (for block_order)."""

    floats: object
    ints: object
    tiles: object
    rows: object
    cols: object
    tiles_B: np.int32
    tiles_H: np.int32
    host_tiles: np.ndarray


def order_args(ctx: Launch, variant, arrays: VariantArrays, direction: str, Br: int, Bc: int,
               group: int):
    """block_order on the device, made once per variant, sizes, tiles, direction and group."""
    dims = ctx.dims
    key = ("order", variant.key, ctx.backend, ctx.device, dims.B, dims.H, dims.Nq, dims.Nk,
           bool(ctx.causal), direction, Br, Bc, group)
    hit = _cache.get(key)
    if hit is None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        order = block_order(arrays.host_tiles, direction, bool(ctx.causal), dims.B, dims.H, Br,
                            Bc, dims.Nq, group)
        hit = _cache[key] = ctx.cp.asarray(order)
    return hit


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
                               np.int32(tiles.shape[0]), np.int32(tiles.shape[1]), tiles)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        hit = _cache[key] = (variant.source(base, fast_math=fast_math,
                                            longest=max(dims.Nq, dims.Nk)), arrays)
    return hit


def block_order(tiles: np.ndarray, direction: str, causal: bool, B: int, H: int, Br: int,
                Bc: int, Nq: int, group: int) -> np.ndarray:
    """The start order of a variant's thread blocks (kernels/tc_mods.cuh TC_BLOCK_ORDER):
    (blocks per head x B H, 2) int32 rows (x, bh), x the query block (forward) or key block
    (backward). A block's work is the number of tiles it visits (its range, with causal's
    narrowing); as the causal block order does (block_order, tc_blocks.cuh), heads go `group` at
    a time and, inside a group, the longest blocks first (ties: forward the higher x first,
    backward the lower, as causal's; then by head)."""
    from ..mods.kernel import tile_ranges

    Tr, Tc = tiles.shape[2:]
    forward = direction == "forward"
    r = tile_ranges(tiles, 3 if forward else 2)  # (B or 1, H or 1, T, 2)
    lo, hi = r[..., 0], r[..., 1]
    T = Tr if forward else Tc
    x = np.arange(T)
    if causal and forward:  # F2:L3: no key tile past the one holding the block's last row
        hi = np.minimum(hi, (np.minimum(Nq, (x + 1) * Br) - 1) // Bc + 1)
    elif causal:  # G2:L3: no query block before the one holding the key block's first key
        lo = np.maximum(lo, np.minimum(Tr, x * Bc // Br))
    work = np.broadcast_to(np.maximum(hi - lo, 0), (B, H, T)).reshape(B * H, T)
    bh = np.repeat(np.arange(B * H), T)
    xs = np.tile(x, B * H)
    w = work.reshape(-1)
    order = np.lexsort((bh, -xs if forward else xs, -w, bh // max(1, group)))
    return np.ascontiguousarray(np.stack([xs[order], bh[order]], axis=1).astype(np.int32))


def sum_groups(full, out, kv_heads: int) -> None:
    """GQA's dK or dV: `full` per query head (B, H, Nk, d) summed over each group of H / H_kv
    query heads into out (B, H_kv, Nk, d): in fp32, then rounded to out's dtype. On the GPU one
    pass for bfloat16 and float32 (read the group's values, write the sum; bfloat16 through its
    raw words) and CuPy's reduction for float16; NumPy arrays (the CPU backend) through
    NumPy's sum."""
    B, H, Nk, d = full.shape
    if isinstance(full, np.ndarray):
        out[...] = full.reshape(B, kv_heads, H // kv_heads, Nk, d).sum(axis=2)
        return
    name = out.dtype.name
    if name == "float16":  # CuPy's own float16 reduction, summing in float32
        g = full.reshape(B, kv_heads, H // kv_heads, Nk, d).sum(axis=2, dtype="float32")
        out[...] = g.astype("float16")
        return
    kernel = _sum_kernel(name)
    args = (full.view("uint16") if name == "bfloat16" else full, np.int64(Nk * d),
            np.int32(H // kv_heads))
    kernel(*args, out.view("uint16") if name == "bfloat16" else out)


_SUM_BODY = """
const long long x = i % nkd, bh = i / nkd;  // out is (B H_kv, Nk d); full (B H_kv G, Nk d)
float s = 0.0f;
for (int g = 0; g < G; ++g) s += FL_LOAD(full[(bh * G + g) * nkd + x]);
out = FL_STORE(s);
"""
_SUM_IO = {  # dtype -> (kernel's element type, load, store)
    "bfloat16": ("uint16", "__uint_as_float(((unsigned int)(u)) << 16)",
                 "fl_bf16(f)"),
    "float32": ("float32", "(u)", "(f)"),
}
_sum_kernels: dict = {}


def _sum_kernel(name: str):
    hit = _sum_kernels.get(name)
    if hit is None:
        import cupy as cp

        t, load, store = _SUM_IO[name]
        pre = (f"#define FL_LOAD(u) {load}\n#define FL_STORE(f) {store}\n"
               "__device__ unsigned short fl_bf16(float f) {  // round to nearest even\n"
               "    unsigned int u = __float_as_uint(f);\n"
               "    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);\n}\n")
        hit = _sum_kernels[name] = cp.ElementwiseKernel(
            f"raw {t} full, int64 nkd, int32 G", f"{t} out", _SUM_BODY,
            f"flashlab_gqa_sum_{name}", preamble=pre)
    return hit
