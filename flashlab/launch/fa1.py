"""Kernel 'fa1' (kernels/fa1.cu): FlashAttention as the paper's Algorithm 1 (A1) and its
backward (B1), one thread block of 128 threads per head, tiles from plans.fa1_blocks."""
from __future__ import annotations

import numpy as np

from .buffers import finish, step_buffers
from .compiler import function, get_module, launch
from .device import Launch
from .plans import plan
from .sources import ours


def _module(ctx: Launch, trace, source):
    return get_module(source or ours(ctx.spec.name), trace, kernel=ctx.spec.name,
                      backend=ctx.backend)


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None):
    cp, dims, spec = ctx.cp, ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = plan(spec.name, d, "forward", ctx.limits["smem_optin"])
    Br, Bc = p["Br"], p["Bc"]
    state, targs = step_buffers(ctx, trace, "forward", p, ("m_i", "l_i", "O_i"))
    mod = _module(ctx, trace, source)
    l = cp.empty((BH, Nq), cp.float32)
    m = cp.empty((BH, Nq), cp.float32)
    launch(spec.name, function(mod, "fa1_forward"), (BH,), (128,),
           (q, k, v, o, l, m, lse, np.int32(Nq), np.int32(Nk), np.int32(d),
            np.int32(Br), np.int32(Bc), ctx.tau, ctx.causal) + targs, p["smem"], ctx.desc)
    return finish(ctx, state, "forward", o, lse)


def backward(ctx: Launch, do, q, k, v, o, lse, dq, dk, dv, trace=False, source=None,
             config=None):
    cp, dims, spec = ctx.cp, ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = plan(spec.name, d, "backward", ctx.limits["smem_optin"])
    Br, Bc = p["Br"], p["Bc"]
    state, targs = step_buffers(ctx, trace, "backward", p, ("dQ_i", "dK~_j", "dV~_j"))
    lse32 = lse.astype(cp.float32, copy=False)
    mod = _module(ctx, trace, source)
    launch(spec.name, function(mod, "fa1_backward"), (BH,), (128,),
           (q, k, v, o, do, lse32, dq, dk, dv, np.int32(Nq), np.int32(Nk), np.int32(d),
            np.int32(Br), np.int32(Bc), ctx.tau, ctx.causal) + targs, p["smem"], ctx.desc)
    return finish(ctx, state, "backward", dq, dk, dv)
