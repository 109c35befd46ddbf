// Megatron .bin/.idx writer and memory-mapped reader with full validation at open.
#include "dataloader/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "kernels/error.h"

namespace dcf::data {
namespace {

[[noreturn]] void fail(const std::string& file, const std::string& problem) {
  throw InputError(file + ": " + problem);
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Maps a whole file read-only; returns nullptr for an empty file.
void* map_file(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  *size = static_cast<size_t>(st.st_size);
  void* p = nullptr;
  if (*size > 0) {
    p = ::mmap(nullptr, *size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail(path, std::string("cannot mmap: ") + std::strerror(errno));
    }
  }
  ::close(fd);
  return p;
}

}  // namespace

size_t dtype_size(TokenDtype d) {
  switch (d) {
    case TokenDtype::kU8: case TokenDtype::kI8: return 1;
    case TokenDtype::kI16: case TokenDtype::kU16: return 2;
    case TokenDtype::kI32: return 4;
    case TokenDtype::kI64: return 8;
  }
  return 0;
}

const char* dtype_name(TokenDtype d) {
  switch (d) {
    case TokenDtype::kU8: return "uint8";
    case TokenDtype::kI8: return "int8";
    case TokenDtype::kI16: return "int16";
    case TokenDtype::kU16: return "uint16";
    case TokenDtype::kI32: return "int32";
    case TokenDtype::kI64: return "int64";
  }
  return "?";
}

TokenDtype dtype_for_vocab(int64_t vocab_size) { return vocab_size < 65500 ? TokenDtype::kU16 : TokenDtype::kI32; }

// ---- writer ------------------------------------------------------------------------------------

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDtype dtype)
    : prefix_(std::move(prefix)), dtype_(dtype) {
  if (dtype_ != TokenDtype::kU16 && dtype_ != TokenDtype::kI32)
    fail(prefix_, "the writer stores tokens as uint16 or int32 only");
  std::filesystem::path parent = std::filesystem::path(prefix_).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) fail(parent.string(), "cannot create output directory: " + ec.message());
  }
  std::string tmp = prefix_ + ".bin.tmp";
  bin_ = std::fopen(tmp.c_str(), "wb");
  if (!bin_) fail(tmp, std::string("cannot create: ") + std::strerror(errno));
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (bin_) std::fclose(bin_);
  if (!finished_) {
    std::error_code ec;
    std::filesystem::remove(prefix_ + ".bin.tmp", ec);
    std::filesystem::remove(prefix_ + ".idx.tmp", ec);
  }
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> tokens) {
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    fail(prefix_, "document of " + std::to_string(tokens.size()) + " tokens is longer than int32 allows");
  size_t es = dtype_size(dtype_);
  buffer_.resize(tokens.size() * es);
  if (dtype_ == TokenDtype::kU16) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] > 0xFFFF) fail(prefix_, "token id " + std::to_string(tokens[i]) + " does not fit uint16");
      uint16_t v = static_cast<uint16_t>(tokens[i]);
      std::memcpy(buffer_.data() + 2 * i, &v, 2);
    }
  } else {
    std::memcpy(buffer_.data(), tokens.data(), buffer_.size());
  }
  if (!buffer_.empty() && std::fwrite(buffer_.data(), 1, buffer_.size(), bin_) != buffer_.size())
    fail(prefix_ + ".bin.tmp", std::string("write failed: ") + std::strerror(errno));
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  tokens_ += tokens.size();
}

