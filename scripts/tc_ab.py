"""Interleaved A/B of kernel 'tc' between two trees: is B (this tree) slower than A (a base)?

    python3 scripts/tc_ab.py BASE_DIR [--out DIR] [--repeat 20] [--seq 2048,16384] [--dtype float16]

BASE_DIR holds the base commit's files (`git archive BASE | tar -x -C BASE_DIR`). For each
configuration (bf16 unless --dtype says, d = 64 and 128, causal and not) it runs `flashlab bench --kernels tc
--backward` in the order A B B A (so drift over the run cancels), each in a fresh process with
its own tree on PYTHONPATH, and reports per cell the median-of-medians ratio B/A of the time
(above 1: B slower) and the worst cell. The redesign's promise: no cell more than 3% slower.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def bench(tree: Path, d: int, causal: bool, seqs: str, repeat: int, out: Path,
          dtype: str = "bfloat16") -> dict:
    """(N, direction) -> ms of one `flashlab bench` run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-m", "flashlab", "bench", "--dtype", dtype, "--head-dim", str(d),
            "--kernels", "tc", "--backward", "--seq", seqs, "--repeat", str(repeat),
            "--json", str(out)] + (["--causal"] if causal else [])
    r = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    rows = json.loads(out.read_text())["rows"]
    return {(row["N"], row["direction"]): row["ms"] for row in rows if row["kernel"] == "tc"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/tc_ab"))
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--seq", default="2048,16384")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lines = ["| d | causal | N | pass | A ms | B ms | B/A |", "|---|---|---|---|---|---|---|"]
    worst = (0.0, None)
    for d in (64, 128):
        for causal in (False, True):
            runs = {"A": [], "B": []}
            for k, who in enumerate("ABBA"):
                tree = a.base.resolve() if who == "A" else HERE
                runs[who].append(bench(tree, d, causal, a.seq, a.repeat,
                                       a.out / f"{who}{k}_d{d}{'_causal' if causal else ''}.json",
                                       a.dtype))
            for key in sorted(runs["A"][0]):
                ms_a = statistics.median(r[key] for r in runs["A"])
                ms_b = statistics.median(r[key] for r in runs["B"])
                ratio = ms_b / ms_a
                worst = max(worst, (ratio, (d, causal) + key))
                lines.append(f"| {d} | {'yes' if causal else 'no'} | {key[0]} | {key[1]} | "
                             f"{ms_a:.3f} | {ms_b:.3f} | {ratio:.3f} |")
            print("\n".join(lines[-len(runs['A'][0]):]), flush=True)
    lines.append(f"\nworst cell: B/A = {worst[0]:.3f} at d, causal, N, pass = {worst[1]}")
    (a.out / "tc_ab.md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
