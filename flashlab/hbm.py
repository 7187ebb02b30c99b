"""HBM accounting: what each algorithm reads from and writes to device memory, and its SRAM.

Two halves that the tests hold against each other:

* `MemoryCounter` is ticked by the step-through references as they run (every load of a tile is
  a `read`, every store a `write`, every on-chip buffer a `hold`).
* The `*_traffic` functions are closed forms written from the algorithm text alone.

`flashlab io` prints the closed forms over sequence lengths and SRAM sizes, beside the Theta
bounds of the FlashAttention paper's Theorem 2 (standard: N d + N^2; FlashAttention: N^2 d^2 / M).
Counts are in elements; bytes = elements * itemsize.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

DEFAULT_SRAM = 12288  # M in floats: 48 KiB of fp32, the shared memory every CUDA GPU gives a block


def block_sizes(d: int, sram: int = DEFAULT_SRAM) -> tuple[int, int]:
    """A1:L1  Bc = ceil(M / 4d), Br = min(ceil(M / 4d), d); M counted in floats."""
    if d < 1:
        raise ValueError(f"head dim d must be >= 1, got {d}")
    if sram < 1:
        raise ValueError(f"sram (M, in floats) must be >= 1, got {sram}")
    Bc = math.ceil(sram / (4 * d))
    Br = min(Bc, d)
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
        return Traffic(dict(self.reads), dict(self.writes), self.sram_peak)


@dataclass
class Traffic:
    """Closed-form or counted traffic: elements read and written per tensor, peak SRAM."""

    reads: dict
    writes: dict
    sram_peak: int = 0

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
    # K_j, V_j, Q_i, O_i, l_i, m_i, S_ij (P~_ij overwrites it), m~, l~, m_new, l_new
    sram = 2 * bc * d + 2 * br * d + 2 * br + br * bc + 4 * br
    return Traffic(reads, writes, sram)


def _pairs(Nq, Nk, Br, Bc, causal):
    for i, br in enumerate(tile_sizes(Nq, Br)):
        for j, bc in enumerate(tile_sizes(Nk, Bc)):
            if not causal or causal_visits(i, Br, Nq, j, Bc):
                yield br, bc


def f2_traffic(B, H, Nq, Nk, d, Br, Bc, causal=False) -> Traffic:
    """F2: Q_i read once, K_j and V_j once per visited pair, O and L written once."""
    bh = B * H
    kv = sum(bc for _, bc in _pairs(Nq, Nk, Br, Bc, causal))
    reads = {"Q": bh * Nq * d, "K": bh * kv * d, "V": bh * kv * d}
    writes = {"O": bh * Nq * d, "L": bh * Nq}
    br, bc = min(Br, Nq), min(Bc, Nk)
    # Q_i, O~, l, m, K_j, V_j, S (P~ overwrites it), m_new
    sram = br * d + br * d + 2 * br + 2 * bc * d + br * bc + br
    return Traffic(reads, writes, sram)


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
    pairs = list(_pairs(Nq, Nk, Br, Bc, causal))
    q_rows = sum(br for br, _ in pairs)
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
    """Rows of the `flashlab io` table (per head; MB = 1e6 bytes)."""
    rows = []
    mb = itemsize / 1e6
    for M in srams:
        Br, Bc = block_sizes(d, M)
        for N in seqs:
            a0 = a0_traffic(1, 1, N, N, d).total
            a1 = a1_traffic(1, 1, N, N, d, Br, Bc).total
            f2 = f2_traffic(1, 1, N, N, d, Br, Bc, causal).total
            rows.append({
                "N": N, "d": d, "M (floats)": M, "Br x Bc": f"{Br} x {Bc}",
                "A0 MB": a0 * mb, "A1 MB": a1 * mb, "F2 MB": f2 * mb,
                "A0 / F2": a0 / f2,
                "Nd+N^2 MB": theta_standard(N, d) * mb,
                "N^2d^2/M MB": theta_flash(N, d, M) * mb,
            })
    return rows
