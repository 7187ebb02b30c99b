"""Tile plans: block sizes, threads and shared memory of each kernel's launch (no GPU needed).

fa1 follows A1:L1 with the device's shared memory, shrunk until its tiles fit; fa2 takes the
largest square tile that fits; tc reads its tile tables (flashlab.registry TC_* / TC90_*) per
variant. `plan(kernel, ...)` goes through the registry (spec.planner), `instantiations(kernel,
variant)` lists the template instances a source must compile (spec.instances).
"""
from __future__ import annotations

import math
import os

from .. import registry
from ..registry import FA2_HEAD_DIMS
from .device import check_head_dim


def _resolve(path: str):
    return registry._resolve(path)


def plan(kernel: str, d: int, direction: str, smem_bytes: int, variant: str | None = None) -> dict:
    """Tile sizes and shared memory a launch of `kernel` will use (no GPU needed): Br, Bc,
    smem (bytes; 0 where the kernel uses static shared memory only), and for kernels with tile
    tables their config, threads, variant, warps. variant: which source, for kernels with
    several (see variant()); None, the portable one."""
    spec = registry.get(kernel)
    check_head_dim(kernel, d)
    if spec.planner is None:
        return {"Br": 0, "Bc": 0, "smem": 0}
    return _resolve(spec.planner)(d, direction, smem_bytes, variant)


def instantiations(kernel: str, variant: str | None = None) -> tuple:
    """Template instantiations (C++ name expressions) the launcher of `kernel` compiles from
    the source of `variant` (None: the portable one)."""
    spec = registry.get(kernel)
    if spec.instances is None:
        return ()
    return _resolve(spec.instances)(spec.portable_variant() if variant is None else variant)


def variant(kernel: str, compute_capability, d: int) -> str:
    """Which of `kernel`'s sources runs on this compute capability at head dim d (registry
    spec.variant_for): for 'tc', "wgmma" (kernels/tc90.cu) on compute capability 9.0 at its head
    dims, else "mma" (kernels/tc.cu); on 7.5 "turing" (tc.cu as compute_75 PTX, float16), which
    FLASHLAB_TC_TURING=1 runs on newer GPUs too. FLASHLAB_TC_WGMMA=0 leaves out the arch-specific ones (for
    comparisons); a GPU none fits gets the portable one (its launch then says why)."""
    spec = registry.get(kernel)
    arch_specific = os.environ.get("FLASHLAB_TC_WGMMA", "1") != "0"
    try:
        return spec.variant_for(int(compute_capability), d, arch_specific)
    except ValueError:
        return spec.portable_variant()


# ----------------------------------------------------------------------------- fa1, fa2

def fa1_smem_floats(Br: int, Bc: int, d: int, direction: str) -> int:
    if direction == "forward":
        return (2 * Bc + 2 * Br) * (d + 1) + Br * Bc + 6 * Br
    return (4 * Bc + 4 * Br) * (d + 1) + 2 * Br * Bc + 2 * Br


