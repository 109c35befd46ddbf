// Helpers shared by the GPU tests (gtest): the run's random seed (from the clock, printed once;
// DCF_TEST_SEED=<n> repeats a run), host bf16 rounding, the current GPU, host copies of tensor values.
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/cuda_runtime.h"
#include "kernels/tensor.h"

namespace dcf::gpu_test {

// The seed of this process, printed with `tag` the first time it is asked for.
inline uint64_t run_seed(const char* tag) {
  static const uint64_t seed = [tag] {
    uint64_t s;
    if (const char* e = std::getenv("DCF_TEST_SEED"))
      s = std::strtoull(e, nullptr, 10);
    else
      s = static_cast<uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
    std::cout << "[" << tag << "] seed = " << s << " (DCF_TEST_SEED=" << s << " repeats this run)" << std::endl;
    return s;
  }();
  return seed;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline Device gpu() { return Device::cuda(cuda::current_device()); }

// Host values of a tensor on any device (f32, f64, bf16, i32).
inline std::vector<double> values(const Tensor& t0) {
  Tensor t = t0.device().is_cpu() ? t0 : t0.to(Device::cpu());
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case DType::f32: v[i] = t.data<float>()[i]; break;
      case DType::f64: v[i] = t.data<double>()[i]; break;
      case DType::bf16: v[i] = bf16_to_f32(t.data<uint16_t>()[i]); break;
      case DType::i32: v[i] = t.data<int32_t>()[i]; break;
      default: ADD_FAILURE() << "values(): dtype " << dtype_name(t.dtype());
    }
  }
  return v;
}

}  // namespace dcf::gpu_test
