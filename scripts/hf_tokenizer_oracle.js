#!/usr/bin/env node
// Oracle for the C++ tokenizer: runs Hugging Face's tokenizers library (npm @anush008/tokenizers,
// Node bindings of the Rust crate) over documents in a small binary format.
//   encode <tokenizer.json> <docs.bin> <ids.bin>   ids of every document
//   decode <tokenizer.json> <ids.bin> <docs.bin>   text of every id list
//   bench  <tokenizer.json> <docs.bin> [repeats]   single-threaded tokens/s (prints one JSON line)
//   pretokenize - <docs.bin> <ids.bin>             byte lengths of the ByteLevel (GPT-2 regex) pieces
//   nfc - <docs.bin> <docs.bin>                    the library's NFC normalizer applied to each document
// docs.bin: u32 count, then per document u32 byte length + bytes (UTF-8; invalid bytes are read the
// way Buffer.toString does: U+FFFD per maximal subpart). ids.bin: u32 count, then per document u32 n
// + n u32 ids. All little-endian. Packages come from $DCF_NPM_DIR (default <repo>/third_party_npm).
'use strict';
const fs = require('fs');
const path = require('path');

const npmDir = process.env.DCF_NPM_DIR || path.join(__dirname, '..', 'third_party_npm');
let tokenizers;
try {
  tokenizers = require(path.join(npmDir, 'node_modules', '@anush008', 'tokenizers'));
} catch (e) {
  console.error(`hf_tokenizer_oracle: cannot load @anush008/tokenizers from ${npmDir} ` +
                `(run scripts/fetch_npm_assets.sh): ${e.message}`);
  process.exit(3);
}

function readDocs(file) {
  const b = fs.readFileSync(file);
  const n = b.readUInt32LE(0);
  const docs = [];
  let off = 4;
  for (let i = 0; i < n; i++) {
    const len = b.readUInt32LE(off);
    off += 4;
    docs.push(b.toString('utf8', off, off + len));
    off += len;
  }
  return docs;
}

function readIds(file) {
  const b = fs.readFileSync(file);
  const n = b.readUInt32LE(0);
  const out = [];
  let off = 4;
  for (let i = 0; i < n; i++) {
    const k = b.readUInt32LE(off);
    off += 4;
    const ids = [];
    for (let j = 0; j < k; j++, off += 4) ids.push(b.readUInt32LE(off));
    out.push(ids);
  }
  return out;
}

function writeIds(file, all) {
  let total = 4;
  for (const ids of all) total += 4 + 4 * ids.length;
  const b = Buffer.alloc(total);
  let off = b.writeUInt32LE(all.length, 0);
  for (const ids of all) {
    off = b.writeUInt32LE(ids.length, off);
    for (const id of ids) off = b.writeUInt32LE(id, off);
  }
  fs.writeFileSync(file, b);
}

function writeDocs(file, docs) {
  const bufs = docs.map((d) => Buffer.from(d, 'utf8'));
  let total = 4;
  for (const d of bufs) total += 4 + d.length;
  const b = Buffer.alloc(total);
  let off = b.writeUInt32LE(bufs.length, 0);
  for (const d of bufs) {
    off = b.writeUInt32LE(d.length, off);
    off += d.copy(b, off);
  }
  fs.writeFileSync(file, b);
}

async function main() {
  const [cmd, tokFile, a, b] = process.argv.slice(2);
  if (cmd === 'pretokenize') {
    const pre = tokenizers.byteLevelPreTokenizer(false, true);
    // Each piece is in the byte alphabet: one character per byte of the original text.
    writeIds(b, readDocs(a).map((d) => pre.preTokenizeString(d).map(([piece]) => [...piece].length)));
    return;
  }
  if (cmd === 'nfc') {
    const nfc = tokenizers.nfcNormalizer();
    writeDocs(b, readDocs(a).map((d) => nfc.normalizeString(d)));
    return;
  }
  const tok = tokenizers.Tokenizer.fromFile(tokFile);
  if (cmd === 'encode') {
    const docs = readDocs(a);
    const out = [];
    const chunk = 256;
    for (let i = 0; i < docs.length; i += chunk) {
      const encs = await tok.encodeBatch(docs.slice(i, i + chunk));
      for (const e of encs) out.push(e.getIds());
    }
    writeIds(b, out);
  } else if (cmd === 'decode') {
    const all = readIds(a);
    const out = [];
    for (const ids of all) out.push(await tok.decode(ids, false));
    writeDocs(b, out);
  } else if (cmd === 'bench') {
    const docs = readDocs(a);
    const repeats = Number(b || 3);
    let bytes = 0;
    for (const d of docs) bytes += Buffer.byteLength(d, 'utf8');
    let best = Infinity, tokens = 0;
    for (let r = 0; r < repeats; r++) {
      const t0 = process.hrtime.bigint();
      let n = 0;
      for (const d of docs) n += (await tok.encode(d)).getIds().length;
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      best = Math.min(best, s);
      tokens = n;
    }
    console.log(JSON.stringify({ library: 'hf-tokenizers(node)', docs: docs.length, bytes, tokens,
                                 seconds: best, tokens_per_s: tokens / best, mb_per_s: bytes / best / 1e6 }));
  } else {
    console.error('usage: hf_tokenizer_oracle.js encode|decode|bench <tokenizer.json> <in> [out|repeats]');
    process.exit(2);
  }
}

main().catch((e) => {
  console.error(`hf_tokenizer_oracle: ${e.stack || e}`);
  process.exit(1);
});
