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
          f"(MB = 1e6 bytes; each algorithm's Br x Bc for SRAM size M, rules below)")
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    causal = ", only the blocks the causal mask leaves" if args.causal else ""
    print("\n".join([
        "A0: standard attention (S, P in HBM). A1: the paper's Algorithm 1 (O_i, l_i, m_i go to "
        "HBM and back at every (i, j) step" + ("; it visits every tile, masked or not" if causal
                                              else "") + ").",
        f"F2: FlashAttention-2 order (Q_i, O~_i stay on chip; K_j, V_j are read once per row "
        f"block{causal}).",
        "Tiles: A1 uses A1:L1, Bc = ceil(M / 4d), Br = min(Bc, d). F2 sizes its own "
        "(hbm.f2_block_sizes): Br = ceil(M / 4d),",
        "not capped at d, and Bc the largest that fits Q_i, O~_i, K_j, V_j, S_ij and the row "
        "stats in M. So F2 has as many",
        "row blocks as A1 has column blocks, and moves less than A1 at every M. At long N, "
        "A0 / A1 is about M / 3d^2 and",
        "A0 / F2 about M / 2d^2: flash saves traffic once M is large against d^2.",
        "The last two columns are the Theta bounds of the paper's Theorem 2 (standard: N d + N^2; "
        "FlashAttention: N^2 d^2 / M),",
        "constants omitted."]))
    return 0


