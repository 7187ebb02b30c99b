"""Ring attention, one rank's side: its query block stays, key/value blocks come around the ring.

Forward (rank r of P, `schedule.py` says which chunks it holds):

    for step s = 0 .. P - 1:
        start passing K, V on to rank r + 1 (it arrives there for step s + 1; overlapped with:)
        for each pair (query chunk a, key chunk b) that is not hidden by the causal mask:
            O_ab, L_ab = attention(Q_a, K_b, V_b)           (the local kernel, with its lse)
            merge into (O_a, L_a)                           (A1:L11-L12 with the logsumexp:
                L_new = log(e^L_a + e^L_ab), O_a = e^(L_a - L_new) O_a + e^(L_ab - L_new) O_ab)
        receive the next K, V from rank r - 1

The merge is Algorithm 1's rescale with GPUs as the tiles: (O, L) of disjoint key blocks combine
exactly, in any order. Backward: with the final L (and D = rowsum(dO O), which the local backward
computes from O), each pair's gradient is its own: dQ_a += dQ_ab stays here, and dK_b, dV_b
accumulators travel with K_b, V_b, one more step at the end bringing them home to their owner.

The local attention and the transport are parameters (`ops`, `ring`): NumPy references and
multiprocessing pipes on CPUs (`transport.run_on_pipes`), or torch tensors with
torch.distributed (gloo on CPUs; NCCL with flashlab.torch's kernels on GPUs).
"""
from __future__ import annotations

import math

from .schedule import DIAG, SKIP, chunks_of, pair_kind, source


class NumpyOps:
    """The local attention on NumPy arrays: flashlab.flash_attention's references (kernel
    'auto': fa2's step-through for float32 / float64, tc's twin for 16 bits; or 'fa1', 'fa2').
    A block's backward must take the whole row's lse and O (B1:L7, B1:L10), so 'naive', whose
    backward recomputes the softmax over the keys it is given, cannot be one."""

    def __init__(self, kernel: str = "auto"):
        if kernel != "auto":
            from .. import registry

            spec = registry.get(kernel)
            if not {"B1", "G2"} & set(spec.algorithms):  # A0's backward: its own softmax
                raise ValueError(f"kernel {kernel!r} cannot be the ring's local kernel: its "
                                 "backward recomputes the softmax over its own keys, and a ring "
                                 "block's backward needs the whole row's lse; use 'auto' or a "
                                 "kernel whose backward takes lse (B1, G2)")
        self.kernel = kernel

    def forward(self, q, k, v, causal: bool, scale: float):
        from ..api import flash_attention

        return flash_attention(q, k, v, causal, scale, kernel=self.kernel, return_lse=True)

    def backward(self, do, q, k, v, o, lse, causal: bool, scale: float):
        from ..api import flash_attention_backward

        return flash_attention_backward(do, q, k, v, o, lse, causal, scale, kernel=self.kernel)


class TorchOps:
    """The local attention on torch tensors: CUDA tensors run flashlab.torch's ops (tc for
    fp16 / bf16, fa2 for float32; not run on GPUs yet), CPU tensors NumpyOps on their values."""

    def __init__(self, kernel: str = "auto"):
        self.cpu = NumpyOps(kernel)

    def forward(self, q, k, v, causal: bool, scale: float):
        import torch

        if q.is_cuda:
            from .. import torch as ft

            return ft.attention_forward(q, k, v, causal, scale, -1, -1)
        o, lse = self.cpu.forward(*(x.numpy() for x in (q, k, v)), causal, scale)
        return torch.from_numpy(o), torch.from_numpy(lse)

    def backward(self, do, q, k, v, o, lse, causal: bool, scale: float):
        import torch

        if q.is_cuda:
            from .. import torch as ft

            return ft.attention_backward(do, q, k, v, o, lse, causal, scale, -1, -1)
        grads = self.cpu.backward(*(x.numpy() for x in (do, q, k, v, o, lse)), causal, scale)
        return tuple(torch.from_numpy(g) for g in grads)


def ops_for(x):
    """NumpyOps for NumPy arrays, TorchOps for torch tensors."""
    return TorchOps() if type(x).__module__.startswith("torch") else NumpyOps()


def ring_forward(q, k, v, ring, causal: bool = False, softmax_scale=None, ops=None):
    """(o, lse) of this rank's queries against the whole sequence's keys: q, k, v (B, H, n, d)
    are this rank's part (schedule.shard), ring a transport (rank, size, start). o comes back in
    q's dtype, lse (B, H, n) in the accumulation dtype (float32, or float64 for float64)."""
    size, rank = ring.size, ring.rank
    ops = ops or ops_for(q)
    scale = _scale(q, softmax_scale)
    xp = _Arrays(q)
    mine = chunks_of(rank, size, causal)
    qs = xp.split(q, len(mine))
    acc = [None] * len(mine)  # (O_a, L_a) per query chunk, merged over the key chunks
    kv = (k, v)
    for s in range(size):
        pending = ring.start(kv) if s < size - 1 else None  # on to rank + 1, while we compute
        theirs = chunks_of(source(rank, s, size), size, causal)
        ks, vs = xp.split(kv[0], len(theirs)), xp.split(kv[1], len(theirs))
        for ia, a in enumerate(mine):
            for ib, b in enumerate(theirs):
                kind = pair_kind(a, b, causal)
                if kind == SKIP:
                    continue
                o_ab, lse_ab = ops.forward(qs[ia], ks[ib], vs[ib], kind == DIAG, scale)
                acc[ia] = xp.merge(acc[ia], xp.to_acc(o_ab), xp.to_acc(lse_ab))
        if pending is not None:
            kv = pending.wait()
    o = xp.cat([a[0] for a in acc])  # every query chunk met its own diagonal at step 0
    return xp.cast(o, q), xp.cat([a[1] for a in acc])


