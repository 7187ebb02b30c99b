"""Run every kernel once, forward and backward, at a ragged shape: the workload compute-sanitizer
checks (scripts/gpu_check.sh runs it under memcheck, racecheck and synccheck).

SANITIZE_KERNELS=tc (comma-separated kernel names) limits the run to those kernels, for a quick
check of one kernel while it is being changed; the default is every kernel. SANITIZE_VARIANTS=only
runs the attention variants alone (fa2's and tc's); SANITIZE_LADDER=only the Hopper ladder's
rungs alone (kernels/tc90_ws.cu, on compute capability 9.0)."""
import os
import sys

import cupy as cp
import numpy as np

from flashlab import launch, lowp, registry
from flashlab.launch import plans

rng = np.random.default_rng(0)
B, H, Nq, Nk = 1, 2, 83, 71  # ragged against every tile size
only = [k for k in os.environ.get("SANITIZE_KERNELS", "").split(",") if k]
unknown = sorted(set(only) - set(registry.names()))
if unknown:
    sys.exit(f"SANITIZE_KERNELS: no kernel named {', '.join(unknown)} (kernels: {', '.join(registry.names())})")
variants_only = os.environ.get("SANITIZE_VARIANTS") == "only"
ladder_only = os.environ.get("SANITIZE_LADDER") == "only"
if ladder_only:
    only = ["ladder"]  # no registry kernel
for kernel in registry.for_dtype("float32"):
    if (only and kernel not in only) or variants_only:
        continue
    for d in (64, 32) if registry.get(kernel).head_dims else (64, 40):  # fa2: its own head dims
        for causal in (False, True):
            q, do = (cp.asarray(rng.standard_normal((B, H, Nq, d)), cp.float32) for _ in range(2))
            k, v = (cp.asarray(rng.standard_normal((B, H, Nk, d)), cp.float32) for _ in range(2))
            o, lse = launch.forward(kernel, q, k, v, causal)
            launch.backward(kernel, do, q, k, v, o, lse, causal)
            if registry.get(kernel).traceable:
                launch.forward(kernel, q, k, v, causal, trace=True)
                launch.backward(kernel, do, q, k, v, o, lse, causal, trace=True)
            cp.cuda.runtime.deviceSynchronize()
            print(f"{kernel} d={d} causal={causal}: ran", flush=True)
cc = int(cp.cuda.Device().compute_capability)
# kernel 'tc' is three builds on compute capability 9.0: tc90.cu (variant "wgmma", the default
# there), tc.cu ("mma", FLASHLAB_TC_WGMMA=0) and tc.cu's float16 Turing build ("turing",
# compute_75 PTX, run here with FLASHLAB_TC_TURING=1); every variant this GPU runs is checked
TC = registry.get("tc")
variants = [n for n, v in TC.variants.items()
            if v.min_cc <= cc and (v.max_cc is None or cc <= v.max_cc or v.force)]


def use(variant):
    """Make `variant` the one kernel 'tc' runs; its dtypes."""
    v = TC.variants[variant]
    os.environ["FLASHLAB_TC_WGMMA"] = "1" if v.arch and not v.force else "0"
    os.environ.pop(registry.TURING_FORCE, None)
    if v.force:
        os.environ[v.force] = "1"
    return v.dtypes or lowp.LOWP_DTYPES


for variant in variants if (not only or "tc" in only) and not variants_only else []:
    src = TC.variants[variant].source + (f" as {variant}" if TC.variants[variant].force else "")
    dtypes = use(variant)
    one = dtypes[-1]  # bfloat16 where the build takes it
    # tensor cores: every head dim, both dtypes; Nq, Nk ragged against Br, Bc (64, 128), the two
    # K/V stages of the forward and the QS (up to 3) Q/dO stages of the backward going round
    # (Nq > 3 Br at every head dim: bf16 only, since races and bounds do not depend on the dtype)
    for name in dtypes:
        for d in TC.variants[variant].head_dims or TC.head_dims:
            for causal in (False, True):
                for nq, nk in ((Nq, Nk), (211, 150)) + (((530, 290),) if name == one else ()):
                    q, k, v, do = lowp.random_inputs(cp, [(B, H, nq, d), (B, H, nk, d), (B, H, nk, d),
                                                          (B, H, nq, d)], name)
                    o, lse = launch.forward("tc", q, k, v, causal)
                    launch.backward("tc", do, q, k, v, o, lse, causal)
                    launch.forward("tc", q, k, v, causal, trace=True)
                    launch.backward("tc", do, q, k, v, o, lse, causal, trace=True)
                    cp.cuda.runtime.deviceSynchronize()
                print(f"tc ({src}) {name} d={d} causal={causal}: ran", flush=True)
    # the causal block order (block_order) with a last head group of fewer heads: 6 heads, 4 a group
    default_group, plans.tc_head_group = plans.tc_head_group, (lambda *args: 4)
    q, k, v, do = lowp.random_inputs(cp, [(2, 3, 211, 64), (2, 3, 150, 64), (2, 3, 150, 64),
                                          (2, 3, 211, 64)], one)
    o, lse = launch.forward("tc", q, k, v, True)
    launch.backward("tc", do, q, k, v, o, lse, True)
    cp.cuda.runtime.deviceSynchronize()
    plans.tc_head_group = default_group
    print(f"tc ({src}) causal, head groups of 4 over 6 heads: ran", flush=True)
    # flashlab.torch's layout: q, k, v views of a packed (B, N, 3, H, d) projection, dO and the
    # prepared backward's dq, dk, dv with heads inside rows (B, N, H, d), both head dims
    for d in TC.variants[variant].head_dims or TC.head_dims:
        n, heads = 211, 3
        (qkv, do_rows, *grads) = lowp.random_inputs(cp, [(1, n, 3, heads, d)] + [(1, n, heads, d)] * 4,
                                                    one)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        do, dq, dk, dv = (x.transpose(0, 2, 1, 3) for x in [do_rows] + grads)
        o, lse = launch.forward("tc", q, k, v, True)
        call = launch.prepare_backward("tc", do, q, k, v, o, lse, True, grads=(dq, dk, dv))
        work = cp.empty(call.workspace_bytes, cp.uint8)
        call.run({"do": do, "q": q, "k": k, "v": v, "o": o, "lse": lse, "dq": dq, "dk": dk,
                  "dv": dv}, workspace=work.data.ptr)
        cp.cuda.runtime.deviceSynchronize()
    print(f"tc ({src}) packed qkv views, strided dO, dq, dk, dv: ran", flush=True)