void IndexedDatasetWriter::finish() {
  if (finished_) return;
  if (std::fflush(bin_) != 0 || ::fsync(::fileno(bin_)) != 0 || std::fclose(bin_) != 0) {
    bin_ = nullptr;
    fail(prefix_ + ".bin.tmp", std::string("write failed: ") + std::strerror(errno));
  }
  bin_ = nullptr;
  std::string idx_tmp = prefix_ + ".idx.tmp";
  std::FILE* f = std::fopen(idx_tmp.c_str(), "wb");
  if (!f) fail(idx_tmp, std::string("cannot create: ") + std::strerror(errno));
  const uint64_t n = lengths_.size(), d = n + 1;
  const uint8_t code = static_cast<uint8_t>(dtype_);
  std::vector<char> out;
  out.reserve(kIdxHeaderBytes + 12 * n + 8 * d);
  auto put = [&](const void* p, size_t k) { out.insert(out.end(), static_cast<const char*>(p), static_cast<const char*>(p) + k); };
  put(kIdxMagic, 9);
  put(&kIdxVersion, 8);
  put(&code, 1);
  put(&n, 8);
  put(&d, 8);
  put(lengths_.data(), 4 * n);
  int64_t off = 0;
  const int64_t es = static_cast<int64_t>(dtype_size(dtype_));
  for (int32_t len : lengths_) {
    put(&off, 8);
    off += len * es;
  }
  for (int64_t j = 0; j <= static_cast<int64_t>(n); ++j) put(&j, 8);
  bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size() && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) fail(idx_tmp, std::string("write failed: ") + std::strerror(errno));
  std::filesystem::rename(prefix_ + ".bin.tmp", prefix_ + ".bin");
  std::filesystem::rename(idx_tmp, prefix_ + ".idx");
  finished_ = true;
}

// ---- reader ------------------------------------------------------------------------------------

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx = prefix + ".idx", bin = prefix + ".bin";
  idx_map_ = map_file(idx, &idx_size_);
  try {
    const auto* p = static_cast<const uint8_t*>(idx_map_);
    if (idx_size_ == 0) fail(idx, "empty file (not a Megatron index)");
    if (idx_size_ < 9 || std::memcmp(p, kIdxMagic, 9) != 0) fail(idx, "wrong magic (not a Megatron MMIDIDX index)");
    if (idx_size_ < kIdxHeaderBytes)
      fail(idx, "truncated: " + std::to_string(idx_size_) + " bytes, shorter than the 34-byte header");
    uint64_t version = load<uint64_t>(p + 9);
    if (version != kIdxVersion) fail(idx, "unsupported version " + std::to_string(version) + " (expected 1)");
    uint8_t code = p[17];
    switch (code) {
      case 1: case 2: case 3: case 4: case 5: case 8: dtype_ = static_cast<TokenDtype>(code); break;
      case 6: case 7: fail(idx, "dtype code " + std::to_string(code) + " is a floating-point type, not tokens");
      default: fail(idx, "unknown dtype code " + std::to_string(code));
    }
    n_ = load<uint64_t>(p + 18);
    d_ = load<uint64_t>(p + 26);
    const uint64_t limit = idx_size_;  // no count can exceed the file size
    if (n_ > limit || d_ > limit)
      fail(idx, "truncated: header claims " + std::to_string(n_) + " sequences and " + std::to_string(d_) +
                    " document entries, file has " + std::to_string(idx_size_) + " bytes");
    const uint64_t need = kIdxHeaderBytes + 12 * n_ + 8 * d_;
    if (idx_size_ < need)
      fail(idx, "truncated: " + std::to_string(n_) + " sequences and " + std::to_string(d_) + " document entries need " +
                    std::to_string(need) + " bytes, file has " + std::to_string(idx_size_));
    if (idx_size_ > need)
      fail(idx, std::to_string(idx_size_ - need) + " unexpected bytes after the document index (" +
                    std::to_string(need) + " expected)");
    if (n_ == 0) fail(idx, "empty dataset (0 sequences)");
    lengths_ = p + kIdxHeaderBytes;
    offsets_ = lengths_ + 4 * n_;
    doc_idx_ = offsets_ + 8 * n_;
    if (d_ < 2) fail(idx, "document index has " + std::to_string(d_) + " entries, needs at least 2");
    int64_t prev = -1;
    for (uint64_t j = 0; j < d_; ++j) {
      int64_t v = load<int64_t>(doc_idx_ + 8 * j);
      if ((j == 0 && v != 0) || v < prev || v > static_cast<int64_t>(n_))
        fail(idx, "document index entry " + std::to_string(j) + " = " + std::to_string(v) +
                      " is out of order or out of range [0, " + std::to_string(n_) + "]");
      prev = v;
    }
    if (prev != static_cast<int64_t>(n_))
      fail(idx, "document index ends at sequence " + std::to_string(prev) + ", not at " + std::to_string(n_));

    bin_map_ = map_file(bin, &bin_size_);
    bin_ = static_cast<const uint8_t*>(bin_map_);
    const uint64_t es = dtype_size(dtype_);
    int64_t expect_off = 0;
    bool contiguous = true;
    for (uint64_t i = 0; i < n_; ++i) {
      int32_t len = load<int32_t>(lengths_ + 4 * i);
      int64_t off = load<int64_t>(offsets_ + 8 * i);
      if (len < 0) fail(idx, "sequence " + std::to_string(i) + " has negative length " + std::to_string(len));
      if (off < 0 || off % static_cast<int64_t>(es) != 0)
        fail(idx, "sequence " + std::to_string(i) + " has invalid byte offset " + std::to_string(off));
      contiguous = contiguous && off == expect_off;
      expect_off = off + len * static_cast<int64_t>(es);
      if (static_cast<uint64_t>(off) > bin_size_ || static_cast<uint64_t>(expect_off) > bin_size_) {
        if (contiguous && i + 1 == n_)
          fail(bin, "truncated: the index needs " + std::to_string(expect_off) + " bytes, file has " +
                        std::to_string(bin_size_));
        fail(idx, "sequence " + std::to_string(i) + " at byte offset " + std::to_string(off) + " with " +
                      std::to_string(len) + " tokens ends past the end of " + bin + " (" + std::to_string(bin_size_) +
                      " bytes)");
      }
      total_tokens_ += static_cast<uint64_t>(len);
    }
    if (total_tokens_ == 0) fail(idx, "empty dataset (all " + std::to_string(n_) + " sequences have 0 tokens)");
  } catch (...) {
    if (bin_map_) ::munmap(bin_map_, bin_size_);
    if (idx_map_) ::munmap(idx_map_, idx_size_);
    throw;
  }
}

