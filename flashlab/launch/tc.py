"""Kernel 'tc': F2 and G2 on tensor cores, float16 / bfloat16 in, fp32 sums.

Two sources (registry variants): kernels/tc.cu ("mma": mma.sync, sm_80+) and kernels/tc90.cu
("wgmma": sm_90a, compute capability 9.0 only), with tile tables per head dim (plans.tc_plan).
Forward: one launch, grid (Nq / Br, B*H). Backward: the D pre-pass (which also zeroes the fp32
dQ accumulator), the per-K/V-block kernel (atomic adds into dQ), and dQ's rounding to the input
dtype. Causal launches start their longest blocks first, plans.tc_head_group heads at a time.
"""
from __future__ import annotations

import math

import numpy as np

from .. import registry
from . import plans
from .buffers import finish, step_buffers
from .compiler import get_module
from .device import Launch, _dtype_name, device_limits
from .prepared import Prepared, Slot, cached, kernel_step
from .prepared import rows as Rows
from .sources import Source, ours, variant_of
from .variants import device_args, order_args, sum_groups

NAME = "tc"  # this launcher's registry entry


def launch_plan(device: int, d: int, direction: str, config: dict | None = None,
                source: Source | None = None) -> dict:
    """tc_plan for the variant that runs: the one `config` names, else the one a user's
    `source` is a copy of (Source.variant, decided from the kernels it defines; of the
    variants that build the same file, the device's: a copy of tc.cu runs as "turing" on a
    T4), else the device's (plans.variant)."""
    limits = device_limits(device)
    variant = plans.variant(NAME, int(limits["compute_capability"]), d)
    if source is not None and config is None:
        spec = registry.get(NAME)
        mine = source.variant or variant_of(spec, source.text)
        if spec.variants[mine].source != spec.variants[variant].source:
            variant = mine
    if config is None:  # the table's tiles, or smaller ones where this GPU has less memory
        return plans.tc_plan_for(d, direction, limits["smem_optin"], variant)
    return plans.tc_plan(d, direction, config, variant)


def _module(ctx: Launch, q_dtype, d, trace, source, p, fwd=None, bwd=None):
    """The module with this dtype's and head dim's instances, and their names (forward,
    backward, the D pre-pass, dQ's rounding)."""
    name = _dtype_name(q_dtype)
    v = ctx.spec.variants[p["variant"]]
    if v.dtypes is not None and name not in v.dtypes:
        raise ValueError(f"kernel {NAME!r} runs kernels/{v.source} as variant {p['variant']!r} "
                         f"here, which takes {' or '.join(v.dtypes)} only, not {name}: pass "
                         f"float16 inputs, or kernel='fa2' on float32")
    names = plans.tc_names(name == "bfloat16", d, fwd, bwd, p["variant"])
    src = source if source is not None else ours(ctx.spec.name, p["variant"])
    arch = v.arch
    return get_module(src, trace, names, arch=arch, kernel=ctx.spec.name), names


