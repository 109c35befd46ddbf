// Shared by the GPU benchmark programs: the GPU check at start-up, deterministic random device tensors,
// and event timing that reports the median of several repetitions after warm-up runs (plans,
// workspaces, caches).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda_ops.h"
#include "kernels/cuda_runtime.h"

namespace dcf::bench {

// Initialises the GPU; false (after printing why) where none is usable, and the program then has
// nothing to time.
inline bool gpu_ready() {
  std::string why;
  if (!cuda::cuda_available(&why)) {
    std::printf("no usable GPU: %s\n", why.c_str());
    return false;
  }
  cuda::init();
  return true;
}

// Uniform values in [-scale, scale) from an xorshift stream of `seed`, on the current GPU in dtype dt.
inline Tensor random_gpu(const Shape& s, DType dt, double scale, uint64_t seed) {
  Tensor h = Tensor::empty(s, DType::f32);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < h.numel(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    h.data<float>()[i] = float(scale * (double(x >> 11) / double(1ull << 53) * 2.0 - 1.0));
  }
  Tensor g = h.to(Device::cuda(cuda::current_device()));
  if (dt == DType::f32) return g;
  Tensor o = Tensor::empty(s, dt, g.device());
  cuda::cast(g, o);
  return o;
}

// Median milliseconds of fn(r) for r = 0..reps-1 on the current stream, after fn(0..warmups-1).
inline double time_ms(const std::function<void(int)>& fn, int reps, int warmups) {
  for (int w = 0; w < warmups; ++w) fn(w);
  cudaStream_t s = cuda::current_stream();
  std::vector<double> t;
  cudaEvent_t a, b;
  DCF_CUDA_CHECK(cudaEventCreate(&a));
  DCF_CUDA_CHECK(cudaEventCreate(&b));
  for (int r = 0; r < reps; ++r) {
    DCF_CUDA_CHECK(cudaEventRecord(a, s));
    fn(r);
    DCF_CUDA_CHECK(cudaEventRecord(b, s));
    DCF_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    DCF_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

inline double time_ms(const std::function<void()>& fn, int reps, int warmups) {
  return time_ms([&](int) { fn(); }, reps, warmups);
}

}  // namespace dcf::bench
