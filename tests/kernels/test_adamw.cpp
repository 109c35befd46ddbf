// AdamW's fused options against the separate ops they replace: grad_scale against scale_ on the gradient
// first (global-norm clipping), param_copy against cast of the updated param. Bit for bit, f32 and f64.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/ops.h"

using namespace dcf;

namespace {

Tensor random_tensor(std::mt19937_64& rng, DType dt, int64_t n, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) {
    if (dt == DType::f32) t.data<float>()[i] = float(d(rng));
    else t.data<double>()[i] = d(rng);
  }
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * dtype_size(a.dtype())) == 0;
}

// Parameters, gradient and moments of n elements (v positive), drawn from seed.
struct State {
  Tensor p, g, m, v;
};
State random_state(DType dt, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  State st;
  st.p = random_tensor(rng, dt, n, -1, 1);
  st.g = random_tensor(rng, dt, n, -0.3, 0.3);
  st.m = random_tensor(rng, dt, n, -0.01, 0.01);
  st.v = random_tensor(rng, dt, n, 1e-5, 1e-2);
  return st;
}

class AdamWFused : public ::testing::TestWithParam<DType> {};

TEST_P(AdamWFused, GradScaleIsTheGradientScaledFirst) {
  const State st = random_state(GetParam(), 1031, 7);
  const Tensor &p = st.p, &g = st.g, &m = st.m, &v = st.v;
  AdamWParams hp;
  hp.lr = 2e-3;
  hp.step = 5;
  for (double s : {1.0, 0.37}) {
    SCOPED_TRACE(s);
    Tensor p1 = p.clone(), m1 = m.clone(), v1 = v.clone(), g1 = g.clone();
    scale_(g1, s);
    adamw_update(p1, g1, m1, v1, hp);
    Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
    AdamWParams hs = hp;
    hs.grad_scale = s;
    adamw_update(p2, g, m2, v2, hs);
    EXPECT_TRUE(same_bits(p1, p2));
    EXPECT_TRUE(same_bits(m1, m2));
    EXPECT_TRUE(same_bits(v1, v2));
    if (s != 1.0) {  // the scale matters
      Tensor p3 = p.clone(), m3 = m.clone(), v3 = v.clone();
      adamw_update(p3, g, m3, v3, hp);
      EXPECT_FALSE(same_bits(p1, p3));
    }
  }
}

TEST_P(AdamWFused, ParamCopyIsTheCastOfTheUpdate) {
  const DType other = GetParam() == DType::f32 ? DType::f64 : DType::f32;
  const int64_t n = 517;
  State st = random_state(GetParam(), n, 11);
  Tensor &p = st.p, &g = st.g, &m = st.m, &v = st.v;
  AdamWParams hp;
  hp.lr = 1e-3;
  hp.step = 2;
  hp.grad_scale = 0.5;
  Tensor copy = Tensor::zeros({n}, other);
  adamw_update(p, g, m, v, hp, &copy);
  Tensor want = Tensor::empty({n}, other);
  cast(p, want);
  EXPECT_TRUE(same_bits(copy, want));
  Tensor short_copy = Tensor::zeros({n - 1}, other);
  EXPECT_THROW(adamw_update(p, g, m, v, hp, &short_copy), std::exception);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AdamWFused, ::testing::Values(DType::f32, DType::f64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
