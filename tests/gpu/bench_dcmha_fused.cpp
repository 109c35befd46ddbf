// Timing, not a test: the fused DCMHA forward (kernels/dcmha_fused.h) against the v1 DCMHA forward
// and cuDNN's plain flash attention (kernels/attention_cudnn.h, compose off) on the same shapes, in one
// run, with CUDA events (warm-up, median of repeats). Sets DCF_DCMHA_IMPL=v1 so dcmha_forward is the
// v1 path. Prints a table with the ratios. Usage: bench_dcmha_fused [reps]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/attention_cudnn.h"
#include "kernels/cuda_ops.h"
#include "kernels/cuda_runtime.h"
#include "kernels/dcmha_fused.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_bench_util.h"

using namespace dcf;

Tensor random_gpu(const Shape& s, double scale, uint64_t seed) { return bench::random_gpu(s, DType::bf16, scale, seed); }
double time_ms(const std::function<void()>& fn, int reps) { return bench::time_ms(fn, reps, 2); }


int main(int argc, char** argv) {
  setenv("DCF_DCMHA_IMPL", "v1", 1);
  try {
    std::string why;
    if (!cuda::cuda_available(&why)) {
      std::printf("no usable GPU: %s\n", why.c_str());
      return 0;
    }
    cuda::init();
    const int reps = argc > 1 ? std::atoi(argv[1]) : 15;
    struct Sh {
      int64_t B, T, N, D, W;
    };
    std::printf("%-28s %9s %9s %9s %9s %9s %9s %9s %10s %10s\n", "shape (causal, bf16)", "fused", "again", "occ1", "v1",
                "cudnn_f", "cudnn_fb", "fusedTF", "v1/fused", "fused/cuF");
    for (const Sh& c : {Sh{8, 2048, 16, 64, 0}, Sh{8, 2048, 16, 64, 256}, Sh{2, 2048, 32, 128, 0},
                        Sh{2, 2048, 32, 128, 256}, Sh{1, 8192, 16, 64, 0}}) {
      DcmhaShape sh;
      sh.B = c.B;
      sh.T = sh.S = c.T;
      sh.N = c.N;
      sh.D = c.D;
      sh.I = 2;
      sh.window = c.W;
      sh.compose = true;
      sh.chunk = 256;
      Tensor q = random_gpu({c.B, c.T, c.N, c.D}, 0.2, 5), k = random_gpu({c.B, c.T, c.N, c.D}, 1, 6),
             v = random_gpu({c.B, c.T, c.N, c.D}, 1, 7), dw = random_gpu({c.B, c.T, 4, 5, c.N}, 0.3, 8),
             dout = random_gpu({c.B, c.T, c.N, c.D}, 1, 9);
      Tensor o = Tensor::empty({c.B, c.T, c.N, c.D}, DType::bf16, q.device());
      auto run_fused = [&] {
        cuda::dcmha_fused_forward(sh, q.raw(), k.raw(), v.raw(), dw.raw(), o.raw(), cuda::current_stream());
      };
      setenv("DCF_DCMHA_FUSED_OCC", "1", 1);
      double fused_occ1 = c.N == 16 && c.D == 64 ? time_ms(run_fused, reps) : NAN;
      unsetenv("DCF_DCMHA_FUSED_OCC");
      double fused = time_ms(run_fused, reps);
      double fused_again = time_ms(run_fused, reps);
      double v1 = c.T <= 2048 ? time_ms([&] { dcmha_forward(sh, q, k, v, dw, o); }, 5) : NAN;
      DcmhaShape pl = sh;
      pl.compose = false;
      double cf = NAN, cfb = NAN;
      if (cuda::cudnn_attention_supported(pl, q, k, v, &why)) {
        Tensor stats = Tensor::empty({c.B, c.N, c.T}, DType::f32, q.device());
        Tensor dq = Tensor::empty(q.shape(), DType::bf16, q.device()), dk = dq.clone(), dv = dq.clone();
        if (cuda::cudnn_attention_forward(pl, q, k, v, o, &stats)) {
          cf = time_ms([&] { cuda::cudnn_attention_forward(pl, q, k, v, o, &stats); }, reps);
          cfb = time_ms(
              [&] {
                cuda::cudnn_attention_forward(pl, q, k, v, o, &stats);
                cuda::cudnn_attention_backward(pl, q, k, v, o, stats, dout, dq, dk, dv);
              },
              reps);
        }
      } else {
        std::printf("(cuDNN: %s)\n", why.c_str());
      }
      double cells = 0;
      for (int64_t t = 0; t < c.T; ++t) cells += double(c.W ? std::min<int64_t>(t + 1, c.W) : t + 1);
      const double mm_flop = 6.0 * c.D * cells * c.N * c.B;  // QK^T twice + PV
      char name[64];
      std::snprintf(name, sizeof name, "B%lld T%lld N%lld D%lld W%lld", (long long)c.B, (long long)c.T,
                    (long long)c.N, (long long)c.D, (long long)c.W);
      std::printf("%-28s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.1f %10.2f %10.2f\n", name, fused, fused_again,
                  fused_occ1, v1, cf, cfb,
                  mm_flop / fused / 1e9, v1 / fused, fused / cf);
    }
    std::printf("ms, median; cudnn_f / cudnn_fb: plain MHA fwd / fwd+bwd; fusedTF: matmul TFLOP/s of the fused fwd "
                "(6D per head per allowed cell); occ1: N16 D64 at one CTA/SM (DCF_DCMHA_FUSED_OCC=1)\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dcmha_fused: %s\n", e.what());
    return 1;
  }
}
