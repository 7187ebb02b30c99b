"""The Hopper ladder's rows in one run (issue 22): kernel 'tc' as it runs today
(kernels/tc90.cu), the warp-specialized rungs (kernels/tc90_ws.cu forward, kernels/tc90_ws_bwd.cu
backward: flashlab.launch.tc_ws), and torch SDPA's flash and cuDNN backends, on the same CuPy
arrays.

    python3 scripts/ladder_ws.py [--direction forward|backward] [--dtype bfloat16,float16]
                                 [--seq 1024,4096,16384] [--d 64,128] [--repeat 20] [--long]
                                 [--ablation] [--json OUT.json]

16k tokens per batch (B = 16384 / N) and H d = 2048, as gpu_check.sh tc-table; --long adds
N = 128k causal at B = 1, H = 16, d = 128. Rows: tc (kernels/tc90.cu's forward), ws
(tc90_ws.cu: persistent blocks up to N = 4k, a block per tile above, tc_ws.grid_blocks), and
with --ablation a block per tile always (ws-1), persistent blocks with static turns always
(ws-p), persistent blocks with dynamic turns always (ws-d), no ping-pong (ws-pp0), 3 stages
(ws-st3), three consumer warpgroups (192 query rows, ping-pong off; d = 64 only: ws-nc3).
Backward: tc's and ws's gradients from tc's forward (o, lse), timed without it (SDPA:
autograd's backward of a kept graph); --ablation adds dQ through the consumers' atomics
(ws-atomic, the rung before the dQ writer) and that with 3 stages (ws-st3a).
Every entry is checked first (FlashAttention's 2x rule on query rows 0..127 of the first and
last head, flashlab.bench.accuracy), then timed: 2 rounds of A B C D D C B A, each a median of `repeat`
queued calls between CUDA events (flashlab.bench.timing.time_gpu), the median of the rounds.
TFLOP/s as ALGORITHMS.md counts them (forward 4 B H N^2 d, backward 2.5 times that, halved
when causal).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import cupy as cp

    from flashlab import launch, lowp
    from flashlab.bench.accuracy import _check_lowp
    from flashlab.bench.report import attention_flops
    from flashlab.bench.timing import device_header, time_gpu
    from flashlab.bench.torch_peers import _torch_backends
    from flashlab.launch import tc_ws

    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seq", default="1024,4096,16384")
    p.add_argument("--d", default="64,128")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", type=Path)
    p.add_argument("--long", action="store_true")
    p.add_argument("--ablation", action="store_true")
    p.add_argument("--direction", default="forward", choices=["forward", "backward"])
    p.add_argument("--rungs", help="the ablation's rows (default: every one of the direction)")
    a = p.parse_args()
    back = a.direction == "backward"
    rungs = {"ws": None}
    if a.ablation:
        known = ({"ws-atomic": dict(DQW=0), "ws-st3a": dict(DQW=0, ST=3)} if back else
                 {"ws-1": dict(PERSIST=0), "ws-p": dict(PERSIST=1, DYN=0),
                  "ws-d": dict(PERSIST=1, DYN=1), "ws-pp0": dict(PP=0), "ws-st3": dict(ST=3),
                  "ws-nc3": dict(NC=3, PP=0)})
        rungs.update({name: known[name] for name in (a.rungs.split(",") if a.rungs else known)})
    peers = _torch_backends(["torch-flash", "torch-cudnn"])
    rows, worst_check = [], 0.0
    print(device_header())
    print(f"{a.direction}, TFLOP/s")
    print("| dtype | d | causal | N | " + " | ".join(["tc", *rungs, *peers]) +
          " | ws/tc | ws/cuDNN |")
    print("|---|---|---|---|" + "---|" * (3 + len(rungs) + len(peers)))
    cells = [(dtype, d, causal, N, max(1, 16384 // N), 2048 // d) for dtype in a.dtype.split(",")
             for d in map(int, a.d.split(",")) for causal in (False, True)
             for N in map(int, a.seq.split(","))]
    if a.long:
        cells += [(dtype, 128, True, 131072, 1, 16) for dtype in a.dtype.split(",")]
    for dtype, d, causal, N, B, H in cells:
        dt = lowp.bfloat16() if dtype == "bfloat16" else np.float16
        rng = np.random.default_rng(N + d)
        host = [rng.standard_normal((B, H, N, d)).astype(dt) for _ in range(4)]
        q, k, v, do = (cp.asarray(x) for x in host)
        if back:
            o, lse = launch.forward("tc", q, k, v, causal=causal)
            fns = {"tc": lambda s, c=causal: launch.backward("tc", *s, causal=c)[0]}
            for name, cfg in rungs.items():
                fns[name] = lambda s, c=causal, cfg=cfg: tc_ws.backward(*s, causal=c,
                                                                        config=cfg)[0]
            states = {name: [(do, q, k, v, o, lse)] for name in fns}
        else:
            fns = {"tc": lambda s, c=causal: launch.forward("tc", *s, causal=c)[0]}
            for name, cfg in rungs.items():
                if (cfg or {}).get("NC", 2) == 3 and d != 64:
                    continue  # three consumers: d = 64 only
                fns[name] = lambda s, c=causal, cfg=cfg: tc_ws.forward(*s, causal=c,
                                                                       config=cfg)[0]
            states = {name: [(q, k, v)] for name in fns}
        for name, make in peers.items():
            prepare, run, _ = make(a.direction, causal)
            fns[name], states[name] = run, [prepare(q, k, v, do)]
        check = {}
        for name, fn in fns.items():
            check[name] = _check_lowp(fn(states[name][0]), (q, k, v, do), causal,
                                      1.0 / np.sqrt(d), a.direction)
            worst_check = max(worst_check, check[name])
        order = list(fns) + list(reversed(fns))
        ms = {name: [] for name in fns}
        for _ in range(2):
            for name in order:
                ms[name].append(time_gpu(fns[name], states[name],
                                     repeat=a.repeat if N < 65536 else max(3, a.repeat // 4))[0])
        med = {name: statistics.median(x) for name, x in ms.items()}
        flops = attention_flops(B, H, N, N, d, causal, a.direction)
        tf = {name: flops / (m * 1e-3) / 1e12 for name, m in med.items()}
        row = dict(direction=a.direction, dtype=dtype, d=d, causal=causal, N=N, B=B, H=H,
                   ms=med, tflops=tf, check=check)
        rows.append(row)
        cudnn = tf.get("torch-cudnn")
        print(f"| {dtype} | {d} | {'yes' if causal else 'no'} | {N} | " +
              " | ".join(f"{tf[n]:.0f}" if n in tf else "-" for n in ["tc", *rungs, *peers]) +
              f" | {tf['ws'] / tf['tc']:.2f}x | " +
              (f"{tf['ws'] / cudnn:.2f}x |" if cudnn else "- |"), flush=True)
        del q, k, v, do, states
    print(f"worst check (error / FlashAttention's bound): {worst_check:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"header": device_header(), "rows": rows}, indent=1))
    return 0 if worst_check <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
