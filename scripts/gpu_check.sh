#!/usr/bin/env bash
# One device call: GPU tests, compute-sanitizer, benchmark. Run from the repository root:
#   OUT=/tmp/out bash scripts/gpu_check.sh [tests|sanitize|tutorials|bench|all] [extra bench args]
# Logs land in $OUT (the device tool brings them back). Uses the machine's python3 (CuPy,
# pytest, hypothesis, tabulate, torch there), with PYTHONPATH=. instead of an install.
set -uo pipefail
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/flashlab-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
} 2>&1 | tee "$OUT/device.txt"

if [[ $what == all || $what == tests ]]; then
  echo "== GPU tests"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == all || $what == sanitize ]]; then
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool"
    compute-sanitizer --tool $tool --error-exitcode 99 python3 scripts/sanitize_kernels.py \
      > "$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|done|Error" "$OUT/sanitizer_$tool.log" | tail -3
    [[ $rc == 0 ]] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
  done
fi

if [[ $what == all || $what == tutorials ]]; then
  echo "== tutorials (every cell, GPU cells included)"
  mkdir -p "$OUT/tutorials"
  MPLBACKEND=Agg python3 scripts/run_tutorials.py "$OUT/tutorials" || status=1
fi

if [[ $what == all || $what == bench ]]; then
  echo "== benchmark"
  tag=${BENCH_TAG:-bench}
  python3 -m flashlab bench "$@" --json "$OUT/$tag.json" 2>&1 | tee "$OUT/$tag.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
exit $status
