// Every op's backward against central finite differences in double precision. The scalar objective
// is L = sum(w * y) for a fixed random w, so dL/dy = w feeds the backward.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "kernels/cpu_kernels.h"
#include "kernels/ops.h"

using namespace dcf;

namespace {

std::mt19937_64& rng() {
  static std::mt19937_64 g(std::random_device{}());
  return g;
}

Tensor randn(const Shape& s, double scale = 1.0) {
  Tensor t = Tensor::empty(s, DType::f64);
  std::normal_distribution<double> nd(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = nd(rng());
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.data<double>()[i] * b.data<double>()[i];
  return s;
}

// Relative error ||analytic - fd|| / ||fd|| over (up to max_n random) elements of x.
double fd_error(Tensor& x, const Tensor& analytic, const std::function<double()>& loss, int max_n = 400) {
  const int64_t n = x.numel();
  std::vector<int64_t> idx;
  if (n <= max_n) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    std::uniform_int_distribution<int64_t> u(0, n - 1);
    for (int i = 0; i < max_n; ++i) idx.push_back(u(rng()));
  }
  double num = 0, den = 0;
  for (int64_t i : idx) {
    double& v = x.data<double>()[i];
    const double h = 1e-5 * std::max(1.0, std::abs(v)), orig = v;
    v = orig + h;
    double lp = loss();
    v = orig - h;
    double lm = loss();
    v = orig;
    double fd = (lp - lm) / (2 * h);
    double d = analytic.data<double>()[i] - fd;
    num += d * d;
    den += fd * fd;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

constexpr double kTol = 1e-6;

}  // namespace

TEST(OpsFiniteDiff, RmsNorm) {
  for (int64_t C : {3, 7, 64}) {
    Tensor x = randn({5, C}), w = randn({C}), dyw = randn({5, C});
    Tensor y = Tensor::empty({5, C}, DType::f64), rstd = Tensor::empty({5}, DType::f64);
    auto loss = [&]() {
      rmsnorm_forward(x, w, y, rstd, 1e-5);
      return dot(y, dyw);
    };
    loss();
    Tensor dx = Tensor::empty({5, C}, DType::f64), dw = Tensor::zeros({C}, DType::f64);
    rmsnorm_backward(dyw, x, w, rstd, dx, &dw);
    EXPECT_LT(fd_error(x, dx, loss), kTol) << "C=" << C;
    EXPECT_LT(fd_error(w, dw, loss), kTol) << "C=" << C;
    // Scale-free variant.
    Tensor none;
    auto loss2 = [&]() {
      rmsnorm_forward(x, none, y, rstd, 1e-6);
      return dot(y, dyw);
    };
    loss2();
    rmsnorm_backward(dyw, x, none, rstd, dx, nullptr);
    EXPECT_LT(fd_error(x, dx, loss2), kTol);
  }
}

TEST(OpsFiniteDiff, Rope) {
  Tensor x = randn({2, 5, 3, 10}), dyw = randn({2, 5, 3, 10});
  for (int64_t rot : {10, 4}) {
    auto loss = [&]() {
      Tensor y = x.clone();
      rope_forward(y, 3, 10000.0, rot);
      return dot(y, dyw);
    };
    Tensor dx = dyw.clone();
    rope_backward(dx, 3, 10000.0, rot);
    EXPECT_LT(fd_error(x, dx, loss), kTol) << "rot=" << rot;
  }
}

TEST(OpsFiniteDiff, SwiGluAndGelu) {
  Tensor g = randn({37}, 2.0), u = randn({37}), dyw = randn({37});
  Tensor y = Tensor::empty({37}, DType::f64);
  auto loss = [&]() {
    swiglu_forward(g, u, y);
    return dot(y, dyw);
  };
  Tensor dg = Tensor::empty({37}, DType::f64), du = Tensor::empty({37}, DType::f64);
  swiglu_backward(dyw, g, u, dg, du);
  EXPECT_LT(fd_error(g, dg, loss), kTol);
  EXPECT_LT(fd_error(u, du, loss), kTol);
  auto loss2 = [&]() {
    gelu_tanh_forward(g, y);
    return dot(y, dyw);
  };
  Tensor dx = Tensor::empty({37}, DType::f64);
  gelu_tanh_backward(dyw, g, dx);
  EXPECT_LT(fd_error(g, dx, loss2), kTol);
}

TEST(OpsFiniteDiff, DynamicWeightFinish) {
  const int64_t R = 3, C = 4, I = 2, N = 5;
  Tensor y = randn({R, C, 2 * I, N}), z = randn({R, C, N}), dyw = randn({R, C, 2 * I + 1, N});
  Tensor dw = Tensor::empty({R, C, 2 * I + 1, N}, DType::f64), rms = Tensor::empty({R, C, I}, DType::f64);
  auto loss = [&]() {
    dynw_finalize_forward(y, z, dw, rms, I, 1e-6);
    return dot(dw, dyw);
  };
  loss();
  Tensor dy = Tensor::empty(y.shape(), DType::f64), dz = Tensor::empty(z.shape(), DType::f64);
  dynw_finalize_backward(dyw, y, dw, rms, dy, dz, I);
  EXPECT_LT(fd_error(y, dy, loss), kTol);
  EXPECT_LT(fd_error(z, dz, loss), kTol);
}

TEST(OpsFiniteDiff, Embedding) {
  Tensor table = randn({11, 6}), dyw = randn({7, 6});
  Tensor ids = Tensor::empty({7}, DType::i32);
  for (int i = 0; i < 7; ++i) ids.data<int32_t>()[i] = (i * 5 + 3) % 14;  // some ids outside the shard [2, 13)
  Tensor out = Tensor::empty({7, 6}, DType::f64);
  auto loss = [&]() {
    embedding_forward(table, ids, out, 2);
    return dot(out, dyw);
  };
  Tensor dt = Tensor::zeros({11, 6}, DType::f64);
  embedding_backward(dyw, ids, dt, 2);
  EXPECT_LT(fd_error(table, dt, loss), kTol);
}

TEST(OpsFiniteDiff, CrossEntropy) {
  const int64_t R = 6, V = 13;
  Tensor logits = randn({R, V}, 3.0);
  Tensor tg = Tensor::empty({R}, DType::i32);
  for (int r = 0; r < R; ++r) tg.data<int32_t>()[r] = (r * 7) % V;
  Tensor mx = Tensor::empty({R}, DType::f64), sum = Tensor::empty({R}, DType::f64), t = Tensor::empty({R}, DType::f64);
  Tensor lse = Tensor::empty({R}, DType::f64);
  auto loss = [&]() {
    ce_row_max(logits, mx);
    ce_row_sumexp(logits, mx, sum);
    ce_target_logit(logits, tg, 0, t);
    double l = 0;
    for (int r = 0; r < R; ++r) {
      lse.data<double>()[r] = mx.data<double>()[r] + std::log(sum.data<double>()[r]);
      l += lse.data<double>()[r] - t.data<double>()[r];
    }
    return l * 0.25;
  };
  loss();
  Tensor dl = Tensor::empty({R, V}, DType::f64);
  ce_backward(logits, tg, lse, 0, 0.25, dl);
  EXPECT_LT(fd_error(logits, dl, loss), kTol);
}

// The DCMHA core: q, k, v and every dynamic weight (pre and post Compose, query- and key-side).
struct CoreCase {
  int64_t B, T, S, N, D, q_pos0, window, chunk;
  bool compose;
};

void PrintTo(const CoreCase& c, std::ostream* os) {
  *os << "B" << c.B << "_T" << c.T << "_S" << c.S << "_N" << c.N << "_D" << c.D << "_q0" << c.q_pos0 << "_W" << c.window
      << (c.compose ? "_compose" : "_plain");
}

class DcmhaFiniteDiff : public ::testing::TestWithParam<CoreCase> {};

TEST_P(DcmhaFiniteDiff, AllInputs) {
  const CoreCase c = GetParam();
  DcmhaShape s{.B = c.B, .T = c.T, .S = c.S, .N = c.N, .D = c.D, .I = 2, .q_pos0 = c.q_pos0, .window = c.window,
               .compose = c.compose, .chunk = c.chunk};
  Tensor q = randn({c.B, c.T, c.N, c.D}), k = randn({c.B, c.S, c.N, c.D}), v = randn({c.B, c.S, c.N, c.D});
  // Dynamic weights of order 0.3 so that every Compose term matters.
  Tensor dw = randn({c.B, c.S, 4, 5, c.N}, 0.3);
  Tensor dyw = randn({c.B, c.T, c.N, c.D});
  Tensor o = Tensor::empty({c.B, c.T, c.N, c.D}, DType::f64);
  auto loss = [&]() {
    dcmha_forward(s, q, k, v, dw, o);
    return dot(o, dyw);
  };
  loss();
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64),
         dv = Tensor::zeros(v.shape(), DType::f64), ddw = Tensor::zeros(dw.shape(), DType::f64);
  dcmha_backward(s, q, k, v, dw, dyw, dq, dk, dv, ddw);
  EXPECT_LT(fd_error(q, dq, loss), kTol);
  EXPECT_LT(fd_error(k, dk, loss), kTol);
  EXPECT_LT(fd_error(v, dv, loss), kTol);
  if (c.compose) {
    EXPECT_LT(fd_error(dw, ddw, loss, 800), kTol);
    // Compose must change the output (the test would be blind to it otherwise).
    DcmhaShape plain = s;
    plain.compose = false;
    Tensor o2 = Tensor::empty(o.shape(), DType::f64);
    dcmha_forward(plain, q, k, v, dw, o2);
    dcmha_forward(s, q, k, v, dw, o);
    double diff = 0, ref = 0;
    for (int64_t i = 0; i < o.numel(); ++i) {
      diff += std::pow(o.data<double>()[i] - o2.data<double>()[i], 2);
      ref += std::pow(o2.data<double>()[i], 2);
    }
    EXPECT_GT(std::sqrt(diff / ref), 0.05);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DcmhaFiniteDiff,
    ::testing::Values(CoreCase{2, 9, 9, 3, 4, 0, 0, 4, true},     // global, odd sizes, several chunks
                      CoreCase{1, 11, 11, 4, 6, 0, 3, 5, true},   // local window of 3 keys
                      CoreCase{2, 5, 12, 3, 4, 7, 0, 2, true},    // query rows 7..11 of 12 (TP row block)
                      CoreCase{1, 6, 13, 2, 4, 5, 4, 3, true},    // row block + window
                      CoreCase{2, 9, 9, 3, 4, 0, 0, 4, false},    // plain MHA
                      CoreCase{1, 10, 10, 2, 8, 0, 4, 3, false}));  // plain MHA, local

// Chunking must not change the result.
TEST(Dcmha, ChunkSizeInvariant) {
  DcmhaShape s{.B = 2, .T = 23, .S = 23, .N = 4, .D = 8, .window = 7};
  Tensor q = randn({2, 23, 4, 8}), k = randn({2, 23, 4, 8}), v = randn({2, 23, 4, 8}), dw = randn({2, 23, 4, 5, 4}, 0.3);
  Tensor o1 = Tensor::empty(q.shape(), DType::f64), o2 = Tensor::empty(q.shape(), DType::f64);
  s.chunk = 23;
  dcmha_forward(s, q, k, v, dw, o1);
  s.chunk = 3;
  dcmha_forward(s, q, k, v, dw, o2);
  for (int64_t i = 0; i < o1.numel(); ++i) ASSERT_NEAR(o1.data<double>()[i], o2.data<double>()[i], 1e-12);
}
