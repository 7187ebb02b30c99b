"""Train a GPT-2-small-sized model with each attention implementation and compare them.

Variants (--attention, comma-separated; a name given twice runs twice, labelled `name#2`, and
the two runs' distance is the noise floor the loss curves are held to): `flashlab`
(flashlab.torch.flash_attention); `sdpa-flash`, `sdpa-cudnn`, `sdpa-efficient`, `sdpa-math` (torch's scaled_dot_product_attention
held to one backend by torch.nn.attention.sdpa_kernel); `sdpa` (torch's own choice). Each trains
the same nanoGPT-style model (same initial weights, checked; same batches) for --steps AdamW
steps in bf16 autocast with fp32 master weights. Measured: each step's time (forward, backward,
clipping, optimizer step between CUDA events; median and mean after --warmup), tokens/s, peak
memory, the loss curve (the variants should agree to bf16 noise), and one forward + backward of
the attention call alone at the model's shape (B, H, T, d) in bf16. q, k, v are strided views
of one packed qkv projection, so every implementation gets the same non-contiguous inputs.

    PYTHONPATH=. python3 examples/gpt2_attention.py --out out/gpt2 --steps 60 --batch 8

--interleave K trains the variants side by side, K steps of each in turn, so a host whose
speed drifts during the run (a shared machine) weighs on every variant alike: the way to
compare step times that differ by a few percent.

Writes <out>/gpt2.json, <out>/gpt2.md and (with matplotlib) <out>/gpt2_loss.png
(examples/gpt2_report.py); exits 1 when every variant failed or a loss curve's 10-step moving
average is off the first variant's by more than --tol. A CPU smoke test (fp32, no autocast,
perf_counter timing):

    PYTHONPATH=. python3 examples/gpt2_attention.py --device cpu --attention sdpa-math \\
        --layers 2 --heads 2 --width 64 --seq 64 --batch 2 --steps 3 --warmup 1 --vocab 256
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashlab.autodiff.data import load_text
from gpt2_model import GPT, GPTConfig  # beside this file: python puts examples/ on sys.path
from gpt2_report import (base_name, compare, errors, format_table, plot, verdict,
                         write_markdown)

SDPA_BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
                 "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "sdpa-math": SDPBackend.MATH,
                 "sdpa": None}
VARIANTS = ("flashlab",) + tuple(SDPA_BACKENDS)
ATTENTION_WARMUP, ATTENTION_REPS = 5, 20
INT_FLAGS = [("--steps", 60, None), ("--warmup", 10, "steps left out of the timing"),
             ("--batch", 8, None), ("--seq", 1024, "block size T"), ("--layers", 12, None),
             ("--heads", 12, None), ("--width", 768, "n_embd"), ("--vocab", 50304, None),
             ("--seed", 1337, None)]


def labels(names: list) -> list:
    """Variant labels for --attention's names, a repeated name numbered from its second run."""
    seen: dict = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def make_attention(name: str):
    """The attention call of variant `name`: (B, H, T, d) q, k, v -> (B, H, T, d), causal."""
    name = base_name(name)
    if name == "flashlab":
        import flashlab.torch as ft  # needs CuPy and a GPU: a failure here is that variant's

        return lambda q, k, v: ft.flash_attention(q, k, v, is_causal=True)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_context(name: str):
    """Held around a whole variant (training, torch.compile's tracing, the attention timing),
    so every SDPA call of it runs the one backend named."""
    backend = SDPA_BACKENDS.get(base_name(name))
    return sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Clock:
    """Milliseconds of the work between start() and stop(): CUDA events on a GPU (stop waits
    for the end event, after the work, so no sync falls inside the timing), else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.begin.elapsed_time(self.end)
        return (time.perf_counter() - self.t0) * 1e3


def make_batches(steps: int, batch: int, seq: int, seed: int, device: torch.device):
    """(x, y): (steps, B, T) inputs and targets (x shifted by one), byte tokens of the sonnets
    at random windows drawn once, so every variant trains on the same batches."""
    ids = np.frombuffer(load_text().encode("utf-8"), dtype=np.uint8).astype(np.int64)
    if len(ids) <= seq:
        raise SystemExit(f"--seq {seq}: the text has only {len(ids)} tokens")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq, size=(steps, batch))
    windows = torch.from_numpy(ids[starts[..., None] + np.arange(seq + 1)])  # (steps, B, T+1)
    return windows[..., :-1].contiguous().to(device), windows[..., 1:].contiguous().to(device)


def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def make_optimizer(model: nn.Module, lr: float, device: torch.device):
    """AdamW as nanoGPT sets it: weight decay on the matrices and embeddings only."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def train(model, step_model, opt, xs, ys, device):
    """Loss and milliseconds of every step; the loss is read after the step's end event."""
    clock, params = Clock(device), list(model.parameters())
    losses, times = [], []
    for x, y in zip(xs, ys):
        clock.start()
        with autocast_for(device):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(clock.stop())
        losses.append(loss.item())
    return losses, times


