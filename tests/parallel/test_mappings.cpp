// The named TP mappings and the query-sharded DCMHA core, across real MPI ranks.
// - Every mapping's forward against its definition, and its backward as the adjoint of the forward
//   (dot-product test: sum_r <f(x)_r, y_r> = sum_r <x_r, f^T(y)_r>).
// - The TP DCMHA core (Q all-to-all, K/V all-gather, zig-zag rows, O all-to-all; the mirror in
//   backward) against the single-process core on the whole problem, forward and every gradient.
// - Its traffic equals the O(T*E) byte formula and grows linearly in T.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <random>

#include "kernels/rng.h"
#include "parallel/mappings.h"
#include "parallel/mpi_communicator.h"
#include "parallel/tensor_parallel.h"

using namespace dcf;

namespace {

MpiCommunicator& world() {
  static MpiCommunicator w(MPI_COMM_WORLD, "world");
  return w;
}

// Same values on every rank for (seed, tag); different tags give independent tensors.
Tensor seeded(const Shape& s, uint64_t tag, double scale = 1.0) {
  Tensor t = Tensor::empty(s, DType::f32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(scale * philox_normal(777, tag, uint64_t(i)));
  return t;
}

double dot_all(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double(a.data<float>()[i]) * b.data<float>()[i];
  Tensor t = Tensor::empty({1}, DType::f64);
  t.data<double>()[0] = s;
  world().all_reduce(t, ReduceOp::sum);
  return t.data<double>()[0];
}

double dot_local(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double(a.data<float>()[i]) * b.data<float>()[i];
  return s;
}

double rel_diff(const Tensor& a, const Tensor& b) {
  double n = 0, d = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double x = a.data<float>()[i], y = b.data<float>()[i];
    n += (x - y) * (x - y);
    d += y * y;
  }
  return std::sqrt(n / std::max(d, 1e-30));
}

}  // namespace

TEST(Mappings, ScatterGatherForwardAndAdjoint) {
  auto& c = world();
  const int P = c.size(), r = c.rank();
  Tensor full = seeded({3, 4 * P, 5}, 1);
  Tensor mine = scatter_along_dim_forward(full, 1, c);
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t j = 0; j < 4; ++j)
      for (int64_t k = 0; k < 5; ++k)
        ASSERT_EQ(mine.data<float>()[(a * 4 + j) * 5 + k], full.data<float>()[(a * 4 * P + r * 4 + j) * 5 + k]);
  Tensor back = gather_along_dim_forward(mine, 1, c);
  EXPECT_EQ(rel_diff(back, full), 0.0);
  // Adjoints. A replicated tensor is one logical variable (its inner product is counted once, on this
  // rank); per-rank tensors are independent variables (inner products summed over ranks).
  // gather: per-rank shards -> replicated whole; its transpose keeps this rank's slice.
  Tensor x = seeded({2, 3, 2}, 10 + uint64_t(r)), y = seeded({2, 3 * P, 2}, 20);
  EXPECT_NEAR(dot_local(gather_along_dim_forward(x, 1, c), y), dot_all(x, gather_along_dim_backward(y, 1, c)), 1e-4);
  // scatter: replicated whole -> per-rank slices; its transpose gathers.
  Tensor x2 = seeded({2, 3 * P, 2}, 30), y2 = seeded({2, 3, 2}, 40 + uint64_t(r));
  EXPECT_NEAR(dot_all(scatter_along_dim_forward(x2, 1, c), y2), dot_local(x2, scatter_along_dim_backward(y2, 1, c)),
              1e-4);
}

TEST(Mappings, CopyAndReduceAreAdjoint) {
  auto& c = world();
  Tensor x = seeded({17}, 50 + uint64_t(c.rank())), y = seeded({17}, 60 + uint64_t(c.rank()));
  // reduce_from_tp: y_r = sum_s x_s on every rank.
  Tensor fx = x.clone();
  reduce_from_tp_forward(fx, c);
  Tensor expect = Tensor::zeros({17}, DType::f32);
  for (int s = 0; s < c.size(); ++s) add_(expect, seeded({17}, 50 + uint64_t(s)));
  EXPECT_LT(rel_diff(fx, expect), 1e-6);
  // Adjoint of reduce_from_tp (per-rank x -> replicated sum): identity on the replicated gradient.
  Tensor yr = seeded({17}, 65), by = yr.clone();
  reduce_from_tp_backward(by, c);
  EXPECT_NEAR(dot_local(fx, yr), dot_all(x, by), 1e-3);
  // copy_to_tp (replicated x -> per-rank copies) is its transpose: backward sums the copies' gradients.
  Tensor xr = seeded({17}, 66), cx = xr.clone(), cy = y.clone();
  copy_to_tp_forward(cx, c);
  copy_to_tp_backward(cy, c);
  EXPECT_NEAR(dot_all(cx, y), dot_local(xr, cy), 1e-3);
}

