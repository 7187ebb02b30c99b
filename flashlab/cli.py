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
    mode = f"d = {args.head_dim}, {'causal' if args.causal else 'non-causal'}, float32"
    print(f"{mode}; TFLOP/s: forward 4 B H N^2 d (halved when causal), backward 2.5x forward")
    print(tabulate([r.table() for r in report.rows], headers=bench.HEADERS, disable_numparse=True))
    for note in report.notes:
        print(f"note: {note}")


def _cmd_bench(args) -> int:
    import json

    from . import bench
    from .cuda_kernel_ops import KERNELS, gpu_available

    if args.dtype != "float32":
        raise UsageError(f"flashlab bench: --dtype {args.dtype}: the kernels here take float32 "
                         "(the tensor-core fp16/bf16 kernels are not written yet)")
    unknown = [k for k in args.kernels if k not in KERNELS]
    if unknown:
        raise UsageError(f"flashlab bench: --kernels {','.join(unknown)}: choose from {','.join(KERNELS)}")
    compare = []
    for c in args.compare:
        if c != "torch":
            raise UsageError(f"flashlab bench: --compare {c}: only 'torch' is known")
        compare = ["torch-math", "torch-efficient", "torch-flash", "torch-cudnn"]
    if gpu_available():
        seqs = args.seq or [512, 1024, 2048, 4096, 8192, 16384]
        if compare:
            try:
                import torch  # noqa: F401
            except ImportError:
                print("note: --compare torch: torch is not importable here; comparing nothing")
        report = bench.gpu_bench(seqs, args.kernels, args.head_dim, args.causal, args.backward,
                                 args.batch, args.heads, args.tokens, repeat=args.repeat,
                                 compare=compare, progress=_progress)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)
        _print_report(report, args)
    else:
        print("No CUDA device found (or CuPy is not installed): timing the NumPy step-throughs at "
              "small sizes instead. On a GPU machine: pip install -e '.[cuda13]' and run again.")
        seqs = args.seq or [128, 256, 512]
        report = bench.cpu_bench(seqs, args.head_dim, args.causal, args.backward,
                                 repeat=min(args.repeat, 3))
        _print_report(report, args)
        print()
        print("HBM traffic the GPU versions of these algorithms would make, per head "
              f"(M = {hbm.DEFAULT_SRAM} floats):")
        print(tabulate(bench.traffic_rows(seqs, args.head_dim, args.causal), headers="keys",
                       floatfmt=".3g"))
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flashlab", description="Learn FlashAttention by running it.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="examples:\n  flashlab io --seq 1k,4k,16k --head-dim 64\n")
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
    b.add_argument("--dtype", default="float32", help="float32 (the only dtype so far)")
    b.add_argument("--causal", action="store_true")
    b.add_argument("--backward", action="store_true", help="time the backward pass too")
    b.add_argument("--kernels", type=lambda t: t.split(","), default=["naive", "fa1", "fa2"],
                   help="comma-separated (default naive,fa1,fa2)")
    b.add_argument("--compare", action="append", default=[], metavar="torch",
                   help="also time torch's scaled_dot_product_attention backends")
    b.add_argument("--repeat", type=int, default=10, help="timed calls per entry (median)")
    b.add_argument("--json", metavar="FILE", help="write the table and header as JSON")
    b.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    b.set_defaults(func=_cmd_bench)
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


if __name__ == "__main__":
    sys.exit(main())