def fa1_blocks(d: int, smem_bytes: int, direction: str) -> tuple[int, int]:
    """A1:L1 with M = the device's shared memory in floats, then shrunk until the tiles fit."""
    M = smem_bytes // 4
    Bc = math.ceil(M / (4 * d))
    Br = min(Bc, d)
    while fa1_smem_floats(Br, Bc, d, direction) * 4 > smem_bytes:
        if Bc > Br:
            Bc -= max(1, Bc // 16)
        else:
            Br -= 1
            Bc = Br
        if Br < 1:
            raise ValueError(f"head_dim {d}: no fa1 tile fits in {smem_bytes} bytes of shared memory")
    return Br, Bc


def fa1_plan(d: int, direction: str, smem_bytes: int, variant=None) -> dict:
    Br, Bc = fa1_blocks(d, smem_bytes, direction)
    return {"Br": Br, "Bc": Bc, "smem": fa1_smem_floats(Br, Bc, d, direction) * 4}


def fa2_smem_floats(BR: int, BC: int, D: int, direction: str) -> int:
    PP = BC + 16 // (BR // 16)
    if direction == "forward":
        return BR * (D + 4) + BC * (D + 4) + BC * D + BR * PP
    return 2 * BC * (D + 4) + 2 * BR * (D + 4) + 2 * BR * PP + 2 * BR


def fa2_blocks(d: int, smem_bytes: int, direction: str) -> tuple[int, int]:
    for B in (64, 32, 16):
        if fa2_smem_floats(B, B, d, direction) * 4 <= smem_bytes:
            return B, B
    raise ValueError(f"head_dim {d}: no fa2 tile fits in {smem_bytes} bytes of shared memory")


def fa2_plan(d: int, direction: str, smem_bytes: int, variant=None) -> dict:
    Br, Bc = fa2_blocks(d, smem_bytes, direction)
    return {"Br": Br, "Bc": Bc, "smem": fa2_smem_floats(Br, Bc, d, direction) * 4}


def fa2_instances(variant=None) -> tuple:
    """Every fa2_forward / fa2_backward<D, B, B> the planner may pick."""
    return tuple(f"fa2_{direction}<{D}, {B}, {B}>" for direction in ("forward", "backward")
                 for D in FA2_HEAD_DIMS for B in (16, 32, 64))


# ----------------------------------------------------------------------------- tensor cores

_TC = "tc"  # the registry entry whose tile tables the tc_* functions below read


def tc_variant(compute_capability, d: int) -> str:
    """variant('tc', ...): "wgmma" (kernels/tc90.cu) or "mma" (kernels/tc.cu)."""
    return variant(_TC, compute_capability, d)


def _tiles(v: str, direction: str) -> dict:
    return registry.get(_TC).variants[v].tiles[direction]


def tc_names(bf16: bool, d: int, fwd: dict | None = None, bwd: dict | None = None,
             variant: str = "mma") -> tuple:
    """The C++ names of the tensor-core template instances for one dtype and head dim:
    kernels/tc.cu's (variant "mma") or kernels/tc90.cu's (variant "wgmma"): forward, backward,
    the D pre-pass, dQ's rounding."""
    flag = "true" if bf16 else "false"
    f = fwd or _tiles(variant, "forward")[d]
    b = bwd or _tiles(variant, "backward")[d]
    if variant == "wgmma":
        return (f"tc90_forward<{flag}, {d}, {f['BC']}, {f['NWG']}, {f['MINB']}>",
                f"tc90_backward<{flag}, {d}, {b['BR']}, {b['BC']}, {b['QS']}, {b['MINB']}>",
                f"tc_backward_dot<{flag}>", f"tc_backward_dq<{flag}>")
    return (f"tc_forward<{flag}, {d}, {f['BC']}, {f['NW']}, {f['WM']}, {f['BK']}>",
            f"tc_backward<{flag}, {d}, {b['BR']}, {b['BC']}, {b['NW']}, {b['WS']}, {b['WKV']}, "
            f"{b['WQ']}, {b['QS']}>",
            f"tc_backward_dot<{flag}>", f"tc_backward_dq<{flag}>")


def tc_instances(variant: str) -> tuple:
    """Every default instance of one tensor-core source, both dtypes, all its head dims, and
    (kernels/tc.cu) the backward's smaller tiles for GPUs with less shared memory."""
    dims = sorted(_tiles(variant, "forward"))
    takes = registry.get(_TC).variants[variant].dtypes or registry.get(_TC).dtypes
    flags = [flag for flag, dt in ((False, "float16"), (True, "bfloat16")) if dt in takes]
    names = [n for bf16 in flags for d in dims for n in tc_names(bf16, d, variant=variant)]
    if variant == "mma":
        names += [tc_names(bf16, d, bwd=c)[1] for bf16 in (False, True)
                  for d, cs in sorted(registry.TC_BACKWARD_SMALLER.items()) for c in cs]
    return tuple(names)


def tc_head_group(l2_bytes: int, N: int, d: int, BH: int, itemsize: int = 2) -> int:
    """Heads per group of the causal block order (kernels/tc_blocks.cuh block_order,
    reference.tc_block_order): as many heads as have the operands every block of a head streams
    through (forward: K and V, N = Nk; backward: Q and dO, N = Nq; 2 N d itemsize bytes) within a
    third of L2, at least 1 and at most BH. Resident thread blocks then share few heads' operands
    while the longest blocks of all those heads start first."""
    per_head = 2 * N * d * itemsize
    return max(1, min(BH, (l2_bytes // 3) // max(1, per_head)))


def _config_variant(config: dict | None, direction: str, variant: str) -> str:
    """A tuning config names its variant by its keys (NWG / MINB: kernels/tc90.cu): the variant
    whose tile tables have every key of it and the fewest others (ties: the portable one)."""
    if config is None:
        return variant
    spec = registry.get(_TC)
    fits = []
    for name, v in spec.variants.items():
        keys = set(next(iter(v.tiles[direction].values())))
        if set(config) <= keys:
            fits.append((len(keys - set(config)), name != spec.portable_variant(), name))
    return min(fits)[2] if fits else spec.portable_variant()


def tc_plan(d: int, direction: str, config: dict | None = None, variant: str = "mma") -> dict:
    """Tile shape, threads and shared memory of a tensor-core launch (no GPU needed): kernels/tc.cu
    (variant "mma") or kernels/tc90.cu (variant "wgmma"; a config with NWG or MINB is one)."""
    check_head_dim(_TC, d)
    variant = _config_variant(config, direction, variant)
    head_dims = registry.get(_TC).variants[variant].head_dims
    if head_dims is not None and d not in head_dims:
        source = registry.get(_TC).variants[variant].source
        raise ValueError(f"kernels/{source} has no head dim {d} (it has {head_dims})")
    c = dict(config or _tiles(variant, direction)[d])
    if variant == "wgmma":
        if direction == "forward":
            Br, Bc = 64 * c["NWG"], c["BC"]
            return {"Br": Br, "Bc": Bc, "smem": (Br + 4 * Bc) * d * 2, "threads": 128 * c["NWG"],
                    "config": c, "variant": variant, "warps": 4 * c["NWG"], "Bk": Bc}
        Br, Bc = c["BR"], c["BC"]
        # K_j, V_j, dS^T, QS stages of (Q_i, dO_i) and of (L_i, D_i)
        smem = (2 * Bc + 2 * c["QS"] * Br) * d * 2 + Bc * Br * 2 + 2 * c["QS"] * Br * 4
        warps = Bc // 16
        return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 2 * Bc, "config": c,
                "variant": variant, "warps": warps,
                "grid": (warps, warps, 4 if Br == 64 else warps)}  # kernels/tc90.cu's header
    if direction == "forward":
        Br, Bc = 16 * c["WM"] * c["NW"], c["BC"]
        smem = (Br + 4 * Bc) * d * 2  # Q_i, two stages of K_j and V_j
        return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 32 * c["NW"], "config": c,
                "variant": variant, "warps": c["NW"], "Bk": c["BK"]}
    Br, Bc = c["BR"], c["BC"]
    # K_j, V_j, P^T, dS^T, QS stages of (Q_i, dO_i) and of (L_i, D_i)
    smem = (2 * Bc + 2 * c["QS"] * Br) * d * 2 + 2 * Bc * Br * 2 + 2 * c["QS"] * Br * 4
    return {"Br": Br, "Bc": Bc, "smem": smem, "threads": 32 * c["NW"], "config": c,
            "variant": variant, "warps": c["NW"], "grid": (c["WS"], c["WKV"], c["WQ"])}


def tc_plan_fitting(d: int, direction: str, variant: str, smem_bytes: int) -> dict:
    """tc_plan with the table's tiles, or where they take more than `smem_bytes` of shared
    memory the first of kernels/tc.cu's smaller ones that fits (registry TC_BACKWARD_SMALLER);
    the table's where none does (the launch then refuses it, saying what to do)."""
    p = tc_plan(d, direction, variant=variant)
    if p["smem"] <= smem_bytes or variant != "mma" or direction != "backward":
        return p
    for c in registry.TC_BACKWARD_SMALLER.get(d, ()):
        smaller = tc_plan(d, direction, c, variant)
        if smaller["smem"] <= smem_bytes:
            return smaller
    return p


class NoTileFits(ValueError):
    """A kernel's tiles need more shared memory per block than the GPU allows. `why` says so in
    bytes; the message adds what to run instead."""

    def __init__(self, why: str, instead: str):
        super().__init__(f"{why}: {instead}")
        self.why = why


def tc_plan_for(d: int, direction: str, smem_bytes: int, variant: str | None = None) -> dict:
    """plan() of kernel 'tc': tc_plan_fitting, refused where the device's shared memory is too
    small for every tile it has."""
    p = tc_plan_fitting(d, direction, variant or registry.get(_TC).portable_variant(), smem_bytes)
    if p["smem"] > smem_bytes:
        fallbacks = registry.for_auto("float32")
        raise NoTileFits(f"kernel {_TC!r} at head_dim {d} needs {p['smem']} bytes of shared "
                         f"memory per block; this GPU allows {smem_bytes}",
                         "use kernel=" + " or ".join(repr(n) for n in fallbacks)
                         + " on float32 inputs (x.astype(cupy.float32))")
    return p
