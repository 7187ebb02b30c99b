"""TMA tensor maps: the 128-byte descriptors a kernel's copy engine (the Tensor Memory
Accelerator, sm_90) reads to fetch a box of a global tensor (kernels/tma.cuh).

The driver encodes them (cuTensorMapEncodeTiled, through cuda-bindings); a kernel takes one as a
`const __grid_constant__ CUtensorMap` parameter, which a CuPy launch passes as a pointer to the
128 host bytes (the driver copies them at the launch). flashlab's 16-bit operands are
(B, heads, N, d) with element strides (batch, head, row) and a contiguous last dimension; their
map is 4-D, innermost first: (d, N, heads, B), boxes of 64 columns (one 128-byte row, the
128-byte swizzle of kernels/tc90_tiles.cuh) by `box_rows` rows. Rows past N arrive as zeros.
"""
from __future__ import annotations

import numpy as np

MAP_BYTES = 128
_CACHE_MAX = 256
_cache: dict = {}  # (pointer, dtype, sizes, strides, box rows) -> the map's 16 words


def tensor_map(x, box_rows: int) -> np.ndarray:
    """The tensor map of a (B, heads, N, d) float16 / bfloat16 CuPy array: 16 uint64 words, cached
    per address, shape, strides and box. The caller has checked the layout TMA needs (the last
    dimension contiguous, 16-byte aligned rows: flashlab.launch.device.check_rows); the driver's
    refusal of anything else is a ValueError naming the operand's shape and strides."""
    B, Hx, N, d = x.shape
    item = x.dtype.itemsize
    key = (x.data.ptr, x.dtype.name, x.shape, x.strides, box_rows)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    from cuda.bindings import driver as cu

    u64, u32 = cu.cuuint64_t, cu.cuuint32_t
    kind = {"float16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            "bfloat16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16}[x.dtype.name]
    # a dimension of size 1 may come with any stride (torch's views): it gets the extent of the
    # dimensions inside it, as in a contiguous array
    strides, extent = [], d * item
    for s, n in zip((x.strides[2], x.strides[1], x.strides[0]), (N, Hx, B)):
        strides.append(s if n > 1 else extent)
        extent = max(extent, strides[-1] * n)
    err, tmap = cu.cuTensorMapEncodeTiled(
        kind, 4, x.data.ptr, [u64(d), u64(N), u64(Hx), u64(B)], [u64(s) for s in strides],
        [u32(64), u32(box_rows), u32(1), u32(1)], [u32(1)] * 4,
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise ValueError(f"cuTensorMapEncodeTiled refused a ({B}, {Hx}, {N}, {d}) {x.dtype.name} "
                         f"operand with strides {x.strides} bytes and boxes of 64 x {box_rows}: "
                         f"{err}")
    words = np.array(tmap.opaque, np.uint64)
    assert words.nbytes == MAP_BYTES, words.nbytes
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = words
    return words
