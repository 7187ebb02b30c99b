"""Host time per call of flashlab.torch.flash_attention against SDPA at a tiny shape, where the
launch path, not the GPU, is the cost (issue: "host overhead").

    PYTHONPATH=. python3 scripts/torch_host_time.py [--shape 1,1,128,64] [--profile OUT.txt]

For each dtype (bfloat16, float32) and each implementation (flashlab; SDPA's flash, cuDNN and
default backends): forward alone and forward + backward, timed two ways, medians of 5 rounds:
  sync    one call, then torch.cuda.synchronize(), per call (what a tiny model step sees)
  queued  200 calls back to back, then one synchronize, divided by 200 (pure host cost when
          the GPU keeps up)
--profile writes cProfile's top functions of 2000 queued flashlab bf16 forward + backward calls;
--pieces times the pieces of a call one by one (allocations, a CuPy launch, autograd's apply).
Run it from another tree (PYTHONPATH=that_tree) for the numbers before a change.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def _impls():
    """name -> (attention function, context it runs in: SDPA's backend choice, entered once
    around the timing, not per call)."""
    import contextlib

    import flashlab.torch as ft

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return {"flashlab": (lambda q, k, v: ft.flash_attention(q, k, v, is_causal=True),
                         contextlib.nullcontext),
            "sdpa-flash": (sdpa, lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)),
            "sdpa-cudnn": (sdpa, lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION)),
            "sdpa-default": (sdpa, contextlib.nullcontext)}


def _step(f, q, k, v, do, backward):
    if not backward:
        return f(q, k, v)
    o = f(q, k, v)
    o.backward(do)
    return o


def _time(f, q, k, v, do, backward, mode, reps=200):
    for _ in range(20):
        _step(f, q, k, v, do, backward)
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        if mode == "sync":
            ts = []
            for _ in range(reps // 4):
                t0 = time.perf_counter()
                _step(f, q, k, v, do, backward)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            rounds.append(statistics.median(ts))
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                _step(f, q, k, v, do, backward)
            torch.cuda.synchronize()
            rounds.append((time.perf_counter() - t0) / reps)
    return statistics.median(rounds) * 1e6


def _per_call(f, reps=2000) -> float:
    """Microseconds per call of f() (host only: nothing here waits for the GPU)."""
    for _ in range(50):
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        f()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return dt / reps * 1e6


def pieces(B, H, N, d):
    """Host microseconds of the pieces a flashlab.torch call is made of, one by one."""
    import cupy

    import flashlab.torch as ft
    from flashlab.launch.prepared import StreamPtr

    x = torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16)
    empty = cupy.RawKernel('extern "C" __global__ void k0() {}', "k0").kernel
    many = cupy.RawKernel('extern "C" __global__ void k20(' + ", ".join(
        f"long long a{i}" for i in range(20)) + ") {}", "k20").kernel
    CIntptr = getattr(cupy.cuda.function, "CIntptr", None)
    stream = StreamPtr(torch.cuda.current_stream().cuda_stream)
    ints = tuple(range(1, 21))

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a

        @staticmethod
        def backward(ctx, g):
            return g

    xg = x.clone().requires_grad_()
    rows = [("torch new_empty (B, H, N, d)", lambda: x.new_empty(x.shape)),
            ("torch empty_strided", lambda: torch.empty_strided((B, H, N, d), (N * H * d, d, H * d, 1),
                                                                dtype=x.dtype, device=x.device)),
            ("CuPy launch, no arguments", lambda: empty((1,), (32,), (), 0, stream)),
            ("CuPy launch, 20 Python ints", lambda: many((1,), (32,), ints, 0, stream)),
            ("torch current raw stream", lambda: ft._stream_ptr(0)),
            ("autograd.Function identity apply", lambda: Identity.apply(xg)),
            ("flashlab.torch forward, no grad", lambda: ft.flash_attention(x, x, x))]
    if CIntptr is not None:
        ptrs = tuple(CIntptr(i) for i in ints)
        rows.insert(4, ("CuPy launch, 20 CIntptr", lambda: many((1,), (32,), ptrs, 0, stream)))
    return [(name, f"{_per_call(f):.2f}") for name, f in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1,1,128,64", help="B,H,N,d")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--profile", help="write cProfile's top functions here")
    ap.add_argument("--pieces", action="store_true",
                    help="also time the pieces of a call (allocations, launches, apply)")
    args = ap.parse_args(argv)
    B, H, N, d = (int(x) for x in args.shape.split(","))
    warnings.filterwarnings("ignore", message=".*(kernel not used|runtime disabled|Expected query).*")
    from tabulate import tabulate

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, shape B={B} H={H} "
          f"N={N} d={d}, causal; microseconds per call (median of 5 rounds)")
    rows = []
    for dtype in args.dtypes.split(","):
        dt = getattr(torch, dtype)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, N, d, device="cuda", generator=g).to(dt)
                       for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        for name, (f, context) in _impls().items():
            row = [dtype, name]
            for backward in (False, True):
                for mode in ("sync", "queued"):
                    try:
                        with context():
                            row.append(f"{_time(f, q, k, v, do, backward, mode):.1f}")
                    except Exception as e:  # a backend this torch or GPU lacks
                        row.append(f"n/a ({type(e).__name__})")
            rows.append(row)
    print(tabulate(rows, headers=["dtype", "impl", "fwd sync", "fwd queued", "fwd+bwd sync",
                                  "fwd+bwd queued"]))
    if args.pieces:
        print(tabulate(pieces(B, H, N, d), headers=["piece", "us per call"]))
    if args.profile:
        f = _impls()["flashlab"][0]
        q, k, v, do = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            _step(f, q, k, v, do, True)
        torch.cuda.synchronize()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        with open(args.profile, "w") as fh:
            fh.write(out.getvalue())
        print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()