def ring_backward(do, q, k, v, o, lse, ring, causal: bool = False, softmax_scale=None, ops=None):
    """(dq, dk, dv) for this rank's q, k, v: do, o like q, lse ring_forward's. dk and dv come
    back to their owner after going round the ring with k and v."""
    size, rank = ring.size, ring.rank
    ops = ops or ops_for(q)
    scale = _scale(q, softmax_scale)
    xp = _Arrays(q)
    mine = chunks_of(rank, size, causal)
    n = len(mine)
    qs, dos, os_ = xp.split(q, n), xp.split(do, n), xp.split(o, n)
    lses = xp.split(lse, n, axis=2)
    dq = xp.zeros_acc(q)
    dqs = xp.split(dq, n)
    k_, v_, dk, dv = k, v, xp.zeros_acc(k), xp.zeros_acc(v)
    for s in range(size):
        pending = ring.start((k_, v_)) if s < size - 1 else None
        theirs = chunks_of(source(rank, s, size), size, causal)
        m = len(theirs)
        ks, vs, dks, dvs = (xp.split(x, m) for x in (k_, v_, dk, dv))
        for ia, a in enumerate(mine):
            for ib, b in enumerate(theirs):
                kind = pair_kind(a, b, causal)
                if kind == SKIP:
                    continue
                g = ops.backward(dos[ia], qs[ia], ks[ib], vs[ib], os_[ia], lses[ia],
                                 kind == DIAG, scale)
                xp.add_(dqs[ia], g[0])
                xp.add_(dks[ib], g[1])
                xp.add_(dvs[ib], g[2])
        grads = ring.start((dk, dv))  # with their block to rank + 1; the last step brings them home
        if pending is not None:
            k_, v_ = pending.wait()
        dk, dv = grads.wait()
    return xp.cast(dq, q), xp.cast(dk, k), xp.cast(dv, v)


def _scale(q, softmax_scale) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    return float(softmax_scale)


class _Arrays:
    """The few array operations the ring needs, for NumPy arrays or torch tensors."""

    def __init__(self, like):
        self.torch = type(like).__module__.startswith("torch")
        if self.torch:
            import torch

            self.m = torch
            self.acc = torch.promote_types(like.dtype, torch.float32)
        else:
            import numpy as np

            self.m = np
            self.acc = np.result_type(like.dtype, np.float32)

    def split(self, x, parts: int, axis: int = 2) -> list:
        if parts == 1:
            return [x]
        if self.torch:
            return list(self.m.chunk(x, parts, dim=axis))
        return self.m.split(x, parts, axis=axis)  # views: add_ writes through

    def cat(self, xs: list, axis: int = 2):
        if len(xs) == 1:
            return xs[0]
        return self.m.cat(xs, axis) if self.torch else self.m.concatenate(xs, axis)

    def to_acc(self, x):
        return x.to(self.acc) if self.torch else x.astype(self.acc, copy=False)

    def zeros_acc(self, like):
        if self.torch:
            return self.m.zeros(like.shape, dtype=self.acc, device=like.device)
        return self.m.zeros(like.shape, self.acc)

    def cast(self, x, like):
        return x.to(like.dtype) if self.torch else x.astype(like.dtype, copy=False)

    def add_(self, into, x) -> None:
        into += self.to_acc(x)

    def merge(self, have, o_b, lse_b):
        """(O, L) of the keys so far and of one more key block -> (O, L) of both (A1:L11-L12 in
        logsumexp form). A row no key has reached yet has L = -inf and weighs 0."""
        if have is None:
            return o_b, lse_b
        o_a, lse_a = have
        m = self.m
        new = m.logaddexp(lse_a, lse_b)
        safe = m.where(m.isneginf(new), m.zeros_like(new), new)
        w_a, w_b = m.exp(lse_a - safe), m.exp(lse_b - safe)
        return o_a * w_a[..., None] + o_b * w_b[..., None], new


def forward_backward(ring, q, k, v, do, causal: bool = False, softmax_scale=None,
                     kernel: str = "auto") -> tuple:
    """One rank's (o, lse, dq, dk, dv) for its parts of q, k, v, do: ring_forward then
    ring_backward, the local attention flashlab's (kernel: NumPy arrays run its reference,
    torch tensors TorchOps). A module-level function, so run_on_pipes can start it anywhere."""
    ops = TorchOps(kernel) if type(q).__module__.startswith("torch") else NumpyOps(kernel)
    o, lse = ring_forward(q, k, v, ring, causal, softmax_scale, ops)
    return (o, lse) + ring_backward(do, q, k, v, o, lse, ring, causal, softmax_scale, ops)
