"""The Hopper ladder's forward (issue 22): kernels/tc90_ws.cu, F2 with a TMA producer warpgroup,
mbarrier stages and two consumer warpgroups in ping-pong, on CuPy arrays, sm_90a only.

    o, lse = forward(q, k, v, causal=False, softmax_scale=None)

q (B, H, Nq, d), k and v (B, H_kv, Nk, d) with H_kv dividing H (GQA: query head h reads
key/value head h // (H / H_kv)), float16 or bfloat16, d = 64 or 128; any strides whose last
dimension is contiguous and whose others are multiples of 16 bytes (device.check_rows). Returns
o like q (contiguous) and lse (B, H, Nq) float32 in natural units, as kernel 'tc' does.

It is a rung of the ladder, measured beside tc90.cu's forward (scripts/ladder_ws.py), not yet what
kernel 'tc' runs: no variants (mask_mod / score_mod), no trace build, not through
flashlab.torch's prepared calls (a tensor map holds the operand's address, so it is made per
call; flashlab.launch.tma caches them per address).
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_qkv
from ..lowp import LOWP_DTYPES
from . import plans
from .compiler import function, get_module, set_smem
from .device import check_device_inputs, device_limits
from .prepared import rows
from .sources import Source, _cached, expand_includes, kernel_dir
from .tma import tensor_map

FILE = "tc90_ws.cu"
THREADS = 384  # a producer warpgroup and two consumer warpgroups
BR = 128  # query rows per thread block (64 per consumer warpgroup)
# key tile, stages of K and V, ping-pong (PP 0: the ablation's "off"), persistent blocks (PERSIST
# 1: as many blocks as multiprocessors, each taking tiles in turn; 0: a block per tile; None:
# persistent where a head has at most PERSIST_MAX_TR query blocks, see grid_blocks)
TILES = {64: dict(BC=128, ST=2, PP=1, PERSIST=None), 128: dict(BC=128, ST=2, PP=1, PERSIST=None)}
PERSIST_MAX_TR = 32  # N <= 4096


def grid_blocks(tiles: int, Tr: int, sm_count: int, config: dict) -> int:
    """How many thread blocks take the `tiles` (query block, head) tiles, Tr per head.

    Persistent blocks (one per multiprocessor, tiles in turn) save each tile's prologue and
    epilogue, which counts where a head has few key tiles: measured on the H200 (2026-12-04,
    docs/results/ladder_ws_v2_2026-12-04_h200.md) 1.04-1.16x a block per tile at N = 1k and
    1.01-1.05x at 4k. From 16k on a block per tile was as fast or faster (up to 1.32x at
    d = 128, causal): the hardware starts each new block where one finished, which balances
    causal tiles of unequal length and keeps the tiles running together close in L2; the
    static turns of persistent blocks do neither. Between 4k and 16k the rule is not measured.
    config["BLOCKS"] forces a count (tests)."""
    if config.get("BLOCKS"):
        return min(tiles, int(config["BLOCKS"]))
    persist = config.get("PERSIST")
    if persist is None:
        persist = Tr <= PERSIST_MAX_TR
    return min(tiles, sm_count) if persist else tiles


def smem_bytes(d: int, BC: int, ST: int) -> int:
    """Q_i, ST stages of K_j and of V_j, and the mbarriers (kernels/tc90_ws.cu's header)."""
    return BR * d * 2 + 2 * ST * BC * d * 2 + 8 * (2 + 4 * ST)


def instance(bf16: bool, d: int, config: dict | None = None) -> str:
    t = {**TILES[d], **(config or {})}
    return (f"tc90ws_forward<{'true' if bf16 else 'false'}, {d}, {t['BC']}, {t['ST']}, "
            f"{t['PP']}>")


def instances() -> tuple:
    """The default instances (both dtypes, both head dims)."""
    return tuple(instance(bf16, d) for bf16 in (False, True) for d in sorted(TILES))


def source() -> Source:
    """kernels/tc90_ws.cu with its headers, re-read only when a kernel file changes (read and
    hashed on every call, it made the first ladder run wait for the host at N <= 4k)."""
    return _cached(("ladder", FILE), lambda: (kernel_dir(),),
                   lambda: Source(FILE, expand_includes(kernel_dir() / FILE), None))


def _check(q, k, v, causal, softmax_scale):
    """The shared checks of every launch (flashlab.checks.check_qkv with GQA; CuPy arrays on one
    device, 16-bit, rows as kernel 'tc' reads them: check_device_inputs, whose row layout is also
    what the TMA copies need), then this kernel's head dims and compute capability."""
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=True)
    device = check_device_inputs("tc", {"q": q, "k": k, "v": v},
                                 {name: LOWP_DTYPES for name in "qkv"})
    if dims.d not in TILES:
        raise ValueError(f"head dim d must be one of {sorted(TILES)} for kernels/{FILE}, got "
                         f"{dims.d}")
    cc = device_limits(device)["compute_capability"]
    if str(cc) != "90":
        raise ValueError(f"kernels/{FILE} runs on compute capability 9.0 (sm_90a) only; this "
                         f"GPU is {cc}: use kernel 'tc'")
    return dims, device


