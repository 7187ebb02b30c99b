"""`flashlab bench`: the speedup table, on the GPU or (without one) the NumPy step-throughs.

The kernels it offers, and which take which dtype, are flashlab.registry's."""
from __future__ import annotations

import sys

from tabulate import tabulate

from .. import hbm, registry
from .common import UsageError, _progress

DTYPES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def _lowp_kernels() -> tuple:
    """The registry's kernels that take float16 / bfloat16 (the tensor-core kernels)."""
    return tuple(dict.fromkeys(registry.for_dtype("float16") + registry.for_dtype("bfloat16")))


def _kernel_lists() -> tuple[str, str, str]:
    """The kernels bench runs, as the help says them: float32; float16 / bfloat16 on a GPU; and
    on the CPU in 16 bits (the baseline, standard attention, is there the 2x rule's yardstick)."""
    lowp = _lowp_kernels()
    cpu_low = [n for n in registry.names() if n in lowp or registry.get(n).baseline]
    return (", ".join(registry.for_dtype("float32")), ", ".join(lowp), ", ".join(cpu_low))


def _print_report(report, args):
    from .. import bench

    for key, value in report.header.items():
        print(f"{key}: {value}")
    mode = (f"d = {args.head_dim}, {'causal' if args.causal else 'non-causal'}, "
            f"{report.header.get('dtype', 'float32')}")
    print(f"{mode}; TFLOP/s: forward 4 B H N^2 d (halved when causal), backward 2.5x forward")
    print(tabulate([r.table() for r in report.rows], headers=bench.headers(report),
                   disable_numparse=True))
    for note in report.notes:
        print(f"note: {note}")


