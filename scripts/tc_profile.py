"""One forward and one backward of kernel 'tc' (bf16), for Nsight Compute to profile:

    ncu -k regex:tc_ --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \\
        python3 scripts/tc_profile.py [d] [N] [--causal] [--torch]

(scripts/gpu_check.sh profile runs exactly that, with the kernel filter regex:"tc_|flash_").
Compilation happens before the launches, so only the four tc kernels of one forward and one
backward are profiled; --torch adds one forward and backward of torch SDPA's flash backend on
the same shapes, so its kernels land in the same report for a side-by-side read; --ladder adds
one forward and backward of the Hopper ladder's rungs (flashlab.launch.tc_ws).
--mask-causal runs built-in causal and then causal as a mask_mod (the variant build) through
flashlab.api, forward and backward: ncu's --launch-skip picks which one a report holds.
"""
import sys

import cupy as cp

from flashlab import launch, lowp, registry
from flashlab.launch import compiler, plans, sources

args = [a for a in sys.argv[1:] if not a.startswith("--")]
d = int(args[0]) if args else 128
N = int(args[1]) if len(args) > 1 else 4096
causal = "--causal" in sys.argv
B, H = max(1, 16384 // N), 2048 // d
q, k, v, do = lowp.random_inputs(cp, [(B, H, N, d)] * 4, "bfloat16")
variant = plans.tc_variant(cp.cuda.Device().compute_capability, d)  # the source that runs here
compiler.get_module(sources.ours("tc", variant), False, plans.tc_names(True, d, variant=variant),
                    arch=registry.get("tc").variants[variant].arch, kernel="tc")  # compiled first
if "--mask-causal" in sys.argv:  # causal as a mask_mod (a variant build), beside built-in causal
    from flashlab import api, mods

    for kw in ({"causal": True}, {"mask_mod": mods.causal()}):  # the variant build: the second launch
        o, lse = api.flash_attention(q, k, v, kernel="tc", return_lse=True, **kw)
        api.flash_attention_backward(do, q, k, v, o, lse, kernel="tc", **kw)
else:
    o, lse = launch.forward("tc", q, k, v, causal)
    launch.backward("tc", do, q, k, v, o, lse, causal)
cp.cuda.Device().synchronize()
if "--ladder" in sys.argv:  # the Hopper ladder's rungs on the same inputs (flashlab.launch.tc_ws)
    from flashlab.launch import tc_ws

    o, lse = tc_ws.forward(q, k, v, causal)
    tc_ws.backward(do, q, k, v, o, lse, causal)
    cp.cuda.Device().synchronize()
if "--torch" in sys.argv:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tq, tk, tv, tdo = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.requires_grad_() for t in (tq, tk, tv))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        torch.autograd.grad(sdpa(qg, kg, vg, is_causal=causal), (qg, kg, vg), tdo)
    torch.cuda.synchronize()
print(f"profiled tc bf16 d={d} N={N} B={B} H={H} causal={causal}"
      f"{' and torch SDPA flash' if '--torch' in sys.argv else ''}"
      f"{' and the ladder' if '--ladder' in sys.argv else ''}")
