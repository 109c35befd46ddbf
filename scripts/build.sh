#!/usr/bin/env bash
# Configures and builds dcformer into build/ (Release, Ninja, ccache when present). Extra arguments go
# to CMake, e.g. -DDCF_CUDA=OFF.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$root/build" -j"$(nproc)"
