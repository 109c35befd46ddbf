#!/usr/bin/env bash
# The timing-only builds of the fused DCMHA kernels (-DDCF_KERNEL_TIMING_BUILDS=ON: the variants that
# bench_dcmha_fused times beside the default build in the same process) must compile, and must leave every
# default kernel exactly as it is: a variant's benchmark line is read against the default measured in the
# same run, which is only the default if its machine code is the same. Compiles kernels/dcmha_fused.cu to
# a cubin both ways and compares them kernel by kernel (scripts/cubin_text_diff.py); prints ptxas' register
# and spill figures of the timing build's kernels.
#   check_timing_builds.sh NVCC OUT_DIR [ARCH]      (ARCH: the sm_ suffix, default 90a)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 2 ] || { echo "usage: check_timing_builds.sh NVCC OUT_DIR [ARCH]" >&2; exit 2; }
nvcc="$1" out="$2" arch="${3:-90a}"
mkdir -p "$out"
flags=(-DDCF_WITH_CUDA=1 -I"$root" -std=c++20 -O3 -DNDEBUG -arch="sm_$arch" -cubin --expt-relaxed-constexpr)
"$nvcc" "${flags[@]}" "$root/kernels/dcmha_fused.cu" -o "$out/default.cubin"
"$nvcc" "${flags[@]}" -DDCF_KERNEL_TIMING_BUILDS=1 -Xptxas -v "$root/kernels/dcmha_fused.cu" \
  -o "$out/timing.cubin" 2> "$out/timing-ptxas.log"
python3 - "$out/timing-ptxas.log" <<'PY'
import re, sys
name = None
for line in open(sys.argv[1]):
    m = re.search(r"Function properties for \S*?(fwd|bwd)_kernelI(\S*?)E+vNS", line)
    if m:  # template arguments of the mangled name: Li16E -> 16, Lb1E -> 1
        args = re.findall(r"L[ib](\d+)", m.group(2))
        name = m.group(1) + "<" + ",".join(args) + ">"
        continue
    if name and "spill stores" in line:
        spills = line.strip()
    elif name and "Used" in line:
        regs = re.search(r"Used (\d+) registers", line).group(1)
        print(f"{name:40s} {regs:>4s} registers, {spills}")
        name = None
PY
python3 "$root/scripts/cubin_text_diff.py" "$out/default.cubin" "$out/timing.cubin"