def forward(q, k, v, causal: bool = False, softmax_scale: float | None = None, out=None,
            config: dict | None = None):
    """(o, lse) of attention on tensor cores with the warp-specialized forward. out: (o, lse)
    to write into (contiguous, o like q, lse (B, H, Nq) float32), else new arrays. config:
    tiles other than TILES[d] (BC, ST, PP, PERSIST), for the ladder's ablation, and BLOCKS: a
    number of blocks (the tests' way to give each block several tiles)."""
    import cupy as cp

    dims, device = _check(q, k, v, causal, softmax_scale)
    B, H, Nq, Nk, d, Hkv = dims.B, dims.H, dims.Nq, dims.Nk, dims.d, dims.kv_heads
    t = {**TILES[d], **(config or {})}
    tau = np.float32(dims.scale)
    limits = device_limits(device)
    smem = smem_bytes(d, t["BC"], t["ST"])
    if smem > limits["smem_optin"]:
        raise ValueError(f"kernels/{FILE} at d = {d} needs {smem} bytes of shared memory per "
                         f"block; this GPU allows {limits['smem_optin']}")
    name = instance(q.dtype.name == "bfloat16", d, config)
    with cp.cuda.Device(device):
        mod = get_module(source(), False, (name,), arch="sm_90a", kernel="tc")
        raw = function(mod, name)
        set_smem(raw, smem)
        if out is None:
            o, lse = cp.empty((B, H, Nq, d), q.dtype), cp.empty((B, H, Nq), cp.float32)
        else:
            o, lse = out
            if o.shape != q.shape or o.dtype != q.dtype or not o.flags.c_contiguous:
                raise ValueError(f"out[0] (o) must be a contiguous {q.dtype.name} array of "
                                 f"shape {q.shape}, got {o.dtype.name} {o.shape}")
            if lse.shape != (B, H, Nq) or lse.dtype != np.float32 or not lse.flags.c_contiguous:
                raise ValueError(f"out[1] (lse) must be a contiguous float32 array of shape "
                                 f"{(B, H, Nq)}, got {lse.dtype.name} {lse.shape}")
        maps = [tensor_map(q, BR), tensor_map(k, t["BC"]), tensor_map(v, t["BC"])]
        BH = B * H
        group = plans.tc_head_group(limits["l2_bytes"], Nk, d, BH) if dims.causal else 1
        orr = rows(tuple(s // o.itemsize for s in o.strides[:3]))
        ptr = cp.cuda.function.CPointer
        Tr = math.ceil(Nq / BR)
        blocks = grid_blocks(Tr * BH, Tr, limits["sm_count"], t)
        raw((blocks,), (THREADS,),
            (ptr(maps[0].ctypes.data), ptr(maps[1].ctypes.data), ptr(maps[2].ctypes.data), o, lse,
             np.int32(Nq), np.int32(Nk), tau, np.int32(dims.causal), np.int32(group),
             np.int32(H), np.int32(BH), np.int32(H // Hkv), ptr(orr.ctypes.data)),
            shared_mem=smem)
    return o, lse