TEST(Mappings, AllToAllForwardAndAdjoint) {
  auto& c = world();
  const int P = c.size(), r = c.rank();
  // Rank r holds heads [r*2, r*2+2) for all 4P rows; after the exchange, all 2P heads for rows [4r, 4r+4).
  Tensor full = seeded({4 * P, 2 * P, 3}, 70);
  Tensor mine = split_along_dim(full, 1, P, r);
  Tensor rows = all_to_all_forward(mine, 0, 1, c);
  EXPECT_EQ(rel_diff(rows, split_along_dim(full, 0, P, r)), 0.0);
  Tensor x = seeded({4 * P, 2, 3}, 80 + uint64_t(r)), y = seeded({4, 2 * P, 3}, 90 + uint64_t(r));
  EXPECT_NEAR(dot_all(all_to_all_forward(x, 0, 1, c), y), dot_all(x, all_to_all_backward(y, 0, 1, c)), 1e-3);
}

// The TP DCMHA core against the one-process core on the same whole problem.
class TpCore : public ::testing::TestWithParam<int64_t> {};

TEST_P(TpCore, MatchesSingleProcessAndMovesLinearBytes) {
  auto& c = world();
  const int P = c.size(), r = c.rank();
  const int64_t B = 2, T = 8 * P, N = 2 * P, D = 4, I = 2, W = GetParam();
  DcmhaShape full{.B = B, .T = T, .S = T, .N = N, .D = D, .I = I, .window = W, .chunk = 5};
  Tensor q = seeded({B, T, N, D}, 100), k = seeded({B, T, N, D}, 101), v = seeded({B, T, N, D}, 102);
  Tensor dw = seeded({B, T, 4, 2 * I + 1, N}, 103, 0.3), dout = seeded({B, T, N, D}, 104);
  Tensor o = Tensor::empty(q.shape(), DType::f32);
  dcmha_forward(full, q, k, v, dw, o);
  Tensor dq = Tensor::zeros(q.shape(), DType::f32), dk = Tensor::zeros(q.shape(), DType::f32),
         dv = Tensor::zeros(q.shape(), DType::f32), ddw = Tensor::zeros(dw.shape(), DType::f32);
  dcmha_backward(full, q, k, v, dw, dout, dq, dk, dv, ddw);
  // This rank's heads.
  auto heads = [&](const Tensor& t) { return split_along_dim(t, 2, P, r); };
  auto tp = make_tensor_parallel_ops(c);
  DcmhaShape local = full;
  local.N = N / P;
  Tensor o_tp = Tensor::empty(heads(q).shape(), DType::f32);
  c.reset_bytes();
  tp->dcmha_core_forward(local, heads(q), heads(k), heads(v), dw, o_tp);
  const uint64_t fwd_bytes = c.bytes_sent();
  EXPECT_LT(rel_diff(o_tp, heads(o)), 1e-5);
  Tensor dq_tp = Tensor::zeros(o_tp.shape(), DType::f32), dk_tp = Tensor::zeros(o_tp.shape(), DType::f32),
         dv_tp = Tensor::zeros(o_tp.shape(), DType::f32), ddw_tp = Tensor::zeros(dw.shape(), DType::f32);
  tp->dcmha_core_backward(local, heads(q), heads(k), heads(v), dw, heads(dout), dq_tp, dk_tp, dv_tp, ddw_tp);
  tp->sum_partials(ddw_tp);
  EXPECT_LT(rel_diff(dq_tp, heads(dq)), 1e-5);
  EXPECT_LT(rel_diff(dk_tp, heads(dk)), 1e-5);
  EXPECT_LT(rel_diff(dv_tp, heads(dv)), 1e-5);
  EXPECT_LT(rel_diff(ddw_tp, ddw), 1e-5);
  // Forward traffic per rank: Q and O all-to-all ((P-1)/P of the local [B,T,N/P,D] each) plus the K
  // and V all-gathers ((P-1) local chunks each): O(T*E), independent of T^2.
  const uint64_t local_bytes = uint64_t(B * T * (N / P) * D) * 4;
  const uint64_t expect = 2 * local_bytes * uint64_t(P - 1) / uint64_t(P) + 2 * local_bytes * uint64_t(P - 1);
  EXPECT_EQ(fwd_bytes, expect);
  if (r == 0)
    std::printf("tp=%d T=%lld window=%lld: forward exchange %llu bytes per rank (formula %llu)\n", P, (long long)T,
                (long long)W, (unsigned long long)fwd_bytes, (unsigned long long)expect);
}

INSTANTIATE_TEST_SUITE_P(Windows, TpCore, ::testing::Values(int64_t(0), int64_t(5)));
