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
_cache: dict = {}  # (pointer, dtype, dims, strides, box, swizzle) -> the map's 16 words


def tensor_map(x, box_rows: int) -> np.ndarray:
    """The tensor map of a (B, heads, N, d) float16 / bfloat16 (or float32: dQ's accumulator)
    CuPy array, boxes of one 128-byte row (64 16-bit or 32 fp32 columns) by box_rows rows in the
    128-byte swizzle: 16 uint64 words, cached per address, shape, strides and box. The caller has
    checked the layout TMA needs (the last dimension contiguous, 16-byte aligned rows:
    flashlab.launch.device.check_rows); the driver's refusal of anything else is a ValueError
    naming the operand's shape and strides."""
    B, Hx, N, d = x.shape
    item = x.dtype.itemsize
    # a dimension of size 1 may come with any stride (torch's views): it gets the extent of the
    # dimensions inside it, as in a contiguous array
    strides, extent = [], d * item
    for s, n in zip((x.strides[2], x.strides[1], x.strides[0]), (N, Hx, B)):
        strides.append(s if n > 1 else extent)
        extent = max(extent, strides[-1] * n)
    cols = 128 // item
    return _encoded(x, (d, N, Hx, B), strides, (cols, box_rows, 1, 1), swizzle=True,
                    what=f"a ({B}, {Hx}, {N}, {d}) {x.dtype.name} operand with strides "
                         f"{x.strides} bytes and boxes of {cols} x {box_rows}")


def flat_map(x, box: int) -> np.ndarray:
    """The tensor map of a contiguous float32 CuPy array (L, D: B H N floats) as one row, read in
    boxes of `box` elements, no swizzle; elements past the end arrive as zeros. (The driver
    refuses rank 1 here, 2026-12-04: the map is 2-D, (size, 1), its one row's stride any
    multiple of 16 bytes.)"""
    return _encoded(x, (x.size, 1), [-(-x.size * 4 // 16) * 16], (box, 1), swizzle=False,
                    what=f"a float32 array of {x.size} elements in boxes of {box}")


def _encoded(x, dims, strides, box, swizzle: bool, what: str) -> np.ndarray:
    """cuTensorMapEncodeTiled's map of x (dims and box innermost first, byte strides of every
    dimension but the innermost), cached per address, dtype, dims, strides, box."""
    key = (x.data.ptr, x.dtype.name, tuple(dims), tuple(strides), tuple(box), swizzle)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    from cuda.bindings import driver as cu

    u64, u32 = cu.cuuint64_t, cu.cuuint32_t
    kind = {"float16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            "bfloat16": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            "float32": cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT32}[x.dtype.name]
    sw = cu.CUtensorMapSwizzle
    err, tmap = cu.cuTensorMapEncodeTiled(
        kind, len(dims), x.data.ptr, [u64(n) for n in dims], [u64(s) for s in strides],
        [u32(b) for b in box], [u32(1)] * len(dims),
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        sw.CU_TENSOR_MAP_SWIZZLE_128B if swizzle else sw.CU_TENSOR_MAP_SWIZZLE_NONE,
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise ValueError(f"cuTensorMapEncodeTiled refused {what}: {err}")
    words = np.array(tmap.opaque, np.uint64)
    assert words.nbytes == MAP_BYTES, words.nbytes
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = words
    return words
