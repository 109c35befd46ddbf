#!/usr/bin/env bash
# Quickstart: install dependencies, build, fetch the built-in corpus, and train the tiny DCFormer++ on
# this machine's CPU with 4 MPI ranks (tensor parallel 2 x data parallel 2). Extra arguments are
# passed to `dcformer train` (e.g. --set run.steps=50).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install_deps.sh"
bash "$root/scripts/build.sh"
bash "$root/scripts/setup_default_data.sh"
cd "$root"
ranks="${DCF_RANKS:-4}"
mpirun --allow-run-as-root --oversubscribe -np "$ranks" build/dcformer train \
  --config configs/tiny_cpu.textproto --set parallel.tp=2 "$@"
echo "metrics: $root/runs/tiny_cpu/metrics.jsonl"
