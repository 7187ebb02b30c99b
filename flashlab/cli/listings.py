"""`flashlab io` (the HBM traffic table) and `flashlab algorithms` (the listings the code cites)."""
from __future__ import annotations

from tabulate import tabulate

from .. import hbm
from .common import UsageError


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
        f"F2: FlashAttention-2 order (Q_i, O~ stay on chip; K_j, V_j are read once per row "
        f"block{causal}).",
        "Tiles: A1 uses A1:L1, Bc = ceil(M / 4d), Br = min(Bc, d). F2 sizes its own "
        "(hbm.f2_block_sizes): Br = ceil(M / 4d),",
        "not capped at d, and Bc the largest that fits Q_i, O~, K_j, V_j, S_ij and the row "
        "stats in M. So F2 has as many",
        "row blocks as A1 has column blocks, and moves less than A1 at every M. At long N, "
        "A0 / A1 is about M / 3d^2 and",
        "A0 / F2 about M / 2d^2: flash saves traffic once M is large against d^2.",
        "The last two columns are the Theta bounds of the paper's Theorem 2 (standard: N d + N^2; "
        "FlashAttention: N^2 d^2 / M),",
        "constants omitted."]))
    return 0


def _cmd_algorithms(args) -> int:
    from .. import algorithms

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