def element_strides(x) -> tuple:
    """(batch, head, row) strides of a CuPy array in elements (the kernels' Rows)."""
    item = x.dtype.itemsize
    return tuple(s // item for s in x.strides[:3])


_cache: dict = {}  # key -> Prepared: untraced calls, per device, sizes, dtype, strides, config


def _with_variant(ctx: Launch, variant, source, p: dict, direction: str):
    """(the source to compile, the kernel's variant arguments after its Rows: TC_MOD_PARAMS in
    kernels/tc_mods.cuh) for `variant` (a KernelVariant, or None: the plain build, no
    arguments) with plan p's tiles; direction picks the ranges and the block order (per query
    block forward, per key block backward)."""
    if variant is None:
        return source, ()
    dims = ctx.dims
    base = source if source is not None else ours(ctx.spec.name, p["variant"])
    src, a = device_args(ctx, variant, base, p["Br"], p["Bc"], fast_math=True)
    group = plans.tc_head_group(ctx.limits["l2_bytes"], dims.Nk if direction == "forward"
                                else dims.Nq, dims.d, dims.B * dims.H)
    order = order_args(ctx, variant, a, direction, p["Br"], p["Bc"], group)
    return src, (np.int32(dims.kv_heads), a.floats, a.ints, a.tiles,
                 a.rows if direction == "forward" else a.cols, a.tiles_B, a.tiles_H, order)


def prepare_forward(ctx: Launch, dtype, rows: dict, p: dict, trace=False, source=None,
                    targs=(), variant=None) -> Prepared:
    """F2 on tensor cores (tc_forward / tc90_forward) for these sizes, dtype, operand rows
    (name -> element strides of q, k, v, o) and plan p (launch_plan's), resolved once per key
    (traced calls: every time, their trace buffers among the constants). Buffers: q, k, v, o,
    lse. variant: a flashlab.mods.kernel.KernelVariant compiled in (FL_MODS, tc_mods.cuh)."""
    dims = ctx.dims
    key = ("forward", ctx.device, _dtype_name(dtype), dims, tuple(rows[n] for n in "qkvo"),
           p["variant"], _frozen(p["config"]), None if source is None else source.digest,
           None if variant is None else variant.key)

    def build():
        Nq, Nk, d, BH = dims.Nq, dims.Nk, dims.d, dims.B * dims.H
        src, mods = _with_variant(ctx, variant, source, p, "forward")
        mod, names = _module(ctx, dtype, d, trace, src, p, fwd=p["config"])
        group = plans.tc_head_group(ctx.limits["l2_bytes"], Nk, d, BH) if ctx.causal else 1
        args = (Slot("q"), Slot("k"), Slot("v"), Slot("o"), Slot("lse"), np.int32(Nq),
                np.int32(Nk), ctx.tau, ctx.causal, np.int32(group), np.int32(dims.H),
                *(Rows(rows[n]) for n in "qkvo")) + mods + tuple(targs)
        step = kernel_step(mod, names[0], (math.ceil(Nq / p["Br"]), BH), (p["threads"],), args,
                     p["smem"])
        return Prepared(ctx.spec.name, [step], describe=ctx.desc)

    return build() if trace else cached(_cache, key, build)


_BACK_ROWS = ("q", "k", "v", "do", "o", "dq", "dk", "dv")  # the backward's strided operands


def prepare_backward(ctx: Launch, dtype, rows: dict, p: dict, trace=False, source=None,
                     targs=(), variant=None) -> Prepared:
    """G2 on tensor cores: the D pre-pass (which zeroes dQ's fp32 accumulator), the per-K/V-block
    kernel (atomic adds into dQ), dQ's rounding to the input dtype; rows: element strides of
    q, k, v, do, o and of the gradients dq, dk, dv (written in place with their strides).
    Buffers: do, q, k, v, o, lse, dq, dk, dv; workspace: Dvec (BH, Nq) and dq_acc (BH, Nq, d),
    float32. variant: as prepare_forward's; with GQA dk and dv are per query head (B, H, Nk,
    d), which the caller sums per group."""
    dims = ctx.dims
    key = ("backward", ctx.device, _dtype_name(dtype), dims, tuple(rows[n] for n in _BACK_ROWS),
           p["variant"],
           _frozen(p["config"]), None if source is None else source.digest,
           None if variant is None else variant.key)

    def build():
        Nq, Nk, d, BH = dims.Nq, dims.Nk, dims.d, dims.B * dims.H
        src, mods = _with_variant(ctx, variant, source, p, "backward")
        mod, names = _module(ctx, dtype, d, trace, src, p, bwd=p["config"])
        n = BH * Nq
        H = np.int32(dims.H)
        dot = kernel_step(mod, names[2], (math.ceil(n / 8),), (256,),
                    (Slot("do"), Slot("o"), Slot("Dvec"), Slot("dq_acc"), np.int64(n),
                     np.int32(d), Rows(rows["do"]), Rows(rows["o"]), np.int32(Nq), H), 0)  # G2:L0
        group = plans.tc_head_group(ctx.limits["l2_bytes"], Nq, d, BH) if ctx.causal else 1
        main = kernel_step(mod, names[1], (math.ceil(Nk / p["Bc"]), BH), (p["threads"],),
                     (Slot("q"), Slot("k"), Slot("v"), Slot("do"), Slot("lse"), Slot("Dvec"),
                      Slot("dq_acc"), Slot("dk"), Slot("dv"), np.int32(Nq), np.int32(Nk),
                      ctx.tau, ctx.causal, np.int32(group), H,
                      *(Rows(rows[x]) for x in ("q", "k", "v", "do", "dk", "dv")))
                     + mods + tuple(targs), p["smem"])
        n8 = Nq * d // 8  # a head's threads: eight columns each (d is a multiple of 8)
        rnd = kernel_step(mod, names[3], (math.ceil(n8 / 256), BH), (256,),
                    (Slot("dq_acc"), Slot("dq"), np.int32(n8), np.int32(d), ctx.tau,
                     Rows(rows["dq"]), H), 0)
        return Prepared(ctx.spec.name, [dot, main, rnd], describe=ctx.desc,
                        workspace={"Dvec": BH * Nq * 4, "dq_acc": BH * Nq * d * 4})

    return build() if trace else cached(_cache, key, build)


def _frozen(config):
    return None if config is None else tuple(sorted(config.items()))


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None,
            variant=None):
    """F2 on tensor cores (tc_forward / tc90_forward); variant: a KernelVariant compiled in."""
    p = launch_plan(ctx.device, ctx.dims.d, "forward", config, source)
    state, targs = step_buffers(ctx, trace, "forward", p, ("m_i", "l_i", "O~"))
    rows = {n: element_strides(x) for n, x in zip("qkvo", (q, k, v, o))}
    call = prepare_forward(ctx, q.dtype, rows, p, trace, source, targs, variant)
    call.run({"q": q, "k": k, "v": v, "o": o, "lse": lse})
    return finish(ctx, state, "forward", o, lse)


def backward(ctx: Launch, do, q, k, v, o, lse, dq, dk, dv, trace=False, source=None,
             config=None, variant=None):
    """G2 on tensor cores (prepare_backward's three launches); variant: as forward's (with
    GQA, dk and dv per query head, then summed over each group)."""
    cp, dims = ctx.cp, ctx.dims
    p = launch_plan(ctx.device, dims.d, "backward", config, source)
    state, targs = step_buffers(ctx, trace, "backward", p, ("dQ_ij", "dK~", "dV~"))
    dk_out, dv_out = dk, dv
    if dims.kv_heads != dims.H:  # GQA: per query head first
        dk, dv = (cp.empty((dims.B, dims.H, dims.Nk, dims.d), dq.dtype) for _ in range(2))
    rows = {n: element_strides(x) for n, x in zip(_BACK_ROWS, (q, k, v, do, o, dq, dk, dv))}
    call = prepare_backward(ctx, q.dtype, rows, p, trace, source, targs, variant)
    work = cp.empty(call.workspace_bytes, cp.uint8)  # freed in stream order
    call.run({"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse, "dq": dq, "dk": dk,
              "dv": dv}, workspace=work.data.ptr)
    if dk is not dk_out:
        sum_groups(dk, dk_out, dims.kv_heads)
        sum_groups(dv, dv_out, dims.kv_heads)
        dk, dv = dk_out, dv_out
    return finish(ctx, state, "backward", dq, dk, dv)
