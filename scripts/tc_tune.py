"""Tile-shape search for kernels/tc.cu, side by side with torch SDPA (flash, cuDNN), on one GPU.

    PYTHONPATH=. python3 scripts/tc_tune.py --out DIR [--dtypes bf16 fp16] [--seqs 4096 16384]
        [--dims 64 128] [--configs default|all] [--no-torch]

For every (dtype, d) and every candidate config: a correctness check first (a ragged Nq != Nk
shape, causal and not, under FlashAttention's 2x rule against the float64 oracle, outputs
NaN-poisoned beforehand), then forward and backward times at 16k tokens per batch (batch =
16384 / N) and heads = 2048 / d, the issue's shapes. Writes DIR/tune.json and prints a table.
docs/PERFORMANCE.md says which runs chose the defaults in flashlab/registry.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from flashlab import launch, lowp, registry
from flashlab.launch import device, sources
from flashlab.bench import attention_flops

WGMMA = registry.get("tc").variants["wgmma"]  # kernels/tc90.cu
FWD_CANDIDATES = {
    32: [dict(BC=128, NW=4, WM=2, BK=64), dict(BC=64, NW=4, WM=2, BK=64)],
    64: [dict(BC=128, NW=4, WM=2, BK=64), dict(BC=64, NW=4, WM=2, BK=64),
         dict(BC=128, NW=4, WM=2, BK=32), dict(BC=128, NW=8, WM=1, BK=128)],
    128: [dict(BC=64, NW=4, WM=2, BK=32), dict(BC=128, NW=4, WM=2, BK=32),
          dict(BC=128, NW=8, WM=1, BK=64), dict(BC=128, NW=8, WM=1, BK=128)],
}
# source variants: textual edits of kernels/tc.cu, compiled through flashlab.launch's `source=` (each must
# match exactly once).
_SDP = "        }\n#pragma unroll\n        for (int kk = 0; kk < D / 16; ++kk) {\n            u32 va[MS][4];"
VARIANTS = {
    "base": [],
    # G2's S^T = K Q^T and dP^T = V dO^T in one k loop (two independent mma chains per step)
    "bwd-fused-sdp": [(_SDP, "            u32 va[MS][4];")],
}

BWD_CANDIDATES = {
    32: [dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=4, QS=2)],
    64: [dict(BR=128, BC=128, NW=8, WS=2, WKV=4, WQ=4, QS=3), dict(BR=128, BC=128, NW=8, WS=4, WKV=4, WQ=4, QS=3),
         dict(BR=128, BC=128, NW=8, WS=2, WKV=4, WQ=4, QS=2), dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=3)],
    128: [dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=3), dict(BR=64, BC=128, NW=8, WS=4, WKV=4, WQ=2, QS=2),
          dict(BR=64, BC=128, NW=8, WS=2, WKV=4, WQ=2, QS=3), dict(BR=64, BC=64, NW=4, WS=2, WKV=2, WQ=2, QS=2)],
}


# kernels/tc90.cu (wgmma, sm_90a; runs on compute capability 9.0 only)
FWD90_CANDIDATES = {64: [dict(BC=64, NWG=2, MINB=2), dict(BC=128, NWG=2, MINB=1),
                         dict(BC=128, NWG=1, MINB=3), dict(BC=128, NWG=1, MINB=2),
                         dict(BC=64, NWG=1, MINB=4)],
                    128: [dict(BC=128, NWG=2, MINB=1), dict(BC=64, NWG=2, MINB=1),
                          dict(BC=64, NWG=1, MINB=2), dict(BC=128, NWG=1, MINB=1)]}
BWD90_CANDIDATES = {64: [dict(BR=64, BC=128, QS=2, MINB=1), dict(BR=128, BC=128, QS=2, MINB=1),
                         dict(BR=64, BC=128, QS=3, MINB=1)],
                    128: [dict(BR=64, BC=128, QS=2, MINB=1), dict(BR=64, BC=128, QS=3, MINB=1)]}


def poisoned(cp, shape, dtype):
    """An output buffer full of NaN bit patterns: any element the kernel skips stays NaN."""
    x = cp.empty(shape, dtype)
    if x.dtype.itemsize == 2:
        x.view(cp.uint16)[...] = 0xFFFF
    else:
        x.view(cp.uint32)[...] = 0xFFFFFFFF
    return x


def variant_source(variant, outdir):
    """None for our source; else kernels/tc.cu with the variant's edits applied (a Source, its
    text also written to DIR/tc_<variant>.cu)."""
    if not VARIANTS[variant]:
        return None
    src = sources.ours("tc", "mma").text
    for old, new in VARIANTS[variant]:
        if src.count(old) != 1:
            raise ValueError(f"variant {variant}: the text it edits is not in tc.cu exactly once")
        src = src.replace(old, new)
    path = os.path.join(outdir, f"tc_{variant}.cu")
    with open(path, "w") as f:
        f.write(src)
    return sources.user_file(path, "tc")


def check(cp, name, d, fwd, bwd, seed=0, source=None):
    """Worst error/bound ratio of o, dq, dk, dv over a few ragged shapes (<= 1 passes)."""
    worst, detail = 0.0, []
    for (B, H, Nq, Nk), causal in (((1, 2, 333, 333), True), ((2, 1, 257, 401), False),
                                   ((1, 2, 401, 190), True), ((1, 1, 1024, 1024), True)):
        q, k, v, do = lowp.random_inputs(cp, [(B, H, Nq, d), (B, H, Nk, d), (B, H, Nk, d),
                                              (B, H, Nq, d)], name, seed)
        o_buf = poisoned(cp, (B, H, Nq, d), q.dtype)
        l_buf = poisoned(cp, (B, H, Nq), cp.float32)
        o, lse = launch.forward("tc", q, k, v, causal, out=(o_buf, l_buf), config=fwd, source=source)
        grads = (poisoned(cp, (B, H, Nq, d), q.dtype), poisoned(cp, (B, H, Nk, d), q.dtype),
                 poisoned(cp, (B, H, Nk, d), q.dtype))
        dq, dk, dv = launch.backward("tc", do, q, k, v, o, lse, causal, out=grads, config=bwd,
                                     source=source)
        o64, lse64, dq64, dk64, dv64 = lowp.attention_oracle(q, k, v, do, causal)
        no, _ = lowp.naive_lowp_forward(q, k, v, causal)
        ndq, ndk, ndv = lowp.naive_lowp_backward(do, q, k, v, causal)
        lse_err = float(cp.abs(lse.astype(cp.float64) - lse64).max()) if bool(cp.isfinite(lse).all()) else float("inf")
        for label, out, ref, nv in (("o", o, o64, no), ("dq", dq, dq64, ndq), ("dk", dk, dk64, ndk),
                                    ("dv", dv, dv64, ndv)):
            try:
                _, err, bound = lowp.within_fa_rule(out, ref, nv)
            except ValueError:  # NaN: an element was not written, or the kernel made one
                err, bound = float("inf"), 1.0
            worst = max(worst, err / bound)
            detail.append(f"{label} {Nq}x{Nk}{' causal' if causal else ''}: {err:.2e}/{bound:.2e}")
        worst = max(worst, lse_err / 1e-3)
        detail.append(f"lse err {lse_err:.1e}")
    return worst, detail


def time_ms(cp, fn, warmup=2, repeat=7):
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def torch_fns(name, d, N, B, H, causal):
    """(fwd, bwd) closures for the SDPA flash and cuDNN backends on fresh torch inputs."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    dt = torch.bfloat16 if name == "bfloat16" else torch.float16
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, H, N, d, device="cuda", dtype=dt, generator=g) for _ in range(4))
    out = {}
    for label, backend in (("torch-flash", SDPBackend.FLASH_ATTENTION),
                           ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)):
        def fwd(backend=backend):
            with sdpa_kernel(backend), torch.no_grad():
                sdpa(q, k, v, is_causal=causal)

        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        try:
            with sdpa_kernel(backend):
                o = sdpa(qg, kg, vg, is_causal=causal)
        except RuntimeError as e:
            out[label] = str(e).splitlines()[0]
            continue

        def bwd(o=o, qg=qg, kg=kg, vg=vg):
            torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True)

        out[label] = (fwd, bwd)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/flashlab-out"))
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    ap.add_argument("--dims", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--seqs", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--configs", choices=("default", "all"), default="default")
    ap.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--sources", nargs="+", default=["tc90", "tc"], choices=("tc90", "tc"),
                    help="tc90: kernels/tc90.cu (wgmma; compute capability 9.0 only), tc: kernels/tc.cu")
    ap.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS),
                    help="source variants; each after 'base' is tried with every backward config")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    args = ap.parse_args(argv)
    import cupy as cp

    os.makedirs(args.out, exist_ok=True)
    results = []
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    for dname in args.dtypes:
        name = lowp.lowp_dtype(dname).name
        for d in args.dims:
            pairs = []
            cc = int(device.device_limits(cp.cuda.Device().id)["compute_capability"])
            if "tc90" in args.sources and cc == WGMMA.min_cc and d in WGMMA.head_dims:
                fwds = FWD90_CANDIDATES[d] if args.configs == "all" else [registry.TC90_FORWARD[d]]
                bwds = BWD90_CANDIDATES[d] if args.configs == "all" else [registry.TC90_BACKWARD[d]]
                pairs += [("base", f, bwds[0]) for f in fwds] + [("base", fwds[0], b) for b in bwds[1:]]
            if "tc" in args.sources:
                fwds = FWD_CANDIDATES[d] if args.configs == "all" else [registry.TC_FORWARD[d]]
                bwds = BWD_CANDIDATES[d] if args.configs == "all" else [registry.TC_BACKWARD[d]]
                pairs += [("base", f, bwds[0]) for f in fwds] + [("base", fwds[0], b) for b in bwds[1:]]
                pairs += [(var, fwds[0], bwds[0]) for var in args.variants if var != "base"]
            for variant, fwd, bwd in pairs:
                t0 = time.time()
                src = variant_source(variant, args.out)
                try:
                    ratio, detail = check(cp, name, d, fwd, bwd, source=src)
                except Exception as e:  # a config that fails to compile or launch: say so, go on
                    print(f"{name} d={d} fwd {fwd} bwd {bwd}: FAILED {type(e).__name__}: {e}"[:2000])
                    results.append(dict(dtype=name, d=d, fwd=fwd, bwd=bwd, error=str(e)[:2000]))
                    continue
                print(f"{name} d={d} [{variant}] fwd {fwd} bwd {bwd}: worst err/bound {ratio:.2f} "
                      f"({'PASS' if ratio <= 1 else 'FAIL'}; {time.time() - t0:.1f} s)")
                if ratio > 1:
                    print("   " + "; ".join(detail))
                results.append(dict(dtype=name, d=d, variant=variant, fwd=fwd, bwd=bwd, check=ratio,
                                    detail=detail))
                for N in args.seqs:
                    B, H = max(1, args.tokens // N), args.hidden // d
                    q, k, v, do = lowp.random_inputs(cp, [(B, H, N, d)] * 4, name, seed=1)
                    for causal in causals:
                        row = dict(dtype=name, d=d, N=N, B=B, H=H, causal=causal, fwd=fwd, bwd=bwd,
                                   variant=variant)
                        o, lse = launch.forward("tc", q, k, v, causal, config=fwd, source=src)
                        row["tc_fwd_ms"] = time_ms(cp, lambda: launch.forward("tc", q, k, v, causal, config=fwd, source=src))
                        row["tc_bwd_ms"] = time_ms(cp, lambda: launch.backward("tc", do, q, k, v, o, lse, causal, config=bwd, source=src))
                        ff = attention_flops(B, H, N, N, d, causal, "forward")
                        row["tc_fwd_tflops"] = ff / row["tc_fwd_ms"] / 1e9
                        row["tc_bwd_tflops"] = 2.5 * ff / row["tc_bwd_ms"] / 1e9
                        results.append(row)
                        print(f"  N={N:5d} B={B:2d} H={H:2d} causal={causal!s:5} tc fwd "
                              f"{row['tc_fwd_tflops']:6.1f} bwd {row['tc_bwd_tflops']:6.1f} TFLOP/s")
                    q = k = v = do = o = lse = None
                    cp.get_default_memory_pool().free_all_blocks()
            if args.no_torch:
                continue
            for N in args.seqs:
                B, H = max(1, args.tokens // N), args.hidden // d
                for causal in causals:
                    ff = attention_flops(B, H, N, N, d, causal, "forward")
                    for label, fns in torch_fns(name, d, N, B, H, causal).items():
                        row = dict(dtype=name, d=d, N=N, B=B, H=H, causal=causal, backend=label)
                        if isinstance(fns, str):
                            row["error"] = fns
                            print(f"  N={N:5d} causal={causal!s:5} {label}: {fns}")
                        else:
                            import torch

                            ms_f = time_ms(cp, fns[0])
                            ms_b = time_ms(cp, fns[1])
                            torch.cuda.synchronize()
                            row.update(fwd_ms=ms_f, bwd_ms=ms_b, fwd_tflops=ff / ms_f / 1e9,
                                       bwd_tflops=2.5 * ff / ms_b / 1e9)
                            print(f"  N={N:5d} B={B:2d} H={H:2d} causal={causal!s:5} {label:11} fwd "
                                  f"{row['fwd_tflops']:6.1f} bwd {row['bwd_tflops']:6.1f} TFLOP/s")
                        results.append(row)
                    import torch

                    torch.cuda.empty_cache()
    with open(os.path.join(args.out, "tune.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
