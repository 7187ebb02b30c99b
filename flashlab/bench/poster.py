"""The poster's two figures as measurements ("Integrating Flash Attention with MiniTorch",
../shared/seed/): Figure 3, the speedup of FlashAttention over standard attention against the
sequence length (the FlashAttention paper's T4 figure), which is the ladder (bench.ladder) at
several N; and Figure 4, training in the MiniTorch-style framework (flashlab.autodiff) with
flash and with standard attention, time per step and peak memory against N (training_sweep).
scripts/poster_figures.py runs both on a GPU and writes the tables and plots under docs/.

    rows = training_sweep([256, 1024, 4096], device="gpu", steps=20)
"""
from __future__ import annotations

from ..autodiff.train import TrainConfig, train

KINDS = ("flash", "standard")


def training_sweep(seqs, device="gpu", steps=20, batch=8, layers=2, heads=4, dim=256,
                   seed=0, progress=None) -> list[dict]:
    """For each sequence length, train the same model from the same seed with flash and with
    standard attention for `steps` steps: ms per step (mean of steps 2.., as flashlab train
    reports it), peak memory, the last loss of each and their relative difference (the two are
    the same computation, so it stays near rounding). A configuration that runs out of memory
    gets None and the error's first line."""
    rows = []
    for N in seqs:
        row = {"N": N, "batch": batch, "layers": layers, "heads": heads, "dim": dim,
               "steps": steps}
        for kind in KINDS:
            if progress:
                progress(f"train {kind} N={N}")
            cfg = TrainConfig(attention=kind, steps=steps, batch=batch, seq=N, layers=layers,
                              heads=heads, dim=dim, seed=seed, device=device, sample=0)
            try:
                r = train(cfg)
            except Exception as e:  # standard attention's N x N at large N, say so and go on
                if "memory" not in f"{type(e).__name__} {e}".lower():
                    raise
                row[f"{kind}_ms"] = row[f"{kind}_mb"] = row[f"{kind}_loss"] = None
                row[f"{kind}_error"] = str(e).splitlines()[0][:120]
                continue
            row[f"{kind}_ms"] = 1e3 * r.seconds_per_step
            row[f"{kind}_mb"] = None if r.peak_memory is None else r.peak_memory / 1e6
            row[f"{kind}_loss"] = r.losses[-1]
        if row.get("flash_ms") and row.get("standard_ms"):
            row["speedup"] = row["standard_ms"] / row["flash_ms"]
            row["memory_ratio"] = (row["standard_mb"] / row["flash_mb"]
                                   if row.get("flash_mb") and row.get("standard_mb") else None)
            row["loss_rel_diff"] = (abs(row["flash_loss"] - row["standard_loss"])
                                    / abs(row["standard_loss"]))
        rows.append(row)
    return rows


def training_table(rows) -> tuple[list, list]:
    """(headers, rows) for tabulate."""
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    def ms(r, kind):
        return "out of memory" if r.get(f"{kind}_error") else f(r.get(f"{kind}_ms"), ".1f")

    headers = ["N", "flash ms/step", "standard ms/step", "standard / flash", "flash MB",
               "standard MB", "standard / flash MB", "last-loss rel. diff"]
    out = [[r["N"], ms(r, "flash"), ms(r, "standard"),
            f(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
            f(r.get("flash_mb"), ".0f"), f(r.get("standard_mb"), ".0f"),
            f(r.get("memory_ratio"), ".2f"), f(r.get("loss_rel_diff"), ".1e")] for r in rows]
    return headers, out


def training_plot(rows, path: str) -> None:
    """Time per step and peak memory against N, flash and standard (Figure 4's two panels)."""
    from ..viz._mpl import _pyplot

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in zip(KINDS, ("-o", "--s")):
        pts = [(r["N"], r[f"{kind}_ms"]) for r in rows if r.get(f"{kind}_ms") is not None]
        mem = [(r["N"], r[f"{kind}_mb"]) for r in rows if r.get(f"{kind}_mb") is not None]
        if pts:
            a1.plot(*zip(*pts), style, label=f"{kind} attention")
        if mem:
            a2.plot(*zip(*mem), style, label=f"{kind} attention")
    for ax, label in ((a1, "ms per training step"), (a2, "peak device memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("flashlab.autodiff: a transformer trained with flash and with standard attention")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
