"""HBM accounting: what each algorithm reads from and writes to device memory, and its SRAM.

Two halves that the tests hold against each other:

* `MemoryCounter` is ticked by the step-through references as they run (every load of a tile is
  a `read`, every store a `write`, every on-chip buffer a `hold`).
* The `*_traffic` functions are closed forms written from the algorithm text alone.

`flashlab io` prints the closed forms over sequence lengths and SRAM sizes, beside the Theta
bounds of the FlashAttention paper's Theorem 2 (standard: N d + N^2; FlashAttention: N^2 d^2 / M).
Counts are in elements; bytes = elements * itemsize. `sram_peak` is in elements too: the most
that one thread block holds on chip at once (the SRAM size M is counted the same way, in floats).

Tile sizes for an SRAM of M floats: A1 and B1 (and G2) follow A1:L1 (`block_sizes`: Br is
capped at d); F2 sizes its own tiles (`f2_block_sizes`: Br = ceil(M / 4d), not capped, and the
largest Bc that still fits F2's footprint), as FlashAttention-2 does: F2 re-reads only K and V,
once per row block, so a tall Br is what cuts its traffic.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

DEFAULT_SRAM = 12288  # M in floats: 48 KiB of fp32, the shared memory every CUDA GPU gives a block


def _check_d_sram(d: int, sram: int) -> None:
    if d < 1:
        raise ValueError(f"head dim d must be >= 1, got {d}")
    if sram < 1:
        raise ValueError(f"sram (M, in floats) must be >= 1, got {sram}")


def block_sizes(d: int, sram: int = DEFAULT_SRAM) -> tuple[int, int]:
    """A1:L1  Bc = ceil(M / 4d), Br = min(ceil(M / 4d), d); M counted in floats.

    The tiles of A1 and B1 (and of G2, which keeps this default)."""
    _check_d_sram(d, sram)
    Bc = math.ceil(sram / (4 * d))
    Br = min(Bc, d)
    return Br, Bc


def f2_sram(Br: int, Bc: int, d: int) -> int:
    """F2's on-chip footprint (floats) with Br x Bc tiles: Q_i and O~ (Br d each), l, m and
    m_new (Br each), K_j and V_j (Bc d each), S_ij (Br Bc; P~ overwrites it)."""
    return 2 * Br * d + 3 * Br + 2 * Bc * d + Br * Bc


def f2_block_sizes(d: int, sram: int = DEFAULT_SRAM) -> tuple[int, int]:
    """F2's tiles for an SRAM of M floats (the default of fa2_forward and of `flashlab io`).

    F2 reads Q_i once and K_j, V_j once per row block, so its traffic is about
    2 N d (1 + N / Br): Br is what matters, and FlashAttention-2 does not cap it at d as A1:L1
    does. The rule:

        Br = ceil(M / 4d)                          (A1:L1's Bc; Q_i and O~ take about M / 2)
        Bc = floor((M - Br (2d + 3)) / (2d + Br))  (the largest K_j, V_j, S_ij that fit the rest)

    so that f2_sram(Br, Bc, d) <= M. (At least 1 each: an M too small for one row of every tile
    gives 1 x 1, which does not fit, as A1:L1's tiles do not either.) F2's Tr = ceil(N / Br) is
    then A1's Tc, so F2 moves fewer bytes than A1 at every N, d and M: A1 - F2 =
    Tc (N d + 4 N) + N d + N elements (non-causal, Nq = Nk = N).
    """
    _check_d_sram(d, sram)
    Br = math.ceil(sram / (4 * d))
    Bc = max(1, (sram - Br * (2 * d + 3)) // (2 * d + Br))
    return Br, Bc


def tile_sizes(N: int, B: int) -> list[int]:
    """The row counts of the ceil(N / B) tiles of N rows (the last one may be ragged)."""
    return [min(B, N - t * B) for t in range(math.ceil(N / B))]


def causal_visits(i: int, Br: int, Nq: int, j: int, Bc: int) -> bool:
    """Does tile (i, j) hold any unmasked entry under the top-left causal mask (c <= r)?"""
    last_row = min((i + 1) * Br, Nq) - 1
    return j * Bc <= last_row


@dataclass
class MemoryCounter:
    """Counts HBM reads and writes (elements, per tensor) and the peak SRAM of one thread block."""

    itemsize: int = 4
    reads: Counter = field(default_factory=Counter)
    writes: Counter = field(default_factory=Counter)
    sram_peak: int = 0
    _held: dict = field(default_factory=dict)

    def read(self, name: str, n: int) -> None:
        self.reads[name] += int(n)

    def write(self, name: str, n: int) -> None:
        self.writes[name] += int(n)

    def hold(self, name: str, n: int) -> None:
        """An on-chip buffer of n elements (per thread block) is live from now on."""
        self._held[name] = int(n)
        self.sram_peak = max(self.sram_peak, sum(self._held.values()))

    def drop(self, *names: str) -> None:
        for name in names:
            self._held.pop(name, None)

    @property
    def hbm_elements(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_elements * self.itemsize

    def traffic(self) -> "Traffic":
        return Traffic(dict(self.reads), dict(self.writes), self.sram_peak, self.itemsize)


@dataclass
class Traffic:
    """Closed-form or counted traffic: elements read and written per tensor, peak SRAM (elements
    held on chip at once by one thread block). itemsize: bytes per element where known (a
    counter's snapshot), else 0; it does not take part in ==."""

    reads: dict
    writes: dict
    sram_peak: int = 0
    itemsize: int = 0

    @property
    def total(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    def __eq__(self, other) -> bool:  # zero entries do not matter
        def clean(d):
            return {k: v for k, v in d.items() if v}

        return (
            clean(self.reads) == clean(other.reads)
            and clean(self.writes) == clean(other.writes)
            and self.sram_peak == other.sram_peak
        )


def a0_traffic(B, H, Nq, Nk, d) -> Traffic:
    """A0: every stage reads its inputs once and writes its output once (S and P are N x N)."""
    bh = B * H
    reads = {"Q": bh * Nq * d, "K": bh * Nk * d, "S": bh * Nq * Nk, "P": bh * Nq * Nk,
             "V": bh * Nk * d}
    writes = {"S": bh * Nq * Nk, "P": bh * Nq * Nk, "O": bh * Nq * d}
    return Traffic(reads, writes, 0)


def a1_traffic(B, H, Nq, Nk, d, Br, Bc) -> Traffic:
    """A1 (no block skipping, as the paper): Q_i, O_i, l_i, m_i travel once per (i, j) pair."""
    bh = B * H
    Tc = math.ceil(Nk / Bc)
    reads = {"K": bh * Nk * d, "V": bh * Nk * d, "Q": bh * Tc * Nq * d, "O": bh * Tc * Nq * d,
             "l": bh * Tc * Nq, "m": bh * Tc * Nq}
    writes = {"O": bh * (Tc + 1) * Nq * d, "l": bh * (Tc + 1) * Nq, "m": bh * (Tc + 1) * Nq}
    br, bc = min(Br, Nq), min(Bc, Nk)
    # K_j, V_j, Q_i, O_i, l_i, m_i, S_ij (P~_ij overwrites it), m~_ij, l~_ij, m_new, l_new
    sram = 2 * bc * d + 2 * br * d + 2 * br + br * bc + 4 * br
    return Traffic(reads, writes, sram)


def _visited(Nq, Nk, Br, Bc, causal):
    """(br, tiles, keys) per row block i: its rows, and how many K/V tiles and keys it visits
    (all of them; under the causal mask, tiles 0..last_row // Bc, as causal_visits says)."""
    Tc = math.ceil(Nk / Bc)
    for i, br in enumerate(tile_sizes(Nq, Br)):
        tiles = Tc if not causal else min(Tc, (i * Br + br - 1) // Bc + 1)
        yield br, tiles, min(Nk, tiles * Bc)


def f2_traffic(B, H, Nq, Nk, d, Br, Bc, causal=False) -> Traffic:
    """F2: Q_i read once, K_j and V_j once per visited pair, O and L written once."""
    bh = B * H
    kv = sum(keys for _, _, keys in _visited(Nq, Nk, Br, Bc, causal))
    reads = {"Q": bh * Nq * d, "K": bh * kv * d, "V": bh * kv * d}
    writes = {"O": bh * Nq * d, "L": bh * Nq}
    br, bc = min(Br, Nq), min(Bc, Nk)
    # Q_i, O~, l, m, K_j, V_j, S (P~ overwrites it), m_new
    return Traffic(reads, writes, f2_sram(br, bc, d))


def b1_traffic(B, H, Nq, Nk, d, Br, Bc) -> Traffic:
    """B1 (no block skipping): Q_i, O_i, dO_i, dQ_i, L_i travel once per (i, j) pair."""
    bh = B * H
    Tc = math.ceil(Nk / Bc)
    reads = {"K": bh * Nk * d, "V": bh * Nk * d, "Q": bh * Tc * Nq * d, "O": bh * Tc * Nq * d,
             "dO": bh * Tc * Nq * d, "dQ": bh * Tc * Nq * d, "L": bh * Tc * Nq}
    writes = {"dQ": bh * (Tc + 1) * Nq * d, "dK": bh * 2 * Nk * d, "dV": bh * 2 * Nk * d}
    br, bc = min(Br, Nq), min(Bc, Nk)
    # K_j, V_j, dK~_j, dV~_j, Q_i, O_i, dO_i, dQ_i, L_i, S/P, dP/dS, D_i
    sram = 4 * bc * d + 4 * br * d + br + 2 * br * bc + br
    return Traffic(reads, writes, sram)


def g2_traffic(B, H, Nq, Nk, d, Br, Bc, causal=False) -> Traffic:
    """G2: a D pre-pass, then Q_i, dO_i, L_i, D_i once per visited pair; dQ by read-modify-write."""
    bh = B * H
    q_rows = sum(br * tiles for br, tiles, _ in _visited(Nq, Nk, Br, Bc, causal))
    reads = {"dO": bh * (Nq + q_rows) * d, "O": bh * Nq * d, "K": bh * Nk * d, "V": bh * Nk * d,
             "Q": bh * q_rows * d, "L": bh * q_rows, "D": bh * q_rows, "dQ": bh * q_rows * d}
    writes = {"D": bh * Nq, "dQ": bh * (Nq + q_rows) * d, "dK": bh * Nk * d, "dV": bh * Nk * d}
    br, bc = min(Br, Nq), min(Bc, Nk)
    # K_j, V_j, dK~, dV~, Q_i, dO_i, L_i, D_i, S/P, dP/dS
    sram = 4 * bc * d + 2 * br * d + 2 * br + 2 * br * bc
    return Traffic(reads, writes, sram)


def theta_standard(N: int, d: int) -> int:
    """The paper's bound for standard attention: Theta(N d + N^2) elements (per head)."""
    return N * d + N * N


def theta_flash(N: int, d: int, M: int) -> float:
    """The paper's bound for FlashAttention (Theorem 2): Theta(N^2 d^2 / M) elements (per head)."""
    return N * N * d * d / M


def io_rows(seqs, d: int, srams, causal: bool = False, itemsize: int = 4):
    """Rows of the `flashlab io` table (per head; MB = 1e6 bytes).

    Each algorithm gets its own tiles for each M: A1 those of A1:L1 (`block_sizes`), F2 those
    of `f2_block_sizes`; both are printed.
    """
    rows = []
    mb = itemsize / 1e6
    for M in srams:
        Br, Bc = block_sizes(d, M)
        fBr, fBc = f2_block_sizes(d, M)
        for N in seqs:
            a0 = a0_traffic(1, 1, N, N, d).total
            a1 = a1_traffic(1, 1, N, N, d, Br, Bc).total
            f2 = f2_traffic(1, 1, N, N, d, fBr, fBc, causal).total
            rows.append({
                "N": N, "d": d, "M (floats)": M,
                "A1 Br x Bc": f"{Br} x {Bc}", "F2 Br x Bc": f"{fBr} x {fBc}",
                "A0 MB": a0 * mb, "A1 MB": a1 * mb, "F2 MB": f2 * mb,
                "A0 / F2": a0 / f2,
                "Nd+N^2 MB": theta_standard(N, d) * mb,
                "N^2d^2/M MB": theta_flash(N, d, M) * mb,
            })
    return rows
