// Megatron indexed datasets (.bin/.idx), the format of EleutherAI's pre-tokenized Pythia Pile.
//   .idx: magic "MMIDIDX\0\0", u64 version 1, u8 dtype code, u64 sequence count N, u64 document
//         count D (documents + 1), i32 lengths[N], i64 byte offsets[N], i64 document index[D];
//   .bin: the tokens of all sequences, no header.
// Dtype codes (Megatron-Core): 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16 (GPT-NeoX swaps
// 6 and 7; floats are no token type and are refused either way).
// The reader maps both files and checks every field once at open, so a bad file fails with one line
// naming the file and the problem (dcf::InputError, exit status 2) instead of a crash later.
#pragma once
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace dcf::data {

enum class TokenDtype : uint8_t { kU8 = 1, kI8 = 2, kI16 = 3, kI32 = 4, kI64 = 5, kU16 = 8 };
size_t dtype_size(TokenDtype d);
const char* dtype_name(TokenDtype d);
// Megatron's rule: uint16 when the vocabulary has fewer than 65,500 ids, else int32.
TokenDtype dtype_for_vocab(int64_t vocab_size);

inline constexpr char kIdxMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t kIdxVersion = 1;
inline constexpr size_t kIdxHeaderBytes = 34;

// Writes prefix.bin and prefix.idx: one sequence per document. Files are written under temporary
// names and renamed by finish(), so a crash leaves no half-written dataset behind.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::string prefix, TokenDtype dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  void add_document(std::span<const int32_t> tokens);
  void finish();
  uint64_t num_documents() const { return lengths_.size(); }
  uint64_t num_tokens() const { return tokens_; }

 private:
  std::string prefix_;
  TokenDtype dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<int32_t> lengths_;
  std::vector<char> buffer_;
  uint64_t tokens_ = 0;
  bool finished_ = false;
};

// A read-only memory map of one .bin/.idx pair.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(IndexedDataset&& o) noexcept;
  IndexedDataset& operator=(IndexedDataset&&) = delete;
  IndexedDataset(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  TokenDtype dtype() const { return dtype_; }
  uint64_t num_sequences() const { return n_; }
  uint64_t num_documents() const { return d_ == 0 ? 0 : d_ - 1; }
  int32_t sequence_length(uint64_t i) const;
  uint64_t total_tokens() const { return total_tokens_; }
  // Entry j of the document index (sequence id where document j starts; entry num_documents() = N).
  int64_t document_start(uint64_t j) const;
  // Copies tokens [offset, offset + count) of sequence i, widened to int32.
  void read(uint64_t i, uint64_t offset, uint64_t count, int32_t* out) const;

 private:
  std::string prefix_;
  TokenDtype dtype_{};
  uint64_t n_ = 0, d_ = 0, total_tokens_ = 0;
  // Arrays inside the .idx map; not aligned (they start at byte 34), so read with memcpy.
  const uint8_t* lengths_ = nullptr;
  const uint8_t* offsets_ = nullptr;
  const uint8_t* doc_idx_ = nullptr;
  const uint8_t* bin_ = nullptr;
  void* idx_map_ = nullptr;
  size_t idx_size_ = 0;
  void* bin_map_ = nullptr;
  size_t bin_size_ = 0;
};

}  // namespace dcf::data
