"""One markdown table from `flashlab bench --dtype ... --compare torch --json` files (gpu_check.sh
tc-table writes them): tc against torch SDPA's flash and cuDNN backends, TFLOP/s and ratios.

    python3 scripts/tc_table.py OUT/tc/*.json
"""
import json
import math
import statistics
import sys


def main(paths):
    cells = {}
    for path in paths:
        with open(path) as f:
            rep = json.load(f)
        h = rep["header"]
        for r in rep["rows"]:
            key = (h.get("dtype"), r["d"], h.get("causal"), r["N"], r["direction"])
            cells.setdefault(key, {})[r["kernel"]] = r
    gpu = next(iter(json.load(open(p))["header"].get("gpu") for p in paths[:1]), "?")
    print(f"GPU: {gpu}. TFLOP/s (ALGORITHMS.md convention), 16k tokens per batch, heads = 2048 / d;"
          " tc/flash = speed ratio.\n")
    print("| dtype | d | causal | N | fwd tc | fwd flash | fwd cuDNN | fwd tc/flash "
          "| bwd tc | bwd flash | bwd cuDNN | bwd tc/flash |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for key in sorted({k[:4] for k in cells}, key=lambda k: (k[0], k[1], k[2], k[3])):
        row = list(map(str, key[:2])) + ["yes" if key[2] else "no", str(key[3])]
        for direction in ("forward", "backward"):
            c = cells.get(key + (direction,), {})
            t = [c.get(n, {}).get("tflops", float("nan")) for n in ("tc", "torch-flash", "torch-cudnn")]
            t = [float("nan") if x is None else x for x in t]
            ratio = t[0] / t[1] if t[1] and not math.isnan(t[1]) else float("nan")
            worst[direction] = min(worst.get(direction, math.inf), ratio) if not math.isnan(ratio) else worst.get(direction, math.inf)
            bad = [c.get("tc", {}).get("check", "")] if not c.get("tc", {}).get("check", "").startswith("ok") else []
            row += [f"{x:.0f}" if not math.isnan(x) else "-" for x in t]
            row.append((f"{ratio:.2f}x" if not math.isnan(ratio) else "-") + (f" ({bad[0]})" if bad else ""))
        print("| " + " | ".join(row) + " |")
    print()
    for direction, w in worst.items():
        print(f"lowest tc/flash ratio, {direction}: {w:.2f}x")
    # the launch overhead the queued timing keeps out of the numbers above (bench.time_gpu)
    for direction in ("forward", "backward"):
        host = {}
        for key, c in cells.items():
            if key[4] == direction:
                for n, r in c.items():
                    if r.get("host_us") is not None and not math.isnan(r["host_us"]):
                        host.setdefault(n, []).append(r["host_us"])
        if host:
            print(f"host time per call, {direction} (median over cells, us): "
                  + ", ".join(f"{n} {statistics.median(v):.0f}" for n, v in sorted(host.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
