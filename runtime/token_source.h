// Token sources for training: sample i of the global stream is a row of seq_len + 1 token ids. The
// sample's content depends only on (seed, i), so every layout and a resumed run read the same rows.
// TokenFileSource is the simple reader of raw token files (bytes, uint16 or int32 ids): it draws each
// sample's start offset from a counter-based RNG.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace dcf {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual void sample(uint64_t index, int32_t* out, int64_t len) const = 0;
  virtual int64_t max_token_id() const = 0;
};

// Uniform random ids in [0, vocab) from (seed, sample, position): for benchmarks without data.
class SyntheticSource : public TokenSource {
 public:
  SyntheticSource(uint64_t seed, int64_t vocab) : seed_(seed), vocab_(vocab) {}
  void sample(uint64_t index, int32_t* out, int64_t len) const override;
  int64_t max_token_id() const override { return vocab_ - 1; }

 private:
  uint64_t seed_;
  int64_t vocab_;
};

class TokenFileSource : public TokenSource {
 public:
  enum class Format { bytes, u16, i32 };
  TokenFileSource(const std::string& path, Format format, uint64_t seed, int64_t sample_len);
  ~TokenFileSource() override;
  void sample(uint64_t index, int32_t* out, int64_t len) const override;
  int64_t max_token_id() const override { return max_id_; }
  int64_t tokens() const { return n_; }

 private:
  std::string path_;
  Format format_;
  uint64_t seed_;
  const uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
  int64_t n_ = 0, max_id_ = 0;
  int32_t token(int64_t i) const;
};

}  // namespace dcf
