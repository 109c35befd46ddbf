// Streaming line reader for jsonl and jsonl.zst (zstd detected by its magic number; multi-frame;
// window log up to 31 as the Pile's --long=31 shards need), and a strict JSON scanner that pulls
// one top-level string field (the Pile's "text") out of a line without building a document tree.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dcf::data {

class LineReader {
 public:
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Next line without its '\n' (and '\r'); false at the end. A last line without '\n' counts.
  // The view stays valid until the next call.
  bool next(std::string_view* line);
  uint64_t line_number() const { return line_no_; }     // 1-based number of the last line returned
  uint64_t file_bytes_read() const { return file_read_; }  // bytes consumed from the file
  uint64_t file_size() const { return file_size_; }
  bool compressed() const { return zstd_ != nullptr; }

 private:
  bool fill();  // appends decoded bytes to buf_; false at end of input

  std::string path_;
  std::FILE* f_ = nullptr;
  void* zstd_ = nullptr;  // ZSTD_DCtx*
  std::vector<char> in_;
  size_t in_pos_ = 0, in_len_ = 0;
  size_t last_ret_ = 0;   // last ZSTD_decompressStream hint: 0 when a frame ended cleanly
  bool eof_ = false;
  bool output_full_ = false;
  std::vector<char> buf_;  // decoded bytes: [0, len_) valid
  size_t len_ = 0;
  size_t pos_ = 0;        // start of the unread part of buf_
  uint64_t line_no_ = 0, file_read_ = 0, file_size_ = 0;
};

enum class JsonFieldStatus { kOk, kMalformed, kMissing, kNotString };

// Parses `line` as one JSON object (strictly: RFC 8259) and decodes the top-level string field `key`
// into *out (the last one when repeated). Invalid UTF-8 inside strings is passed through; a lone
// UTF-16 surrogate escape becomes U+FFFD. On kMalformed, *error says what and where.
JsonFieldStatus json_string_field(std::string_view line, std::string_view key, std::string* out, std::string* error);

}  // namespace dcf::data
