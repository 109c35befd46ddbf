// Philox4x32-10 (Salmon et al., SC'11) and helpers.
#include "kernels/rng.h"

#include <cmath>

namespace dcf {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(M0) * c[0];
    uint64_t p1 = uint64_t(M1) * c[2];
    uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += W0;
    k[1] += W1;
  }
  return c;
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

static std::array<uint32_t, 4> draw(uint64_t seed, uint64_t stream, uint64_t index) {
  // key = seed; counter = (index, stream)
  return philox4x32({uint32_t(index), uint32_t(index >> 32), uint32_t(stream), uint32_t(stream >> 32)},
                    {uint32_t(seed), uint32_t(seed >> 32)});
}

double philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = draw(seed, stream, index);
  // u1 in (0, 1], u2 in [0, 1), 53-bit resolution from two words each.
  uint64_t a = (uint64_t(r[0]) << 21) ^ (r[1] >> 11);
  uint64_t b = (uint64_t(r[2]) << 21) ^ (r[3] >> 11);
  double u1 = (double(a & ((1ull << 53) - 1)) + 1.0) / 9007199254740992.0;
  double u2 = double(b & ((1ull << 53) - 1)) / 9007199254740992.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

double philox_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return double(philox_u64(seed, stream, index) >> 11) / 9007199254740992.0;
}

uint64_t philox_u64(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = draw(seed, stream, index);
  return (uint64_t(r[0]) << 32) | r[1];
}

}  // namespace dcf
