"""`flashlab train`: a small transformer on Shakespeare's Sonnets with flash or standard attention
(flashlab.autodiff), on the CPU in float64 or on the GPU with the CUDA kernels."""
from __future__ import annotations

import sys

from tabulate import tabulate

from .common import UsageError


def _cmd_train(args) -> int:
    from ..autodiff import data as data_mod
    from ..autodiff.train import TrainConfig, train

    for name in ("steps", "batch", "seq", "layers", "heads", "dim"):
        if getattr(args, name) < 1:
            raise UsageError(f"flashlab train: --{name} must be >= 1, got {getattr(args, name)}")
    if args.dim % args.heads:
        raise UsageError(f"flashlab train: --dim {args.dim} must be a multiple of --heads "
                         f"{args.heads} (head dim = dim / heads)")
    if args.device == "gpu":
        from ..launch import device

        if not device.gpu_available():
            from ..install import install_hint

            raise EnvironmentError("flashlab train --device gpu needs CuPy and a CUDA GPU, and "
                                   f"none was found ({install_hint('cuda13')}); use --device cpu")
    kinds = ["flash", "standard"] if args.compare else [args.attention]
    if args.dtype is not None and "flash" not in kinds:
        raise UsageError(f"flashlab train: --dtype {args.dtype} runs the flash attention op in 16 "
                         "bits; with --attention standard there is none (use --attention flash "
                         "or --compare)")
    config = dict(steps=args.steps, batch=args.batch, seq=args.seq, layers=args.layers,
                  heads=args.heads, dim=args.dim, lr=args.lr, seed=args.seed, device=args.device)
    text = data_mod.load_text()
    every = args.log_every or max(1, args.steps // 10)
    dtype = "float32" if args.device == "gpu" else "float64"
    where = ("CUDA kernels" if args.device == "gpu" else "the NumPy reference") + " for flash"
    if args.dtype:
        where += f", flash attention in {args.dtype}" + (" (tc)" if args.device == "gpu" else "")
    print(f"flashlab train: {' vs '.join(kinds)} attention on {args.device} ({dtype}; {where}), "
          f"{args.layers} layers, {args.heads} heads, dim {args.dim} (head dim "
          f"{args.dim // args.heads}), seq {args.seq}, batch {args.batch}, lr {args.lr}, "
          f"seed {args.seed}")
    print(f"text: Shakespeare's Sonnets, {len(text)} characters, "
          f"{len(set(text))} distinct (flashlab/data/README.md)")

    results = {}
    for kind in kinds:
        def on_step(step, loss, kind=kind):
            if sys.stderr.isatty():
                print(f"\r\033[K  {kind}: step {step}/{args.steps} loss {loss:.4f}", end="",
                      file=sys.stderr, flush=True)
            if not args.compare and (step % every == 0 or step in (1, args.steps)):
                if sys.stderr.isatty():
                    print("\r\033[K", end="", file=sys.stderr)
                print(f"step {step:>5}/{args.steps}  loss {loss:.4f}", flush=True)

        sample = args.sample if kind == kinds[0] else 0
        lowp = args.dtype if kind == "flash" else None
        results[kind] = train(TrainConfig(attention=kind, sample=sample, attention_dtype=lowp,
                                          **config), text, on_step)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)

    first = results[kinds[0]]
    if args.compare:
        fl, st = results["flash"].losses, results["standard"].losses
        rows = [[i + 1, f"{a:.10f}", f"{b:.10f}", f"{abs(a - b) / abs(b):.1e}"]
                for i, (a, b) in enumerate(zip(fl, st))
                if (i + 1) % every == 0 or i == 0 or i + 1 == args.steps]
        print(tabulate(rows, headers=["step", "flash loss", "standard loss", "rel. diff"],
                       disable_numparse=True))
        worst = max(abs(a - b) / abs(b) for a, b in zip(fl, st))
        print(f"largest relative difference over {args.steps} steps: {worst:.1e}")
    print(f"parameters: {first.parameters:,}")
    for kind in kinds:
        r = results[kind]
        label = f"{kind}: " if args.compare else ""
        print(f"{label}loss {r.losses[0]:.4f} at step 1, {r.losses[-1]:.4f} at step {args.steps}")
        steps_timed = f"steps 2..{args.steps}" if args.steps > 1 else "step 1"
        print(f"{label}time per step: {1e3 * r.seconds_per_step:.1f} ms (mean of {steps_timed})")
        print(f"{label}peak memory: {r.peak_memory / 1e6:.1f} MB ({r.memory_what})")
    if first.sample:
        print(f"sample ({args.sample} characters from the {kinds[0]} model, temperature 0.8):")
        print(first.sample)
    return 0
