#!/usr/bin/env bash
# Installs every dependency of dcformer from Debian packages (and the npm assets used by the data
# pipeline's tests and the built-in corpus). Used by the README's commands and by CI.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build ccache git ca-certificates pkg-config \
  openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools protobuf-compiler libprotobuf-dev prometheus-cpp-dev \
  libgtest-dev libgmock-dev libbenchmark-dev libzstd-dev zstd nlohmann-json3-dev libopenblas-dev libcli11-dev \
  python3 python3-torch python3-numpy python3-h5py prometheus curl slurm-wlm munge >/dev/null
# Node.js and npm (test oracles, sample data): Debian's, unless the machine already has them.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -x "$here/fetch_npm_assets.sh" ]; then
  bash "$here/fetch_npm_assets.sh"
fi
echo "dependencies installed"
