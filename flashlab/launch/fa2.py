"""Kernel 'fa2' (kernels/fa2.cu): FlashAttention-2's loop order with register tiles in fp32 (F2
forward, G2 backward). Templates fa2_forward / fa2_backward<D, BR, BC>, one instance per head
dim and tile (plans.fa2_blocks); grid (Nq / Br, B*H) forward, (Nk / Bc, B*H) backward."""
from __future__ import annotations

import math

import numpy as np

from .buffers import finish, step_buffers
from .compiler import function, get_module, launch
from .device import Launch
from .plans import plan
from .sources import ours
from .variants import device_args, sum_groups


def _module(ctx: Launch, trace, name, source):
    return get_module(source or ours(ctx.spec.name), trace, (name,), kernel=ctx.spec.name,
                      backend=ctx.backend)


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None,
            variant=None):
    """F2 (fa2_forward); variant: a flashlab.mods.kernel.KernelVariant compiled in (FL_MODS)."""
    dims, spec = ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = plan(spec.name, d, "forward", ctx.limits["smem_optin"])
    Br, Bc = p["Br"], p["Bc"]
    state, targs = step_buffers(ctx, trace, "forward", p, ("m_i", "l_i", "O~"))
    name = f"fa2_forward<{d}, {Br}, {Bc}>"
    extra = ()
    if variant is not None:
        source, extra = _variant_args(ctx, variant, source, Br, Bc)
    mod = _module(ctx, trace, name, source)
    launch(spec.name, function(mod, name), (math.ceil(Nq / Br), BH), (256,),
           (q, k, v, o, lse, np.int32(Nq), np.int32(Nk), ctx.tau, ctx.causal) + extra + targs,
           p["smem"], ctx.desc)
    return finish(ctx, state, "forward", o, lse)


def _variant_args(ctx: Launch, variant, source, Br: int, Bc: int):
    """(the source with the variant's C in front, its kernel arguments: H and H_kv, the
    closed-over arrays, the block mask for these tiles and its head and batch extents)."""
    src, a = device_args(ctx, variant, source or ours(ctx.spec.name), Br, Bc)
    return src, (np.int32(ctx.dims.H), np.int32(ctx.dims.kv_heads), a.floats, a.ints, a.tiles,
                 a.tiles_B, a.tiles_H)


def backward(ctx: Launch, do, q, k, v, o, lse, dq, dk, dv, trace=False, source=None,
             config=None, variant=None):
    """G2 (fa2_backward_dot, fa2_backward); variant: as forward's."""
    cp, dims, spec = ctx.cp, ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = plan(spec.name, d, "backward", ctx.limits["smem_optin"])
    Br, Bc = p["Br"], p["Bc"]
    state, targs = step_buffers(ctx, trace, "backward", p, ("dQ_ij", "dK~", "dV~"))
    lse32 = lse.astype(cp.float32, copy=False)
    name = f"fa2_backward<{d}, {Br}, {Bc}>"
    extra = ()
    if variant is not None:
        source, extra = _variant_args(ctx, variant, source, Br, Bc)
    groups = dims.H // dims.kv_heads
    if groups > 1:  # GQA: dK, dV per query head, each group summed below
        dk_out, dv_out = dk, dv
        dk, dv = (cp.empty((dims.B, dims.H, Nk, d), cp.float32) for _ in range(2))
    mod = _module(ctx, trace, name, source)
    Dvec = cp.empty((BH, Nq), cp.float32)
    rows = BH * Nq
    launch(spec.name, function(mod, "fa2_backward_dot"), (math.ceil(rows / 8),), (256,),
           (do, o, Dvec, np.int64(rows), np.int32(d)), 0, ctx.desc)                 # G2:L0
    dq.fill(0)  # G2:L7 accumulates into dQ with atomic adds
    launch(spec.name, function(mod, name), (math.ceil(Nk / Bc), BH), (256,),
           (q, k, v, do, lse32, Dvec, dq, dk, dv, np.int32(Nq), np.int32(Nk), ctx.tau,
            ctx.causal) + extra + targs, p["smem"], ctx.desc)
    if groups > 1:
        for full, out in ((dk, dk_out), (dv, dv_out)):
            sum_groups(full, out, dims.kv_heads)
        dk, dv = dk_out, dv_out
    return finish(ctx, state, "backward", dq, dk, dv)
