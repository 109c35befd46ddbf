// The fused DCMHA forward and backward (kernels/dcmha_fused.h) against the CPU reference
// (kernels/dcmha_cpu.cpp, f32 on the same bf16-rounded inputs; run on all cores by query-row blocks,
// tests/common/dcmha_ref.h) and against the v1 GPU path, on fresh random inputs with dynamic weights of order
// 0.3 (so Compose matters): N 16/32, D 64/128, T 128/1000/2048/8192, global and local (W 256), and query rows
// that start inside the sequence. The forward output is NaN-poisoned before every fused call; the backward
// accumulates into random initial gradients, as dcmha_backward's contract says. This process sets
// DCF_DCMHA_IMPL=v1, so dcf::dcmha_forward runs the v1 path and the fused kernel is called directly. Seed
// from the clock (printed); DCF_TEST_SEED=<n> repeats it. Skips with the driver's reason where no GPU is
// usable. In timing builds (-DDCF_KERNEL_TIMING_BUILDS=ON) the N16 D64 forwards and backwards those builds
// add are checked the same way.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda_runtime.h"
#include "kernels/dcmha_fused.h"
#include "kernels/ops.h"
#include "tests/common/dcmha_ref.h"
#include "tests/gpu/gpu_test_util.h"

namespace dcf {
namespace {

const int kForceV1 = (setenv("DCF_DCMHA_IMPL", "v1", 1), 0);

struct Pair {
  Tensor cpu;  // f32, the bf16-rounded values
  Tensor gpu;  // bf16
};

Pair random_pair(std::mt19937_64& rng, const Shape& s, double scale) {
  std::normal_distribution<double> d(0.0, scale);
  Tensor h = Tensor::empty(s, DType::bf16), f = Tensor::empty(s, DType::f32);
  for (int64_t i = 0; i < h.numel(); ++i) {
    uint16_t b = gpu_test::f32_to_bf16(float(d(rng)));
    h.data<uint16_t>()[i] = b;
    f.data<float>()[i] = gpu_test::bf16_to_f32(b);
  }
  return {f, h.to(Device::cuda(cuda::current_device()))};
}

// ||a - b|| / ||b||; counts non-finite elements of a.
double rel_err(const Tensor& a, const Tensor& b, int64_t* nonfinite) {
  std::vector<double> x = gpu_test::values(a), y = gpu_test::values(b);
  double num = 0, den = 0;
  *nonfinite = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      ++*nonfinite;
      continue;
    }
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

uint64_t seed() { return gpu_test::run_seed("dcmha-fused"); }

struct Case {
  int64_t B, T, S, q_pos0, N, D, window;
};

DcmhaShape shape_of(const Case& c) {
  // chunk: the v1 path's query chunk; I = 2 and compose on are the defaults
  return DcmhaShape{.B = c.B, .T = c.T, .S = c.S, .N = c.N, .D = c.D, .q_pos0 = c.q_pos0, .window = c.window,
                    .chunk = 128};
}

class DcmhaFused : public ::testing::TestWithParam<Case> {};

// The variables that select the timing-only N16 D64 forwards (-DDCF_KERNEL_TIMING_BUILDS=ON): one CTA per
// SM, the same with two key tiles per iteration, and the key-weight prefetch.
const std::initializer_list<const char*> kTimingForwards = {"DCF_DCMHA_FUSED_OCC", "DCF_DCMHA_FUSED_PAIR",
                                                            "DCF_DCMHA_FUSED_PF"};

// The fused forward of case c against the CPU reference and the v1 path (both computed once): no
// non-finite outputs, relative L2 error <= 1e-2 against both, for each build in `vars` (the variable that
// selects it, set to 1 around its call; nullptr: the default build).
void check_forward(const Case& c, std::initializer_list<const char*> vars) {
  std::string why;
  std::mt19937_64 rng(seed() ^ uint64_t(c.T * 131 + c.N * 7 + c.D + c.window * 1009 + c.q_pos0));
  const DcmhaShape sh = shape_of(c);
  const int64_t W5 = 5;
  Pair q = random_pair(rng, {c.B, c.T, c.N, c.D}, 1.5 / std::sqrt(double(c.D)));
  Pair k = random_pair(rng, {c.B, c.S, c.N, c.D}, 1.0);
  Pair v = random_pair(rng, {c.B, c.S, c.N, c.D}, 1.0);
  Pair dw = random_pair(rng, {c.B, c.S, 4, W5, c.N}, 0.3);
  ASSERT_TRUE(cuda::dcmha_fused_supported(sh, q.gpu, k.gpu, v.gpu, dw.gpu, q.gpu, &why)) << why;

  Tensor oref = Tensor::empty({c.B, c.T, c.N, c.D}, DType::f32);
  test::dcmha_forward_threads(sh, q.cpu, k.cpu, v.cpu, dw.cpu, oref);
  Tensor ov1 = Tensor::empty({c.B, c.T, c.N, c.D}, DType::bf16, q.gpu.device());
  dcmha_forward(sh, q.gpu, k.gpu, v.gpu, dw.gpu, ov1);  // v1 (DCF_DCMHA_IMPL=v1)
  cuda::synchronize();
  int64_t nf2 = 0;
  const double e_v1cpu = rel_err(ov1, oref, &nf2);

  for (const char* var : vars) {
    const std::string what = var ? var : "default build";
    Tensor ofu = Tensor::empty({c.B, c.T, c.N, c.D}, DType::bf16);
    for (int64_t i = 0; i < ofu.numel(); ++i) ofu.data<uint16_t>()[i] = 0x7fc0;  // NaN poison
    ofu = ofu.to(q.gpu.device());
    if (var) setenv(var, "1", 1);
    cuda::dcmha_fused_forward(sh, q.gpu.raw(), k.gpu.raw(), v.gpu.raw(), dw.gpu.raw(), ofu.raw(),
                              cuda::current_stream());
    if (var) unsetenv(var);
    cuda::synchronize();
    int64_t nf = 0, nf1 = 0;
    const double e_cpu = rel_err(ofu, oref, &nf), e_v1 = rel_err(ofu, ov1, &nf1);
    std::cout << "[dcmha-fused] " << what << " B" << c.B << " T" << c.T << " S" << c.S << " q_pos0 " << c.q_pos0
              << " N" << c.N << " D" << c.D << " W" << c.window << ": fused vs cpu " << e_cpu << ", fused vs v1 "
              << e_v1 << ", v1 vs cpu " << e_v1cpu << std::endl;
    EXPECT_EQ(nf, 0) << what << ": non-finite (unwritten?) outputs";
    EXPECT_LE(e_cpu, 1e-2) << what;
    EXPECT_LE(e_v1, 1e-2) << what;
  }
}

TEST_P(DcmhaFused, MatchesCpuAndV1) {
  (void)kForceV1;
  std::string why;
  if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no usable GPU: " << why;
  cuda::init();
  check_forward(GetParam(), {nullptr});
}

// The timing-only N16 D64 forwards (kTimingForwards, chosen per call by their variable): the same checks
// as the default build's, so that a timing build's `ctest -L gpu` verifies what it times.
// Why a timing-only build's check cannot run for case c here ("" when it can).
std::string timing_skip_reason(const Case& c) {
  std::string why;
  if (!cuda::cuda_available(&why)) return "no usable GPU: " + why;
  if (!cuda::dcmha_fused_timing_builds()) return "timing-only builds not compiled in (DCF_KERNEL_TIMING_BUILDS)";
  if (c.N != 16 || c.D != 64) return "the timing-only builds are N16 D64 builds";
  return "";
}

TEST_P(DcmhaFused, TimingBuildForwardsMatchCpuAndV1) {
  const std::string skip = timing_skip_reason(GetParam());
  if (!skip.empty()) GTEST_SKIP() << skip;
  cuda::init();
  check_forward(GetParam(), kTimingForwards);
}

// The settings that select the timing-only N16 D64 backwards: four heads per warp (16 warps, one CTA per
// SM; alone or in clusters of two) and the key-weight prefetch (Q and dO read from L2).
struct Selector {
  const char* var;
  const char* value;
};
const std::initializer_list<Selector> kTimingBackwards = {
    {"DCF_DCMHA_FUSED_HP4", "1"}, {"DCF_DCMHA_FUSED_HP4", "2"}, {"DCF_DCMHA_FUSED_PF", "1"}};

// Gradients: fused (through dcf::cuda::dcmha_fused_backward) vs the CPU f32 backward and vs v1, every
// output (dq, dk, dv, ddw) by relative L2 error of the added amount. Bound: 3e-2, and at most twice the
// v1 path's own error against the CPU (both round P' and dA to bf16 before their GEMMs). Each selector in
// `sels` picks the build of the fused backward calls (a timing-only build by its variable, set around the
// calls; var nullptr: the default build); the inputs, the CPU reference and v1 are computed once.
void check_backward(const Case& c, std::initializer_list<Selector> sels) {
  std::string why;
  std::mt19937_64 rng(seed() ^ uint64_t(c.T * 337 + c.N * 11 + c.D + c.window * 9001 + c.q_pos0 + 77));
  const DcmhaShape sh = shape_of(c);
  Pair q = random_pair(rng, {c.B, c.T, c.N, c.D}, 1.5 / std::sqrt(double(c.D)));
  Pair k = random_pair(rng, {c.B, c.S, c.N, c.D}, 1.0);
  Pair v = random_pair(rng, {c.B, c.S, c.N, c.D}, 1.0);
  Pair dw = random_pair(rng, {c.B, c.S, 4, 5, c.N}, 0.3);
  Pair dout = random_pair(rng, {c.B, c.T, c.N, c.D}, 1.0);
  // Initial gradients (small, so bf16 rounding of the sum stays below the tolerance).
  Pair g0[4] = {random_pair(rng, q.cpu.shape(), 1e-3), random_pair(rng, k.cpu.shape(), 1e-3),
                random_pair(rng, v.cpu.shape(), 1e-3), random_pair(rng, dw.cpu.shape(), 1e-3)};
  ASSERT_TRUE(cuda::dcmha_fused_backward_supported(sh, q.gpu, k.gpu, v.gpu, dw.gpu, dout.gpu, g0[0].gpu, g0[1].gpu,
                                                   g0[2].gpu, g0[3].gpu, &why))
      << why;

  Tensor ref[4];
  for (int i = 0; i < 4; ++i) ref[i] = Tensor::zeros(g0[i].cpu.shape(), DType::f32);
  test::dcmha_backward_threads(sh, q.cpu, k.cpu, v.cpu, dw.cpu, dout.cpu, ref[0], ref[1], ref[2], ref[3]);
  Tensor v1[4];
  for (int i = 0; i < 4; ++i) v1[i] = g0[i].gpu.clone();
  dcmha_backward(sh, q.gpu, k.gpu, v.gpu, dw.gpu, dout.gpu, v1[0], v1[1], v1[2], v1[3]);  // v1
  // The softmax statistics written by the fused forward, for the second call of each build (which then
  // skips its pass 1).
  Tensor st = Tensor::empty({c.B, c.T, c.N, 2}, DType::f32, q.gpu.device());
  DcmhaShape shs = sh;
  shs.softmax_stats = st.data<float>();
  Tensor o = Tensor::empty(q.gpu.shape(), DType::bf16, q.gpu.device());
  cuda::dcmha_fused_forward(shs, q.gpu.raw(), k.gpu.raw(), v.gpu.raw(), dw.gpu.raw(), o.raw(), cuda::current_stream());

  for (const Selector& sel : sels) {
    const char* var = sel.var;
    const std::string what = var ? std::string(var) + "=" + sel.value : "default build";
    Tensor fu[4], fs[4];
    for (int i = 0; i < 4; ++i) fu[i] = g0[i].gpu.clone(), fs[i] = g0[i].gpu.clone();
    if (var) setenv(var, sel.value, 1);
    cuda::dcmha_fused_backward(sh, q.gpu, k.gpu, v.gpu, dw.gpu, dout.gpu, fu[0], fu[1], fu[2], fu[3],
                               cuda::current_stream());
    cuda::dcmha_fused_backward(shs, q.gpu, k.gpu, v.gpu, dw.gpu, dout.gpu, fs[0], fs[1], fs[2], fs[3],
                               cuda::current_stream());
    if (var) unsetenv(var);
    cuda::synchronize();

    const char* names[4] = {"dq", "dk", "dv", "ddw"};
    for (int i = 0; i < 4; ++i) {
      // The amount added: out - initial, in double from the bf16 values.
      auto added = [&](const Tensor& out) {
        std::vector<double> ov = gpu_test::values(out), z = gpu_test::values(g0[i].cpu);
        Tensor d = Tensor::empty(out.shape(), DType::f32);
        for (size_t j = 0; j < ov.size(); ++j) d.data<float>()[j] = float(ov[j] - z[j]);
        return d;
      };
      int64_t nf = 0, nf1 = 0, nfs = 0;
      const Tensor af = added(fu[i]), av = added(v1[i]), as = added(fs[i]);
      const double e_cpu = rel_err(af, ref[i], &nf), e_v1cpu = rel_err(av, ref[i], &nf1);
      const double e_stats = rel_err(as, ref[i], &nfs);
      int64_t dummy = 0;
      const double e_v1 = rel_err(af, av, &dummy);
      std::cout << "[dcmha-fused-bwd] " << what << " " << names[i] << " B" << c.B << " T" << c.T << " S" << c.S
                << " p" << c.q_pos0 << " N" << c.N << " D" << c.D << " W" << c.window << ": fused vs cpu " << e_cpu
                << ", fused vs v1 " << e_v1 << ", v1 vs cpu " << e_v1cpu << ", fused with forward statistics vs cpu "
                << e_stats << std::endl;
      EXPECT_EQ(nf, 0) << what << " " << names[i] << ": non-finite gradients";
      EXPECT_EQ(nfs, 0) << what << " " << names[i] << ": non-finite gradients (forward statistics)";
      EXPECT_LE(e_stats, 3e-2) << what << " " << names[i];
      EXPECT_LE(e_stats, 2.0 * e_v1cpu + 1e-3) << what << " " << names[i];
      EXPECT_LE(e_cpu, 3e-2) << what << " " << names[i];
      EXPECT_LE(e_cpu, 2.0 * e_v1cpu + 1e-3) << what << " " << names[i];
    }
  }
}

TEST_P(DcmhaFused, BackwardMatchesCpuAndV1) {
  std::string why;
  if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no usable GPU: " << why;
  cuda::init();
  check_backward(GetParam(), {{nullptr, nullptr}});
}

// The timing-only N16 D64 backwards (kTimingBackwards), checked as the default build is.
TEST_P(DcmhaFused, TimingBuildBackwardsMatchCpuAndV1) {
  const std::string skip = timing_skip_reason(GetParam());
  if (!skip.empty()) GTEST_SKIP() << skip;
  cuda::init();
  check_backward(GetParam(), kTimingBackwards);
}

// The timing-only builds (DCF_DCMHA_FUSED_OCC / _PAIR / _PF, backward ablations) are requests that must
// fail with a message naming the CMake option where they are not compiled in, not fall back to another
// build.
TEST(DcmhaFusedTimingBuilds, RequestsFailWithoutTheOption) {
  std::string why;
  if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no usable GPU: " << why;
  if (cuda::dcmha_fused_timing_builds()) GTEST_SKIP() << "built with DCF_KERNEL_TIMING_BUILDS=ON";
  cuda::init();
  const Case c{1, 128, 128, 0, 16, 64, 0};
  const DcmhaShape sh = shape_of(c);
  std::mt19937_64 rng(seed());
  Pair q = random_pair(rng, {1, 128, 16, 64}, 0.2), k = random_pair(rng, {1, 128, 16, 64}, 1),
       v = random_pair(rng, {1, 128, 16, 64}, 1), dw = random_pair(rng, {1, 128, 4, 5, 16}, 0.3),
       dout = random_pair(rng, {1, 128, 16, 64}, 1);
  Tensor o = Tensor::zeros(q.gpu.shape(), DType::bf16, q.gpu.device());
  Tensor dq = o.clone(), dk = o.clone(), dv = o.clone(), ddw = Tensor::zeros(dw.gpu.shape(), DType::bf16, o.device());
  auto message_of = [](auto&& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto fwd = [&] {
    cuda::dcmha_fused_forward(sh, q.gpu.raw(), k.gpu.raw(), v.gpu.raw(), dw.gpu.raw(), o.raw(), cuda::current_stream());
  };
  auto bwd = [&](int ablate) {
    return [&, ablate] {
      cuda::dcmha_fused_backward(sh, q.gpu, k.gpu, v.gpu, dw.gpu, dout.gpu, dq, dk, dv, ddw, cuda::current_stream(),
                                 ablate);
    };
  };
  for (const char* var : kTimingForwards) {
    setenv(var, "1", 1);
    EXPECT_NE(message_of(fwd).find("DCF_KERNEL_TIMING_BUILDS"), std::string::npos) << var;
    unsetenv(var);
  }
  for (const Selector& sel : kTimingBackwards) {
    setenv(sel.var, sel.value, 1);
    EXPECT_NE(message_of(bwd(0)).find("DCF_KERNEL_TIMING_BUILDS"), std::string::npos) << sel.var << "=" << sel.value;
    unsetenv(sel.var);
  }
  EXPECT_NE(message_of(bwd(1)).find("DCF_KERNEL_TIMING_BUILDS"), std::string::npos);
  // Without the variables the default builds run.
  EXPECT_EQ(message_of(fwd), "no error");
  EXPECT_EQ(message_of(bwd(0)), "no error");
  cuda::synchronize();
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  char name[96];  // (formatted, not concatenated: GCC 12 reports a false -Wrestrict on the string sums)
  std::snprintf(name, sizeof name, "B%lld_T%lld_S%lld_p%lld_N%lld_D%lld_W%lld", (long long)c.B, (long long)c.T,
                (long long)c.S, (long long)c.q_pos0, (long long)c.N, (long long)c.D, (long long)c.window);
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DcmhaFused,
    ::testing::Values(Case{2, 128, 128, 0, 16, 64, 0}, Case{2, 128, 128, 0, 16, 64, 48},
                      Case{2, 128, 128, 0, 16, 128, 0}, Case{2, 128, 128, 0, 32, 64, 256},
                      Case{2, 1000, 1000, 0, 16, 64, 0}, Case{2, 1000, 1000, 0, 16, 64, 256},
                      Case{1, 2048, 2048, 0, 16, 64, 0}, Case{1, 2048, 2048, 0, 16, 64, 256},
                      Case{2, 128, 128, 0, 32, 128, 0}, Case{1, 1000, 1000, 0, 32, 128, 0},
                      Case{1, 1000, 1000, 0, 32, 128, 256}, Case{1, 2048, 2048, 0, 32, 128, 0},
                      Case{1, 2048, 2048, 0, 32, 128, 256}, Case{1, 1000, 1000, 0, 16, 128, 0},
                      Case{1, 1000, 1000, 0, 16, 128, 256}, Case{1, 1000, 1000, 0, 32, 64, 0},
                      Case{1, 1000, 1000, 0, 32, 64, 256}, Case{1, 2048, 2048, 0, 16, 128, 0},
                      Case{1, 2048, 2048, 0, 32, 64, 256}, Case{1, 8192, 8192, 0, 16, 64, 0},
                      Case{1, 8192, 8192, 0, 16, 64, 256}, Case{1, 8192, 8192, 0, 32, 128, 256},
                      Case{2, 333, 1000, 667, 16, 64, 0}, Case{1, 300, 777, 401, 32, 128, 256},
                      // More batch elements than the CTA orders (kernels/grid_order.h) can confuse at B <= 2.
                      Case{5, 160, 160, 0, 16, 64, 0}, Case{3, 200, 200, 0, 32, 128, 256}),
    case_name);

}  // namespace
}  // namespace dcf
