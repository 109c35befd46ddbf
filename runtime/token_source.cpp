// Memory-mapped raw token files.
#include "runtime/token_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kernels/error.h"
#include "kernels/rng.h"

namespace dcf {

TokenFileSource::TokenFileSource(const std::string& path, Format format, uint64_t seed, int64_t sample_len)
    : path_(path), format_(format), seed_(seed) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw InputError("data file " + path + ": cannot be opened");
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw InputError("data file " + path + ": cannot stat");
  }
  bytes_ = size_t(st.st_size);
  size_t tsize = format == Format::bytes ? 1 : format == Format::u16 ? 2 : 4;
  if (bytes_ % tsize != 0) {
    ::close(fd);
    throw InputError("data file " + path + ": size " + std::to_string(bytes_) + " is not a multiple of the token size " +
                     std::to_string(tsize));
  }
  n_ = int64_t(bytes_ / tsize);
  if (n_ < sample_len + 1) {
    ::close(fd);
    throw InputError("data file " + path + ": holds " + std::to_string(n_) + " tokens, fewer than one sample of " +
                     std::to_string(sample_len + 1));
  }
  void* p = mmap(nullptr, bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw InputError("data file " + path + ": mmap failed");
  data_ = static_cast<const uint8_t*>(p);
  for (int64_t i = 0; i < n_; ++i) {
    int32_t t = token(i);
    if (t < 0) throw InputError("data file " + path + ": negative token id at position " + std::to_string(i));
    max_id_ = std::max<int64_t>(max_id_, t);
  }
}

TokenFileSource::~TokenFileSource() {
  if (data_) munmap(const_cast<uint8_t*>(data_), bytes_);
}

int32_t TokenFileSource::token(int64_t i) const {
  switch (format_) {
    case Format::bytes: return data_[i];
    case Format::u16: {
      uint16_t v;
      std::memcpy(&v, data_ + 2 * i, 2);
      return v;
    }
    case Format::i32: {
      int32_t v;
      std::memcpy(&v, data_ + 4 * i, 4);
      return v;
    }
  }
  return 0;
}

void SyntheticSource::sample(uint64_t index, int32_t* out, int64_t len) const {
  for (int64_t j = 0; j < len; ++j)
    out[j] = int32_t(philox_u64(seed_, index, uint64_t(j)) % uint64_t(vocab_));
}

void TokenFileSource::sample(uint64_t index, int32_t* out, int64_t len) const {
  uint64_t start = philox_u64(seed_, 0x5a4d504c45ull, index) % uint64_t(n_ - len + 1);
  for (int64_t j = 0; j < len; ++j) out[j] = token(int64_t(start) + j);
}

}  // namespace dcf
