"""The report of examples/gpt2_attention.py: the loss curves compared (moving averages, the
noise floor of a variant run twice), the results table, the verdict, the markdown file and the
loss plot. Beside gpt2_attention.py, which imports it (python puts examples/ on sys.path)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from tabulate import tabulate

SMOOTH = 10  # steps in the moving average the loss curves are compared by


def base_name(label: str) -> str:
    """The implementation of a variant label: `sdpa-flash#2` is sdpa-flash's second run."""
    return label.split("#")[0]


def smoothed(losses: list) -> list:
    """The moving average over SMOOTH steps (fewer at the start): bf16 runs of one model
    wander apart step by step (SDPA's own backends do), so curves are held to their trend."""
    return [statistics.fmean(losses[max(0, i + 1 - SMOOTH):i + 1]) for i in range(len(losses))]


def _trend_diff(a: list, b: list) -> float:
    """max |difference| of two loss curves' moving averages (nan if either has a nan)."""
    diffs = [abs(x - y) for x, y in zip(smoothed(a), smoothed(b))]
    return math.nan if any(map(math.isnan, diffs)) else max(diffs)


def noise_floor(ok: list) -> float | None:
    """How far one implementation's curve lies from itself: the largest moving-average distance
    between the runs of a variant named more than once (`--attention flashlab,sdpa-flash,
    sdpa-flash`), or None. bf16 runs whose backward adds with atomics (dQ in FlashAttention's,
    and in flashlab's) do not repeat, so this is the spread any two curves can show."""
    first, floor = {}, None
    for r in ok:
        base = base_name(r["variant"])
        if base in first:
            floor = max(floor or 0.0, _trend_diff(r["losses"], first[base]["losses"]))
        else:
            first[base] = r
    return floor


def compare(results: list, tol: float):
    """Each successful variant's max |loss - first successful variant's loss| over the steps
    (raw, and of the moving averages) and its step time over sdpa-flash's. A variant matches
    when its moving average stays within `tol` of the first's, or within the noise floor where
    the run measured one (noise_floor: a variant named twice)."""
    ok = [r for r in results if r["ok"]]
    flash = next((r for r in ok if r["variant"] == "sdpa-flash"), None)
    floor = noise_floor(ok)
    bound = tol if floor is None or math.isnan(floor) else max(tol, floor)
    for r in ok:
        diffs = [abs(a - b) for a, b in zip(r["losses"], ok[0]["losses"])]
        r["max_loss_diff"] = math.nan if any(map(math.isnan, diffs)) else max(diffs)
        r["max_trend_diff"] = _trend_diff(r["losses"], ok[0]["losses"])
        r["matches"] = r["max_trend_diff"] <= bound  # False for nan
        r["noise_floor"], r["match_bound"] = floor, bound
        r["vs_sdpa_flash"] = r["ms_median"] / flash["ms_median"] if flash else None


def table(results: list) -> tuple[list, list]:
    """Headers and rows of the results table: floats, None where there is no number."""
    ref = next((r["variant"] for r in results if r["ok"]), "first")
    headers = ["variant", "ms/step median", "ms/step mean", "tokens/s", "peak GiB",
               "final loss", f"max |loss - {ref}|", f"max |avg{SMOOTH} - {ref}'s|",
               "attn fwd+bwd ms", "time / sdpa-flash"]
    keys = ["ms_median", "ms_mean", "tokens_per_s", "peak_gib", "final_loss", "max_loss_diff",
            "max_trend_diff", "attention_ms", "vs_sdpa_flash"]
    # "failed" goes beside the name: a string in a number column would drop its float format
    rows = [[r["variant"], *(r[k] for k in keys)] if r["ok"] else
            [f"{r['variant']} (failed)", *[None] * len(keys)] for r in results]
    return headers, rows


def format_table(results: list, tablefmt: str) -> str:
    headers, rows = table(results)
    if tablefmt == "github":  # a | inside a header would split its column
        headers = [h.replace("|", "\\|") for h in headers]
    return tabulate(rows, headers, tablefmt=tablefmt, missingval="-",
                    floatfmt=("", ".2f", ".2f", ",.0f", ".2f", ".4f", ".4f", ".4f", ".3f", ".3f"))


def verdict(results: list, tol: float) -> str:
    ok = [r for r in results if r["ok"]]
    if not ok:
        return "every variant failed"
    off = [r["variant"] for r in ok if not r["matches"]]
    floor = ok[0].get("noise_floor")
    within = (f"{ok[0]['match_bound']:.4f} (--tol {tol}" +
              (f"; one implementation against itself: {floor:.4f})" if floor is not None
               else ")"))
    if off:
        return (f"loss curves DIFFER from {ok[0]['variant']}'s: their {SMOOTH}-step moving "
                f"averages by more than {within}: {', '.join(off)}")
    return (f"loss curves match {ok[0]['variant']}'s: {SMOOTH}-step moving averages within "
            f"{within} (step by step, bf16 runs wander: see the max |loss - ...| column)")


def errors(results: list) -> list[str]:
    return [f"{r['variant']} ({key}): {r[key].strip().splitlines()[-1]}"
            for r in results for key in ("error", "attention_error") if r.get(key)]


def write_markdown(path: Path, env: dict, args, results: list, tol: float):
    lines = ["# GPT-2 training step by attention implementation", "",
             f"- device: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}; flashlab {env['flashlab_commit']}",
             f"- command: `{env['command']}`",
             f"- model: {args.layers} layers, {args.heads} heads, width {args.width}, "
             f"T={args.seq}, vocab {args.vocab}; batch {args.batch}, {args.steps} steps "
             f"(median and mean over the last {args.steps - args.warmup}), "
             f"compile={args.compile}" + (f", interleaved {args.interleave} steps at a time "
                                          "(peak memory is not per variant)"
                                          if args.interleave else ""), "",
             format_table(results, "github"), "", f"{verdict(results, tol)}."]
    if errors(results):
        lines += [""] + [f"- {e}" for e in errors(results)]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, results: list, env: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in results if r["ok"]):
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=r["variant"], lw=1.2)
    ax.set(xlabel="step", ylabel="training loss", title=f"GPT-2 training loss, {env['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
