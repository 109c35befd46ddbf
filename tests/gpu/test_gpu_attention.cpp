// Plain Transformer++ attention through cuDNN (kernels/attention_cudnn.h) against the CPU DCMHA core
// with compose = false: forward and all gradients, causal and sliding window, through the dcmha
// dispatch (which must really take the cuDNN path: checked with its counters) and through the
// direct API (softmax stats, overwriting gradients). Fresh random inputs every run (the seed is
// printed; DCF_TEST_SEED=<n> repeats it), NaN-poisoned outputs, bf16 tolerance (relative L2 1e-2).
// Long sequences with many heads are checked against the CPU on a few heads (heads are independent)
// and on all heads against the v1 GPU path (DCF_ATTN_IMPL=v1), itself checked against the CPU in
// test_gpu_ops. Without a GPU, or without libcudnn, every test skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_cudnn.h"
#include "kernels/cuda_ops.h"
#include "kernels/cuda_runtime.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace dcf {
namespace {

uint64_t run_seed() { return gpu_test::run_seed("gpu-attention"); }
using gpu_test::bf16_to_f32;
using gpu_test::f32_to_bf16;
using gpu_test::gpu;
using gpu_test::values;

// Host master values (double) -> a tensor of dtype dt on dev, rounded to bf16 first.
Tensor make(const std::vector<double>& m, const Shape& s, DType dt, Device dev) {
  Tensor t = Tensor::empty(s, dt);
  for (size_t i = 0; i < m.size(); ++i) {
    float r = bf16_to_f32(f32_to_bf16(float(m[i])));  // the values the GPU sees
    if (dt == DType::bf16)
      t.data<uint16_t>()[i] = f32_to_bf16(r);
    else
      t.data<float>()[i] = r;
  }
  return dev.is_cpu() ? t : t.to(dev);
}

Tensor nan_gpu(const Shape& s) {
  Tensor h = Tensor::empty(s, DType::bf16);
  for (int64_t i = 0; i < h.numel(); ++i) h.data<uint16_t>()[i] = 0x7fc0;
  return h.to(gpu());
}

// Heads [h0, h0 + nh) of a [B, L, N, D] master array.
std::vector<double> heads(const std::vector<double>& x, int64_t B, int64_t L, int64_t N, int64_t D, int64_t h0,
                          int64_t nh) {
  std::vector<double> out(size_t(B * L * nh * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t d = 0; d < D; ++d)
          out[size_t(((b * L + t) * nh + h) * D + d)] = x[size_t(((b * L + t) * N + h0 + h) * D + d)];
  return out;
}

// ||got - ref|| / ||ref||; every non-finite element of got fails (an unwritten output).
void expect_close(const std::vector<double>& g, const std::vector<double>& r, double tol, const std::string& what) {
  ASSERT_EQ(g.size(), r.size()) << what;
  double num = 0, den = 0;
  int64_t nbad = 0, bad = -1;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) {
      if (bad < 0) bad = int64_t(i);
      ++nbad;
      continue;
    }
    num += (g[i] - r[i]) * (g[i] - r[i]);
    den += r[i] * r[i];
  }
  EXPECT_EQ(nbad, 0) << what << ": " << nbad << " non-finite (unwritten?) elements, first at " << bad;
  const double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  EXPECT_LE(rel, tol) << what << ": relative error " << rel << " over " << g.size() << " elements";
}

constexpr double kTol = 1e-2;  // bf16 operands, fp32 accumulation

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* e = std::getenv(name)) old_ = e, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_.c_str(), old_.c_str(), 1);
    else
      unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

class CudnnAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no usable GPU: " << why;
    cuda::init();
    if (cuda::cudnn_version(&why) == 0) GTEST_SKIP() << "cuDNN not usable: " << why;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name();
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    rng_.seed(run_seed() ^ h);
  }
  std::vector<double> normal(int64_t n, double scale) {
    std::normal_distribution<double> d(0.0, scale);
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng_);
    return v;
  }
  std::mt19937_64 rng_;
};

struct Case {
  int64_t B, T, N, D, W;
  int64_t cpu_h0, cpu_heads;  // heads checked against the CPU (all when cpu_heads == N)
  bool vs_v1;                 // also compare all heads with the v1 GPU path
};

