"""The Hopper ladder's kernels (issue 22), on CuPy arrays, sm_90a only: kernels/tc90_ws.cu (F2
with a TMA producer warpgroup, mbarrier stages and two consumer warpgroups in ping-pong) and
kernels/tc90_ws_bwd.cu (G2 with a TMA producer warpgroup and two consumer warpgroups).

    o, lse = forward(q, k, v, causal=False, softmax_scale=None)
    dq, dk, dv = backward(do, q, k, v, o, lse, causal=False, softmax_scale=None)

q (B, H, Nq, d), k and v (B, H_kv, Nk, d) with H_kv dividing H (GQA: query head h reads
key/value head h // (H / H_kv)), float16 or bfloat16, d = 64 or 128; any strides whose last
dimension is contiguous and whose others are multiples of 16 bytes (device.check_rows). Returns
o like q (contiguous) and lse (B, H, Nq) float32 in natural units, as kernel 'tc' does.

backward returns dq like q, dk and dv like k and v (contiguous). These are rungs of the ladder,
measured beside tc90.cu (scripts/ladder_ws.py), not yet what kernel 'tc' runs: no variants (mask_mod / score_mod), no trace build, not through
flashlab.torch's prepared calls (a tensor map holds the operand's address, so it is made per
call; flashlab.launch.tma caches them per address).
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_backward, check_qkv
from ..lowp import LOWP_DTYPES
from . import plans
from .compiler import function, get_module, set_smem
from .device import check_device_inputs, device_limits
from .prepared import rows
from .sources import Source, _cached, expand_includes, kernel_dir
from .tma import flat_map, tensor_map
from .variants import sum_groups

FILE, BACKWARD_FILE = "tc90_ws.cu", "tc90_ws_bwd.cu"
THREADS = 384  # a producer warpgroup and two consumer warpgroups (the backward's, NC = 2's)
BR = 128  # query rows per thread block at NC = 2 (64 per consumer warpgroup)
# key tile, stages of K and V, ping-pong (PP 0: the ablation's "off"), persistent blocks (PERSIST
# 1: as many blocks as multiprocessors, each taking tiles in turn; 0: a block per tile; None:
# persistent where a head has at most PERSIST_MAX_TR query blocks, see grid_blocks), and the
# persistent blocks' turns (DYN 1: dynamic, the next tile from an atomic counter; 0: static), and
# the consumer warpgroups (NC: 64 query rows each; 3 only at d = 64, ping-pong off)
TILES = {64: dict(BC=128, ST=2, PP=1, PERSIST=None, DYN=0, NC=2),
         128: dict(BC=128, ST=2, PP=1, PERSIST=None, DYN=0, NC=2)}
PERSIST_MAX_TR = 32  # N <= 4096
# the backward: BR queries per step (128 keys per block), ST stages of Q_i, dO_i, L_i, D_i
BACKWARD_TILES = {64: dict(BR=128, ST=2, DQW=1), 128: dict(BR=64, ST=2, DQW=1)}
BC_BACKWARD = 128


def grid_blocks(tiles: int, Tr: int, sm_count: int, config: dict, br: int = BR) -> int:
    """How many thread blocks take the `tiles` (query block, head) tiles, Tr of br rows per head.

    Persistent blocks (one per multiprocessor, tiles in turn) save each tile's prologue and
    epilogue, which counts where a head has few key tiles: measured on the H200 (2026-12-04,
    docs/results/ladder_ws_v2_2026-12-04_h200.md) 1.04-1.16x a block per tile at N = 1k and
    1.01-1.05x at 4k. From 16k on a block per tile was as fast or faster (up to 1.32x at
    d = 128, causal): the hardware starts each new block where one finished, which balances
    causal tiles of unequal length and keeps the tiles running together close in L2; the
    static turns of persistent blocks do neither. Between 4k and 16k the rule is not measured.
    Dynamic turns (DYN, an atomic tile counter) won back what static turns lose at 16k causal
    (1.30x) but were slower than both at 1k (ladder_ws_v3). config["BLOCKS"] forces a count
    (tests)."""
    if config.get("BLOCKS"):
        return min(tiles, int(config["BLOCKS"]))
    persist = config.get("PERSIST")
    if persist is None:
        persist = Tr * br <= PERSIST_MAX_TR * BR
    return min(tiles, sm_count) if persist else tiles


def smem_bytes(d: int, BC: int, ST: int, NC: int = 2) -> int:
    """Q_i (64 NC rows), ST stages of K_j and of V_j, the mbarriers and the next tile's number
    (kernels/tc90_ws.cu's header)."""
    return 64 * NC * d * 2 + 2 * ST * BC * d * 2 + 8 * (2 + 4 * ST) + 8


def instance(bf16: bool, d: int, config: dict | None = None) -> str:
    t = {**TILES[d], **(config or {})}
    return (f"tc90ws_forward<{'true' if bf16 else 'false'}, {d}, {t['BC']}, {t['ST']}, "
            f"{t['PP']}, {t['NC']}>")


def backward_smem_bytes(d: int, BR: int, ST: int, DQW: int) -> int:
    """K_j, V_j, dS^T twice, ST stages of Q_i, dO_i, dQ_i's fp32 term (DQW), ST stages of L_i,
    D_i, the mbarriers (kernels/tc90_ws_bwd.cu's header)."""
    BC, LB = BC_BACKWARD, -(-(BR + 4) * 4 // 128) * 128  # LB: a slot of L_i's or D_i's box
    return (4 * BC * d + 4 * BC * BR + ST * (4 * BR * d + 2 * LB) + (4 * BR * d if DQW else 0)
            + 8 * (3 + 2 * ST))


def backward_names(bf16: bool, d: int, config: dict | None = None) -> tuple:
    """(the backward's instance, the D pre-pass, dQ's rounding) for one dtype and head dim."""
    t = {**BACKWARD_TILES[d], **(config or {})}
    flag = "true" if bf16 else "false"
    return (f"tc90ws_backward<{flag}, {d}, {t['BR']}, {t['ST']}, {t['DQW']}>",
            f"tc_backward_dot<{flag}>",
            f"tc_backward_dq<{flag}>")


def instances() -> tuple:
    """The default instances (both dtypes, both head dims) of the forward's file."""
    return tuple(instance(bf16, d) for bf16 in (False, True) for d in sorted(TILES))


def backward_instances() -> tuple:
    """The default instances of the backward's file."""
    return tuple(n for bf16 in (False, True) for d in sorted(BACKWARD_TILES)
                 for n in backward_names(bf16, d))


def source(file: str = FILE) -> Source:
    """kernels/`file` (a ladder rung) with its headers, re-read only when a kernel file changes
    (read and hashed on every call, it made the first ladder run wait for the host at N <= 4k)."""
    return _cached(("ladder", file), lambda: (kernel_dir(),),
                   lambda: Source(file, expand_includes(kernel_dir() / file), None))


def _check(q, k, v, causal, softmax_scale):
    """The shared checks of every launch (flashlab.checks.check_qkv with GQA; CuPy arrays on one
    device, 16-bit, rows as kernel 'tc' reads them: check_device_inputs, whose row layout is also
    what the TMA copies need), then this kernel's head dims and compute capability."""
    dims = check_qkv(q, k, v, causal, softmax_scale, gqa=True)
    device = check_device_inputs("tc", {"q": q, "k": k, "v": v},
                                 {name: LOWP_DTYPES for name in "qkv"})
    _check_target(dims, device, FILE)
    return dims, device


def _check_target(dims, device, file):
    """This rung's head dims and compute capability."""
    if dims.d not in TILES:
        raise ValueError(f"head dim d must be one of {sorted(TILES)} for kernels/{file}, got "
                         f"{dims.d}")
    cc = device_limits(device)["compute_capability"]
    if str(cc) != "90":
        raise ValueError(f"kernels/{file} runs on compute capability 9.0 (sm_90a) only; this "
                         f"GPU is {cc}: use kernel 'tc'")


def _kernels(device, file, names, smem):
    """The compiled instances `names` of kernels/`file` (one module), the first opted in to
    `smem` bytes (the GPU's limit checked first)."""
    limit = device_limits(device)["smem_optin"]
    if smem > limit:
        raise ValueError(f"kernels/{file} needs {smem} bytes of shared memory per block for "
                         f"{names[0]}; this GPU allows {limit}")
    mod = get_module(source(file), False, tuple(names), arch="sm_90a", kernel="tc")
    raws = [function(mod, name) for name in names]
    set_smem(raws[0], smem)
    return raws


def forward(q, k, v, causal: bool = False, softmax_scale: float | None = None, out=None,
            config: dict | None = None):
    """(o, lse) of attention on tensor cores with the warp-specialized forward. out: (o, lse)
    to write into (contiguous, o like q, lse (B, H, Nq) float32), else new arrays. config:
    tiles other than TILES[d] (BC, ST, PP, PERSIST, DYN, NC), for the ladder's ablation, and
    BLOCKS: a number of blocks (the tests' way to give each block several tiles)."""
    import cupy as cp

    dims, device = _check(q, k, v, causal, softmax_scale)
    B, H, Nq, Nk, d, Hkv = dims.B, dims.H, dims.Nq, dims.Nk, dims.d, dims.kv_heads
    t = {**TILES[d], **(config or {})}
    tau = np.float32(dims.scale)
    limits = device_limits(device)
    smem = smem_bytes(d, t["BC"], t["ST"], t["NC"])
    name = instance(q.dtype.name == "bfloat16", d, config)
    br = 64 * t["NC"]
    with cp.cuda.Device(device):
        (raw,) = _kernels(device, FILE, (name,), smem)
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
        maps = [tensor_map(q, br), tensor_map(k, t["BC"]), tensor_map(v, t["BC"])]
        BH = B * H
        group = plans.tc_head_group(limits["l2_bytes"], Nk, d, BH) if dims.causal else 1
        orr = rows(_strides(o))
        ptr = cp.cuda.function.CPointer
        Tr = math.ceil(Nq / br)
        blocks = grid_blocks(Tr * BH, Tr, limits["sm_count"], t, br)
        # dynamic turns: a zeroed counter per launch (stream-ordered, as CuPy's pool frees it)
        nxt = cp.zeros(1, cp.int32) if t["DYN"] and blocks < Tr * BH else None
        raw((blocks,), (128 * (t["NC"] + 1),),
            (ptr(maps[0].ctypes.data), ptr(maps[1].ctypes.data), ptr(maps[2].ctypes.data), o, lse,
             np.int32(Nq), np.int32(Nk), tau, np.int32(dims.causal), np.int32(group),
             np.int32(H), np.int32(BH), np.int32(H // Hkv), ptr(orr.ctypes.data),
             nxt if nxt is not None else np.uint64(0)),
            shared_mem=smem)
    return o, lse


def backward(do, q, k, v, o, lse, causal: bool = False, softmax_scale: float | None = None,
             out=None, config: dict | None = None):
    """(dq, dk, dv) of attention with the warp-specialized backward: G2:L0 (D = rowsum(dO o),
    which also zeroes dQ's fp32 accumulator), kernels/tc90_ws_bwd.cu, dQ's rounding; with GQA
    dk and dv per query head first, then summed per group. out: (dq, dk, dv) to write into
    (contiguous, like q, k, v). config: BACKWARD_TILES[d]'s keys (BR, ST, DQW: dQ through
    shared memory and the TMA unit's adds, 1, or the consumers' fp32 atomics, 0)."""
    import cupy as cp

    dims = check_backward(do, q, k, v, o, lse, causal, softmax_scale, gqa=True)
    device = check_device_inputs("tc", {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse},
                                 {**{name: LOWP_DTYPES for name in ("do", "q", "k", "v", "o")},
                                  "lse": ("float32",)})
    _check_target(dims, device, BACKWARD_FILE)
    B, H, Nq, Nk, d, Hkv = dims.B, dims.H, dims.Nq, dims.Nk, dims.d, dims.kv_heads
    BH = B * H
    if BH * Nq >= 2 ** 31:
        raise ValueError(f"kernels/{BACKWARD_FILE} counts L's B H Nq = {BH * Nq} rows in 32 "
                         f"bits: split the batch")
    t = {**BACKWARD_TILES[d], **(config or {})}
    bf16 = q.dtype.name == "bfloat16"
    names = backward_names(bf16, d, config)
    tau = np.float32(dims.scale)
    limits = device_limits(device)
    ptr = cp.cuda.function.CPointer
    with cp.cuda.Device(device):
        if out is None:
            dq, dk, dv = (cp.empty(x.shape, q.dtype) for x in (q, k, v))
        else:
            dq, dk, dv = out
            for name, x, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
                if x.shape != like.shape or x.dtype != q.dtype or not x.flags.c_contiguous:
                    raise ValueError(f"out ({name}) must be a contiguous {q.dtype.name} array "
                                     f"of shape {like.shape}, got {x.dtype.name} {x.shape}")
        gk, gv = dk, dv
        if Hkv != H:  # GQA: per query head, summed below
            gk, gv = (cp.empty((B, H, Nk, d), q.dtype) for _ in range(2))
        lse_c = cp.ascontiguousarray(lse)
        dvec = cp.empty((B, H, Nq), cp.float32)
        dq_acc = cp.empty((B, H, Nq, d), cp.float32)
        # the Rows records live until the launches have copied them
        dor, orr, kr, vr, dqr = (rows(_strides(x)) for x in (do, o, gk, gv, dq))
        smem = backward_smem_bytes(d, t["BR"], t["ST"], t["DQW"])
        main, dot, rnd = _kernels(device, BACKWARD_FILE, names, smem)
        n = BH * Nq
        dot((math.ceil(n / 8),), (256,),
            (do, o, dvec, dq_acc, np.int64(n), np.int32(d), ptr(dor.ctypes.data),
             ptr(orr.ctypes.data), np.int32(Nq), np.int32(H)))                           # G2:L0
        maps = [tensor_map(q, t["BR"]), tensor_map(k, BC_BACKWARD), tensor_map(v, BC_BACKWARD),
                tensor_map(do, t["BR"]), flat_map(lse_c, t["BR"] + 4), flat_map(dvec, t["BR"] + 4),
                tensor_map(dq_acc, t["BR"])]
        group = plans.tc_head_group(limits["l2_bytes"], Nq, d, BH) if dims.causal else 1
        main((math.ceil(Nk / BC_BACKWARD) * BH,), (THREADS,),
             tuple(ptr(m.ctypes.data) for m in maps) +
             (dq_acc, gk, gv, np.int32(Nq), np.int32(Nk), tau, np.int32(dims.causal),
              np.int32(group), np.int32(H), np.int32(BH), np.int32(H // Hkv),
              ptr(kr.ctypes.data), ptr(vr.ctypes.data)),
             shared_mem=smem)
        n8 = Nq * d // 8
        rnd((math.ceil(n8 / 256), BH), (256,),
            (dq_acc, dq, np.int32(n8), np.int32(d), tau, ptr(dqr.ctypes.data), np.int32(H)))
        if gk is not dk:
            sum_groups(gk, dk, Hkv)
            sum_groups(gv, dv, Hkv)
    return dq, dk, dv


def _strides(x) -> tuple:
    """(batch, head, row) element strides of a CuPy array (the kernels' Rows)."""
    return tuple(st // x.dtype.itemsize for st in x.strides[:3])
