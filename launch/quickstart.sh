#!/usr/bin/env bash
# Quickstart: install dependencies, build, make the built-in corpus (State of the Union speeches,
# GPT-2 BPE), and train the tiny DCFormer++ on this machine's CPU with 4 MPI ranks (tensor parallel 2
# x data parallel 2). Extra arguments go to `dcformer train` (e.g. --set run.steps=50).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install_deps.sh"
bash "$root/scripts/build.sh"
# The built-in corpus: State of the Union speeches -> Pile-format jsonl.zst -> GPT-2 BPE .bin/.idx
[ -s "$root/data/sotu/sotu_gpt2.bin" ] || bash "$root/scripts/make_default_corpus.sh" "$root/build/dcformer" "$root/data/sotu"
cd "$root"
ranks="${DCF_RANKS:-4}"
mpirun --allow-run-as-root --oversubscribe -np "$ranks" build/dcformer train \
  --config configs/tiny_sotu.textproto --set parallel.tp=2 "$@"
echo "metrics: $root/runs/tiny_sotu/metrics.jsonl"