def _cmd_cpu_backend(args) -> int:
    import json

    from ..bench import cpu_backend

    print("CPU backend: compiling and running flashlab's CUDA C on one core (about a minute)...",
          file=sys.stderr)
    rows = cpu_backend.measure()
    print(tabulate(cpu_backend.table(rows), headers=["figure", "measured", "target", "met", "what"],
                   disable_numparse=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["met"] is not False for r in rows) else 1


def _cmd_bench(args) -> int:
    from .. import bench
    from ..launch import device

    if args.cpu_backend:
        return _cmd_cpu_backend(args)
    unknown = [c for c in args.compare if c not in ("torch", "flex")]
    if unknown:
        raise UsageError(f"flashlab bench: --compare {unknown[0]}: choose torch (SDPA's "
                         "backends) or flex (FlexAttention, on attention variants)")
    for name in ("batch", "heads", "tokens", "repeat"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"flashlab bench: --{name} must be >= 1, got {value}")
    if args.variant is not None or "flex" in args.compare:
        return _cmd_variants(args)

    if args.dtype is None and not args.kernels and not args.compare and device.gpu_available():
        return _cmd_ladder(args)
    dtype = DTYPES.get(args.dtype or "float32", args.dtype or "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        lowk = _lowp_kernels()
        raise UsageError(f"flashlab bench: --dtype {args.dtype}: choose float32 "
                         f"({', '.join(registry.for_dtype('float32'))}) or float16 / bfloat16 "
                         f"({', '.join(lowk)}, the tensor-core kernel{'s' * (len(lowk) != 1)})")
    low = dtype != "float32"
    known = registry.names()
    unknown = [k for k in args.kernels or () if k not in known]
    if unknown:
        raise UsageError(f"flashlab bench: --kernels {','.join(unknown)}: choose from {','.join(known)}")
    compare = []
    for c in args.compare:
        compare = (["torch-flash", "torch-cudnn"] if low else
                   ["torch-math", "torch-efficient", "torch-flash", "torch-cudnn"])
    on_gpu = device.gpu_available()
    # what takes this dtype where the run happens (on the CPU, 16-bit naive is lowp's yardstick)
    takes = registry.for_dtype(dtype) if on_gpu else bench.cpu_kernels(dtype)
    kernels = args.kernels or list(takes)
    if not any(k in takes for k in kernels):
        others = [k for k in known if k not in takes]
        raise UsageError(f"flashlab bench: --kernels {','.join(kernels)}: {dtype} runs "
                         f"{', '.join(takes)} {'here' if on_gpu else 'on the CPU'}; "
                         f"{', '.join(others)} take{'s' if len(others) == 1 else ''} "
                         f"--dtype {'float32' if low else 'bfloat16 (or float16)'}")
    _check_bench_outputs(args)  # before the timing: a run is not thrown away at the end
    if on_gpu:
        seqs = args.seq or [512, 1024, 2048, 4096, 8192, 16384]
        report = bench.gpu_bench(seqs, kernels, args.head_dim, args.causal, args.backward,
                                 args.batch, args.heads, args.tokens or 16384,
                                 repeat=args.repeat or 10, compare=compare, progress=_progress,
                                 dtype=dtype)
    else:
        from ..install import install_hint

        print("No CUDA device found (or CuPy is not installed): timing the NumPy step-throughs at "
              f"small sizes instead. On a GPU machine: {install_hint('cuda13')} and run again.")
        if compare:
            print("note: --compare torch applies only on a GPU (torch's CUDA attention backends); "
                  "nothing is compared here")
        seqs = args.seq or [128, 256, 512]
        report = bench.cpu_bench(seqs, args.head_dim, args.causal, args.backward,
                                 repeat=args.repeat or 3, kernels=kernels, batch=args.batch,
                                 heads=args.heads, tokens=args.tokens, dtype=dtype,
                                 progress=_progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    # the files first, then the table: `flashlab bench --json x.json | head` still writes x.json
    _write_outputs(report, args)
    _print_report(report, args)
    if not on_gpu:
        print()
        print("HBM traffic the GPU versions of these algorithms would make, per head "
              f"(M = {hbm.DEFAULT_SRAM} floats):")
        print(tabulate(bench.traffic_rows(seqs, args.head_dim, args.causal), headers="keys",
                       floatfmt=".3g"))
    return _written_and_status(report, args)


def _written_and_status(report, args) -> int:
    """Say which files were written; the exit status: 1 where a row failed its check."""
    for what, path in (("plot", args.plot), ("JSON", args.json), ("CSV", args.csv)):
        if path:
            print(f"{what} written to {path}")
    return 1 if any(r.check.startswith("WRONG") for r in report.rows) else 0


def _write_outputs(report, args) -> None:
    """--plot, --json and --csv of a report (before its table is printed)."""
    import json

    if args.plot:
        from ..viz import bench_plot

        bench_plot(report, args.plot)
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


def _cmd_ladder(args) -> int:
    """`flashlab bench` on a GPU with no dtype, kernels or peers named: bench.ladder's table."""
    from ..bench import ladder

    _check_bench_outputs(args)
    seqs = args.seq or [1024, 4096, 16384]
    report = ladder.ladder_bench(seqs, args.head_dim, args.causal, args.backward, args.batch,
                                 args.heads, args.tokens or 16384, repeat=args.repeat or 10,
                                 progress=_progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    _write_outputs(report, args)
    print("The ladder: standard attention, FlashAttention (fa1), FlashAttention-2 (fa2) in "
          "float32, then tensor cores (tc) in 16 bits; --dtype float32 or bfloat16 for one rung "
          "set, --compare torch for all of SDPA's backends there.")
    _print_report(report, args)
    return _written_and_status(report, args)


def _cmd_variants(args) -> int:
    """--variant (and --compare flex): flashlab.bench.variants' table, on the GPU only."""
    import json

    from .. import bench
    from ..bench import variants
    from ..launch import device

    try:
        chosen = variants.parse(args.variant or "all")
    except ValueError as e:
        raise UsageError(f"flashlab bench: {e}") from None
    if "torch" in args.compare:
        raise UsageError("flashlab bench: --variant compares with --compare flex (FlexAttention "
                         "runs the variants; SDPA has causal only, which the table gives too)")
    if args.dtype not in (None, "float32", "bf16", "bfloat16") or args.backward or args.causal:
        raise UsageError("flashlab bench --variant: the variants run in bfloat16, forward and "
                         "backward, with their own masks: leave out --dtype, --backward and "
                         "--causal")
    if args.csv or args.plot:
        raise UsageError("flashlab bench --variant writes --json only")
    _check_bench_outputs(args)
    if not device.gpu_available():
        from ..install import install_hint

        print("flashlab bench --variant times the tensor-core kernel with each variant compiled "
              "in, and FlexAttention beside it: it needs a CUDA GPU with CuPy and PyTorch "
              f"({install_hint('cuda13')}). Without one, tutorial 8 (attention variants) runs "
              "the same variants in the step-throughs.")
        return 1
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EnvironmentError("flashlab bench --variant needs PyTorch (pip install torch), "
                               "which puts the inputs on the GPU and runs FlexAttention") from None
    compare = ("flex",) if "flex" in args.compare else ()
    rows = []
    for n in args.seq or [4096]:
        rows += variants.variant_bench(chosen, args.head_dim, seq=n, batch=args.batch or 4,
                                       heads=args.heads or 16, repeat=args.repeat or 20,
                                       compare=compare, progress=_progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": bench.device_header() | {"batch": args.batch or 4,
                                                          "heads": args.heads or 16,
                                                          "dtype": "bfloat16"},
                       "rows": rows}, f, indent=1, default=str)
    headers, table = variants.table(rows)
    print(f"attention variants, bfloat16, d = {args.head_dim}, B = {args.batch or 4}, "
          f"H = {args.heads or 16}, N = {','.join(str(n) for n in args.seq or [4096])}; ms, "
          "median; bwd = forward + backward - forward; check: FlashAttention's rule on o and dQ "
          "(worst error / bound)")
    print(tabulate(table, headers=headers, disable_numparse=True))
    if args.json:
        print(f"JSON written to {args.json}")
    return 1 if any(r["flashlab_fwd"] is None for r in rows) else 0


def _check_bench_outputs(args):
    """--plot, --json, --csv: fail now, not after the timing, if they cannot be written."""
    import os

    for flag, path in (("--plot", args.plot), ("--json", args.json), ("--csv", args.csv)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or os.path.isdir(path):
            raise UsageError(f"flashlab bench: {flag} {path}: "
                             + ("is a directory" if os.path.isdir(path) else
                                f"no such directory {folder}"))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from ..install import install_hint

            raise EnvironmentError("flashlab bench --plot needs matplotlib (the 'plot' extra): "
                                   f"{install_hint('plot')}") from None
