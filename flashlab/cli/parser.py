"""The argument parser of `flashlab`: every command, its flags and help. The kernel choices and
the kernel lists in the help are flashlab.registry's; each command's code is in its own module."""
from __future__ import annotations

import argparse

from .. import hbm, registry
from .benchmark import _cmd_bench, _kernel_lists
from .check import _cmd_check
from .common import _ids, _int_list, _Parser
from .course import _cmd_assignment_make, _cmd_grade
from .info import _cmd_info
from .listings import _cmd_algorithms, _cmd_io
from .ring import _cmd_ring
from .trace import _bug_names, _cmd_trace, _trace_args
from .train import _cmd_train


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flashlab", description="Learn FlashAttention by running it.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="examples:\n  flashlab bench\n  flashlab io --seq 1k,4k,16k --head-dim 64\n"
                       "  flashlab trace --kernel fa1 --inject-bug no-rescale --seq 600\n  flashlab info\n"
                       "  flashlab algorithms A1    # the listing code and messages cite (A1:L12)\n")
    from .. import __version__

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

    rg = sub.add_parser(
        "ring", help="ring attention over P processes (CPU): the step-through, and a run checked "
                     "against standard attention",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab ring --ranks 4 --causal\n  flashlab ring --ranks 3 --seq 96\n")
    rg.add_argument("--ranks", type=int, default=4, help="processes in the ring, P (default 4)")
    rg.add_argument("--causal", action="store_true",
                    help="causal mask, zigzag split (rank r holds chunks r and 2P-1-r)")
    rg.add_argument("--seq", type=int, default=128,
                    help="sequence length, rounded down to P (2P causal) equal chunks (default 128)")
    rg.add_argument("--heads", type=int, default=2, help="heads (default 2)")
    rg.add_argument("--head-dim", type=int, default=16, help="head dim d (default 16)")
    rg.set_defaults(func=_cmd_ring)

    fp32, low, cpu_low = _kernel_lists()
    b = sub.add_parser(
        "bench", help="speedup table: every kernel against standard attention (GPU; CPU fallback)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab bench\n  flashlab bench --seq 1k,4k --head-dim 128 --causal "
               "--backward --compare torch --json out.json\n"
               "  flashlab bench --variant window=1024,alibi --head-dim 128 --compare flex\n"
               "  flashlab bench --dtype bf16 --batch 2 --heads 4   # CPU: the tc step-through\n"
               "Without a GPU the NumPy step-throughs are timed instead: --kernels picks them\n"
               f"({fp32} in float32; {cpu_low} in float16 / bfloat16), --batch, --heads\n"
               "and --tokens shape the inputs (default B = H = 1), and --compare needs a GPU.\n")
    b.add_argument("--seq", type=_int_list, default=None,
                   help="sequence lengths (GPU default 512..16k; CPU default 128,256,512)")
    b.add_argument("--batch", type=int, default=None,
                   help="batch B (default tokens / N; CPU: 1 unless --tokens is given)")
    b.add_argument("--heads", type=int, default=None, help="heads H (default 2048 / d; CPU: 1)")
    b.add_argument("--tokens", type=int, default=None,
                   help="B * N when --batch is not given (GPU default 16384)")
    b.add_argument("--head-dim", type=int, default=64, help="head dim d (default 64)")
    b.add_argument("--dtype", default=None,
                   help=f"float32 ({fp32}) or float16 / bfloat16 ({low}, against torch's flash "
                        "and cuDNN backends with --compare torch). Default on a GPU, with no "
                        "--kernels or --compare either: the ladder, every kernel in one table "
                        "(float32 and bfloat16, SDPA beside them where torch imports); on the "
                        "CPU float32")
    b.add_argument("--causal", action="store_true")
    b.add_argument("--backward", action="store_true", help="time the backward pass too")
    b.add_argument("--kernels", type=lambda t: list(dict.fromkeys(k.strip() for k in t.split(","))),
                   default=None, help=f"comma-separated (default {fp32.replace(' ', '')}; {low} "
                                      f"with --dtype float16/bfloat16, and "
                                      f"{cpu_low.replace(' ', '')} on the CPU)")
    b.add_argument("--compare", action="append", default=[], metavar="torch|flex",
                   help="also time torch's scaled_dot_product_attention backends (torch), or "
                        "FlexAttention on the same attention variant (flex; --variant all "
                        "unless --variant names some)")
    b.add_argument("--variant", default=None, metavar="NAME[=V],...",
                   help="instead: attention variants in the tensor-core kernel, bf16, at "
                        "--head-dim, --seq (default 4096), --batch (4), --heads (16); names: "
                        "causal, causal-mask, window[=1024], document, alibi, softcap[=30], "
                        "gqa[=4], or all (GPU with torch)")
    b.add_argument("--repeat", type=int, default=None,
                   help="timed calls per entry, median (default 10; CPU: 3)")
    b.add_argument("--json", metavar="FILE", help="write the table and header as JSON")
    b.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    b.add_argument("--plot", metavar="FILE.png", help="speedup and memory against N (matplotlib)")
    b.add_argument("--cpu-backend", action="store_true",
                   help="instead: what the CPU backend costs (fa1 + fa2 first use and cached "
                        "compiles, the kernel exercises' autograde; one core), against its targets")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser(
        "trace", help="run a kernel in trace mode and compare it with its step-through (GPU, "
                      "or the CPU backend without one)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  flashlab trace --kernel fa1 --seq 256 --head-dim 64\n"
               "  flashlab trace --kernel fa1 --seq 600 --inject-bug no-rescale\n"
               "planted bugs: " + ", ".join(_bug_names()) + "\n")
    _trace_args(t)
    t.add_argument("--inject-bug", metavar="NAME", default=None,
                   help="plant a known bug in the kernel source first")
    t.set_defaults(func=_cmd_trace)

    c = sub.add_parser(
        "check", help="compile your own kernel source and check it tile by tile (GPU, or "
                      "the CPU backend without one)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flashlab check my_fa1.cu --algorithm fa1 --seq 300 --causal\n"
               "The file must define the kernels of kernels/<algorithm>.cu with the same\n"
               "signatures (it may #include \"common.cuh\": the one beside it, else flashlab's).\n"
               "It runs the file's trace build and compares every tile step with the\n"
               "step-through (exit 0: all steps match): on a GPU, or without one on the CPU\n"
               "backend, which compiles the same CUDA C with g++ and runs each CUDA thread as a\n"
               "fiber, with checks for barrier divergence, out-of-bounds accesses and shared-\n"
               "memory races. Without a GPU the file is also compiled with NVRTC for sm_80 where\n"
               "NVRTC is installed. Exit 1: it does not compile, lacks a kernel, faults or a step\n"
               "diverges.\n")
    c.add_argument("file", help="a .cu file")
    c.add_argument("--algorithm", required=True, choices=registry.with_exercises(),
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
                                "  flashlab assignment make key --solution   (check the grader)\n"
                                "  flashlab assignment make hw3 --gradescope hw3-autograder.zip\n")
    am.add_argument("outdir")
    am.add_argument("--exercises", type=_ids, default=None, help="ids to hand out (default all)")
    am.add_argument("--solution", action="store_true", help="stub nothing: a copy of the solution")
    am.add_argument("--force", action="store_true", help="write into a non-empty directory")
    am.add_argument("--gradescope", metavar="ZIP", default=None,
                    help="also write a Gradescope autograder zip (setup.sh, run_autograder, "
                         "flashlab with NVRTC and the CPU backend) that grades what was handed out")
    am.set_defaults(func=_cmd_assignment_make)

    g = sub.add_parser("grade", help="grade a student copy, with per-tile feedback",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  flashlab grade hw3\n"
                              "  flashlab grade . --json /autograder/results/results.json\n")
    g.add_argument("dir", nargs="?", default=".")
    g.add_argument("--exercises", type=_ids, default=None,
                   help="ids to grade (default: those the copy was handed out with)")
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
               "  flashlab train --device gpu --steps 500 --dim 128 --layers 4\n"
               "  flashlab train --device gpu --dtype bfloat16 --compare --seq 1024 --dim 256\n")
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
    tr.add_argument("--dtype", default=None, choices=("bfloat16", "float16"),
                    help="mixed precision: the flash attention op in 16 bits (on a GPU the "
                         "tensor-core kernel); the rest of the model, and standard attention "
                         "under --compare, stay float32 (float64 on the CPU)")
    tr.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                    help="cpu: float64 NumPy; gpu: float32 CuPy and the CUDA kernels")
    tr.add_argument("--sample", type=int, default=200, metavar="N",
                    help="characters to generate at the end (default 200; 0 for none)")
    tr.add_argument("--log-every", type=int, default=0, metavar="K",
                    help="print the loss every K steps (default steps / 10)")
    tr.set_defaults(func=_cmd_train)
    return p
