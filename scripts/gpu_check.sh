#!/usr/bin/env bash
# One device call: GPU tests, compute-sanitizer, benchmark. Run from the repository root:
#   OUT=/tmp/out bash scripts/gpu_check.sh [tests|sanitize|tutorials|tc-table|bench|all] [extra bench args]
#   OUT=/tmp/out bash scripts/gpu_check.sh tune [scripts/tc_tune.py args]   (tile search, not in all)
#   OUT=/tmp/out bash scripts/gpu_check.sh profile [d N --causal --torch]  (ncu of tc, not in all)
#   OUT=/tmp/out bash scripts/gpu_check.sh profile-sass [d N --causal]  (ncu stalls per SASS line of
#       PROFILE_KERNEL, default tc90_backward; not in all)
#   OUT=/tmp/out bash scripts/gpu_check.sh ab BASE_DIR     (interleaved tc A/B against a base tree)
#   OUT=/tmp/out bash scripts/gpu_check.sh host [BASE_DIR]  (flashlab.torch host time vs SDPA, before/after)
#   OUT=/tmp/out bash scripts/gpu_check.sh gpt2             (GPT-2 small bf16 training, vs SDPA)
#   OUT=/tmp/out bash scripts/gpu_check.sh torch [BASE_DIR] (host and gpt2)
#   OUT=/tmp/out bash scripts/gpu_check.sh timeline [args]  (torch.profiler: kernels, GPU busy vs wall)
#   OUT=/tmp/out bash scripts/gpu_check.sh variants [bench args] (tc variants vs FlexAttention, d 128 and 64)
#   OUT=/tmp/out bash scripts/gpu_check.sh variants-ab BASE_DIR (variant builds, interleaved A/B)
#   OUT=/tmp/out bash scripts/gpu_check.sh poster [args]  (the seed poster's two figures, measured)
#   OUT=/tmp/out bash scripts/gpu_check.sh tma      (issue 22's first probe: a TMA tensor map in a CuPy launch)
#   OUT=/tmp/out bash scripts/gpu_check.sh ladder [ladder_ws.py args] (the ladder's warp-specialized forward
#       and backward: their GPU tests, compute-sanitizer, rows against tc and SDPA flash / cuDNN for
#       each of $LADDER_DIRECTIONS, default "forward backward")
#   OUT=/tmp/out bash scripts/gpu_check.sh turing [BASE_DIR] (tc.cu's compute_75 build: its GPU tests,
#       the sanitizer, fp16 against SDPA; with a base tree, an interleaved A/B of the build)
# Logs land in $OUT (the device tool brings them back). Uses the machine's python3 (CuPy,
# pytest, hypothesis, tabulate, torch there), with PYTHONPATH=. instead of an install.
set -uo pipefail
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/flashlab-out}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
  echo "C++ compiler for the CPU backend: $(g++ --version 2>/dev/null | head -1 || echo none)"
} 2>&1 | tee "$OUT/device.txt"

if [[ $what == all || $what == tests ]]; then
  echo "== GPU tests"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == all || $what == sanitize ]]; then
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool"
    # --report-api-errors no: cuda-bindings (the ladder's tensor maps) asks the driver for entry
    # points it may lack, and memcheck would count each refusal; kernel memory errors still count
    timeout ${SAN_TIMEOUT:-900} compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 99 python3 scripts/sanitize_kernels.py \
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

