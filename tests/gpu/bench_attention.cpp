// Timing of plain causal attention (Transformer++), bf16, fwd+bwd: cuDNN fused flash attention
// (kernels/attention_cudnn.h) directly (forward saving the softmax stats, backward from them), the
// dcmha dispatch (what the model calls: the backward recomputes the forward and accumulates), and
// the v1 path (DCF_ATTN_IMPL=v1). CUDA events, warm-up, median of the repeats, inputs rotated over
// three sets so that repeats do not run out of L2. Not a test.
// Usage: bench_attention [reps]   (shapes: B8 T2048 N16 D64 and B2 T2048 N32 D128, causal and W256)
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
#include "kernels/ops.h"
#include "tests/gpu/gpu_bench_util.h"

using namespace dcf;
using bench::random_gpu;

double time_ms(const std::function<void(int)>& fn, int reps) { return bench::time_ms(fn, reps, 2); }

namespace {

double max_abs_diff(const Tensor& x, const Tensor& y) {
  Tensor a = Tensor::empty(x.shape(), DType::f32, x.device()), b = Tensor::empty(y.shape(), DType::f32, y.device());
  cuda::cast(x, a);
  cuda::cast(y, b);
  Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  double m = 0;
  for (int64_t i = 0; i < ha.numel(); ++i) {
    double d = std::fabs(double(ha.data<float>()[i]) - double(hb.data<float>()[i]));
    if (!(d <= m)) m = d;  // NaN propagates
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (!bench::gpu_ready()) return 0;
    std::string why;
    const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
    const int64_t ver = cuda::cudnn_version(&why);
    std::printf("cuDNN %lld%s\n", (long long)ver, ver ? "" : (" (" + why + ")").c_str());
    struct Cfg {
      int64_t B, T, N, D, W;
    };
    std::vector<std::string> table;
    for (const Cfg& c : std::vector<Cfg>{{8, 2048, 16, 64, 0}, {2, 2048, 32, 128, 0}, {8, 2048, 16, 64, 256},
                                        {2, 2048, 32, 128, 256}}) {
      DcmhaShape sh{.B = c.B, .T = c.T, .S = c.T, .N = c.N, .D = c.D, .window = c.W, .compose = false, .chunk = 128};
      const Shape shp{c.B, c.T, c.N, c.D};
      const Device dev = Device::cuda(cuda::current_device());
      Tensor q[3], k[3], v[3], dout[3];
      for (int i = 0; i < 3; ++i) {
        q[i] = random_gpu(shp, DType::bf16, 0.5, 10 + i);
        k[i] = random_gpu(shp, DType::bf16, 1, 20 + i);
        v[i] = random_gpu(shp, DType::bf16, 1, 30 + i);
        dout[i] = random_gpu(shp, DType::bf16, 1, 40 + i);
      }
      Tensor o = Tensor::empty(shp, DType::bf16, dev), st = Tensor::empty({c.B, c.N, c.T}, DType::f32, dev);
      Tensor dq = Tensor::zeros(shp, DType::bf16, dev), dk = dq.clone(), dv = dq.clone(), none;
      // Causal FLOPs as in attention-baselines.md: forward = 2 matmuls over the allowed cells,
      // fwd+bwd = 3.5x forward.
      double cells = 0;
      for (int64_t t = 0; t < c.T; ++t) cells += double(c.W ? std::min<int64_t>(t + 1, c.W) : t + 1);
      const double fwd_flop = 4.0 * c.D * cells * c.N * c.B, all_flop = 3.5 * fwd_flop;
      bool ok = cuda::cudnn_attention_forward(sh, q[0], k[0], v[0], o, &st) &&
                cuda::cudnn_attention_backward(sh, q[0], k[0], v[0], o, st, dout[0], dq, dk, dv);
      char name[96];
      std::snprintf(name, sizeof name, "B%lld T%lld N%lld D%lld W%lld", (long long)c.B, (long long)c.T,
                    (long long)c.N, (long long)c.D, (long long)c.W);
      if (!ok) {
        std::printf("%s: cuDNN path unavailable\n", name);
        continue;
      }
      auto fwd = [&](int r) { cuda::cudnn_attention_forward(sh, q[r % 3], k[r % 3], v[r % 3], o, &st); };
      auto bwd = [&](int r) {
        cuda::cudnn_attention_backward(sh, q[r % 3], k[r % 3], v[r % 3], o, st, dout[r % 3], dq, dk, dv);
      };
      const double f = time_ms(fwd, reps);
      const double b = time_ms(bwd, reps);
      const double fb = time_ms(
          [&](int r) {
            fwd(r);
            bwd(r);
          },
          reps);
      // The dQ accumulator memset (default off on cuDNN >= 9.6): time with it, and whether dq is the
      // same with it (a difference of an ulp or so is the backward's atomic-add order).
      Tensor dq_ref = Tensor::empty(shp, DType::bf16, dev);
      fwd(0);
      bwd(0);
      dq_ref.copy_from(dq);
      setenv("DCF_CUDNN_DQ_MEMSET", "1", 1);
      const double b_memset = time_ms(bwd, reps);
      fwd(0);
      bwd(0);
      const double dq_diff = max_abs_diff(dq, dq_ref);
      unsetenv("DCF_CUDNN_DQ_MEMSET");
      const double disp = time_ms(
          [&](int r) {
            dcmha_forward(sh, q[r % 3], k[r % 3], v[r % 3], none, o);
            dcmha_backward(sh, q[r % 3], k[r % 3], v[r % 3], none, dout[r % 3], dq, dk, dv, none);
          },
          reps);
      setenv("DCF_ATTN_IMPL", "v1", 1);
      const double v1f = time_ms([&](int r) { dcmha_forward(sh, q[r % 3], k[r % 3], v[r % 3], none, o); }, 5);
      const double v1b = time_ms(
          [&](int r) { dcmha_backward(sh, q[r % 3], k[r % 3], v[r % 3], none, dout[r % 3], dq, dk, dv, none); }, 5);
      unsetenv("DCF_ATTN_IMPL");
      char line[512];
      std::snprintf(line, sizeof line,
                    "%-24s cudnn fwd %7.3f  bwd %7.3f (with dq memset %7.3f, dq diff %.3g)  fwd+bwd %7.3f ms "
                    "(%5.1f TFLOP/s) | dispatch fwd+bwd %7.3f | v1 fwd+bwd %8.3f (%.1fx)",
                    name, f, b, b_memset, dq_diff, fb, all_flop / fb / 1e9, disp, v1f + v1b, (v1f + v1b) / fb);
      std::printf("%s\n", line);
      std::fflush(stdout);
      table.push_back(line);
    }
    auto c = cuda::cudnn_attention_counters();
    auto m = cuda::memory_stats();
    std::printf("plans built %lld, failed %lld; peak allocated %.1f MiB\n", (long long)c.plans_built,
                (long long)c.plans_failed, m.peak_allocated_bytes / 1048576.0);
    std::printf("---- summary\n");
    for (auto& l : table) std::printf("%s\n", l.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
