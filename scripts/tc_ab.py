"""Interleaved A/B of kernel 'tc' between two trees: is B (this tree) slower than A (a base)?

    python3 scripts/tc_ab.py BASE_DIR [--out DIR] [--repeat 20] [--seq 2048,16384] [--dtype float16]
    python3 scripts/tc_ab.py BASE_DIR --variant causal,causal-mask,window,document
    python3 scripts/tc_ab.py BASE_DIR --also TREE_C,TREE_D   (more candidates, A B C D D C B A)

BASE_DIR holds the base commit's files (`git archive BASE | tar -x -C BASE_DIR`). For each
configuration (bf16 unless --dtype says, d = 64 and 128, causal and not) it runs `flashlab bench --kernels tc
--backward` in the order A B B A (so drift over the run cancels), each in a fresh process with
its own tree on PYTHONPATH, and reports per cell the median-of-medians ratio B/A of the time
(above 1: B slower) and the worst cell. The redesign's promise: no cell more than 3% slower.
With --variant SPEC the runs are `flashlab bench --variant SPEC` instead (attention variants
compiled in, bf16, B = 4, H = 16, N = 4096; no Flex), one cell per variant, head dim and pass.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _flashlab_bench(tree: Path, args: list, out: Path) -> list:
    """The rows of one `flashlab bench ARGS --json OUT` run from `tree`, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-m", "flashlab", "bench", *args, "--json", str(out)]
    r = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return json.loads(out.read_text())["rows"]


def bench(tree: Path, d: int, causal: bool, seqs: str, repeat: int, out: Path,
          dtype: str = "bfloat16") -> dict:
    """(N, direction) -> ms of one `flashlab bench` run from `tree`."""
    rows = _flashlab_bench(tree, ["--dtype", dtype, "--head-dim", str(d), "--kernels", "tc",
                                  "--backward", "--seq", seqs, "--repeat", str(repeat)]
                           + (["--causal"] if causal else []), out)
    return {(row["N"], row["direction"]): row["ms"] for row in rows if row["kernel"] == "tc"}


def bench_variants(tree: Path, d: int, spec: str, repeat: int, out: Path) -> dict:
    """(variant, pass) -> ms of one `flashlab bench --variant` run from `tree` (backward: forward
    + backward less forward)."""
    rows = _flashlab_bench(tree, ["--variant", spec, "--head-dim", str(d), "--repeat",
                                  str(repeat)], out)
    if any(row["flashlab_fwd"] is None for row in rows):
        raise SystemExit(f"{tree}: a variant failed its check: {rows}")
    return {k: v for row in rows for k, v in (
        ((row["variant"], "forward"), row["flashlab_fwd"]),
        ((row["variant"], "backward"), row["flashlab_fwdbwd"] - row["flashlab_fwd"]))}


def abba(base: Path, measure, also: tuple = ()) -> list:
    """measure(tree, run) -> {cell: ms}, run as A B B A (A: base, B: this tree; run names the
    run, "A0" .. "A3"); with `also` (more candidate trees C, D, ...) as A B C .. C B A. Per cell
    (cell, median A ms, median B ms, median ms of each of `also`)."""
    trees = [base.resolve(), HERE, *(t.resolve() for t in also)]
    order = list(range(len(trees))) + list(reversed(range(len(trees))))
    runs = [[] for _ in trees]
    for k, who in enumerate(order):
        runs[who].append(measure(trees[who], f"{chr(65 + who)}{k}"))
    return [(key, *(statistics.median(r[key] for r in tree_runs) for tree_runs in runs))
            for key in runs[0][0]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/tc_ab"))
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--seq", default="2048,16384")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--variant", default=None, help="flashlab bench --variant's SPEC")
    p.add_argument("--also", default="", help="more candidate trees (C, D, ..., comma-separated), "
                   "each against A in the same interleaved run")
    a = p.parse_args()
    also = tuple(Path(t) for t in a.also.split(",") if t)
    extra = "".join(f" {chr(67 + k)} ms | {chr(67 + k)}/A |" for k in range(len(also)))
    rule = "---|---|" * len(also)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.variant:  # (the cells' leading columns, measure) per configuration
        what = "d, variant, pass"
        lines = ["| d | variant | pass | A ms | B ms | B/A |" + extra, "|---|---|---|---|---|---|" + rule]
        configs = [((d,), lambda tree, run, d=d: bench_variants(
                       tree, d, a.variant, a.repeat, a.out / f"{run}_variants_d{d}.json"))
                   for d in (64, 128)]
    else:
        what = "d, causal, N, pass"
        lines = ["| d | causal | N | pass | A ms | B ms | B/A |" + extra,
                 "|---|---|---|---|---|---|---|" + rule]
        configs = [((d, "yes" if causal else "no"), lambda tree, run, d=d, causal=causal: bench(
                       tree, d, causal, a.seq, a.repeat,
                       a.out / f"{run}_d{d}{'_causal' if causal else ''}.json", a.dtype))
                   for d in (64, 128) for causal in (False, True)]
    worst = (0.0, None)
    for prefix, measure in configs:
        cells = abba(a.base, measure, also)
        for key, ms_a, *ms_rest in cells:
            worst = max(worst, (ms_rest[0] / ms_a, prefix + key))
            lines.append("| " + " | ".join(map(str, prefix + key)) + f" | {ms_a:.3f} |" +
                         "".join(f" {ms:.3f} | {ms / ms_a:.3f} |" for ms in ms_rest))
        print("\n".join(lines[-len(cells):]), flush=True)
    lines.append(f"\nworst cell: B/A = {worst[0]:.3f} at {what} = {worst[1]}")
    (a.out / "tc_ab.md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
