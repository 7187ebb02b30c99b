"""What a benchmark reports: one Row per (N, kernel, pass), the Report that holds them with its
header and notes, the table's column names, the FLOP convention and the HBM traffic table."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .. import hbm, registry

#: the kernel speedups are measured against (the registry's baseline: standard attention)
BASELINE = next(n for n in registry.names() if registry.get(n).baseline)


def attention_flops(B, H, Nq, Nk, d, causal, direction) -> float:
    """docs/ALGORITHMS.md convention: forward 4 B H Nq Nk d (halved when causal); backward 2.5x."""
    f = 4.0 * B * H * Nq * Nk * d * (0.5 if causal else 1.0)
    return f * 2.5 if direction == "backward" else f


@dataclass
class Row:
    N: int
    B: int
    H: int
    d: int
    kernel: str
    direction: str
    ms: float = float("nan")
    tflops: float = float("nan")
    speedup: float = float("nan")  # over the report's baseline, same N and direction
    extra_mb: float = float("nan")
    host_us: float = float("nan")  # host (Python) time per call while calls are queued
    check: str = ""  # "ok (err 3e-07)", "WRONG (err ...)", "out of memory", "skipped: ..."

    def table(self):
        return [self.N, self.B, self.H, self.kernel, self.direction,
                _fmt(self.ms, ".3f"), _fmt(self.tflops, ".2f"), _fmt(self.speedup, ".2f") + "x"
                if not math.isnan(self.speedup) else "", _fmt(self.extra_mb, ".0f"), self.check]


_SPEEDUP = 7  # the column of Row.table() that holds the speedup
HEADERS = ["N", "B", "H", "kernel", "pass", "ms", "TFLOP/s", f"vs {BASELINE}", "extra MB", "check"]


def headers(report) -> list:
    """HEADERS, with the speedup column named after the report's baseline."""
    base = report.header.get("baseline", BASELINE)
    return HEADERS[:_SPEEDUP] + [f"vs {base}"] + HEADERS[_SPEEDUP + 1:]


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


@dataclass
class Report:
    header: dict
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def as_dict(self):
        return {"header": self.header, "rows": [asdict(r) for r in self.rows], "notes": self.notes}


def set_speedups(report, N, base_ms):
    """Row.speedup of every row at N: the baseline's ms (per direction, in base_ms) over its ms."""
    for row in report.rows:
        if row.N == N and row.direction in base_ms and not math.isnan(row.ms):
            row.speedup = base_ms[row.direction] / row.ms


def traffic_rows(seqs, d, causal, sram=hbm.DEFAULT_SRAM):
    return hbm.io_rows(seqs, d, [sram], causal=causal)