std::string case_name(const Case& c) {
  return "B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " N" + std::to_string(c.N) + " D" +
         std::to_string(c.D) + " W" + std::to_string(c.W);
}

// Forward and backward through the dcmha dispatch (cuDNN) vs the CPU core (and the v1 GPU path).
TEST_F(CudnnAttention, DispatchMatchesCpuCausalAndWindow) {
  const std::vector<Case> cases = {
      {2, 128, 16, 64, 0, 0, 16, false},    {4, 128, 16, 64, 48, 0, 16, false}, {1, 512, 16, 64, 0, 0, 16, false},
      {2, 200, 4, 16, 0, 0, 4, false},      {3, 384, 8, 128, 100, 0, 8, false}, {1, 2048, 16, 64, 0, 5, 2, true},
      {1, 2048, 32, 128, 256, 30, 2, true}, {2, 1024, 32, 128, 0, 0, 1, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(case_name(c));
    DcmhaShape sh{.B = c.B, .T = c.T, .S = c.T, .N = c.N, .D = c.D, .window = c.W, .compose = false, .chunk = 64};
    const int64_t n = c.B * c.T * c.N * c.D;
    const Shape shp{c.B, c.T, c.N, c.D};
    std::vector<double> q = normal(n, 1.5 / std::sqrt(double(c.D))), k = normal(n, 1.0), v = normal(n, 1.0),
                        dout = normal(n, 1.0), dq0 = normal(n, 0.1), dk0 = normal(n, 0.1), dv0 = normal(n, 0.1);
    Tensor qg = make(q, shp, DType::bf16, gpu()), kg = make(k, shp, DType::bf16, gpu()),
           vg = make(v, shp, DType::bf16, gpu()), dog = make(dout, shp, DType::bf16, gpu());
    // GPU through the dispatch: it must take the cuDNN path.
    const auto before = cuda::cudnn_attention_counters();
    Tensor og = nan_gpu(shp);
    dcmha_forward(sh, qg, kg, vg, Tensor(), og);
    Tensor dqg = make(dq0, shp, DType::bf16, gpu()), dkg = make(dk0, shp, DType::bf16, gpu()),
           dvg = make(dv0, shp, DType::bf16, gpu()), ddw;
    dcmha_backward(sh, qg, kg, vg, Tensor(), dog, dqg, dkg, dvg, ddw);
    const auto after = cuda::cudnn_attention_counters();
    EXPECT_EQ(after.forward - before.forward, 2) << "cuDNN forward did not run (forward + recompute in backward)";
    EXPECT_EQ(after.backward - before.backward, 1) << "cuDNN backward did not run";
    EXPECT_EQ(after.plans_failed, before.plans_failed) << "a cuDNN plan failed to build (see stderr)";
    std::vector<double> o_all = values(og), dq_all = values(dqg), dk_all = values(dkg), dv_all = values(dvg);
    // CPU oracle on heads [h0, h0 + nh), in f32 on the bf16-rounded values.
    const int64_t h0 = c.cpu_h0, nh = c.cpu_heads;
    DcmhaShape hs = sh;
    hs.N = nh;
    const Shape hshp{c.B, c.T, nh, c.D};
    auto sub = [&](const std::vector<double>& x) { return heads(x, c.B, c.T, c.N, c.D, h0, nh); };
    Tensor qc = make(sub(q), hshp, DType::f32, Device::cpu()), kc = make(sub(k), hshp, DType::f32, Device::cpu()),
           vc = make(sub(v), hshp, DType::f32, Device::cpu()), doc = make(sub(dout), hshp, DType::f32, Device::cpu());
    Tensor oc = Tensor::empty(hshp, DType::f32);
    dcmha_forward(hs, qc, kc, vc, Tensor(), oc);
    Tensor dqc = make(sub(dq0), hshp, DType::f32, Device::cpu()), dkc = make(sub(dk0), hshp, DType::f32, Device::cpu()),
           dvc = make(sub(dv0), hshp, DType::f32, Device::cpu()), ddwc;
    dcmha_backward(hs, qc, kc, vc, Tensor(), doc, dqc, dkc, dvc, ddwc);
    expect_close(sub(o_all), values(oc), kTol, "o vs cpu");
    expect_close(sub(dq_all), values(dqc), kTol, "dq vs cpu");
    expect_close(sub(dk_all), values(dkc), kTol, "dk vs cpu");
    expect_close(sub(dv_all), values(dvc), kTol, "dv vs cpu");
    if (c.vs_v1) {
      ScopedEnv v1("DCF_ATTN_IMPL", "v1");
      Tensor o1 = nan_gpu(shp);
      dcmha_forward(sh, qg, kg, vg, Tensor(), o1);
      Tensor dq1 = make(dq0, shp, DType::bf16, gpu()), dk1 = make(dk0, shp, DType::bf16, gpu()),
             dv1 = make(dv0, shp, DType::bf16, gpu()), ddw1;
      dcmha_backward(sh, qg, kg, vg, Tensor(), dog, dq1, dk1, dv1, ddw1);
      expect_close(o_all, values(o1), kTol, "o vs v1 (all heads)");
      expect_close(dq_all, values(dq1), kTol, "dq vs v1 (all heads)");
      expect_close(dk_all, values(dk1), kTol, "dk vs v1 (all heads)");
      expect_close(dv_all, values(dv1), kTol, "dv vs v1 (all heads)");
    }
  }
}

// The direct API: the softmax stats (logsumexp of the allowed scores, computed here in double) and
// the backward overwriting NaN-poisoned gradients.
TEST_F(CudnnAttention, DirectApiStatsAndOverwritingGradients) {
  for (int64_t W : {int64_t(0), int64_t(33)}) {
    const int64_t B = 2, T = 192, N = 3, D = 64;
    SCOPED_TRACE("W" + std::to_string(W));
    DcmhaShape sh{.B = B, .T = T, .S = T, .N = N, .D = D, .window = W, .compose = false};
    const int64_t n = B * T * N * D;
    const Shape shp{B, T, N, D};
    std::vector<double> q = normal(n, 1.5 / std::sqrt(double(D))), k = normal(n, 1.0), v = normal(n, 1.0),
                        dout = normal(n, 1.0);
    Tensor qg = make(q, shp, DType::bf16, gpu()), kg = make(k, shp, DType::bf16, gpu()),
           vg = make(v, shp, DType::bf16, gpu()), dog = make(dout, shp, DType::bf16, gpu());
    Tensor og = nan_gpu(shp);
    Tensor st = Tensor::empty({B, N, T}, DType::f32, Device::cpu());
    for (int64_t i = 0; i < st.numel(); ++i) st.data<float>()[i] = std::nanf("");
    st = st.to(gpu());
    ASSERT_TRUE(cuda::cudnn_attention_forward(sh, qg, kg, vg, og, &st)) << "cuDNN forward refused the shape";
    // Stats in double on the bf16-rounded inputs.
    std::vector<double> qr = values(qg), kr = values(kg), stats(size_t(B * N * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < N; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t lo = W ? std::max<int64_t>(0, t - W + 1) : 0;
          std::vector<double> sc;
          double mx = -std::numeric_limits<double>::infinity();
          for (int64_t s = lo; s <= t; ++s) {
            double a = 0;
            for (int64_t d = 0; d < D; ++d)
              a += qr[size_t(((b * T + t) * N + h) * D + d)] * kr[size_t(((b * T + s) * N + h) * D + d)];
            sc.push_back(a);
            mx = std::max(mx, a);
          }
          double z = 0;
          for (double a : sc) z += std::exp(a - mx);
          stats[size_t((b * N + h) * T + t)] = mx + std::log(z);
        }
    expect_close(values(st), stats, 1e-3, "stats (logsumexp)");
    Tensor dqg = nan_gpu(shp), dkg = nan_gpu(shp), dvg = nan_gpu(shp);
    ASSERT_TRUE(cuda::cudnn_attention_backward(sh, qg, kg, vg, og, st, dog, dqg, dkg, dvg));
    // CPU: zero-initialised gradients.
    Tensor qc = make(q, shp, DType::f32, Device::cpu()), kc = make(k, shp, DType::f32, Device::cpu()),
           vc = make(v, shp, DType::f32, Device::cpu()), doc = make(dout, shp, DType::f32, Device::cpu());
    Tensor oc = Tensor::empty(shp, DType::f32);
    dcmha_forward(sh, qc, kc, vc, Tensor(), oc);
    Tensor dqc = Tensor::zeros(shp, DType::f32), dkc = Tensor::zeros(shp, DType::f32),
           dvc = Tensor::zeros(shp, DType::f32), ddwc;
    dcmha_backward(sh, qc, kc, vc, Tensor(), doc, dqc, dkc, dvc, ddwc);
    expect_close(values(og), values(oc), kTol, "o");
    expect_close(values(dqg), values(dqc), kTol, "dq");
    expect_close(values(dkg), values(dkc), kTol, "dk");
    expect_close(values(dvg), values(dvc), kTol, "dv");
    // Again into fresh poisoned gradients: the fp32 dQ accumulator (scratch from the caching
    // allocator, likely the block the first call used) must start from zero every time.
    Tensor dq2 = nan_gpu(shp), dk2 = nan_gpu(shp), dv2 = nan_gpu(shp);
    ASSERT_TRUE(cuda::cudnn_attention_backward(sh, qg, kg, vg, og, st, dog, dq2, dk2, dv2));
    expect_close(values(dq2), values(dqc), kTol, "dq (second call)");
    expect_close(values(dk2), values(dkc), kTol, "dk (second call)");
  }
}

// DCF_ATTN_IMPL=v1 keeps the dispatch off cuDNN; shapes outside the cuDNN set fall back by themselves.
TEST_F(CudnnAttention, EnvAndUnsupportedShapesUseV1) {
  DcmhaShape sh{.B = 1, .T = 64, .S = 64, .N = 2, .D = 32, .compose = false};
  const Shape shp{1, 64, 2, 32};
  const int64_t n = 64 * 2 * 32;
  Tensor qg = make(normal(n, 0.2), shp, DType::bf16, gpu()), kg = make(normal(n, 1), shp, DType::bf16, gpu()),
         vg = make(normal(n, 1), shp, DType::bf16, gpu());
  Tensor og = nan_gpu(shp);
  {
    ScopedEnv v1("DCF_ATTN_IMPL", "v1");
    const auto before = cuda::cudnn_attention_counters();
    dcmha_forward(sh, qg, kg, vg, Tensor(), og);
    EXPECT_EQ(cuda::cudnn_attention_counters().forward, before.forward);
  }
  std::string why;
  DcmhaShape off = sh;
  off.q_pos0 = 8;
  off.T = 56;
  EXPECT_FALSE(cuda::cudnn_attention_supported(off, DType::bf16, &why));
  EXPECT_NE(why.find("q_pos0"), std::string::npos) << why;
  EXPECT_FALSE(cuda::cudnn_attention_supported(sh, DType::f32, &why));
  DcmhaShape odd = sh;
  odd.D = 20;
  EXPECT_FALSE(cuda::cudnn_attention_supported(odd, DType::bf16, &why));
  EXPECT_TRUE(cuda::cudnn_attention_supported(sh, DType::bf16, &why)) << why;
}

// Needs libcudnn but no GPU: every descriptor and the operation graph of the forward and backward
// graphs finalize (cuDNN checks dims, dtypes and connectivity there), for the shapes the model uses.
TEST(CudnnAttentionGraph, BuildsWithoutADevice) {
  std::string why;
  if (cuda::cudnn_version(&why) == 0) GTEST_SKIP() << "cuDNN not loadable: " << why;
  for (auto [B, T, N, D, W] : std::vector<std::array<int64_t, 5>>{
           {8, 2048, 16, 64, 0}, {2, 2048, 32, 128, 0}, {4, 2048, 16, 64, 256}, {3, 77, 5, 8, 9}}) {
    DcmhaShape sh{.B = B, .T = T, .S = T, .N = N, .D = D, .window = W, .compose = false};
    EXPECT_TRUE(cuda::cudnn_attention_graph_check(sh, &why)) << "B" << B << " T" << T << " N" << N << " D" << D
                                                             << " W" << W << ": " << why;
  }
}

}  // namespace
}  // namespace dcf
