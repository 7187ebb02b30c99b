"""`flashlab trace`: run a traceable kernel (the registry's) in trace mode, optionally with a
planted bug, and compare it tile by tile with its step-through (GPU)."""
from __future__ import annotations

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


def _need_gpu(command):
    from ..launch import device

    if not device.gpu_available():
        raise EnvironmentError(f"flashlab {command} runs a CUDA kernel and no CUDA device was found "
                               "(or CuPy is not installed). On CPU, flashlab.trace.record() traces "
                               "the step-through references.")


def _run_trace(args, kernel, bug=None, source=None) -> int:
    from ..kernel_check import check_kernel

    direction = "backward" if args.backward else "forward"
    div, actual, _ = check_kernel(kernel, direction, B=args.batch, H=args.heads, Nq=args.seq,
                                  Nk=args.seq_k, d=args.head_dim, causal=args.causal,
                                  seed=args.seed, bug=bug, source=source)
    steps = int((actual.seq >= 0).sum())
    # fp32 kernels against the float64 step-through; 16-bit ones against their twin, which
    # rounds as the kernel does (flashlab.kernel_check)
    ref = ("the float64 step-through" if registry.get(kernel).takes_dtype("float32") else
           "its 16-bit step-through twin")
    print(f"{actual.label}: {steps} tile steps (Br = {actual.Br}, Bc = {actual.Bc}, "
          f"{actual.B} x {actual.H} heads) compared with {ref}")
    if div is None:
        print("all steps match")
        return 0
    print(div)
    return 1


def _cmd_trace(args) -> int:
    _need_gpu("trace")
    kernel = args.kernel or _default_kernel()
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
    return _run_trace(args, kernel, bug=args.inject_bug)
