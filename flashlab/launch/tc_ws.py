"""The Hopper ladder's forward (issue 22): kernels/tc90_ws.cu, F2 with a TMA producer warpgroup,
mbarrier stages and two consumer warpgroups in ping-pong, on CuPy arrays, sm_90a only.

    o, lse = forward(q, k, v, causal=False, softmax_scale=None)

q (B, H, Nq, d), k and v (B, H_kv, Nk, d) with H_kv dividing H (GQA: query head h reads
key/value head h // (H / H_kv)), float16 or bfloat16, d = 64 or 128; any strides whose last
dimension is contiguous and whose others are multiples of 16 bytes (flashlab.launch.tma). Returns
o like q (contiguous) and lse (B, H, Nq) float32 in natural units, as kernel 'tc' does.

It is a rung of the ladder, measured beside tc90.cu's forward (scripts/ladder_ws.py), not yet what
kernel 'tc' runs: no variants (mask_mod / score_mod), no trace build, not through
flashlab.torch's prepared calls (a tensor map holds the operand's address, so it is made per
call; flashlab.launch.tma caches them per address).
"""
from __future__ import annotations

import math

import numpy as np

from . import plans
from .compiler import function, get_module, set_smem
from .device import device_limits
from .prepared import rows
from .sources import Source, _cached, expand_includes, kernel_dir
from .tma import check_operand, tensor_map

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


def _check(q, k, v):
    import cupy as cp

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, cp.ndarray):
            raise TypeError(f"{name} must be a CuPy array, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must be (B, heads, N, d), got shape {x.shape}")
        if x.dtype.name not in ("float16", "bfloat16"):
            raise ValueError(f"{name}: dtype must be float16 or bfloat16, got {x.dtype.name}")
        if x.dtype != q.dtype:
            raise ValueError(f"q, k, v must share one dtype, got {q.dtype.name} and "
                             f"{x.dtype.name} ({name})")
        if x.device.id != q.device.id:
            raise ValueError(f"{name} is on GPU {x.device.id}, q on GPU {q.device.id}")
        check_operand(name, x)
    B, H, Nq, d = q.shape
    if d not in TILES:
        raise ValueError(f"head dim d must be one of {sorted(TILES)} for kernels/{FILE}, got {d}")
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"k and v must be (B, H_kv, Nk, d) = ({B}, H_kv, Nk, {d}), got "
                         f"{k.shape} and {v.shape}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k's heads H_kv = {Hkv} must divide q's heads H = {H}")
    if Nq < 1 or Nk < 1:
        raise ValueError(f"sequence lengths must be at least 1, got Nq = {Nq}, Nk = {Nk}")
    cc = device_limits(q.device.id)["compute_capability"]
    if str(cc) != "90":
        raise ValueError(f"kernels/{FILE} runs on compute capability 9.0 (sm_90a) only; this "
                         f"GPU is {cc}: use kernel 'tc'")


def forward(q, k, v, causal: bool = False, softmax_scale: float | None = None, out=None,
            config: dict | None = None):
    """(o, lse) of attention on tensor cores with the warp-specialized forward. out: (o, lse)
    to write into (contiguous, o like q, lse (B, H, Nq) float32), else new arrays. config:
    tiles other than TILES[d] (BC, ST, PP, PERSIST), for the ladder's ablation, and BLOCKS: a
    number of blocks (the tests' way to give each block several tiles)."""
    import cupy as cp

    _check(q, k, v)
    B, H, Nq, d = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    t = {**TILES[d], **(config or {})}
    tau = np.float32(1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale)
    limits = device_limits(q.device.id)
    smem = smem_bytes(d, t["BC"], t["ST"])
    if smem > limits["smem_optin"]:
        raise ValueError(f"kernels/{FILE} at d = {d} needs {smem} bytes of shared memory per "
                         f"block; this GPU allows {limits['smem_optin']}")
    name = instance(q.dtype.name == "bfloat16", d, config)
    with cp.cuda.Device(q.device.id):
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
        group = plans.tc_head_group(limits["l2_bytes"], Nk, d, BH) if causal else 1
        orr = rows(tuple(s // o.itemsize for s in o.strides[:3]))
        ptr = cp.cuda.function.CPointer
        Tr = math.ceil(Nq / BR)
        blocks = grid_blocks(Tr * BH, Tr, limits["sm_count"], t)
        raw((blocks,), (THREADS,),
            (ptr(maps[0].ctypes.data), ptr(maps[1].ctypes.data), ptr(maps[2].ctypes.data), o, lse,
             np.int32(Nq), np.int32(Nk), tau, np.int32(bool(causal)), np.int32(group),
             np.int32(H), np.int32(BH), np.int32(H // Hkv), ptr(orr.ctypes.data)),
            shared_mem=smem)
    return o, lse
