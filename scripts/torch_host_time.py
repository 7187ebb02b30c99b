"""Host time per call of flashlab.torch.flash_attention against SDPA at a tiny shape, where the
launch path, not the GPU, is the cost (issue: "host overhead").

    PYTHONPATH=. python3 scripts/torch_host_time.py [--shape 1,1,128,64] [--profile OUT.txt]

For each dtype (bfloat16, float32) and each implementation (flashlab, through its C++ launch
path where it builds; flashlab-python, the same calls launched from Python; SDPA's flash,
cuDNN and default backends): forward alone and forward + backward, timed two ways, medians of 5
rounds, each round timing every implementation in turn (interleaved: host drift weighs on all):
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


ROUNDS = 5


def _impls():
    """name -> (attention function, context it runs in: SDPA's backend choice, entered once
    around the timing, not per call)."""
    import contextlib

    import flashlab.torch as ft

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    @contextlib.contextmanager
    def python_path():  # flashlab.native off: the same calls launched from Python
        try:
            from flashlab import native
        except ImportError:  # a tree from before flashlab.native: there is only that path
            yield
            return
        state, calls = dict(native._state), dict(ft._native)
        native._state.clear()
        native._state.update(module=None, why="torch_host_time: the Python path")
        ft._native.clear()
        try:
            yield
        finally:
            native._state.clear()
            native._state.update(state)
            ft._native.update(calls)

    flashlab = (lambda q, k, v: ft.flash_attention(q, k, v, is_causal=True))
    return {"flashlab": (flashlab, contextlib.nullcontext),
            "flashlab-python": (flashlab, python_path),
            "sdpa-flash": (sdpa, lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)),
            "sdpa-cudnn": (sdpa, lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION)),
            "sdpa-default": (sdpa, contextlib.nullcontext)}


def _step(f, q, k, v, do, backward):
    if not backward:
        return f(q, k, v)
    o = f(q, k, v)
    o.backward(do)
    return o


def _round(f, q, k, v, do, backward, mode, reps=200) -> float:
    """Seconds per call of one round: `sync` the median of reps / 4 synchronized calls,
    `queued` reps calls back to back over one synchronize."""
    for _ in range(20):
        _step(f, q, k, v, do, backward)
    torch.cuda.synchronize()
    if mode == "sync":
        ts = []
        for _ in range(reps // 4):
            t0 = time.perf_counter()
            _step(f, q, k, v, do, backward)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    t0 = time.perf_counter()
    for _ in range(reps):
        _step(f, q, k, v, do, backward)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


CELLS = [(backward, mode) for backward in (False, True) for mode in ("sync", "queued")]


def _table(impls: dict, q, k, v, do, rounds=ROUNDS) -> dict:
    """name -> a cell per CELLS: the median over `rounds` of microseconds per call, or the
    error a backend this torch or GPU lacks raised. Interleaved: every round times every
    implementation in turn, so a host whose speed drifts weighs on each alike."""
    times = {name: [[] for _ in CELLS] for name in impls}
    failed: dict = {}
    for _ in range(rounds):
        for name, (f, context) in impls.items():
            for i, (backward, mode) in enumerate(CELLS):
                if (name, i) in failed:
                    continue
                try:
                    with context():
                        times[name][i].append(_round(f, q, k, v, do, backward, mode))
                except Exception as e:
                    failed[name, i] = f"n/a ({type(e).__name__})"
    return {name: [failed.get((name, i)) or f"{statistics.median(ts) * 1e6:.1f}"
                   for i, ts in enumerate(cells)] for name, cells in times.items()}


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

    class Fresh(torch.autograd.Function):  # a Python node's floor: allocate, nothing else
        @staticmethod
        def forward(ctx, a):
            return a.new_empty(a.shape)

        @staticmethod
        def backward(ctx, g):
            return g.new_empty(g.shape)

    xg = x.clone().requires_grad_()

    def fresh_fwd_bwd():
        Fresh.apply(xg).backward(x)

    def clone_fwd_bwd():  # the same with torch's own (C++) node, for the Python node's cost
        xg.clone().backward(x)

    def raw_alloc():
        torch.cuda.caching_allocator_delete(torch.cuda.caching_allocator_alloc(4096, 0, stream.ptr))
    rows = [("torch new_empty (B, H, N, d)", lambda: x.new_empty(x.shape)),
            ("torch empty_strided", lambda: torch.empty_strided((B, H, N, d), (N * H * d, d, H * d, 1),
                                                                dtype=x.dtype, device=x.device)),
            ("CuPy launch, no arguments", lambda: empty((1,), (32,), (), 0, stream)),
            ("CuPy launch, 20 Python ints", lambda: many((1,), (32,), ints, 0, stream)),
            ("torch current raw stream", lambda: ft._stream_ptr(0)),
            ("autograd.Function identity apply", lambda: Identity.apply(xg)),
            ("autograd.Function new_empty fwd+bwd", fresh_fwd_bwd),
            ("torch caching_allocator alloc+delete", raw_alloc),
            ("torch clone fwd+bwd (a C++ node)", clone_fwd_bwd),
            ("flashlab.torch forward, no grad", lambda: ft.flash_attention(x, x, x))]
    if CIntptr is not None:
        ptrs = tuple(CIntptr(i) for i in ints)
        rows.insert(4, ("CuPy launch, 20 CIntptr", lambda: many((1,), (32,), ptrs, 0, stream)))
    return [(name, f"{_per_call(f):.2f}") for name, f in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1,1,128,64", help="B,H,N,d")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds per cell")
    ap.add_argument("--profile", help="write cProfile's top functions here")
    ap.add_argument("--pieces", action="store_true",
                    help="also time the pieces of a call (allocations, launches, apply)")
    args = ap.parse_args(argv)
    B, H, N, d = (int(x) for x in args.shape.split(","))
    warnings.filterwarnings("ignore", message=".*(kernel not used|runtime disabled|Expected query).*")
    from tabulate import tabulate

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, shape B={B} H={H} "
          f"N={N} d={d}, causal; microseconds per call (median of {args.rounds} rounds, "
          f"interleaved)")
    rows = []
    for dtype in args.dtypes.split(","):
        dt = getattr(torch, dtype)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, N, d, device="cuda", generator=g).to(dt)
                       for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        rows += [[dtype, name, *cells] for name, cells in _table(_impls(), q, k, v, do,
                                                                  args.rounds).items()]
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
