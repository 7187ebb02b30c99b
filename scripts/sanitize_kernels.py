"""Run every kernel once, forward and backward, at a ragged shape: the workload compute-sanitizer
checks (scripts/gpu_check.sh runs it under memcheck, racecheck and synccheck)."""
import sys

import cupy as cp
import numpy as np

from flashlab import cuda_kernel_ops as ops
from flashlab import lowp

rng = np.random.default_rng(0)
B, H, Nq, Nk = 1, 2, 83, 71  # ragged against every tile size
for kernel in ops.FP32_KERNELS:
    for d in (64, 32) if kernel == "fa2" else (64, 40):
        for causal in (False, True):
            q, do = (cp.asarray(rng.standard_normal((B, H, Nq, d)), cp.float32) for _ in range(2))
            k, v = (cp.asarray(rng.standard_normal((B, H, Nk, d)), cp.float32) for _ in range(2))
            o, lse = ops.forward(kernel, q, k, v, causal)
            ops.backward(kernel, do, q, k, v, o, lse, causal)
            if kernel != "naive":
                ops.forward(kernel, q, k, v, causal, trace=True)
                ops.backward(kernel, do, q, k, v, o, lse, causal, trace=True)
            cp.cuda.runtime.deviceSynchronize()
            print(f"{kernel} d={d} causal={causal}: ran", flush=True)
if int(cp.cuda.Device().compute_capability) >= ops.TC_MIN_CC:
    # tensor cores: every head dim, both dtypes; Nq, Nk ragged against Br, Bc (64, 128) and the
    # double-buffered Q stages of the backward (Nq > 2 Br)
    for name in lowp.LOWP_DTYPES:
        for d in ops.TC_HEAD_DIMS:
            for causal in (False, True):
                for nq, nk in ((Nq, Nk), (211, 150)):
                    q, k, v, do = lowp.random_inputs(cp, [(B, H, nq, d), (B, H, nk, d), (B, H, nk, d),
                                                          (B, H, nq, d)], name)
                    o, lse = ops.forward("tc", q, k, v, causal)
                    ops.backward("tc", do, q, k, v, o, lse, causal)
                    ops.forward("tc", q, k, v, causal, trace=True)
                    ops.backward("tc", do, q, k, v, o, lse, causal, trace=True)
                    cp.cuda.runtime.deviceSynchronize()
                print(f"tc {name} d={d} causal={causal}: ran", flush=True)
print("sanitize workload done")
sys.exit(0)