def _cmd_algorithms(args) -> int:
    from . import algorithms

    valid = ", ".join(algorithms.ALGORITHMS)
    label, line = args.label, args.line
    if line is not None and ":" in line:  # --line A1:L12 names its algorithm itself
        named, line = line.split(":", 1)
        if label is not None and named.upper() != label.upper():
            raise UsageError(f"flashlab algorithms: --line {args.line} is not a line of {label}")
        label = named
    if label is not None and label.upper() not in algorithms.ALGORITHMS:
        raise UsageError(f"flashlab algorithms: unknown algorithm {label!r}: choose {valid}")
    if line is None:
        chosen = [label.upper()] if label else list(algorithms.ALGORITHMS)
        print("\n\n".join(algorithms.LISTINGS[a] for a in chosen))
        if not label:
            print("\nNotation, causal masking and the FLOP convention: docs/ALGORITHMS.md")
        return 0
    if label is None:
        raise UsageError(f"flashlab algorithms: --line {line} needs an algorithm ({valid}), "
                         f"e.g. flashlab algorithms A1 --line {line}")
    label = label.upper()
    lines = algorithms.listing_lines(label)
    want = f"{label}:L{line.upper().lstrip('L')}"
    if want not in lines:
        first, last = next(iter(lines)), list(lines)[-1]
        raise UsageError(f"flashlab algorithms: {label} has no line {line!r}: its lines are "
                         f"{first.split(':')[1]}-{last.split(':')[1]}")
    print(lines[want])
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
    for name in ("batch", "heads", "tokens", "repeat"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"flashlab bench: --{name} must be >= 1, got {value}")
    unknown = [k for k in args.kernels or () if k not in KERNELS]
    if unknown:
        raise UsageError(f"flashlab bench: --kernels {','.join(unknown)}: choose from {','.join(KERNELS)}")
    compare = []
    for c in args.compare:
        if c != "torch":
            raise UsageError(f"flashlab bench: --compare {c}: only 'torch' is known")
        compare = (["torch-flash", "torch-cudnn"] if low else
                   ["torch-math", "torch-efficient", "torch-flash", "torch-cudnn"])
    on_gpu = gpu_available()
    # what takes this dtype where the run happens (on the CPU, 16-bit naive is lowp's yardstick)
    takes = (("tc",) if low else ("naive", "fa1", "fa2")) if on_gpu else bench.cpu_kernels(dtype)
    kernels = args.kernels or list(takes)
    if not any(k in takes for k in kernels):
        others = [k for k in KERNELS if k not in takes]
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
        from .install import install_hint

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
    if args.plot:
        from .viz import bench_plot

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
    _print_report(report, args)
    if not on_gpu:
        print()
        print("HBM traffic the GPU versions of these algorithms would make, per head "
              f"(M = {hbm.DEFAULT_SRAM} floats):")
        print(tabulate(bench.traffic_rows(seqs, args.head_dim, args.causal), headers="keys",
                       floatfmt=".3g"))
    for what, path in (("plot", args.plot), ("JSON", args.json), ("CSV", args.csv)):
        if path:
            print(f"{what} written to {path}")
    wrong = [r for r in report.rows if r.check.startswith("WRONG")]
    return 1 if wrong else 0


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
            from .install import install_hint

            raise EnvironmentError("flashlab bench --plot needs matplotlib (the 'plot' extra): "
                                   f"{install_hint('plot')}") from None


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
    """Compile a user's .cu file for --algorithm and, on a GPU, compare it tile by tile with the
    step-through. Exit 0: compiled (and, on a GPU, every step matched); 1: it does not compile,
    lacks the algorithm's kernels, diverges, or NVRTC is missing; 2: a bad argument."""
    import re
    from pathlib import Path

    from . import cuda_kernel_ops as ops

    alg, path = args.algorithm, Path(args.file)
    direction = "backward" if args.backward else "forward"
    if path.is_dir():
        inside = sorted(f.name for f in path.glob("*.cu"))
        raise UsageError(f"flashlab check: {args.file} is a directory; give one .cu file"
                         + (f" in it ({', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''})"
                            if inside else ""))
    if not path.exists():
        raise UsageError(f"flashlab check: {args.file}: no such file")
    if path.suffix != ".cu":
        raise UsageError(f"flashlab check: {args.file} is not a .cu file; give the CUDA C file "
                         f"that defines your kernels, e.g. my_{alg}.cu")
    try:
        src = ops.kernel_source(alg, path=path)
    except UnicodeDecodeError:
        raise UsageError(f"flashlab check: {args.file} (or a header it includes) is not a UTF-8 "
                         "text file") from None
    except OSError as e:
        raise EnvironmentError(f"flashlab check: cannot read {args.file}: {e}") from None
    name = path.name

    # the kernels the launcher looks up by name, before the compiler sees them missing
    wanted = ops.required_kernels(alg)
    absent = ops.missing_kernels(alg, src)
    if len(absent) == len(wanted):
        msg = f"{name} defines none of {alg}'s kernels ({', '.join(wanted)})"
        alike = []
        for other in ("fa1", "fa2", "tc", "tc90", "naive"):
            has = [k for k in ops.required_kernels(other)
                   if k not in ops.missing_kernels(other, src)]
            if other != alg and has:
                alike.append((len(has), other, has))
        if alike:
            _, other, has = max(alike, key=lambda t: t[0])
            msg += f"; it looks like {other} (defines {', '.join(has)})"
            choices = ("fa1", "fa2")
            msg += (f": try --algorithm {other}" if other in choices else
                    f", which flashlab check does not take (--algorithm {' or '.join(choices)})")
        else:
            msg += f"; define them as kernels/{alg}.cu does, with the same signatures"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    lacking = ops.missing_kernels(alg, src, direction)
    if lacking:
        have = [k for k in wanted if k not in absent]
        other = "forward" if direction == "backward" else "backward"
        print(f"error: {name} does not define {', '.join(lacking)}, which the {alg} {direction} "
              f"pass launches (it defines {', '.join(have)}: check the {other} pass with "
              f"{'no --backward' if other == 'forward' else '--backward'})", file=sys.stderr)
        return 1

    def compile_failed(text, where):
        """The compiler's first few errors, file:line first, then how many more."""
        diags = ops.compile_diagnostics(text)
        errors = [d for d in diags if d["kind"] != "warning" and d["file"] != "__nv_name_map"]
        # the launcher's instantiations the file's templates cannot take, as NVRTC reports them
        # (in its name map, twice each): said once, with our template's parameters
        unmatched = list(dict.fromkeys(
            re.sub(r"\s+", "", c.split("nv_mangled_name", 1)[1]).replace(",", ", ")
            for d in diags if d["file"] == "__nv_name_map" for c in d["context"][:1]
            if "nv_mangled_name" in c))
        warnings = sum(d["kind"] == "warning" for d in diags)
        count = len(errors) + len(unmatched)
        print(f"error: {name} failed to compile with {where}"
              + (f": {count} error{'s' * (count != 1)}" if count else ""), file=sys.stderr)
        if not count:  # a log in no format we know: show it whole
            print(text, file=sys.stderr)
            return 1
        shown = 3
        for d in errors[:shown]:
            print(f"{d['file']}:{d['line']}: {d['kind']}: {d['message']}", file=sys.stderr)
            for line in d["context"]:
                print(line, file=sys.stderr)
        if unmatched:
            templates = list(dict.fromkeys(u.split("<")[0] for u in unmatched))
            ours = ops.kernel_source(alg)
            params = [m[1] for t in templates for m in [re.search(
                rf"template\s*<([^>]*)>\s*__global__[^;{{]*?\b{t}\s*\(", ours)] if m]
            print(f"{name}: error: {', '.join(templates)} cannot be instantiated as the {alg} "
                  f"launcher does ({unmatched[0]}"
                  + (f" and {len(unmatched) - 1} more" if len(unmatched) > 1 else "") + "): keep "
                  + (f"the template parameters <{'>, <'.join(dict.fromkeys(params))}> "
                     if params else "the template parameters ")
                  + f"of kernels/{alg}.cu", file=sys.stderr)
        more = len(errors) - shown
        also = f"{warnings} warning{'s' * (warnings != 1)}" if warnings else ""
        if more > 0:
            print(f"... {more} more error{'s' * (more != 1)}" + (f" and {also}" if also else ""),
                  file=sys.stderr)
        elif also:
            print(f"({also} not shown)", file=sys.stderr)
        return 1

    if not ops.gpu_available():
        # the instantiations of the templates the file defines (a forward-only file compiles)
        names = tuple(n for n in ops.instantiations(alg) if n.split("<")[0] not in absent)
        try:
            log = ops.nvrtc_compile(alg, "sm_80", source=path, name_expressions=names)
        except ImportError as e:
            print(f"error: flashlab check compiles {name} with NVRTC, and {e}", file=sys.stderr)
            return 1
        except ops.KernelCompileError as e:
            return compile_failed(getattr(e, "log", str(e)), "NVRTC for sm_80")
        warnings = [d for d in ops.compile_diagnostics(log) if d["kind"] == "warning"]
        defined = ", ".join(k for k in wanted if k not in absent)
        print(f"{name} compiles with NVRTC for sm_80 ({defined})"
              + (f", with {len(warnings)} warning{'s' * (len(warnings) != 1)}:" if warnings else
                 ":\n" + log if log else "."))
        for d in warnings[:3]:
            print(f"{d['file']}:{d['line']}: warning: {d['message']}")
            for line in d["context"]:
                print(line)
        if len(warnings) > 3:
            print(f"... {len(warnings) - 3} more warnings")
        if absent:
            print(f"note: {name} does not define {', '.join(absent)}, so the pass that launches "
                  f"{'it' if len(absent) == 1 else 'them'} cannot be checked")
        print("Only compilation was checked: no CUDA device was found (or CuPy is not installed), "
              "so the kernels did not run and their results were not compared with the "
              "step-through. On a machine with a CUDA GPU the same command checks them tile by "
              "tile.")
        return 0
    try:
        return _run_trace(args, alg, source=path)
    except ops.KernelCompileError as e:
        return compile_failed(str(e), "CuPy (NVRTC)")


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
        from .install import install_hint

        print(f"CuPy: not installed ({install_hint('cuda13')}); NumPy inputs run the references")
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
            from .install import install_hint

            raise EnvironmentError("flashlab train --device gpu needs CuPy and a CUDA GPU, and "
                                   f"none was found ({install_hint('cuda13')}); use --device cpu")
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
                       "  flashlab trace --kernel fa1 --inject-bug no-rescale --seq 600\n  flashlab info\n"
                       "  flashlab algorithms A1    # the listing code and messages cite (A1:L12)\n")
    from . import __version__

    p.add_argument("--version", action="version", version=f"flashlab {__version__}")
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

    al = sub.add_parser(
        "algorithms", help="print the line-numbered algorithm listings the code cites (A1:L12, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab algorithms            (all five)\n  flashlab algorithms A1\n"
               "  flashlab algorithms A1 --line L12\n"
               "The same text with notation and notes: docs/ALGORITHMS.md\n")
    al.add_argument("label", nargs="?", default=None, metavar="A0|A1|B1|F2|G2",
                    help="which algorithm (default all)")
    al.add_argument("--line", default=None, metavar="L12", help="print only this line")
    al.set_defaults(func=_cmd_algorithms)

    b = sub.add_parser(
        "bench", help="speedup table: every kernel against standard attention (GPU; CPU fallback)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab bench\n  flashlab bench --seq 1k,4k --head-dim 128 --causal "
               "--backward --compare torch --json out.json\n"
               "  flashlab bench --dtype bf16 --batch 2 --heads 4   # CPU: the tc step-through\n"
               "Without a GPU the NumPy step-throughs are timed instead: --kernels picks them\n"
               "(naive, fa1, fa2 in float32; naive, tc in float16 / bfloat16), --batch, --heads\n"
               "and --tokens shape the inputs (default B = H = 1), and --compare needs a GPU.\n")
    b.add_argument("--seq", type=_int_list, default=None,
                   help="sequence lengths (GPU default 512..16k; CPU default 128,256,512)")
    b.add_argument("--batch", type=int, default=None,
                   help="batch B (default tokens / N; CPU: 1 unless --tokens is given)")
    b.add_argument("--heads", type=int, default=None, help="heads H (default 2048 / d; CPU: 1)")
    b.add_argument("--tokens", type=int, default=None,
                   help="B * N when --batch is not given (GPU default 16384)")
    b.add_argument("--head-dim", type=int, default=64, help="head dim d (default 64)")
    b.add_argument("--dtype", default="float32",
                   help="float32 (naive, fa1, fa2; default) or float16 / bfloat16 (tc, against "
                        "torch's flash and cuDNN backends with --compare torch)")
    b.add_argument("--causal", action="store_true")
    b.add_argument("--backward", action="store_true", help="time the backward pass too")
    b.add_argument("--kernels", type=lambda t: list(dict.fromkeys(k.strip() for k in t.split(","))),
                   default=None, help="comma-separated (default naive,fa1,fa2; tc with --dtype "
                                      "float16/bfloat16, and naive,tc on the CPU)")
    b.add_argument("--compare", action="append", default=[], metavar="torch",
                   help="also time torch's scaled_dot_product_attention backends")
    b.add_argument("--repeat", type=int, default=None,
                   help="timed calls per entry, median (default 10; CPU: 3)")
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
        "check", help="compile your own kernel source and check it tile by tile (GPU; "
                      "without one, compilation only)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flashlab check my_fa1.cu --algorithm fa1 --seq 300 --causal\n"
               "The file must define the kernels of kernels/<algorithm>.cu with the same\n"
               "signatures (it may #include \"common.cuh\": the one beside it, else flashlab's).\n"
               "On a GPU it runs the file's trace build and compares every tile step with the\n"
               "step-through (exit 0: all steps match). Without a GPU it only compiles the file\n"
               "with NVRTC (flashlab's nvrtc extra); exit 0 then means it compiles, not that it\n"
               "is right. Exit 1: it does not compile, lacks a kernel, or a step diverges.\n")
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
    """Run one command; returns its exit code (0 ok, 1 failed or environment, 2 usage, 141 when
    stdout's reader went away, as `flashlab bench | head` does)."""
    try:
        try:
            return _main(argv)
        finally:  # inside the try, so a reader that left is seen here and not at interpreter exit
            sys.stdout.flush()
    except BrokenPipeError:
        # Stop quietly, as cat or seq do when killed by SIGPIPE; 141 = 128 + SIGPIPE is their
        # status too, so `set -o pipefail` scripts see flashlab as they see any other tool, and a
        # cut-short run does not claim the 0 of a complete one. stdout goes to devnull so that
        # Python's own flush at exit does not complain about the same pipe.
        try:
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
            pass
        return 141


def _main(argv) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args, "head_dim", 1) < 1:
            raise UsageError(f"flashlab {args.command}: --head-dim must be >= 1, got {args.head_dim}")
        return args.func(args)
    except BrokenPipeError:  # an OSError, but no error of the command: main() ends quietly
        raise
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (EnvironmentError, RuntimeError, ImportError, MemoryError) as e:
        # a missing package or device, a failed compile or launch: one line, what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
