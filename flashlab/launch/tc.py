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
from .compiler import function, get_module, launch
from .device import Launch, _dtype_name, device_limits
from .sources import Source, ours, variant_of

NAME = "tc"  # this launcher's registry entry


def launch_plan(device: int, d: int, direction: str, config: dict | None = None,
                source: Source | None = None) -> dict:
    """tc_plan for the variant that runs: the one `config` names, else the one a user's
    `source` is a copy of (Source.variant, decided from the kernels it defines), else the
    device's (plans.variant)."""
    cc = int(device_limits(device)["compute_capability"])
    variant = plans.variant(NAME, cc, d)
    if source is not None and config is None:
        variant = source.variant or variant_of(registry.get(NAME), source.text)
    return plans.tc_plan(d, direction, config, variant)


def _module(ctx: Launch, q, d, trace, source, p, fwd=None, bwd=None):
    """The module with this dtype's and head dim's instances, and their names (forward,
    backward, the D pre-pass, dQ's rounding)."""
    bf16 = _dtype_name(q.dtype) == "bfloat16"
    names = plans.tc_names(bf16, d, fwd, bwd, p["variant"])
    src = source if source is not None else ours(ctx.spec.name, p["variant"])
    arch = ctx.spec.variants[p["variant"]].arch
    return get_module(src, trace, names, arch=arch, kernel=ctx.spec.name), names


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None):
    """F2 on tensor cores (tc_forward / tc90_forward)."""
    cp, dims, spec = ctx.cp, ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = launch_plan(ctx.device, d, "forward", config, source)
    mod, names = _module(ctx, q, d, trace, source, p, fwd=p["config"])
    state, targs = step_buffers(ctx, trace, "forward", p, ("m_i", "l_i", "O~"))
    group = plans.tc_head_group(ctx.limits["l2_bytes"], Nk, d, BH) if ctx.causal else 1
    launch(spec.name, function(mod, names[0]), (math.ceil(Nq / p["Br"]), BH), (p["threads"],),
           (q, k, v, o, lse, np.int32(Nq), np.int32(Nk), ctx.tau, ctx.causal, np.int32(group))
           + targs, p["smem"], ctx.desc)
    return finish(ctx, state, "forward", o, lse)


def backward(ctx: Launch, do, q, k, v, o, lse, dq, dk, dv, trace=False, source=None,
             config=None):
    """G2 on tensor cores: D pre-pass (zeroes dQ's fp32 accumulator), the per-K/V-block kernel
    (atomic adds into dQ), dQ's rounding to the input dtype."""
    cp, dims, spec = ctx.cp, ctx.dims, ctx.spec
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    p = launch_plan(ctx.device, d, "backward", config, source)
    mod, names = _module(ctx, q, d, trace, source, p, bwd=p["config"])
    state, targs = step_buffers(ctx, trace, "backward", p, ("dQ_ij", "dK~", "dV~"))
    rows = BH * Nq
    dq_acc = cp.empty((BH, Nq, d), cp.float32)
    Dvec = cp.empty((BH, Nq), cp.float32)
    launch(spec.name, function(mod, names[2]), (math.ceil(rows / 8),), (256,),
           (do, o, Dvec, dq_acc, np.int64(rows), np.int32(d)), 0, ctx.desc)          # G2:L0
    group = plans.tc_head_group(ctx.limits["l2_bytes"], Nq, d, BH) if ctx.causal else 1
    launch(spec.name, function(mod, names[1]), (math.ceil(Nk / p["Bc"]), BH), (p["threads"],),
           (q, k, v, do, lse, Dvec, dq_acc, dk, dv, np.int32(Nq), np.int32(Nk), ctx.tau,
            ctx.causal, np.int32(group)) + targs, p["smem"], ctx.desc)
    n = rows * d
    launch(spec.name, function(mod, names[3]), (math.ceil(n / 256),), (256,),
           (dq_acc, dq, np.int64(n), ctx.tau), 0, ctx.desc)
    return finish(ctx, state, "backward", dq, dk, dv)
