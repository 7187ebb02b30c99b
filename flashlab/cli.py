"""The `flashlab` command line. Errors are one line (exit code 2 for usage errors)."""
from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from . import hbm


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit code 2."""


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        try:
            value = int(part) * mult
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,1k,2k; got {text!r}")
        if value < 1:
            raise argparse.ArgumentTypeError(f"values must be >= 1, got {value}")
        out.append(value)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _cmd_io(args) -> int:
    rows = hbm.io_rows(args.seq, args.head_dim, args.sram, causal=args.causal,
                       itemsize=args.itemsize)
    print(f"HBM traffic per head, fp{8 * args.itemsize} elements, "
          f"{'causal' if args.causal else 'non-causal'}, d = {args.head_dim} "
          f"(MB = 1e6 bytes; Br, Bc from A1:L1 for SRAM size M)")
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    print("A0: standard attention (S, P in HBM). A1: the paper's Algorithm 1 (O_i, l_i, m_i travel "
          "each step). F2: FlashAttention-2 order.\nThe last two columns are the Theta bounds of the "
          "paper's Theorem 2 (standard: N d + N^2; FlashAttention: N^2 d^2 / M), constants omitted.")
    return 0


def _progress(msg):
    if sys.stderr.isatty():
        print(f"\r\033[K  running {msg} ...", end="", file=sys.stderr, flush=True)


def _print_report(report, args):
    from . import bench

    for key, value in report.header.items():
        print(f"{key}: {value}")
    mode = (f"d = {args.head_dim}, {'causal' if args.causal else 'non-causal'}, "
            f"{report.header.get('dtype', 'float32')}")
    print(f"{mode}; TFLOP/s: forward 4 B H N^2 d (halved when causal), backward 2.5x forward")
    print(tabulate([r.table() for r in report.rows], headers=bench.headers(report),
                   disable_numparse=True))
    for note in report.notes:
        print(f"note: {note}")


def _cmd_bench(args) -> int:
    import json

    from . import bench
    from .cuda_kernel_ops import KERNELS, gpu_available

    dtype = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(
        args.dtype, args.dtype)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UsageError(f"flashlab bench: --dtype {args.dtype}: choose float32 (naive, fa1, fa2) "
                         "or float16 / bfloat16 (tc, the tensor-core kernel)")
    low = dtype != "float32"
    kernels = args.kernels or (["tc"] if low else ["naive", "fa1", "fa2"])
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise UsageError(f"flashlab bench: --kernels {','.join(unknown)}: choose from {','.join(KERNELS)}")
    compare = []
    for c in args.compare:
        if c != "torch":
            raise UsageError(f"flashlab bench: --compare {c}: only 'torch' is known")
        compare = (["torch-flash", "torch-cudnn"] if low else
                   ["torch-math", "torch-efficient", "torch-flash", "torch-cudnn"])
    if gpu_available():
        seqs = args.seq or [512, 1024, 2048, 4096, 8192, 16384]
        if compare:
            try:
                import torch  # noqa: F401
            except ImportError:
                print("note: --compare torch: torch is not importable here; comparing nothing")
        report = bench.gpu_bench(seqs, kernels, args.head_dim, args.causal, args.backward,
                                 args.batch, args.heads, args.tokens, repeat=args.repeat,
                                 compare=compare, progress=_progress, dtype=dtype)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)
        _print_report(report, args)
    else:
        print("No CUDA device found (or CuPy is not installed): timing the NumPy step-throughs at "
              "small sizes instead. On a GPU machine: pip install -e '.[cuda13]' and run again.")
        if low:
            print(f"note: --dtype {dtype} applies on a GPU (the tensor-core kernel 'tc'); the "
                  "step-throughs below run in float64")
        seqs = args.seq or [128, 256, 512]
        report = bench.cpu_bench(seqs, args.head_dim, args.causal, args.backward,
                                 repeat=min(args.repeat, 3))
        _print_report(report, args)
        print()
        print("HBM traffic the GPU versions of these algorithms would make, per head "
              f"(M = {hbm.DEFAULT_SRAM} floats):")
        print(tabulate(bench.traffic_rows(seqs, args.head_dim, args.causal), headers="keys",
                       floatfmt=".3g"))
    if args.plot:
        from .viz import bench_plot

        bench_plot(report, args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1, default=str)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(report.rows[0].__dataclass_fields__) if report.rows else [])
            for r in report.rows:
                w.writerow(list(vars(r).values()))
    wrong = [r for r in report.rows if r.check.startswith("WRONG")]
    return 1 if wrong else 0


def _bug_names():
    from .cuda_kernel_ops import BUGS

    return sorted(BUGS)


def _trace_args(p, kernel=True):
    if kernel:
        p.add_argument("--kernel", default=None, choices=("fa1", "fa2"), help="default fa1")
    p.add_argument("--seq", type=int, default=256, help="N queries (default 256)")
    p.add_argument("--seq-k", type=int, default=None, help="N keys (default: --seq)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--backward", action="store_true", help="trace the backward pass (B1 / G2)")
    p.add_argument("--seed", type=int, default=0)


def _need_gpu(command):
    from .cuda_kernel_ops import gpu_available

    if not gpu_available():
        raise EnvironmentError(f"flashlab {command} runs a CUDA kernel and no CUDA device was found "
                               "(or CuPy is not installed). On CPU, flashlab.trace.record() traces "
                               "the step-through references.")


def _run_trace(args, kernel, bug=None, source=None) -> int:
    from . import trace

    direction = "backward" if args.backward else "forward"
    div, actual, _ = trace.check_kernel(kernel, direction, B=args.batch, H=args.heads, Nq=args.seq,
                                        Nk=args.seq_k, d=args.head_dim, causal=args.causal,
                                        seed=args.seed, bug=bug, source=source)
    steps = int((actual.seq >= 0).sum())
    print(f"{actual.label}: {steps} tile steps (Br = {actual.Br}, Bc = {actual.Bc}, "
          f"{actual.B} x {actual.H} heads) compared with the float64 step-through")
    if div is None:
        print("all steps match")
        return 0
    print(div)
    return 1


def _cmd_trace(args) -> int:
    _need_gpu("trace")
    if args.inject_bug is not None:
        from .cuda_kernel_ops import BUGS, HUNT

        b = BUGS.get(args.inject_bug) or HUNT.get(args.inject_bug)
        if b is None:
            raise UsageError(f"flashlab trace: --inject-bug {args.inject_bug}: choose from "
                             f"{', '.join(sorted(BUGS) + sorted(HUNT))}")
        want = ("fa1" if args.kernel is None else args.kernel, "backward" if args.backward else "forward")
        if (b.kernel, b.direction) != want:
            raise UsageError(f"flashlab trace: bug {args.inject_bug} is planted in the {b.kernel} "
                             f"{b.direction} pass: add --kernel {b.kernel}"
                             + (" --backward" if b.direction == "backward" else ""))
        if args.inject_bug in HUNT:  # the bug hunt: say nothing that gives the answer away
            print(f"bug hunt {b.hunt}: the {b.kernel} {b.direction} pass has one planted bug. "
                  "Which step diverges first, and which algorithm line is broken?")
        else:
            print(f"planted bug {b.name} ({b.line}): {b.question}")
    return _run_trace(args, args.kernel or "fa1", bug=args.inject_bug)


def _cmd_check(args) -> int:
    from .cuda_kernel_ops import gpu_available, nvrtc_compile

    if not gpu_available():
        log = nvrtc_compile(args.algorithm, "sm_80", source=args.file)
        print(f"{args.file} compiles with NVRTC for sm_80" + (f":\n{log}" if log else "."))
        print("No CUDA device found: the tile-by-tile check needs a GPU.")
        return 0
    return _run_trace(args, args.algorithm, source=args.file)


def _cmd_info(args) -> int:
    import os
    import platform

    import numpy

    from . import __version__
    from . import cuda_kernel_ops as ops

    print(f"flashlab {__version__}, Python {platform.python_version()}, NumPy {numpy.__version__}")
    print(f"kernel sources: {ops.kernel_dir()}")
    try:
        import cupy as cp
    except ImportError:
        print("CuPy: not installed (pip install -e '.[cuda13]'); NumPy inputs run the references")
        print("kernels that run here: none")
        return 0
    print(f"CuPy {cp.__version__}; kernel cache: "
          f"{os.environ.get('CUPY_CACHE_DIR', os.path.expanduser('~/.cupy/kernel_cache'))}")
    if not ops.gpu_available():
        print("CUDA device: none found; kernels that run here: none")
        return 0
    try:
        print(f"NVRTC {'.'.join(map(str, cp.cuda.nvrtc.getVersion()))}")
    except Exception as e:  # pragma: no cover
        print(f"NVRTC: not found ({e})")
    dev = cp.cuda.Device()
    lim = ops.device_limits(dev.id)
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device {dev.id}: {name}, compute capability {lim['compute_capability']}, "
          f"{lim['sm_count']} SMs, shared memory per block {lim['smem_default'] // 1024} KB "
          f"(opt-in {lim['smem_optin'] // 1024} KB)")
    rows = []
    for kernel in ops.KERNELS:
        for d in (64, 128):
            for direction in ("forward", "backward"):
                variant = ops.tc_variant(lim["compute_capability"], d)
                p = ops.plan(kernel, d, direction, lim["smem_optin"], variant)
                label = f"tc ({'tc90.cu, wgmma' if variant == 'wgmma' else 'tc.cu, mma.sync'})"
                rows.append([label if kernel == "tc" else kernel, d, direction, p["Br"] or "-",
                             p["Bc"] or "-",
                             f"{p['smem'] / 1024:.0f} KB" if p["smem"] else "static"])
    print("kernels that run here: " + ", ".join(ops.available_kernels()) +
          f"; fa2 head dims {', '.join(map(str, ops.FA2_HEAD_DIMS))}, fa1 any d <= {ops.FA1_MAX_HEAD_DIM}")
    print(tabulate(rows, headers=["kernel", "d", "pass", "Br", "Bc", "shared memory"]))
    return 0


def _ids(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd_assignment_make(args) -> int:
    from . import assignment

    handed = assignment.make(args.outdir, args.exercises, force=args.force, solution=args.solution)
    kind = "solution copy" if args.solution else "student copy"
    print(f"{kind} written to {args.outdir}: exercises {', '.join(handed)}")
    print(f"hand out {args.outdir}/ASSIGNMENT.md; grade with: flashlab grade {args.outdir}")
    return 0


def _cmd_grade(args) -> int:
    import json

    from . import assignment

    report = assignment.grade(args.dir, args.exercises)
    rows = [[r.exercise.id, f"{r.score:g} / {r.max_score:g}", r.status, r.output.splitlines()[0]]
            for r in report.results]
    print(tabulate(rows, headers=["exercise", "score", "status", "result"], disable_numparse=True))
    print(f"total: {report.score:g} / {report.max_score:g}")
    for r in report.results:
        if r.status == "failed" and "\n" in r.output:
            print(f"\nExercise {r.exercise.id}: " + r.output.split("\n", 1)[1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(assignment.results_json(report), f, indent=1)
        print(f"Gradescope results written to {args.json}")
    return 0


def _cmd_train(args) -> int:
    from .autodiff import data as data_mod
    from .autodiff.train import TrainConfig, train

    for name in ("steps", "batch", "seq", "layers", "heads", "dim"):
        if getattr(args, name) < 1:
            raise UsageError(f"flashlab train: --{name} must be >= 1, got {getattr(args, name)}")
    if args.dim % args.heads:
        raise UsageError(f"flashlab train: --dim {args.dim} must be a multiple of --heads "
                         f"{args.heads} (head dim = dim / heads)")
    if args.device == "gpu":
        from .cuda_kernel_ops import gpu_available

        if not gpu_available():
            raise EnvironmentError("flashlab train --device gpu needs CuPy and a CUDA GPU, and "
                                   "none was found (pip install -e '.[cuda13]'); use --device cpu")
    kinds = ["flash", "standard"] if args.compare else [args.attention]
    config = dict(steps=args.steps, batch=args.batch, seq=args.seq, layers=args.layers,
                  heads=args.heads, dim=args.dim, lr=args.lr, seed=args.seed, device=args.device)
    text = data_mod.load_text()
    every = args.log_every or max(1, args.steps // 10)
    dtype = "float32" if args.device == "gpu" else "float64"
    where = ("CUDA kernels" if args.device == "gpu" else "the NumPy reference") + " for flash"
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
        results[kind] = train(TrainConfig(attention=kind, sample=sample, **config), text, on_step)
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flashlab", description="Learn FlashAttention by running it.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="examples:\n  flashlab bench\n  flashlab io --seq 1k,4k,16k --head-dim 64\n"
                       "  flashlab trace --kernel fa1 --inject-bug no-rescale --seq 600\n  flashlab info\n")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    io = sub.add_parser(
        "io", help="HBM traffic of standard attention, Algorithm 1 and FlashAttention-2 (CPU)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flashlab io --seq 512,1k,4k,16k --head-dim 64 --sram 12288,24576\n")
    io.add_argument("--seq", type=_int_list, default=[512, 1024, 2048, 4096, 8192, 16384],
                    help="sequence lengths (default 512,1k,2k,4k,8k,16k)")
    io.add_argument("--head-dim", type=int, default=64, help="head dim d (default 64)")
    io.add_argument("--sram", type=_int_list, default=[hbm.DEFAULT_SRAM, 4 * hbm.DEFAULT_SRAM],
                    help="SRAM sizes M in floats (default 12288,49152: 48 KiB and 192 KiB of fp32)")
    io.add_argument("--causal", action="store_true", help="count F2 with causal block skipping")
    io.add_argument("--itemsize", type=int, default=4, choices=(2, 4, 8),
                    help="bytes per element (default 4, fp32)")
    io.set_defaults(func=_cmd_io)

    b = sub.add_parser(
        "bench", help="speedup table: every kernel against standard attention (GPU; CPU fallback)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab bench\n  flashlab bench --seq 1k,4k --head-dim 128 --causal "
               "--backward --compare torch --json out.json\n")
    b.add_argument("--seq", type=_int_list, default=None,
                   help="sequence lengths (GPU default 512..16k; CPU default 128,256,512)")
    b.add_argument("--batch", type=int, default=None, help="batch B (default tokens / N)")
    b.add_argument("--heads", type=int, default=None, help="heads H (default 2048 / d)")
    b.add_argument("--tokens", type=int, default=16384, help="B * N when --batch is not given")
    b.add_argument("--head-dim", type=int, default=64, help="head dim d (default 64)")
    b.add_argument("--dtype", default="float32",
                   help="float32 (naive, fa1, fa2; default) or float16 / bfloat16 (tc, against "
                        "torch's flash and cuDNN backends with --compare torch)")
    b.add_argument("--causal", action="store_true")
    b.add_argument("--backward", action="store_true", help="time the backward pass too")
    b.add_argument("--kernels", type=lambda t: t.split(","), default=None,
                   help="comma-separated (default naive,fa1,fa2; tc with --dtype float16/bfloat16)")
    b.add_argument("--compare", action="append", default=[], metavar="torch",
                   help="also time torch's scaled_dot_product_attention backends")
    b.add_argument("--repeat", type=int, default=10, help="timed calls per entry (median)")
    b.add_argument("--json", metavar="FILE", help="write the table and header as JSON")
    b.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    b.add_argument("--plot", metavar="FILE.png", help="speedup and memory against N (matplotlib)")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser(
        "trace", help="run a kernel in trace mode and compare it with its step-through (GPU)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab trace --kernel fa1 --seq 256 --head-dim 64\n"
               "  flashlab trace --kernel fa1 --seq 600 --inject-bug no-rescale\n"
               "planted bugs: " + ", ".join(_bug_names()) + "\n")
    _trace_args(t)
    t.add_argument("--inject-bug", metavar="NAME", default=None,
                   help="plant a known bug in the kernel source first")
    t.set_defaults(func=_cmd_trace)

    c = sub.add_parser(
        "check", help="compile your own kernel source and check it tile by tile (GPU)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flashlab check my_fa1.cu --algorithm fa1 --seq 300 --causal\n"
               "The file must define the kernels of kernels/<algorithm>.cu with the same\n"
               "signatures (it may #include \"common.cuh\").\n")
    c.add_argument("file", help="a .cu file")
    c.add_argument("--algorithm", required=True, choices=("fa1", "fa2"),
                   help="whose launch contract and step-through to use")
    _trace_args(c, kernel=False)
    c.set_defaults(func=_cmd_check)

    a = sub.add_parser("assignment", help="course assignments: write a student copy",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  flashlab assignment make hw3 --exercises 1.1,2.1,3.1\n")
    asub = a.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    am = asub.add_parser("make", help="write a student copy with exercise regions stubbed",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n  flashlab assignment make hw3\n"
                                "  flashlab assignment make hw3 --exercises 1.1,2.1\n"
                                "  flashlab assignment make key --solution   (check the grader)\n")
    am.add_argument("outdir")
    am.add_argument("--exercises", type=_ids, default=None, help="ids to hand out (default all)")
    am.add_argument("--solution", action="store_true", help="stub nothing: a copy of the solution")
    am.add_argument("--force", action="store_true", help="write into a non-empty directory")
    am.set_defaults(func=_cmd_assignment_make)

    g = sub.add_parser("grade", help="grade a student copy, with per-tile feedback",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  flashlab grade hw3\n"
                              "  flashlab grade . --json /autograder/results/results.json\n")
    g.add_argument("dir", nargs="?", default=".")
    g.add_argument("--exercises", type=_ids, default=None, help="ids to grade (default all)")
    g.add_argument("--json", metavar="FILE", help="write Gradescope's results.json")
    g.set_defaults(func=_cmd_grade)

    i = sub.add_parser("info", help="device, shared memory, versions, kernel cache, kernels here",
                       epilog="example:\n  flashlab info\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.set_defaults(func=_cmd_info)

    tr = sub.add_parser(
        "train", help="train a small transformer on Shakespeare's Sonnets with flash or "
                      "standard attention (autodiff; CPU or GPU)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab train --attention flash --steps 200\n"
               "  flashlab train --compare --steps 10    # flash and standard, same seed\n"
               "  flashlab train --device gpu --steps 500 --dim 128 --layers 4\n")
    tr.add_argument("--attention", default="flash", choices=("flash", "standard"),
                    help="flash: one FlashAttention node; standard: matmul-softmax-matmul")
    tr.add_argument("--compare", action="store_true",
                    help="train with both attentions from the same seed; print both loss curves")
    tr.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    tr.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    tr.add_argument("--seq", type=int, default=64, help="characters per sequence (default 64)")
    tr.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    tr.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    tr.add_argument("--dim", type=int, default=64, help="model width C (default 64)")
    tr.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                    help="cpu: float64 NumPy; gpu: float32 CuPy and the CUDA kernels")
    tr.add_argument("--sample", type=int, default=200, metavar="N",
                    help="characters to generate at the end (default 200; 0 for none)")
    tr.add_argument("--log-every", type=int, default=0, metavar="K",
                    help="print the loss every K steps (default steps / 10)")
    tr.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args, "head_dim", 1) < 1:
            raise UsageError(f"flashlab {args.command}: --head-dim must be >= 1, got {args.head_dim}")
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (EnvironmentError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
