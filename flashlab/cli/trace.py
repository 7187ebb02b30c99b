"""`flashlab trace`: run a traceable kernel (the registry's) in trace mode, optionally with a
planted bug, and compare it tile by tile with its step-through: on the GPU, or without one on
the CPU backend (the same CUDA C compiled for the CPU, flashlab.cpu)."""
from __future__ import annotations

import sys

from .. import registry
from .common import UsageError


def _bug_names():
    from ..course.bugs import BUGS

    return sorted(BUGS)


def _default_kernel() -> str:
    """The kernel trace runs without --kernel: the first traceable one of the ladder (fa1)."""
    return registry.traceable()[0]


def _trace_args(p, kernel=True):
    if kernel:
        p.add_argument("--kernel", default=None, choices=registry.traceable(),
                       help=f"default {_default_kernel()}")
    p.add_argument("--seq", type=int, default=256, help="N queries (default 256)")
    p.add_argument("--seq-k", type=int, default=None, help="N keys (default: --seq)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--backward", action="store_true", help="trace the backward pass (B1 / G2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "gpu", "cpu"), default="auto",
                   help="where the kernel runs: the GPU, or the CPU backend (its CUDA C compiled "
                        "for the CPU); default: the GPU where there is one, else the CPU")


def backend_for(kernel: str, asked: str = "auto") -> str:
    """"gpu" or "cpu": where `flashlab trace/check/grade` run `kernel`, as asked ("auto": the
    GPU where there is one, else the CPU backend); a clear error where it cannot run."""
    from ..launch import device

    spec = registry.get(kernel)
    gpu = device.gpu_available()
    if asked == "gpu" and not gpu:
        raise EnvironmentError("--backend gpu: no CUDA device was found (or CuPy is not "
                               "installed); --backend cpu runs the same CUDA C on the CPU")
    if asked == "cpu" or (asked == "auto" and not gpu):
        if not spec.cpu:
            raise EnvironmentError(f"kernel {kernel!r} uses {spec.cpu_why}, which only an NVIDIA "
                                   "GPU runs, and " + ("--backend cpu was asked for" if asked == "cpu"
                                                       else "no CUDA device was found")
                                   + f"; the CPU backend runs {', '.join(registry.for_cpu())}")
        return "cpu"
    return "gpu"


def describe_backend(backend: str) -> str:
    """Where a run ran, in words, for the first line of its report."""
    if backend == "gpu":
        return "on the GPU"
    from ..cpu import build

    return f"on the CPU backend ({build.compiler_name()}, no GPU used)"


def _run_trace(args, kernel, bug=None, source=None, backend=None) -> int:
    from ..cpu.kernels import KernelFault
    from ..kernel_check import check_kernel

    direction = "backward" if args.backward else "forward"
    backend = backend or backend_for(kernel, getattr(args, "backend", "auto"))
    try:
        div, actual, _ = check_kernel(kernel, direction, B=args.batch, H=args.heads, Nq=args.seq,
                                      Nk=args.seq_k, d=args.head_dim, causal=args.causal,
                                      seed=args.seed, bug=bug, source=source, backend=backend)
    except KernelFault as e:
        print(f"error {describe_backend(backend)}: {e}", file=sys.stderr)
        return 1
    steps = int((actual.seq >= 0).sum())
    # fp32 kernels against the float64 step-through; 16-bit ones against their twin, which
    # rounds as the kernel does (flashlab.kernel_check)
    ref = ("the float64 step-through" if registry.get(kernel).takes_dtype("float32") else
           "its 16-bit step-through twin")
    print(f"{actual.label}, {describe_backend(backend)}: {steps} tile steps (Br = {actual.Br}, "
          f"Bc = {actual.Bc}, {actual.B} x {actual.H} heads) compared with {ref}")
    if div is None:
        print("all steps match")
        return 0
    print(div)
    return 1


def _cmd_trace(args) -> int:
    kernel = args.kernel or _default_kernel()
    backend = backend_for(kernel, args.backend)
    if args.inject_bug is not None:
        from ..course.bugs import BUGS, HUNT

        b = BUGS.get(args.inject_bug) or HUNT.get(args.inject_bug)
        if b is None:
            raise UsageError(f"flashlab trace: --inject-bug {args.inject_bug}: choose from "
                             f"{', '.join(sorted(BUGS) + sorted(HUNT))}")
        want = (kernel, "backward" if args.backward else "forward")
        if (b.kernel, b.direction) != want:
            raise UsageError(f"flashlab trace: bug {args.inject_bug} is planted in the {b.kernel} "
                             f"{b.direction} pass: add --kernel {b.kernel}"
                             + (" --backward" if b.direction == "backward" else ""))
        if args.inject_bug in HUNT:  # the bug hunt: say nothing that gives the answer away
            print(f"bug hunt {b.hunt}: the {b.kernel} {b.direction} pass has one planted bug. "
                  "Which step diverges first, and which algorithm line is broken?")
        else:
            print(f"planted bug {b.name} ({b.line}): {b.question}")
    return _run_trace(args, kernel, bug=args.inject_bug, backend=backend)