if [[ $what == tune ]]; then
  echo "== tensor-core tile search (scripts/tc_tune.py)"
  python3 scripts/tc_tune.py --out "$OUT" "$@" 2>&1 | tee "$OUT/tune.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == all || $what == tc-table ]]; then
  echo "== tensor-core kernels vs torch SDPA flash and cuDNN (16k tokens, heads = 2048 / d)"
  mkdir -p "$OUT/tc"
  for dtype in bfloat16 float16; do
    for d in 64 128; do
      for causal in "" --causal; do
        tag=tc_${dtype}_d${d}${causal:+_causal}
        python3 -m flashlab bench --dtype $dtype --head-dim $d $causal --backward --compare torch \
          --seq 1024,2048,4096,8192,16384 --repeat ${TC_REPEAT:-20} --json "$OUT/tc/$tag.json" \
          > "$OUT/tc/$tag.txt" 2>&1 || status=1
        tail -n 32 "$OUT/tc/$tag.txt" | grep -E "^ *[0-9]+ " | awk '{print "'$tag'", $0}'
      done
    done
  done
  python3 scripts/tc_table.py "$OUT"/tc/*.json | tee "$OUT/tc_table.md"
fi

if [[ $what == ab ]]; then
  echo "== interleaved A/B of tc: ${1:?BASE_DIR} (A) against this tree (B)"
  python3 scripts/tc_ab.py "$1" --out "$OUT/ab" --repeat ${TC_REPEAT:-20} 2>&1 | tee "$OUT/ab.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == torch || $what == host ]]; then
  echo "== flashlab.torch host time per call against SDPA (scripts/torch_host_time.py)"
  if [[ -n ${1:-} ]]; then  # a base tree: the numbers before the change, same run
    PYTHONPATH=$1 python3 scripts/torch_host_time.py --profile "$OUT/host_profile_before.txt" \
      > "$OUT/host_before.txt" 2>&1 || status=1
    echo "-- before ($1)"; cat "$OUT/host_before.txt"
  fi
  echo "-- this tree"
  python3 scripts/torch_host_time.py --pieces --profile "$OUT/host_profile.txt" 2>&1 | tee "$OUT/host.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == torch || $what == gpt2 ]]; then
  echo "== GPT-2 small, bf16: flashlab against SDPA flash and cuDNN (examples/gpt2_attention.py)"
  # interleaved (10 steps of each variant in turn): host drift weighs on all; sdpa-flash twice:
  # its run-to-run spread is the noise floor the loss curves are held to. GPT2_ARGS can say
  # --interleave 0 (one variant after another, peak memory per variant) or --attention ...
  python3 examples/gpt2_attention.py --out "$OUT/gpt2" --interleave 10 \
    --attention flashlab,sdpa-flash,sdpa-cudnn,sdpa-flash ${GPT2_ARGS:-} 2>&1 | tee "$OUT/gpt2.txt" | tail -30
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == timeline ]]; then
  echo "== torch.profiler: attention alone and GPT-2 steps, kernel time against wall (scripts/torch_profile.py)"
  python3 scripts/torch_profile.py "$@" 2>&1 | tee "$OUT/timeline.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == variants ]]; then
  echo "== attention variants: tc against FlexAttention (flashlab bench --variant all --compare flex ${*:-})"
  mkdir -p "$OUT/variants"
  for d in ${VARIANT_DIMS:-128 64}; do
    python3 -m flashlab bench --variant all --compare flex --head-dim $d --repeat ${VARIANT_REPEAT:-15} \
      --json "$OUT/variants/variants_d$d.json" "$@" 2>&1 | tee "$OUT/variants_d$d.txt" | tail -12
    [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  done
fi

if [[ $what == variants-ab ]]; then
  spec=${VARIANT_AB:-causal,causal-mask,window,document}
  echo "== attention variants, interleaved A/B: ${1:?BASE_DIR} (A) against this tree (B): $spec"
  python3 scripts/tc_ab.py "$1" --variant "$spec" --out "$OUT/variants_ab" \
    --repeat ${VARIANT_REPEAT:-20} 2>&1 | tee "$OUT/variants_ab.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == tma ]]; then
  echo "== probe: cp.async.bulk.tensor with a __grid_constant__ CUtensorMap from cuda-bindings"
  python3 scripts/probe_tma.py 2>&1 | tee "$OUT/tma.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == ladder ]]; then
  echo "== the Hopper ladder (kernels/tc90_ws.cu, tc90_ws_bwd.cu): GPU tests"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_tc_ws_gpu.py tests/test_tc_ws_bwd_gpu.py 2>&1 | tee "$OUT/pytest_ladder.log" | tail -3
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool (tc90_ws.cu, tc90_ws_bwd.cu)"
    # (--report-api-errors no: cuda-bindings asks the driver for entry points it may lack, and
    # memcheck counts each refusal as an error; the kernels' memory errors are still reported)
    SANITIZE_LADDER=only timeout ${SAN_TIMEOUT:-300} compute-sanitizer --tool $tool --error-exitcode 99 \
      --report-api-errors no \
      python3 scripts/sanitize_kernels.py > "$OUT/sanitizer_ladder_$tool.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_ladder_$tool.log" | tail -1
    [[ $rc == 0 ]] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
  done
  for direction in ${LADDER_DIRECTIONS:-forward backward}; do
    echo "== the ladder's $direction rows: tc, the ws rungs, SDPA flash, cuDNN (scripts/ladder_ws.py $*)"
    python3 scripts/ladder_ws.py --direction $direction --json "$OUT/ladder_ws_$direction.json" "$@" 2>&1 \
      | tee "$OUT/ladder_ws_$direction.txt"
    [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  done
fi

if [[ $what == poster ]]; then
  echo "== the seed poster's figures: the ladder by N, and flash against standard attention in training"
  python3 scripts/poster_figures.py --out "$OUT/poster" "$@" 2>&1 | tee "$OUT/poster.txt" | tail -25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi

if [[ $what == turing ]]; then
  # the H200 runs the Turing build's PTX through the driver's JIT (FLASHLAB_TC_TURING=1): its
  # timings are the H200's, not a T4's
  export FLASHLAB_TC_TURING=1
  echo "== GPU tests of the Turing build"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_tc_gpu.py tests/test_tc_variants_gpu.py \
    -k turing 2>&1 | tee "$OUT/pytest_turing.log" | tail -4
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool (tc, every variant)"
    SANITIZE_KERNELS=tc timeout ${SAN_TIMEOUT:-600} compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 99 \
      python3 scripts/sanitize_kernels.py > "$OUT/sanitizer_turing_$tool.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_turing_$tool.log" | tail -1
    [[ $rc == 0 ]] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
  done
  mkdir -p "$OUT/turing"
  for d in 64 128; do
    for causal in "" --causal; do
      tag=turing_float16_d${d}${causal:+_causal}
      python3 -m flashlab bench --dtype float16 --head-dim $d $causal --backward --compare torch \
        --seq ${TURING_SEQ:-1024,4096,16384} --repeat ${TC_REPEAT:-10} --json "$OUT/turing/$tag.json" \
        > "$OUT/turing/$tag.txt" 2>&1 || status=1
      tail -n 24 "$OUT/turing/$tag.txt" | grep -E "^ *[0-9]+ " | awk '{print "'$tag'", $0}'
    done
  done
  if [[ -n ${1:-} ]]; then
    echo "== interleaved A/B of the Turing build: $1 (A) against this tree (B)"
    python3 scripts/tc_ab.py "$1" --dtype float16 --out "$OUT/turing_ab" --repeat ${TC_REPEAT:-10} \
      --seq ${AB_SEQ:-4096} 2>&1 | tee "$OUT/turing_ab.txt" | tail -12
    [[ ${PIPESTATUS[0]} == 0 ]] || status=1
  fi
fi

if [[ $what == profile ]]; then
  echo "== Nsight Compute: tc forward and backward (scripts/tc_profile.py ${*:-128 4096})"
  ncu -k "regex:tc_|flash_" --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section SchedulerStats \
    python3 scripts/tc_profile.py "$@" > "$OUT/ncu_tc.txt" 2>&1 || status=1
  grep -E "tc_|Duration|Compute \(SM\) Throughput|Memory Throughput|Shared|Achieved Occupancy|Registers|Stall|Issue Slots|Pipe" \
    "$OUT/ncu_tc.txt" | head -80
fi

if [[ $what == profile-sass ]]; then
  # where one kernel's warps stall, per SASS instruction (ncu's source page, sampled stalls)
  # PROFILE_SKIP: matching launches to skip first; PROFILE_TAG: a suffix for the files
  kern=${PROFILE_KERNEL:-tc90_backward} tag=${PROFILE_TAG:-}
  echo "== Nsight Compute, per SASS instruction: $kern (scripts/tc_profile.py ${*:-128 4096}) $tag"
  ncu -k "regex:$kern" --launch-skip ${PROFILE_SKIP:-0} --launch-count 1 --clock-control none \
    --section WarpStateStats --section SourceCounters --section SpeedOfLight -o "$OUT/sass_rep$tag" -f \
    python3 scripts/tc_profile.py "$@" > "$OUT/ncu_sass_run$tag.txt" 2>&1 || status=1
  ncu -i "$OUT/sass_rep$tag.ncu-rep" --page details > "$OUT/ncu_sass_details$tag.txt" 2>&1 || status=1
  ncu -i "$OUT/sass_rep$tag.ncu-rep" --page source --csv --print-source sass \
    > "$OUT/ncu_sass$tag.csv" 2>&1 || status=1
  rm -f "$OUT/sass_rep$tag.ncu-rep"; gzip -f "$OUT/ncu_sass$tag.csv"
  grep -E "Duration|Throughput|Warp Cycles" "$OUT/ncu_sass_details$tag.txt" | head -12
fi

if [[ $what == all || $what == bench ]]; then
  echo "== benchmark"
  tag=${BENCH_TAG:-bench}
  python3 -m flashlab bench "$@" --json "$OUT/$tag.json" 2>&1 | tee "$OUT/$tag.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
exit $status