def time_attention(attend, B, H, T, d, device) -> float:
    """Median milliseconds of one forward + backward of the attention call alone, its q, k, v
    strided views of a packed (B, T, 3, H, d) tensor as in the model."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    packed = torch.randn(B, T, 3, H, d, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(B, H, T, d, device=device, dtype=dtype)
    clock, times = Clock(device), []
    for _ in range(ATTENTION_WARMUP + ATTENTION_REPS):
        packed.grad = None
        q, k, v = (t.transpose(1, 2) for t in packed.unbind(2))
        clock.start()
        attend(q, k, v).backward(dy)
        times.append(clock.stop())
    return statistics.median(times[ATTENTION_WARMUP:])


def free_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_variant(name, model, xs, ys, args, device) -> dict:
    """Train `model` (built with this variant's attention) and time its attention alone."""
    cuda = device.type == "cuda"
    with attention_context(name):
        free_memory(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        model.to(device)
        opt = make_optimizer(model, args.lr, device)
        if args.compile:
            torch.compiler.reset()  # a fresh trace under this variant's backend
        step_model = torch.compile(model, fullgraph=True) if args.compile else model
        losses, times = train(model, step_model, opt, xs, ys, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        del opt, step_model
        return summary(name, model, losses, times, peak, args, device)


def summary(name, model, losses, times, peak, args, device) -> dict:
    """A variant's result from its losses and step times (the first --warmup left out), with
    its attention call timed alone (held to the variant's SDPA backend)."""
    timed = times[args.warmup:]
    result = {"variant": name, "ok": True, "ms_median": statistics.median(timed),
              "ms_mean": statistics.fmean(timed),
              "tokens_per_s": args.batch * args.seq / (statistics.median(timed) / 1e3),
              "peak_gib": peak, "final_loss": losses[-1], "losses": losses, "step_ms": times}
    try:
        with attention_context(name):
            result["attention_ms"] = time_attention(model.blocks[0].attn.attend, args.batch,
                                                    args.heads, args.seq,
                                                    args.width // args.heads, device)
    except Exception:  # the training numbers stand; say why this one is missing
        result["attention_ms"], result["attention_error"] = None, traceback.format_exc()
    return result


def run_interleaved(args, cfg: GPTConfig, xs, ys, device) -> tuple[list, int]:
    """The variants trained side by side: every model built as run_all builds it (same seed,
    initial weights checked) and kept on the device with its optimizer, then --interleave
    steps of each in turn, so a host or GPU whose speed drifts during the run weighs on every
    variant alike. Peak memory is then the run's (every model resident), not a variant's: left
    out. A variant that raises is recorded with its traceback and leaves the rotation."""
    runs, first_digest, n_params = [], None, 0
    for name in args.variants:
        torch.manual_seed(args.seed)
        run = {"name": name, "losses": [], "times": [], "error": None}
        try:
            model = GPT(cfg, make_attention(name))
        except Exception:
            run["error"] = traceback.format_exc()
            runs.append(run)
            continue
        n_params = sum(p.numel() for p in model.parameters())
        digest = param_digest(model)
        first_digest = first_digest or digest
        assert digest == first_digest, f"{name}: initial weights differ from the first variant's"
        model.to(device)
        run.update(model=model, opt=make_optimizer(model, args.lr, device),
                   step=torch.compile(model, fullgraph=True) if args.compile else model)
        runs.append(run)
    for i in range(0, args.steps, args.interleave):
        for run in (r for r in runs if r["error"] is None):
            try:
                with attention_context(run["name"]):
                    losses, times = train(run["model"], run["step"], run["opt"],
                                          xs[i:i + args.interleave], ys[i:i + args.interleave],
                                          device)
            except Exception:
                run["error"] = traceback.format_exc()
                continue
            run["losses"] += losses
            run["times"] += times
    results = []
    for run in runs:
        r = ({"variant": run["name"], "ok": False, "error": run["error"]} if run["error"] else
             summary(run["name"], run["model"], run["losses"], run["times"], None, args, device))
        results.append(r)
        print(f"{run['name']}: " + (f"{r['ms_median']:.2f} ms/step, final loss "
                                    f"{r['final_loss']:.4f}" if r["ok"] else "failed\n" +
                                    r["error"]), flush=True)
    return results, n_params




def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"device": torch.cuda.get_device_name(device) if cuda else
            f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "python": platform.python_version(), "flashlab_commit": commit,
            "command": shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attention", default="flashlab,sdpa-flash,sdpa-cudnn",
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--out", default="out/gpt2", help="folder for gpt2.json, .md, _loss.png")
    for flag, default, text in INT_FLAGS:
        p.add_argument(flag, type=int, default=default, help=text)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--tol", type=float, default=0.05,
                   help="max |loss difference| against the first variant that counts as a match")
    p.add_argument("--compile", action="store_true", help="torch.compile(model, fullgraph=True)")
    p.add_argument("--interleave", type=int, default=0, metavar="K",
                   help="train the variants side by side, K steps of each in turn (0: one "
                        "variant after another); peak memory is then not per variant")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.attention.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--attention: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    args.variants = labels(args.variants)  # a name given twice: its run-to-run spread
    if args.interleave < 0:
        p.error(f"--interleave {args.interleave} must be 0 or more")
    if args.steps <= args.warmup:
        p.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    if args.width % args.heads:
        p.error(f"--width {args.width} must be a multiple of --heads {args.heads}")
    if args.vocab < 256:
        p.error("--vocab must be at least 256: the tokens are bytes")
    return args


def run_all(args, cfg: GPTConfig, xs, ys, device) -> tuple[list, int]:
    """One result per variant, in order; a variant that raises is recorded with its traceback.
    Each model is built on the CPU right after torch.manual_seed(seed), and its initial weights
    must hash like the first variant's, so the curves differ only by the attention."""
    results, first_digest = [], None
    for name in args.variants:
        torch.manual_seed(args.seed)
        try:
            attend, error = make_attention(name), None
        except Exception:
            attend, error = None, traceback.format_exc()
        model = GPT(cfg, attend)
        n_params = sum(p.numel() for p in model.parameters())
        digest = param_digest(model)
        first_digest = first_digest or digest
        assert digest == first_digest, f"{name}: initial weights differ from the first variant's"
        if error is None:
            try:
                results.append(run_variant(name, model, xs, ys, args, device))
            except Exception:
                error = traceback.format_exc()
        if error is not None:
            results.append({"variant": name, "ok": False, "error": error})
        del model
        free_memory(device)
        r = results[-1]
        print(f"{name}: " + (f"{r['ms_median']:.2f} ms/step, final loss {r['final_loss']:.4f}"
                             if r["ok"] else "failed\n" + r["error"]), flush=True)
    return results, n_params


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # the events and the model on one GPU: --device cuda:1
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    env = environment(device)
    cfg = GPTConfig(args.layers, args.heads, args.width, args.seq, args.vocab)
    xs, ys = make_batches(args.steps, args.batch, args.seq, args.seed, device)
    print(f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}: {cfg}, batch "
          f"{args.batch}, {args.steps} steps, compile={args.compile}, "
          f"interleave={args.interleave}", flush=True)
    run = run_interleaved if args.interleave else run_all
    results, n_params = run(args, cfg, xs, ys, device)
    compare(results, args.tol)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), "n_params": n_params,
              "attention_shape": [args.batch, args.heads, args.seq, args.width // args.heads],
              "attention_reps": ATTENTION_REPS}
    (out / "gpt2.json").write_text(json.dumps({"config": config, **env, "verdict":
                                               verdict(results, args.tol), "results": results},
                                              indent=1))
    write_markdown(out / "gpt2.md", env, args, results, args.tol)
    png = plot(out / "gpt2_loss.png", results, env)
    print(format_table(results, "simple"))
    print(verdict(results, args.tol))
    for e in errors(results):
        print(e)
    print(f"wrote {out / 'gpt2.json'}, {out / 'gpt2.md'}" + (", gpt2_loss.png" if png else ""))
    ok = [r for r in results if r["ok"]]
    return 0 if ok and all(r["matches"] for r in ok) else 1


if __name__ == "__main__":
    sys.exit(main())
