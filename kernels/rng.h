// Counter-based random numbers (Philox4x32-10). A value depends only on (seed, stream, counter), so a
// parameter element keyed by (seed, parameter name, global element index) is the same on every
// parallel layout: this is what makes layout-invariant initialisation possible.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace dcf {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

uint64_t fnv1a64(std::string_view s);

// One standard normal for (seed, stream, index), via Box-Muller on two 32-bit uniforms.
double philox_normal(uint64_t seed, uint64_t stream, uint64_t index);
// One uniform in [0, 1) for (seed, stream, index).
double philox_uniform(uint64_t seed, uint64_t stream, uint64_t index);
// A 64-bit random integer for (seed, stream, index).
uint64_t philox_u64(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace dcf
