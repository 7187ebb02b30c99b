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
