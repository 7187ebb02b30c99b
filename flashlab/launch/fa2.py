"""Kernel 'fa2' (kernels/fa2.cu): FlashAttention-2's loop order with register tiles in fp32 (F2
forward, G2 backward). Templates fa2_forward / fa2_backward<D, BR, BC>, one instance per head
dim and tile (plans.fa2_blocks); grid (Nq / Br, B*H) forward, (Nk / Bc, B*H) backward.
Operands contiguous. Untraced plain calls on a GPU are also prepared once per shape
(prepare_forward, prepare_backward: flashlab.torch's float32 path), from the same argument
lists the CuPy API's launches use."""
from __future__ import annotations

import math

import numpy as np

from .buffers import finish, step_buffers
from .compiler import function, get_module, launch
from .device import Launch
from .plans import plan
from .prepared import Prepared, Slot, cached, kernel_step
from .sources import ours
from .variants import device_args, sum_groups

NAME = "fa2"  # this launcher's registry entry
_cache: dict = {}  # key -> Prepared: untraced plain calls, per device and sizes


def _module(ctx: Launch, trace, name, source):
    return get_module(source or ours(ctx.spec.name), trace, (name,), kernel=ctx.spec.name,
                      backend=ctx.backend)


def _forward_launch(ctx: Launch, p: dict, bufs: tuple, extra: tuple):
    """(instance name, grid, arguments) of F2's launch with buffers q, k, v, o, lse."""
    dims = ctx.dims
    name = f"fa2_forward<{dims.d}, {p['Br']}, {p['Bc']}>"
    return name, (math.ceil(dims.Nq / p["Br"]), dims.B * dims.H), \
        tuple(bufs) + (np.int32(dims.Nq), np.int32(dims.Nk), ctx.tau, ctx.causal) + extra


def _backward_launches(ctx: Launch, p: dict, bufs: dict, extra: tuple):
    """((dot grid, dot arguments), (instance name, grid, arguments)) of G2's two launches: the
    D pre-pass, which also zeroes dQ (G2:L7 accumulates into it with atomic adds), and the
    per-K/V-block kernel; bufs: do, q, k, v, o, lse, Dvec, dq, dk, dv."""
    dims = ctx.dims
    rows = dims.B * dims.H * dims.Nq
    dot = ((math.ceil(rows / 8),), (bufs["do"], bufs["o"], bufs["Dvec"], bufs["dq"],
                                    np.int64(rows), np.int32(dims.d)))                # G2:L0
    name = f"fa2_backward<{dims.d}, {p['Br']}, {p['Bc']}>"
    main = (name, (math.ceil(dims.Nk / p["Bc"]), dims.B * dims.H),
            tuple(bufs[n] for n in ("q", "k", "v", "do", "lse", "Dvec", "dq", "dk", "dv")) +
            (np.int32(dims.Nq), np.int32(dims.Nk), ctx.tau, ctx.causal) + extra)
    return dot, main


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None,
            variant=None):
    """F2 (fa2_forward); variant: a flashlab.mods.kernel.KernelVariant compiled in (FL_MODS)."""
    spec = ctx.spec
    p = plan(spec.name, ctx.dims.d, "forward", ctx.limits["smem_optin"])
    state, targs = step_buffers(ctx, trace, "forward", p, ("m_i", "l_i", "O~"))
    extra = ()
    if variant is not None:
        source, extra = _variant_args(ctx, variant, source, p["Br"], p["Bc"])
    name, grid, args = _forward_launch(ctx, p, (q, k, v, o, lse), extra + targs)
    mod = _module(ctx, trace, name, source)
    launch(spec.name, function(mod, name), grid, (256,), args, p["smem"], ctx.desc)
    return finish(ctx, state, "forward", o, lse)


def _prepared_variant(ctx: Launch, variant, p: dict):
    """(the source, the kernel's variant arguments) of a prepared call: (None, ()) without one."""
    if variant is None:
        return None, ()
    return _variant_args(ctx, variant, None, p["Br"], p["Bc"])


def prepare_forward(ctx: Launch, dtype, rows, p: dict, targs=(), variant=None) -> Prepared:
    """F2 for these sizes on ctx's GPU, resolved once: buffers q, k, v, o, lse (contiguous;
    rows, the strided kernels' operand strides, is None here). variant: as forward's."""
    def build():
        source, extra = _prepared_variant(ctx, variant, p)
        name, grid, args = _forward_launch(ctx, p, tuple(map(Slot, ("q", "k", "v", "o", "lse"))),
                                           extra + tuple(targs))
        mod = _module(ctx, False, name, source)
        return Prepared(NAME, [kernel_step(mod, name, grid, (256,), args, p["smem"])],
                        describe=ctx.desc)

    return cached(_cache, ("forward", ctx.device, ctx.dims, p["Br"], p["Bc"],
                           None if variant is None else variant.key), build)


def prepare_backward(ctx: Launch, dtype, rows, p: dict, targs=(), variant=None) -> Prepared:
    """G2 as prepare_forward: buffers do, q, k, v, o, lse, dq, dk, dv; workspace Dvec (B*H, Nq)
    float32. With GQA (a variant's) dk and dv are per query head, (B, H, Nk, d): the caller
    sums each group."""
    def build():
        source, extra = _prepared_variant(ctx, variant, p)
        names = ("do", "q", "k", "v", "o", "lse", "Dvec", "dq", "dk", "dv")
        (dot_grid, dot_args), (name, grid, args) = _backward_launches(
            ctx, p, {n: Slot(n) for n in names}, extra + tuple(targs))
        mod = _module(ctx, False, name, source)
        steps = [kernel_step(mod, "fa2_backward_dot", dot_grid, (256,), dot_args, 0),
                 kernel_step(mod, name, grid, (256,), args, p["smem"])]
        dims = ctx.dims
        return Prepared(NAME, steps, describe=ctx.desc,
                        workspace={"Dvec": dims.B * dims.H * dims.Nq * 4})

    return cached(_cache, ("backward", ctx.device, ctx.dims, p["Br"], p["Bc"],
                           None if variant is None else variant.key), build)


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
    p = plan(spec.name, dims.d, "backward", ctx.limits["smem_optin"])
    state, targs = step_buffers(ctx, trace, "backward", p, ("dQ_ij", "dK~", "dV~"))
    extra = ()
    if variant is not None:
        source, extra = _variant_args(ctx, variant, source, p["Br"], p["Bc"])
    groups = dims.H // dims.kv_heads
    if groups > 1:  # GQA: dK, dV per query head, each group summed below
        dk_out, dv_out = dk, dv
        dk, dv = (cp.empty((dims.B, dims.H, dims.Nk, dims.d), cp.float32) for _ in range(2))
    bufs = {"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse.astype(cp.float32, copy=False),
            "Dvec": cp.empty((dims.B * dims.H, dims.Nq), cp.float32), "dq": dq, "dk": dk,
            "dv": dv}
    (dot_grid, dot_args), (name, grid, args) = _backward_launches(ctx, p, bufs, extra + targs)
    mod = _module(ctx, trace, name, source)
    launch(spec.name, function(mod, "fa2_backward_dot"), dot_grid, (256,), dot_args, 0,
           ctx.desc)                                                                 # G2:L0
    launch(spec.name, function(mod, name), grid, (256,), args, p["smem"], ctx.desc)
    if groups > 1:
        for full, out in ((dk, dk_out), (dv, dv_out)):
            sum_groups(full, out, dims.kv_heads)
        dk, dv = dk_out, dv_out
    return finish(ctx, state, "backward", dq, dk, dv)
