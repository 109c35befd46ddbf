// Byte-level BPE tokenizer that gives the ids of Hugging Face's `tokenizers` library for
// tokenizer.json files of the GPT-2 / GPT-NeoX-20B layout (BPE model with vocab + merges, ByteLevel
// pre-tokenizer with the GPT-2 regex, ByteLevel decoder, optional NFC normalizer, added tokens), and
// for GPT-2's original encoder.json + vocab.bpe.
//
// Encoding follows the library step by step:
//   1. invalid UTF-8 is replaced by U+FFFD per maximal subpart (what any UTF-8 -> string conversion
//      in front of the library does: Python's errors='replace', Node's Buffer.toString);
//   2. added tokens with normalized=false are split off the raw text (leftmost-longest);
//   3. each remaining piece is normalized (NFC when the file asks for it), then added tokens with
//      normalized=true are split off;
//   4. each remaining piece is split by the GPT-2 regex
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (hand-written here; Unicode 16.0 classes, NFC with Unicode 9.0 data: the library's own
//      versions), and every part is BPE-merged over its bytes
//      (lowest merge rank first, leftmost on ties).
// The Tokenizer is immutable after loading and safe to share between threads; each thread keeps its
// own word cache.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dcf::data {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

class Tokenizer {
 public:
  // A Hugging Face tokenizer.json; or a directory holding tokenizer.json, or encoder.json + vocab.bpe.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_tokenizer_json(const std::string& path);
  // GPT-2's files. `<|endoftext|>` is registered as a special added token (as in Hugging Face's gpt2
  // tokenizer.json), so the text "<|endoftext|>" encodes to the EOD id.
  static Tokenizer from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Appends the ids of `text` (any bytes; see the header comment for invalid UTF-8) to `out`.
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // encode(text) followed by the end-of-document id.
  void encode_document(std::string_view text, std::vector<int32_t>& out) const;

  // Bytes of the ids: the ByteLevel decoder's mapping (a token with a character outside the byte
  // alphabet, e.g. an added token, contributes its raw UTF-8). Unlike the library, which applies a
  // lossy UTF-8 conversion, the bytes are returned as they are.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The end-of-document id: `<|endoftext|>` (0 for GPT-NeoX-20B, 50256 for GPT-2).
  int32_t eod_id() const;
  void set_eod_id(int32_t id);
  std::optional<int32_t> token_to_id(std::string_view token) const;  // added tokens, then vocab
  std::optional<std::string> id_to_token(int32_t id) const;
  // Number of ids in use: 1 + the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const;
  const std::vector<AddedToken>& added_tokens() const;
  // Notes from loading (e.g. an added token whose id in the file differs from the one the library
  // assigns); empty for a clean file.
  const std::vector<std::string>& warnings() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

namespace detail {
// The pre-tokenizer split alone (for tests): pieces of valid UTF-8 text, in order, covering it.
void gpt2_pre_tokenize(std::string_view valid_utf8, std::vector<std::string_view>& pieces);
}  // namespace detail

}  // namespace dcf::data
