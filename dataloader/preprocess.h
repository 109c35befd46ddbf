// `dcformer preprocess`: tokenizes the `text` field of jsonl / jsonl.zst files (the Pile's layout)
// into one Megatron .bin/.idx dataset, one sequence per document with the end-of-document id
// appended. One reader thread streams the inputs in the given order and cuts them into chunks of
// lines; N workers tokenize chunks; the writer appends chunk results in chunk order, so the output
// is byte-identical whatever N is. Malformed lines are counted and skipped (the first few are
// reported) or, with strict, stop the run. Documents whose text is empty are skipped and counted.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace dcf::data {

struct PreprocessOptions {
  std::vector<std::string> inputs;
  std::string tokenizer;      // tokenizer.json, or a directory with encoder.json + vocab.bpe
  std::string output_prefix;  // writes <prefix>.bin and <prefix>.idx
  int workers = 0;            // 0: one per hardware thread
  bool strict = false;
  std::string json_key = "text";
  bool append_eod = true;
  double progress_interval_s = 2.0;  // <= 0: no progress lines
};

struct PreprocessSummary {
  uint64_t documents = 0;        // written
  uint64_t tokens = 0;
  uint64_t lines = 0;            // read
  uint64_t malformed_lines = 0;  // skipped
  uint64_t empty_documents = 0;  // skipped
  uint64_t input_bytes = 0;      // as stored (compressed for .zst)
  uint64_t text_bytes = 0;       // bytes of text tokenized
  double seconds = 0;
  std::string dtype;
};

// Throws dcf::InputError (exit status 2) for unreadable inputs, a bad tokenizer, or a malformed line
// under strict. Progress and warnings go to `log` (stderr in the CLI).
PreprocessSummary preprocess(const PreprocessOptions& options, std::ostream& log);

}  // namespace dcf::data
