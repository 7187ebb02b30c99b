"""Where an attention call's time goes under torch.profiler: kernel by kernel, and the GPU's busy
time against the host's wall time, for flashlab.torch and SDPA's backends, at a model's shape
and in whole GPT-2 training steps (examples/gpt2_attention.py's model).

    PYTHONPATH=. python3 scripts/torch_profile.py [--shape 8,12,1024,64] [--gpt2-steps 4]

Per implementation: wall us per iteration (perf_counter, synchronized), the GPU's busy us (the
union of its kernels' spans), and each kernel's count and mean us per iteration. A GPU busy far
below the wall time means the host is the bottleneck (it cannot queue work fast enough).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}


def attention(name):
    if name == "flashlab":
        import flashlab.torch as ft

        return lambda q, k, v: ft.flash_attention(q, k, v, is_causal=True)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def context(name):
    return sdpa_kernel(BACKENDS[name]) if name in BACKENDS else contextlib.nullcontext()


def _kernels(prof):
    """[(name, start us, end us)] of the GPU kernels and memsets/copies in a profile."""
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.name, e.time_range.start, e.time_range.end))
    return out


def _busy(spans) -> float:
    total, end = 0.0, -1e30
    for _, s, e in sorted(spans, key=lambda x: x[1]):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def _summary(prof, iters, wall_us):
    spans = _kernels(prof)
    per = {}
    for name, s, e in spans:
        c, t = per.get(name, (0, 0.0))
        per[name] = (c + 1, t + e - s)
    rows = sorted(((n[:70], c / iters, t / c) for n, (c, t) in per.items()),
                  key=lambda r: -r[1] * r[2])
    return wall_us / iters, _busy(spans) / iters, rows


def profile_attention(name, B, H, T, d, iters=20):
    f = attention(name)
    packed = torch.randn(B, T, 3, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)

    def step():
        packed.grad = None
        q, k, v = (t.transpose(1, 2) for t in packed.unbind(2))
        f(q, k, v).backward(dy)

    with context(name):
        prof, wall = _profiled(step, 10, iters)
    return _summary(prof, iters, wall)


def _profiled(step, warmup: int, n: int):
    """(the profile, wall microseconds) of n calls of step() after `warmup` unprofiled ones."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e6
    return prof, wall


def profile_gpt2(name, steps, batch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpt2_model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(), attention(name)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 256, (batch, 1024), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with context(name):
        prof, wall = _profiled(step, 3, steps)
        # the same steps without the profiler: its own overhead is on the host
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        plain = (time.perf_counter() - t0) * 1e6 / steps
    w, busy, rows = _summary(prof, steps, wall)
    return plain, w, busy, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="8,12,1024,64", help="B,H,T,d of the attention alone")
    ap.add_argument("--impls", default="flashlab,sdpa-flash,sdpa-cudnn")
    ap.add_argument("--gpt2-steps", type=int, default=4, help="0: skip the GPT-2 steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    B, H, T, d = (int(x) for x in args.shape.split(","))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name in args.impls.split(","):
        wall, busy, rows = profile_attention(name, B, H, T, d)
        print(f"\n== attention alone, {name}, (B, H, T, d) = ({B}, {H}, {T}, {d}) bf16 causal, "
              f"fwd+bwd: wall {wall:.1f} us/iter, GPU busy {busy:.1f} us/iter")
        print(tabulate(rows[:args.top], headers=["kernel", "per iter", "us each"],
                       floatfmt=("", ".1f", ".1f")))
    for name in args.impls.split(",") if args.gpt2_steps else ():
        plain, wall, busy, rows = profile_gpt2(name, args.gpt2_steps, args.batch)
        print(f"\n== GPT-2 small step, {name}, batch {args.batch}: {plain / 1e3:.2f} ms/step "
              f"unprofiled; profiled wall {wall / 1e3:.2f} ms, GPU busy {busy / 1e3:.2f} ms")
        print(tabulate(rows[:args.top], headers=["kernel", "per step", "us each"],
                       floatfmt=("", ".1f", ".1f")))


if __name__ == "__main__":
    main()