# the Hopper ladder's warp-specialized forward and backward (kernels/tc90_ws.cu, tc90_ws_bwd.cu,
# registry.LADDER; the forward also with dynamic turns and three consumers, the backward also
# with atomics for dQ and 3 stages): both dtypes and head dims, ragged N (rows past N arrive from
# the TMA unit as zeros), Nq != Nk, GQA (4 query heads on 2), and at N = 530 more key tiles than
# stages, so every K and V stage is refilled
if cc == 90 and (not only or "tc" in only or ladder_only) and not variants_only:
    from flashlab.launch import tc_ws

    for name in lowp.LOWP_DTYPES:
        for d in sorted(tc_ws.TILES):
            for causal in (False, True):
                for nq, nk in ((Nq, Nk), (530, 290), (150, 530)):
                    q, k, v = lowp.random_inputs(cp, [(B, 4, nq, d), (B, 2, nk, d), (B, 2, nk, d)],
                                                 name)
                    o, lse = tc_ws.forward(q, k, v, causal)
                    tc_ws.forward(q, k, v, causal, config=dict(BLOCKS=3))  # several tiles a block
                    tc_ws.forward(q, k, v, causal, config=dict(BLOCKS=3, DYN=1))  # dynamic turns
                    tc_ws.forward(q, k, v, causal, config=dict(PERSIST=0, PP=0))
                    if d == 64:  # three consumer warpgroups, 192 query rows
                        tc_ws.forward(q, k, v, causal, config=dict(NC=3, PP=0, BLOCKS=3, DYN=1))
                    do = lowp.random_inputs(cp, [q.shape], name, seed=1)[0]
                    tc_ws.backward(do, q, k, v, o, lse, causal)  # and its warp-specialized backward
                    tc_ws.backward(do, q, k, v, o, lse, causal, config=dict(DQW=0, ST=3))
                    cp.cuda.runtime.deviceSynchronize()
            print(f"tc (tc90_ws.cu, tc90_ws_bwd.cu: the ladder) {name} d={d}: ran", flush=True)
# attention variants compiled in (kernels/tc_mods.cuh, fa2.cu's FL_MODS): the block mask's
# ranges and skipped tiles, per-element masks and score_mods, GQA (4 query heads on 2), a mask
# that hides every key (tc90.cu's one all-hidden tile) and masks alone at N = 300 (whole tiles
# inside the matrix: f2_mod's mask-only loops)
from flashlab import mods  # noqa: E402
from flashlab.mods.kernel import KernelVariant  # noqa: E402

VARIANTS = [(KernelVariant.of((40, 0), mods.document(np.arange(Nq) // 30), mods.softcap(3.0)), Nq),
            (KernelVariant.of(None, mods.prefix_lm(20), mods.alibi([0.5, 0.25, 0.1, 0.3])), Nq),
            (KernelVariant.of(None, lambda b, h, q_idx, kv_idx: q_idx < 0, None), Nq),
            (KernelVariant.of((40, 0), mods.document(np.arange(300) // 30), None), 300)]
for kernel in ("fa2", "tc"):
    if (only and kernel not in only) or (kernel == "tc" and not variants):
        continue
    for variant in ([""] if kernel == "fa2" else variants):
        names = ("float32",) if not variant else use(variant)[-1:]
        for kv, n in VARIANTS:  # n = 300: whole 128-row tiles, both directions
            for name in names:
                shapes = [(B, 4, n, 64), (B, 2, n, 64), (B, 2, n, 64), (B, 4, n, 64)]
                q, k, v, do = (lowp.random_inputs(cp, shapes, name) if name != "float32" else
                               [cp.asarray(rng.standard_normal(s), cp.float32) for s in shapes])
                o, lse = launch.forward(kernel, q, k, v, False, variant=kv)
                launch.backward(kernel, do, q, k, v, o, lse, False, variant=kv)
                cp.cuda.runtime.deviceSynchronize()
        print(f"{kernel} {variant} variants (window + document + softcap, prefix_lm + alibi, "
              f"all hidden, window + document), GQA 4 on 2: ran", flush=True)
print("sanitize workload done")
sys.exit(0)
