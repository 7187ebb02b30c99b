"""Kernel 'naive' (kernels/naive.cu): standard attention, A0, with S and P in HBM.

Forward: S = tau Q K^T (A0:L1), P = softmax(S) and L (A0:L2), O = P V (A0:L3), one tiled matmul
kernel and one softmax kernel. Backward recomputes S and P, then dV, dP, dS, dQ, dK.
"""
from __future__ import annotations

import math

import numpy as np

from .. import registry
from .compiler import function, get_module, launch
from .device import Launch
from .sources import ours


def _n_by_n(ctx: Launch, BH, Nq, Nk):
    """The two (B*H, Nq, Nk) matrices standard attention keeps in HBM (S and P, or P and dP)."""
    cp = ctx.cp
    try:
        return cp.empty((BH, Nq, Nk), cp.float32), cp.empty((BH, Nq, Nk), cp.float32)
    except cp.cuda.memory.OutOfMemoryError as e:
        fast = registry.for_auto("float32")[0]
        raise MemoryError(f"kernel {ctx.spec.name!r} needs {2 * BH * Nq * Nk * 4 / 1e9:.1f} GB "
                          f"for two N x N matrices ({ctx.desc}); use kernel={fast!r}") from e


def _module(ctx: Launch, source):
    return get_module(source or ours(ctx.spec.name), kernel=ctx.spec.name, backend=ctx.backend)


def forward(ctx: Launch, q, k, v, o, lse, trace=False, source=None, config=None):
    dims, name, desc = ctx.dims, ctx.spec.name, ctx.desc
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    mod = _module(ctx, source)
    S, P = _n_by_n(ctx, BH, Nq, Nk)
    mm = function(mod, "naive_matmul")
    launch(name, mm, (math.ceil(Nk / 64), math.ceil(Nq / 64), BH), (256,),
           (q, k, S, np.int32(Nq), np.int32(Nk), np.int32(d), np.int32(0), np.int32(1),
            ctx.tau, ctx.causal), 0, desc)                                          # A0:L1
    launch(name, function(mod, "naive_softmax"), (BH * Nq,), (256,),
           (S, P, lse, np.int32(Nk)), 0, desc)                                      # A0:L2
    launch(name, mm, (math.ceil(d / 64), math.ceil(Nq / 64), BH), (256,),
           (P, v, o, np.int32(Nq), np.int32(d), np.int32(Nk), np.int32(0), np.int32(0),
            np.float32(1.0), np.int32(0)), 0, desc)                                 # A0:L3
    return o, lse


def backward(ctx: Launch, do, q, k, v, o, lse, dq, dk, dv, trace=False, source=None,
             config=None):
    dims, name, desc, cp = ctx.dims, ctx.spec.name, ctx.desc, ctx.cp
    Nq, Nk, d = dims.Nq, dims.Nk, dims.d
    BH = dims.B * dims.H
    mod = _module(ctx, source)
    mm = function(mod, "naive_matmul")
    S, P = _n_by_n(ctx, BH, Nq, Nk)
    scratch_lse = cp.empty((BH, Nq), cp.float32)

    def gemm(A, Bm, C, M, N, K, ta, tb, alpha, causal_flag=0):
        launch(name, mm, (math.ceil(N / 64), math.ceil(M / 64), BH), (256,),
               (A, Bm, C, np.int32(M), np.int32(N), np.int32(K), np.int32(ta),
                np.int32(tb), np.float32(alpha), np.int32(causal_flag)), 0, desc)

    gemm(q, k, S, Nq, Nk, d, 0, 1, ctx.tau, dims.causal)  # S = tau Q K^T (recomputed)
    launch(name, function(mod, "naive_softmax"), (BH * Nq,), (256,),
           (S, P, scratch_lse, np.int32(Nk)), 0, desc)    # P = softmax(S)
    gemm(P, do, dv, Nk, d, Nq, 1, 0, 1.0)                 # dV = P^T dO
    gemm(do, v, S, Nq, Nk, d, 0, 1, 1.0)                  # dP = dO V^T (into S)
    launch(name, function(mod, "naive_dsoftmax"), (BH * Nq,), (256,),
           (P, S, np.int32(Nk)), 0, desc)                 # dS = P * (dP - D)
    gemm(S, k, dq, Nq, d, Nk, 0, 0, ctx.tau)              # dQ = tau dS K
    gemm(S, q, dk, Nk, d, Nq, 1, 0, ctx.tau)              # dK = tau dS^T Q
    return dq, dk, dv