IndexedDataset::IndexedDataset(IndexedDataset&& o) noexcept
    : prefix_(std::move(o.prefix_)), dtype_(o.dtype_), n_(o.n_), d_(o.d_), total_tokens_(o.total_tokens_),
      lengths_(o.lengths_), offsets_(o.offsets_), doc_idx_(o.doc_idx_), bin_(o.bin_), idx_map_(o.idx_map_),
      idx_size_(o.idx_size_), bin_map_(o.bin_map_), bin_size_(o.bin_size_) {
  o.idx_map_ = nullptr;
  o.bin_map_ = nullptr;
}

IndexedDataset::~IndexedDataset() {
  if (bin_map_) ::munmap(bin_map_, bin_size_);
  if (idx_map_) ::munmap(idx_map_, idx_size_);
}

int32_t IndexedDataset::sequence_length(uint64_t i) const { return load<int32_t>(lengths_ + 4 * i); }
int64_t IndexedDataset::document_start(uint64_t j) const { return load<int64_t>(doc_idx_ + 8 * j); }

void IndexedDataset::read(uint64_t i, uint64_t offset, uint64_t count, int32_t* out) const {
  const uint64_t es = dtype_size(dtype_);
  const uint8_t* src = bin_ + load<int64_t>(offsets_ + 8 * i) + offset * es;
  switch (dtype_) {
    case TokenDtype::kU16: {
      for (uint64_t k = 0; k < count; ++k) out[k] = load<uint16_t>(src + 2 * k);
      break;
    }
    case TokenDtype::kI32: std::memcpy(out, src, count * 4); break;
    case TokenDtype::kU8: for (uint64_t k = 0; k < count; ++k) out[k] = src[k]; break;
    case TokenDtype::kI8: for (uint64_t k = 0; k < count; ++k) out[k] = static_cast<int8_t>(src[k]); break;
    case TokenDtype::kI16: for (uint64_t k = 0; k < count; ++k) out[k] = load<int16_t>(src + 2 * k); break;
    case TokenDtype::kI64: for (uint64_t k = 0; k < count; ++k) out[k] = static_cast<int32_t>(load<int64_t>(src + 8 * k)); break;
  }
}

}  // namespace dcf::data
