#!/usr/bin/env bash
# On a GPU machine: build, run the GPU test label, and benchmark the 405M configs side by side.
#   NCCL_ROOT=... CUDNN_ROOT=... bash scripts/gpu_suite.sh [OUT_DIR]
# Environment: BENCH_CONFIGS (default: the two 405M configs), BENCH_STEPS (10), SKIP_TESTS=1,
# EXTRA_CMAKE (more CMake flags), BUILD_DIR (default /tmp/dcf-gpu-build), BREAKDOWN=1 (bench --breakdown,
# then the configs' ranges side by side: scripts/breakdown_compare.py).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-out}"
mkdir -p "$out"
b="${BUILD_DIR:-/tmp/dcf-gpu-build}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
t0=$(date +%s)
cmake -S "$root" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DDCF_CUDA=ON \
  ${NCCL_ROOT:+-DNCCL_ROOT=$NCCL_ROOT} ${CUDNN_ROOT:+-DCUDNN_ROOT=$CUDNN_ROOT} ${EXTRA_CMAKE:-} > "$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$b" -j"$(nproc)" --target ${BUILD_TARGETS:-dcformer test_gpu_ops test_gpu_training} > "$out/build.log" 2>&1 \
  || { grep -B2 -A6 "error" "$out/build.log" | head -60; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
if [ -z "${SKIP_TESTS:-}" ]; then
  (cd "$b" && ctest -L gpu --output-on-failure -j4 --timeout 600 > "$out/ctest-gpu.log" 2>&1)
  grep -E "tests passed|tests failed|Total Test" "$out/ctest-gpu.log"
  grep -E "bf16 GPU vs|Failed|Failure" "$out/ctest-gpu.log" | head -20
fi
bd_files=()
for cfg in ${BENCH_CONFIGS:-configs/dcformer_405m.textproto configs/transformerpp_405m.textproto}; do
  if [ -n "${BREAKDOWN:-}" ]; then
    f="$out/breakdown_$(basename "$cfg" .textproto).json"
    "$b/dcformer" bench --config "$root/$cfg" --steps "${BENCH_STEPS:-10}" --warmup 3 ${BENCH_SETS:-} --json --breakdown \
      | tee "$f" | python3 -c 'import json,sys; [print(json.dumps({k: v for k, v in json.loads(l).items() if k != "breakdown"})) for l in sys.stdin if l.startswith("{")]' \
      | tee -a "$out/bench.jsonl"
    bd_files+=("$f")
  else
    "$b/dcformer" bench --config "$root/$cfg" --steps "${BENCH_STEPS:-10}" --warmup 3 ${BENCH_SETS:-} --json \
      | tee -a "$out/bench.jsonl"
  fi
done
if [ ${#bd_files[@]} -gt 0 ]; then
  python3 "$root/scripts/breakdown_compare.py" "${bd_files[@]}" --depth 4 | tee "$out/breakdown.txt"
fi
echo "== summary"
python3 - "$out/bench.jsonl" <<'PY' 2>/dev/null || cat "$out/bench.jsonl"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    print(f"{r['config'].split('/')[-1]:32s} {r['tokens_per_s']:10.0f} tok/s  {r['model_tflops_per_device']:7.1f} TFLOP/s  MFU {r['mfu']:.3f}  step {r['step_time_s_median']:.3f} s  mem {r['peak_device_memory_bytes']/2**30:.1f} GiB")
if len(rows) >= 2:
    print(f"ratio {rows[0]['config'].split('/')[-1]} / {rows[1]['config'].split('/')[-1]} tokens/s: {rows[0]['tokens_per_s']/rows[1]['tokens_per_s']:.3f}")
PY
