// Timing of the GPU ops that dominate a training step (not a test): bf16 GEMM throughput and the
// v1 DCMHA core (forward, backward) at the 405M shape, with CUDA events (warm-up, then the median
// of several repeats). Prints one table. Usage: bench_gpu_ops [B] [T] [chunk]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda_ops.h"
#include "kernels/cuda_runtime.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_bench_util.h"

using namespace dcf;
using bench::random_gpu;

// Median of 7 timed runs after one warm-up unless given.
double time_ms(const std::function<void()>& fn, int reps = 7) { return bench::time_ms(fn, reps, 1); }


int main(int argc, char** argv) {
  try {
    if (!bench::gpu_ready()) return 0;
    const int64_t B = argc > 1 ? std::atoll(argv[1]) : 8, T = argc > 2 ? std::atoll(argv[2]) : 2048,
                  chunk = argc > 3 ? std::atoll(argv[3]) : 128;
    std::printf("%-44s %10s %12s\n", "op", "ms", "TFLOP/s");
    for (int64_t n : {4096, 8192}) {
      Tensor a = random_gpu({n, n}, DType::bf16, 1, 1), b = random_gpu({n, n}, DType::bf16, 1, 2),
             c = Tensor::empty({n, n}, DType::bf16, a.device());
      double ms = time_ms([&] { matmul(a, false, b, true, c); });
      std::printf("gemm bf16 %-34s %10.3f %12.1f\n", (std::to_string(n) + "^3").c_str(), ms, 2.0 * n * n * n / ms / 1e9);
    }
    {
      const int64_t M = B * T, K = 1024, N = 3072;
      Tensor a = random_gpu({M, K}, DType::bf16, 1, 3), b = random_gpu({N, K}, DType::bf16, 1, 4),
             c = Tensor::empty({M, N}, DType::bf16, a.device());
      double ms = time_ms([&] { matmul(a, false, b, true, c); });
      std::printf("gemm bf16 %-34s %10.3f %12.1f\n", (std::to_string(M) + "x1024x3072").c_str(), ms,
                  2.0 * M * N * K / ms / 1e9);
    }
    const int64_t N = 16, D = 64, I = 2, W = 2 * I + 1;
    for (int compose = 1; compose >= 0; --compose)
      for (int64_t window : {int64_t(0), int64_t(256)}) {
        DcmhaShape sh{.B = B, .T = T, .S = T, .N = N, .D = D, .I = I, .window = window, .compose = compose != 0,
                      .chunk = chunk};
        Tensor q = random_gpu({B, T, N, D}, DType::bf16, 0.2, 5), k = random_gpu({B, T, N, D}, DType::bf16, 1, 6),
               v = random_gpu({B, T, N, D}, DType::bf16, 1, 7), dw = random_gpu({B, T, 4, W, N}, DType::bf16, 0.3, 8),
               dout = random_gpu({B, T, N, D}, DType::bf16, 1, 9);
        Tensor o = Tensor::empty({B, T, N, D}, DType::bf16, q.device());
        Tensor dq = Tensor::zeros({B, T, N, D}, DType::bf16, q.device()), dk = dq.clone(), dv = dq.clone(),
               ddw = Tensor::zeros({B, T, 4, W, N}, DType::bf16, q.device());
        Tensor dwp = compose ? dw : Tensor(), ddwp = compose ? ddw : Tensor();
        // Matmul FLOPs over allowed cells: forward QK^T + PV = 4D per head per cell.
        double cells = 0;
        for (int64_t t = 0; t < T; ++t) cells += double(window ? std::min<int64_t>(t + 1, window) : t + 1);
        double fwd_flop = 4.0 * D * cells * N * B;
        double f = time_ms([&] { dcmha_forward(sh, q, k, v, dwp, o); });
        double bw = time_ms([&] { dcmha_backward(sh, q, k, v, dwp, dout, dq, dk, dv, ddwp); });
        char name[64];
        std::snprintf(name, sizeof name, "dcmha %s W%lld fwd", compose ? "compose" : "plain", (long long)window);
        std::printf("%-44s %10.3f %12.1f\n", name, f, fwd_flop / f / 1e9);
        std::snprintf(name, sizeof name, "dcmha %s W%lld bwd", compose ? "compose" : "plain", (long long)window);
        std::printf("%-44s %10.3f %12.1f\n", name, bw, 2.5 * fwd_flop / bw / 1e9);
      }
    auto st = cuda::memory_stats();
    std::printf("B=%lld T=%lld chunk=%lld; peak allocated %.1f MiB, reserved %.1f MiB, cudaMalloc calls %zu\n",
                (long long)B, (long long)T, (long long)chunk, st.peak_allocated_bytes / 1048576.0,
                st.reserved_bytes / 1048576.0, st.num_device_mallocs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_ops: %s\n", e.what());
    return 1;
  }
}
