"""`flashlab ring`: ring attention's step-through (which rank holds which key/value block at each
step, and which query x key chunk pairs it computes) and one run of the ring on CPU processes,
forward and backward, against the float64 oracle on the whole sequence."""
from __future__ import annotations

import time

import numpy as np


def _cmd_ring(args) -> int:
    from .. import naive_attention, naive_attention_backward
    from ..ring import describe, forward_backward, run_on_pipes, shard, unshard

    P, causal = args.ranks, args.causal
    print(describe(P, causal))
    parts = 2 * P if causal else P
    n = args.seq - args.seq % parts or parts
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1, args.heads, n, args.head_dim)) for _ in range(4))
    start = time.perf_counter()
    results = run_on_pipes(forward_backward, P, [
        (*(shard(x, r, P, causal) for x in (q, k, v, do)), causal, None, "auto")
        for r in range(P)])
    took = time.perf_counter() - start
    got = [unshard([res[x] for res in results], causal) for x in range(5)]
    want = (*naive_attention(q, k, v, causal), *naive_attention_backward(do, q, k, v, causal))
    print(f"\n{P} processes over pipes, N = {n} ({'zigzag' if causal else 'contiguous'} split), "
          f"H = {args.heads}, d = {args.head_dim}, float64 (fa2's step-through on each block), "
          f"{took:.2f} s; largest difference from standard attention on the whole sequence:")
    worst = 0.0
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
        err = float(np.abs(a - b).max())
        worst = max(worst, err)
        print(f"  {name:4s}{err:.2e}")
    return 0 if worst < 1e-9 else 1
