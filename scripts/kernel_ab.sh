#!/usr/bin/env bash
# On a GPU machine: time builds of the fused DCMHA kernels that differ in compile-time options, side by side.
# One build directory per variant (its CMAKE_CUDA_FLAGS), all built at once; optionally the whole fused
# suite per variant; then bench_dcmha_fused alternating between the variants.
#   NCCL_ROOT=... CUDNN_ROOT=... bash scripts/kernel_ab.sh OUT_DIR "" "-DDCF_CL2_B_ASYNC=0" ...
# Each variant argument is one CMAKE_CUDA_FLAGS string ("" = the default build). Environment: RUNS (2:
# passes over the variants), BENCH_ARGS (default "7 --no-v1"; e.g. "7 --no-v1 --shapes 0,1,5"), TESTS=1
# (run test_dcmha_fused in each variant first), EXTRA_CMAKE (more CMake flags), BUILD_ROOT (default
# /tmp/dcf-ab).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 2 ] || { echo "usage: kernel_ab.sh OUT_DIR VARIANT_FLAGS... (\"\" = the default build)" >&2; exit 2; }
out="$1"
shift
mkdir -p "$out"
base="${BUILD_ROOT:-/tmp/dcf-ab}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
t0=$(date +%s)
i=0
for flags in "$@"; do
  b="$base/v$i"
  # shellcheck disable=SC2086  # EXTRA_CMAKE holds several flags
  cmake -S "$root" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DDCF_CUDA=ON \
    ${NCCL_ROOT:+-DNCCL_ROOT=$NCCL_ROOT} ${CUDNN_ROOT:+-DCUDNN_ROOT=$CUDNN_ROOT} ${EXTRA_CMAKE:-} \
    "-DCMAKE_CUDA_FLAGS=$flags" > "$out/configure-v$i.log" 2>&1 || { tail -30 "$out/configure-v$i.log"; exit 1; }
  (cmake --build "$b" -j"$(( $(nproc) / $# + 1 ))" --target bench_dcmha_fused test_dcmha_fused \
     > "$out/build-v$i.log" 2>&1 || echo "v$i: build failed" > "$out/build-v$i.failed") &
  i=$((i + 1))
done
wait
for f in "$out"/build-v*.failed; do
  [ -e "$f" ] && { cat "$f"; grep -B2 -A6 "error" "${f%.failed}.log" | head -40; exit 1; }
done
echo "built $# variants in $(( $(date +%s) - t0 )) s"
i=0
for flags in "$@"; do echo "v$i: CMAKE_CUDA_FLAGS='$flags'"; i=$((i + 1)); done | tee "$out/variants.txt"
if [ -n "${TESTS:-}" ]; then
  # One process per variant: the suite's CPU reference already runs on every core.
  failed=0
  for ((v = 0; v < $#; ++v)); do
    log="$out/test-v$v.log"
    "$base/v$v/tests/gpu/test_dcmha_fused" > "$log" 2>&1
    rc=$?
    counts=$(awk '/^\[  PASSED  \] [0-9]+ test/ {p = $4} /^\[  SKIPPED \] [0-9]+ test/ {k = $4}
      END {printf "%d passed, %d skipped", p, k}' "$log")
    echo "v$v: test_dcmha_fused $([ $rc = 0 ] && echo ok || echo FAILED): $counts ($(( $(date +%s) - t0 )) s)"
    [ $rc = 0 ] || failed=1
  done
  [ $failed = 0 ] || { grep -h -A3 "Failure" "$out"/test-v*.log | head -40; exit 1; }
fi
for ((r = 1; r <= ${RUNS:-2}; ++r)); do
  for ((v = 0; v < $#; ++v)); do
    echo "=== v$v, run $r"
    # shellcheck disable=SC2086
    "$base/v$v/tests/gpu/bench_dcmha_fused" ${BENCH_ARGS:-7 --no-v1}
  done
done | tee "$out/bench.log"
