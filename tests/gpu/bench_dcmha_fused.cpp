// Timing, not a test: the fused DCMHA forward and backward (kernels/dcmha_fused.h) against the v1
// DCMHA path and cuDNN's plain flash attention (kernels/attention_cudnn.h, compose off) on the same
// shapes, in one run, with CUDA events (warm-up, median of repeats). Sets DCF_DCMHA_IMPL=v1 so
// dcmha_forward/backward are the v1 path. Prints two tables: times with the ratios, and the peak device
// memory of one fused fwd+bwd beyond its inputs at T = 2048, 8192, 32768.
// Usage: bench_dcmha_fused [reps] [--fwd-only] [--no-v1] [--shapes LIST] | [reps] --profile [shape]
// --no-v1: the v1 columns are left out (NaN), which makes a run several times shorter.
// --shapes LIST: only these rows of the time table (comma-separated, from 0), and no memory table: for
// comparing builds on the shapes a change touches.
// --profile: one fused forward and one backward of one shape (shape: its row in the table, from 0; by
// default 0, B8 T2048 N16 D64 causal), nothing else, as the target of a profiler. The one-CTA forward
// (one key tile or two per iteration), the backward's ablations, the N16 D64 one-CTA backward the 2-CTA
// cluster build replaced, the other N32 build (head split or one CTA) and the prefetch builds are timed
// where the kernels were built with -DDCF_KERNEL_TIMING_BUILDS=ON. A timing build with
// -DCMAKE_CUDA_FLAGS=-DDCF_ABLATE_COMPOSE=1/2/3 times every kernel with the Compose ablated
// (kernels/dcmha_fused.cu; wrong results, timing only).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
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
  struct Sh {
    int64_t B, T, N, D, W;
  };
  // B4 N16 D128: the CTA count and per-CTA work of B2 N32 D128 with its heads split over two CTAs.
  const Sh shapes[] = {Sh{8, 2048, 16, 64, 0},    Sh{8, 2048, 16, 64, 256}, Sh{2, 2048, 32, 128, 0},
                       Sh{2, 2048, 32, 128, 256}, Sh{4, 2048, 16, 128, 0}, Sh{1, 8192, 16, 64, 0}};
  const long n_shapes = long(std::size(shapes));
  // A row index of shapes (decimal digits only), or -1.
  auto row_of = [&](const std::string& s) -> long {
    char* end = nullptr;
    const long r = s.empty() ? -1 : std::strtol(s.c_str(), &end, 10);
    return r >= 0 && r < n_shapes && *end == '\0' && std::isdigit(static_cast<unsigned char>(s[0])) ? r : -1;
  };
  bool profile = false, fwd_only = false, no_v1 = false, only_some = false;
  long profile_shape = 0;  // the shape to profile
  std::vector<bool> chosen(size_t(n_shapes), true);
  for (int i = 2; i < argc; ++i) {
    const std::string opt = argv[i];
    if (opt == "--fwd-only") {
      fwd_only = true;
    } else if (opt == "--no-v1") {
      no_v1 = true;
    } else if (opt == "--profile") {
      profile = true;
      if (i + 1 < argc && (profile_shape = row_of(argv[++i])) < 0) {
        std::fprintf(stderr, "bench_dcmha_fused: --profile shape must be 0..%ld, got '%s'\n", n_shapes - 1, argv[i]);
        return 2;
      }
    } else if (opt == "--shapes") {
      if (i + 1 == argc) {
        std::fprintf(stderr, "bench_dcmha_fused: --shapes needs a list of rows, e.g. 0,1,5\n");
        return 2;
      }
      only_some = true;
      std::fill(chosen.begin(), chosen.end(), false);
      const std::string list = argv[++i];
      size_t pos = 0;
      while (true) {
        const size_t comma = list.find(',', pos);
        const long r = row_of(list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
        if (r < 0) {
          std::fprintf(stderr, "bench_dcmha_fused: --shapes takes rows 0..%ld separated by commas, got '%s'\n",
                       n_shapes - 1, list.c_str());
          return 2;
        }
        chosen[size_t(r)] = true;
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else {
      std::fprintf(stderr,
                   "bench_dcmha_fused: unknown option '%s' (--fwd-only, --no-v1, --shapes LIST or --profile [shape])\n",
                   opt.c_str());
      return 2;
    }
  }
  if (profile && (fwd_only || no_v1 || only_some)) {
    std::fprintf(stderr, "bench_dcmha_fused: --profile takes no other option\n");
    return 2;
  }
  try {
    if (!bench::gpu_ready()) return 0;
    std::string why;
    const int reps = argc > 1 ? std::atoi(argv[1]) : 15;
    long shape_index = -1;
    const bool timing = cuda::dcmha_fused_timing_builds();  // -DDCF_KERNEL_TIMING_BUILDS=ON
    std::printf("%-24s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s\n", "shape (causal, bf16)", "fused_f", "occ1_f",
                "fused_b", "fused_fb", "v1_f", "v1_fb", "cudnn_f", "cudnn_fb", "fusedTF", "v1/fu_fb", "fu/cuD_fb");
    for (const Sh& c : shapes) {
      ++shape_index;
      if (profile ? shape_index != profile_shape : !chosen[size_t(shape_index)]) continue;
      DcmhaShape sh{.B = c.B, .T = c.T, .S = c.T, .N = c.N, .D = c.D, .I = 2, .window = c.W, .compose = true,
                    .chunk = 256};
      Tensor q = random_gpu({c.B, c.T, c.N, c.D}, 0.2, 5), k = random_gpu({c.B, c.T, c.N, c.D}, 1, 6),
             v = random_gpu({c.B, c.T, c.N, c.D}, 1, 7), dw = random_gpu({c.B, c.T, 4, 5, c.N}, 0.3, 8),
             dout = random_gpu({c.B, c.T, c.N, c.D}, 1, 9);
      Tensor o = Tensor::empty({c.B, c.T, c.N, c.D}, DType::bf16, q.device());
      auto run_fused = [&] {
        cuda::dcmha_fused_forward(sh, q.raw(), k.raw(), v.raw(), dw.raw(), o.raw(), cuda::current_stream());
      };
      Tensor dq = Tensor::zeros(q.shape(), DType::bf16, q.device()), dk = dq.clone(), dv = dq.clone(),
             ddw = Tensor::zeros(dw.shape(), DType::bf16, q.device());
      auto run_fused_bwd = [&] {
        cuda::dcmha_fused_backward(sh, q, k, v, dw, dout, dq, dk, dv, ddw, cuda::current_stream());
      };
      if (profile) {
        run_fused();
        run_fused_bwd();
        cuda::synchronize();
        return 0;
      }
      setenv("DCF_DCMHA_FUSED_OCC", "1", 1);
      double fused_occ1 = timing && c.N == 16 && c.D == 64 ? time_ms(run_fused, reps) : NAN;
      unsetenv("DCF_DCMHA_FUSED_OCC");
      double fused = time_ms(run_fused, reps);
      double fused_b = fwd_only ? NAN : time_ms(run_fused_bwd, reps);
      // fwd+bwd as the model runs it: the forward's softmax statistics are kept for the backward.
      Tensor stats_buf = Tensor::empty({c.B, c.T, c.N, 2}, DType::f32, q.device());
      DcmhaShape shs = sh;
      shs.softmax_stats = stats_buf.data<float>();
      double fused_fb = fwd_only ? NAN : time_ms([&] {
        cuda::dcmha_fused_forward(shs, q.raw(), k.raw(), v.raw(), dw.raw(), o.raw(), cuda::current_stream());
        cuda::dcmha_fused_backward(shs, q, k, v, dw, dout, dq, dk, dv, ddw, cuda::current_stream());
      }, reps);
      double v1 = c.T <= 2048 && !no_v1 ? time_ms([&] { dcmha_forward(sh, q, k, v, dw, o); }, 5) : NAN;
      double v1_fb = c.T <= 2048 && !fwd_only && !no_v1 ? time_ms([&] {
        dcmha_forward(sh, q, k, v, dw, o);
        dcmha_backward(sh, q, k, v, dw, dout, dq, dk, dv, ddw);
      }, 3) : NAN;
      DcmhaShape pl = sh;
      pl.compose = false;
      double cf = NAN, cfb = NAN;
      if (cuda::cudnn_attention_supported(pl, q, k, v, &why)) {
        Tensor stats = Tensor::empty({c.B, c.N, c.T}, DType::f32, q.device());
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
      std::printf("%-24s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.1f %9.2f %9.2f\n", name, fused, fused_occ1,
                  fused_b, fused_fb, v1, v1_fb, cf, cfb, mm_flop / fused / 1e9, v1_fb / fused_fb, fused_fb / cfb);
      if (timing && c.N == 16 && c.D == 64) {  // the two-tile forward (timing-only build), same shape
        setenv("DCF_DCMHA_FUSED_PAIR", "1", 1);
        const double pair_f = time_ms(run_fused, reps);
        unsetenv("DCF_DCMHA_FUSED_PAIR");
        std::printf("  two key tiles per iteration, one CTA/SM (DCF_DCMHA_FUSED_PAIR=1): fwd %.3f (default %.3f, "
                    "one tile at one CTA/SM %.3f)\n", pair_f, fused, fused_occ1);
      }
      if (timing && c.N == 32 && !fwd_only) {  // the other N32 build (head split or one CTA), same shape
        setenv("DCF_DCMHA_FUSED_N32_ALT", "1", 1);
        const double alt_f = time_ms(run_fused, reps), alt_b = time_ms(run_fused_bwd, reps);
        unsetenv("DCF_DCMHA_FUSED_N32_ALT");
        std::printf("  the other N32 build (DCF_DCMHA_FUSED_N32_ALT=1): fwd %.3f bwd %.3f; default/other: fwd %.3f "
                    "bwd %.3f\n", alt_f, alt_b, fused / alt_f, fused_b / alt_b);
      }
      if (timing && c.N == 16 && c.D == 64 && !fwd_only) {  // where the backward's time goes (timing-only builds)
        std::printf("  bwd ablations:");
        double one_cta_b = 0;
        static const char* const names[] = {"", "no-tensor-core-stage", "no-weight-grads", "neither",
                                            "no-reductions", "one-cta-kernel", "no-delta-pass"};
        for (int ab : {1, 2, 3, 4, 5, 6}) {
          const double t = time_ms(
              [&] { cuda::dcmha_fused_backward(sh, q, k, v, dw, dout, dq, dk, dv, ddw, cuda::current_stream(), ab); },
              reps);
          std::printf(" %s %.3f", names[ab], t);
          if (ab == 5) one_cta_b = t;
        }
        setenv("DCF_DCMHA_FUSED_PF", "1", 1);
        const double pf_f = time_ms(run_fused, reps), pf_b = time_ms(run_fused_bwd, reps);
        unsetenv("DCF_DCMHA_FUSED_PF");
        setenv("DCF_DCMHA_FUSED_HP4", "1", 1);
        const double hp4_b = time_ms(run_fused_bwd, reps);
        setenv("DCF_DCMHA_FUSED_HP4", "2", 1);
        const double hp4c_b = time_ms(run_fused_bwd, reps);
        unsetenv("DCF_DCMHA_FUSED_HP4");
        std::printf(" (ms; full %.3f)\n  builds with the key-weight prefetch (bwd: Q and dO read from L2): fwd "
                    "%.3f (default %.3f), bwd %.3f (default, Q and dO staged: %.3f)\n"
                    "  four heads per warp, 16 warps, one CTA per SM (DCF_DCMHA_FUSED_HP4=1 alone, =2 in clusters of two): "
                    "bwd %.3f, %.3f (default, clusters: %.3f; one-CTA kernel %.3f)\n",
                    fused_b, pf_f, fused, pf_b, fused_b, hp4_b, hp4c_b, fused_b, one_cta_b);
      }
    }
    std::printf("ms, median; _f forward, _b backward (recomputing the softmax statistics), _fb forward + backward (the "
                "backward reading the forward's statistics); cudnn: plain MHA (compose off); fusedTF: "
                "matmul TFLOP/s of the fused fwd (6D per head per allowed cell); occ1_f: N16 D64 fwd at one CTA/SM%s\n",
                timing ? "" : " (occ1_f, the two-tile forward, ablations and prefetch builds: configure with "
                                "-DDCF_KERNEL_TIMING_BUILDS=ON)");
    if (!fwd_only && !only_some) {
      // Memory: peak device bytes of one fused fwd+bwd beyond the inputs and gradients (allocated first).
      std::printf("\n%-24s %12s %12s %14s\n", "shape (causal, bf16)", "inputs MiB", "extra MiB", "extra B/token");
      for (int64_t T : {2048, 8192, 32768}) {
        DcmhaShape sh{.B = 1, .T = T, .S = T, .N = 16, .D = 64, .I = 2, .compose = true, .chunk = 256};
        const size_t before = cuda::memory_stats().allocated_bytes;
        Tensor q = random_gpu({1, T, 16, 64}, 0.2, 5), k = random_gpu({1, T, 16, 64}, 1, 6),
               v = random_gpu({1, T, 16, 64}, 1, 7), dw = random_gpu({1, T, 4, 5, 16}, 0.3, 8),
               dout = random_gpu({1, T, 16, 64}, 1, 9), o = Tensor::empty(q.shape(), DType::bf16, q.device());
        Tensor dq = Tensor::zeros(q.shape(), DType::bf16, q.device()), dk = dq.clone(), dv = dq.clone(),
               ddw = Tensor::zeros(dw.shape(), DType::bf16, q.device());
        cuda::synchronize();
        const size_t base = cuda::memory_stats().allocated_bytes;
        cuda::reset_peak_memory();
        cuda::dcmha_fused_forward(sh, q.raw(), k.raw(), v.raw(), dw.raw(), o.raw(), cuda::current_stream());
        cuda::dcmha_fused_backward(sh, q, k, v, dw, dout, dq, dk, dv, ddw, cuda::current_stream());
        cuda::synchronize();
        const double extra = double(cuda::memory_stats().peak_allocated_bytes - base);
        char name[64];
        std::snprintf(name, sizeof name, "B1 T%lld N16 D64 W0", (long long)T);
        std::printf("%-24s %12.1f %12.1f %14.1f\n", name, double(base - before) / 1048576.0, extra / 1048576.0,
                    extra / double(T));
      }
      std::printf("a materialised B x N x T x S fp32 score tensor would be 4 N T bytes per token: %.0f / %.0f / %.0f\n",
                  4.0 * 16 * 2048, 4.0 * 16 * 8192, 4.0 * 16 * 32768);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dcmha_fused: %s\n", e.what());
    return 1;
  }
}
