"""One forward and one backward of kernel 'tc' (bf16), for Nsight Compute to profile:

    ncu -k regex:tc_ --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \\
        python3 scripts/tc_profile.py [d] [N] [--causal]

(scripts/gpu_check.sh profile runs exactly that). Compilation happens before the launches, so
only the four tc kernels of one forward and one backward are profiled.
"""
import sys

import cupy as cp

from flashlab import cuda_kernel_ops as ops
from flashlab import lowp

args = [a for a in sys.argv[1:] if not a.startswith("--")]
d = int(args[0]) if args else 128
N = int(args[1]) if len(args) > 1 else 4096
causal = "--causal" in sys.argv
B, H = max(1, 16384 // N), 2048 // d
q, k, v, do = lowp.random_inputs(cp, [(B, H, N, d)] * 4, "bfloat16")
ops.get_module("tc", False, ops.tc_names(True, d))  # compile outside the profiled launches
o, lse = ops.forward("tc", q, k, v, causal)
ops.backward("tc", do, q, k, v, o, lse, causal)
cp.cuda.Device().synchronize()
print(f"profiled tc bf16 d={d} N={N} B={B} H={H} causal={causal}")
