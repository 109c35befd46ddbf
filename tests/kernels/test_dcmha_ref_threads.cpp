// The threaded CPU DCMHA reference of the GPU tests (tests/common/dcmha_ref.h) against one serial call of
// the same reference: global, local and offset-query shapes, Compose on and off, forward and every
// gradient (added onto random initial values, as dcmha_backward's contract says). Differences can only
// come from the order of f32 additions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu_kernels.h"
#include "kernels/ops.h"
#include "tests/common/dcmha_ref.h"

namespace dcf {
namespace {

Tensor randn(const Shape& s, std::mt19937_64& g, double scale) {
  Tensor t = Tensor::empty(s, DType::f32);
  std::normal_distribution<double> nd(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(nd(g));
  return t;
}

// max |a - b| / max |b|.
double rel_max(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    num = std::max(num, std::abs(double(a.data<float>()[i]) - b.data<float>()[i]));
    den = std::max(den, std::abs(double(b.data<float>()[i])));
  }
  return num / std::max(den, 1e-30);
}

struct Case {
  int64_t B, T, S, q_pos0, N, D, window;
  bool compose;
};

class DcmhaRefThreads : public ::testing::TestWithParam<Case> {};

TEST_P(DcmhaRefThreads, MatchesOneSerialCall) {
  const Case c = GetParam();
  std::mt19937_64 g(1234 + uint64_t(c.T) * 7 + uint64_t(c.window));
  DcmhaShape sh{.B = c.B, .T = c.T, .S = c.S, .N = c.N, .D = c.D, .q_pos0 = c.q_pos0, .window = c.window,
                .compose = c.compose, .chunk = 32};
  const int64_t WN = (2 * sh.I + 1) * c.N;
  Tensor q = randn({c.B, c.T, c.N, c.D}, g, 1.0), k = randn({c.B, c.S, c.N, c.D}, g, 1.0);
  Tensor v = randn({c.B, c.S, c.N, c.D}, g, 1.0), dw = randn({c.B, c.S, 4, WN}, g, 0.3);
  Tensor dout = randn({c.B, c.T, c.N, c.D}, g, 1.0);

  Tensor o1 = Tensor::empty({c.B, c.T, c.N, c.D}, DType::f32), o2 = Tensor::empty(o1.shape(), DType::f32);
  cpu::dcmha_forward<float>(sh, q.data<float>(), k.data<float>(), v.data<float>(), dw.data<float>(),
                            o1.data<float>());
  test::dcmha_forward_threads(sh, q, k, v, dw, o2, 3, 16);
  EXPECT_LT(rel_max(o2, o1), 1e-5) << "forward";

  Tensor g1[4] = {randn(q.shape(), g, 0.5), randn(k.shape(), g, 0.5), randn(v.shape(), g, 0.5),
                  randn(dw.shape(), g, 0.5)};
  Tensor g2[4] = {g1[0].clone(), g1[1].clone(), g1[2].clone(), g1[3].clone()};
  cpu::dcmha_backward<float>(sh, q.data<float>(), k.data<float>(), v.data<float>(), dw.data<float>(),
                             dout.data<float>(), g1[0].data<float>(), g1[1].data<float>(), g1[2].data<float>(),
                             g1[3].data<float>());
  test::dcmha_backward_threads(sh, q, k, v, dw, dout, g2[0], g2[1], g2[2], g2[3], 3, 16);
  const char* names[4] = {"dq", "dk", "dv", "ddw"};
  for (int i = 0; i < 4; ++i) EXPECT_LT(rel_max(g2[i], g1[i]), 1e-5) << names[i];
}

INSTANTIATE_TEST_SUITE_P(Shapes, DcmhaRefThreads,
                         ::testing::Values(Case{2, 100, 100, 0, 4, 8, 0, true}, Case{2, 100, 100, 0, 4, 8, 24, true},
                                           Case{1, 70, 130, 60, 8, 8, 0, true}, Case{2, 64, 64, 0, 4, 8, 0, false}));

}  // namespace
}  // namespace dcf
