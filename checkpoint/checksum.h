// XXH64 (the xxHash 64-bit hash, seed 0 by default): the checksum of every tensor in a checkpoint.
// Streaming, so a dataset can be hashed while it is written or read in parts; about 10 GB/s on one core.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dcf::ckpt {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t bytes);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_, total_ = 0;
  unsigned char buf_[32];
  size_t buffered_ = 0;
};

uint64_t xxh64(const void* data, size_t bytes, uint64_t seed = 0);

}  // namespace dcf::ckpt
