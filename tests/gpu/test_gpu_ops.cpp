// Every CUDA op against its CPU twin (kernels/*_cpu.cpp) on fresh random inputs: several shapes,
// odd sizes, f32 / bf16 (and f64 where supported). bf16 inputs are rounded once on the host and the
// CPU oracle runs in f32 on exactly those rounded values. Outputs are poisoned with NaN before each
// GPU call, so an unwritten element fails the test. Errors are measured as ||gpu - cpu|| / ||cpu||.
// The seed comes from the clock and is printed; DCF_TEST_SEED=<n> repeats a run.
// Without a usable GPU every test skips with the driver's reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda_ops.h"      // defines: dcf::cuda::gemm_ex (mixed output), cast
#include "kernels/cuda_runtime.h"  // defines: cuda_available, init, memory_stats, StreamGuard
#include "kernels/ops.h"           // defines: the op set, dispatched by device
#include "kernels/profile.h"       // defines: DCF_RANGE, prof::enable, prof::collect
#include "tests/gpu/gpu_test_util.h"

namespace dcf {
namespace {

// ---- seed, bf16 and host helpers ---------------------------------------------------------------

uint64_t run_seed() { return gpu_test::run_seed("gpu-ops"); }

uint64_t fnv(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

using gpu_test::bf16_to_f32;
using gpu_test::f32_to_bf16;
using gpu_test::gpu;
using gpu_test::values;

Tensor convert(const Tensor& src, DType dt) {
  std::vector<double> v = values(src);
  Tensor t = Tensor::empty(src.shape(), dt);
  for (size_t i = 0; i < v.size(); ++i) {
    switch (dt) {
      case DType::f32: t.data<float>()[i] = float(v[i]); break;
      case DType::f64: t.data<double>()[i] = v[i]; break;
      case DType::bf16: t.data<uint16_t>()[i] = f32_to_bf16(float(v[i])); break;
      default: ADD_FAILURE() << "convert(): dtype " << dtype_name(dt);
    }
  }
  return t;
}

DType oracle_dtype(DType dt) { return dt == DType::f64 ? DType::f64 : DType::f32; }
// What the CPU twin gets: the values the GPU sees (rounded to dt), in f32 (f64 for f64).
Tensor oracle(const Tensor& master, DType dt) { return convert(convert(master, dt), oracle_dtype(dt)); }
// What the GPU gets.
Tensor on_gpu(const Tensor& master, DType dt) { return convert(master, dt).to(gpu()); }

Tensor nan_gpu(const Shape& s, DType dt) {
  Tensor h = Tensor::empty(s, dt);
  for (int64_t i = 0; i < h.numel(); ++i) {
    switch (dt) {
      case DType::f32: h.data<float>()[i] = std::nanf(""); break;
      case DType::f64: h.data<double>()[i] = std::nan(""); break;
      case DType::bf16: h.data<uint16_t>()[i] = 0x7fc0; break;
      default: ADD_FAILURE();
    }
  }
  return h.to(gpu());
}

Tensor ids_tensor(const std::vector<int32_t>& ids) {
  Tensor t = Tensor::empty({int64_t(ids.size())}, DType::i32);
  for (size_t i = 0; i < ids.size(); ++i) t.data<int32_t>()[i] = ids[i];
  return t;
}

double tol_elementwise(DType dt) { return dt == DType::f64 ? 1e-12 : dt == DType::f32 ? 1e-5 : 1e-2; }
double tol_reduction(DType dt) { return dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 1e-4 : 1e-2; }

// ||got - ref|| / max(||ref||, den_floor); any non-finite element of got where ref is finite fails
// (an unwritten output). den_floor gives the scale where ref itself is a cancellation.
void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what, double den_floor = 0) {
  std::vector<double> g = values(got), r = values(ref);
  ASSERT_EQ(g.size(), r.size()) << what;
  double num = 0, den = 0;
  int64_t bad = -1, nbad = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i]) && std::isfinite(r[i])) {
      if (bad < 0) bad = int64_t(i);
      ++nbad;
      continue;
    }
    if (!std::isfinite(r[i])) continue;
    num += (g[i] - r[i]) * (g[i] - r[i]);
    den += r[i] * r[i];
  }
  EXPECT_EQ(nbad, 0) << what << ": " << nbad << " non-finite (unwritten?) elements, first at " << bad;
  double rel = std::sqrt(num) / std::max({std::sqrt(den), den_floor, 1e-30});
  if (den == 0 && den_floor == 0) rel = std::sqrt(num);
  EXPECT_LE(rel, tol) << what << ": relative error " << rel << " over " << g.size() << " elements";
}

// ---- fixtures -----------------------------------------------------------------------------------

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::cuda_available(&why)) GTEST_SKIP() << "no usable GPU: " << why;
    cuda::init();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    rng_.seed(run_seed() ^ fnv(std::string(info->test_suite_name()) + "." + info->name()));
  }
  // CPU f64 "master" values.
  Tensor normal(const Shape& s, double scale = 1.0, double mean = 0.0) {
    std::normal_distribution<double> d(mean, scale);
    Tensor t = Tensor::empty(s, DType::f64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = d(rng_);
    return t;
  }
  Tensor uniform(const Shape& s, double lo, double hi) {
    std::uniform_real_distribution<double> d(lo, hi);
    Tensor t = Tensor::empty(s, DType::f64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = d(rng_);
    return t;
  }
  int32_t rand_int(int64_t lo, int64_t hi) {  // [lo, hi)
    return int32_t(std::uniform_int_distribution<int64_t>(lo, hi - 1)(rng_));
  }
  std::mt19937_64 rng_;
};

class GpuOps : public GpuTest, public ::testing::WithParamInterface<DType> {};

std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

const auto kAllFloat = ::testing::Values(DType::f32, DType::bf16, DType::f64);

// ---- runtime -----------------------------------------------------------------------------------

TEST(GpuRuntime, AvailabilityHasReason) {
  std::string why;
  if (!cuda::cuda_available(&why)) {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << "no usable GPU: " << why;
  }
  int dev = cuda::init();
  EXPECT_GE(dev, 0);
  EXPECT_TRUE(device_allocator_registered());
}

TEST_F(GpuTest, CheckedCallsNameFileAndLine) {
  try {
    DCF_CUDA_CHECK(cudaErrorInvalidDevice);  // a status, not a failing call: the sanitizer stays quiet
    FAIL() << "no throw";
  } catch (const DcfError& e) {
    EXPECT_NE(std::string(e.what()).find("test_gpu_ops.cpp:"), std::string::npos) << e.what();
  }
  // An op given a tensor of the wrong kind names it.
  Tensor table = on_gpu(normal({4, 3}), DType::f32), out = nan_gpu({2, 3}, DType::f32);
  Tensor bad_ids = on_gpu(normal({2}), DType::f32);
  EXPECT_THROW(embedding_forward(table, bad_ids, out), DcfError);
}

TEST_F(GpuTest, AllocatorCachesAndCopies) {
  auto before = cuda::memory_stats();
  void* first = nullptr;
  for (int it = 0; it < 50; ++it) {
    Tensor t = Tensor::empty({123457 + it % 3}, DType::f32, gpu());  // an odd size no other test uses
    if (it == 0) first = t.raw();
    EXPECT_EQ(t.raw(), first) << "iteration " << it;
    Tensor big = Tensor::empty({int64_t(3) << 20}, DType::bf16, gpu());
  }
  auto after = cuda::memory_stats();
  EXPECT_LE(after.num_device_mallocs - before.num_device_mallocs, 2u) << "the cache should serve repeats";
  EXPECT_GE(after.peak_allocated_bytes, size_t(6) << 20);
  // Round trips and zero_ through the hooks.
  Tensor h = convert(normal({12345}), DType::f32);
  Tensor d = h.to(gpu());
  Tensor d2 = d.clone();
  expect_close(d2.to(Device::cpu()), h, 0.0, "host->device->device->host");
  d2.zero_();
  for (double x : values(d2)) ASSERT_EQ(x, 0.0);
  // A side stream as the current stream.
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  {
    cuda::StreamGuard guard(s);
    Tensor y = d.clone();
    add_(y, d, 2.0);
    cuda::synchronize();
    Tensor ref = h.clone();
    add_(ref, h, 2.0);
    expect_close(y, ref, 1e-7, "add_ on a side stream");
  }
  cudaStreamDestroy(s);
}

// ---- GEMM ---------------------------------------------------------------------------------------

TEST_P(GpuOps, Matmul) {
  const DType dt = GetParam();
  const std::vector<std::array<int64_t, 3>> shapes = {{1, 1, 1}, {7, 5, 3}, {17, 33, 9}, {64, 128, 256}, {257, 129, 65}};
  for (auto [M, N, K] : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int ab = 0; ab < 2; ++ab) {
          SCOPED_TRACE(testing::Message() << "M" << M << " N" << N << " K" << K << " ta" << ta << " tb" << tb);
          double alpha = ab ? 0.5 : 1.0, beta = ab ? 0.75 : 0.0;
          Tensor a = normal(ta ? Shape{K, M} : Shape{M, K}), b = normal(tb ? Shape{N, K} : Shape{K, N});
          Tensor c0 = normal({M, N});
          Tensor ref = oracle(c0, dt);
          matmul(oracle(a, dt), ta, oracle(b, dt), tb, ref, alpha, beta);
          Tensor c = beta == 0 ? nan_gpu({M, N}, dt) : on_gpu(c0, dt);  // beta = 0 must not read C
          matmul(on_gpu(a, dt), ta, on_gpu(b, dt), tb, c, alpha, beta);
          // The floor keeps a tiny product (e.g. 1x1x1 with alpha a b + beta c near 0) from failing on
          // an ulp of its terms; typical entries are O(1).
          expect_close(c, ref, dt == DType::bf16 ? 1e-2 : dt == DType::f32 ? 2e-5 : 1e-12, "matmul",
                       1e-2 * std::sqrt(double(M * N)));
        }
}

TEST_P(GpuOps, GemmExStridedSubmatrices) {
  const DType dt = GetParam();
  // Sub-matrices at odd offsets with leading dimensions larger than the widths, and K = 0.
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{5, 7, 3}, {33, 17, 65}, {128, 96, 64}, {9, 4, 0}}) {
    SCOPED_TRACE(testing::Message() << "M" << M << " N" << N << " K" << K);
    int64_t lda = K + 3, ldb = N + 5, ldc = N + 1, aoff = 7, boff = 3, coff = 11;
    Tensor a = normal({aoff + M * lda}), b = normal({boff + std::max<int64_t>(K, 1) * ldb}), c0 = normal({coff + M * ldc});
    Tensor ref = oracle(c0, dt);
    gemm_ex(false, false, M, N, K, 1.5, oracle(a, dt), aoff, lda, oracle(b, dt), boff, ldb, 0.5, ref, coff, ldc);
    Tensor c = on_gpu(c0, dt);
    gemm_ex(false, false, M, N, K, 1.5, on_gpu(a, dt), aoff, lda, on_gpu(b, dt), boff, ldb, 0.5, c, coff, ldc);
    expect_close(c, ref, dt == DType::bf16 ? 1e-2 : dt == DType::f32 ? 2e-5 : 1e-12, "gemm_ex");
  }
}

// Ranges on the device clock (kernels/profile.h): a range around GPU-bound work times what a CUDA event pair
// recorded around the same work on the same stream times, and the ranges nested in it add up to most of it.
TEST_F(GpuTest, ProfileRangesMatchAnEventPairAroundTheSameWork) {
  const int64_t n = 4096;
  Tensor a = Tensor::zeros({n, n}, DType::bf16, gpu()), b = Tensor::zeros({n, n}, DType::bf16, gpu());
  Tensor c = Tensor::empty({n, n}, DType::bf16, gpu());
  matmul(a, false, b, false, c);  // warm-up: library load and plan outside the measurement
  cudaEvent_t e0, e1;
  DCF_CUDA_CHECK(cudaEventCreate(&e0));
  DCF_CUDA_CHECK(cudaEventCreate(&e1));
  prof::enable(prof::Clock::device);
  cuda::synchronize();
  DCF_CUDA_CHECK(cudaEventRecord(e0, cuda::current_stream()));
  {
    DCF_RANGE("outer");
    for (int i = 0; i < 8; ++i) matmul(a, false, b, false, c);
  }
  DCF_CUDA_CHECK(cudaEventRecord(e1, cuda::current_stream()));
  DCF_CUDA_CHECK(cudaEventSynchronize(e1));
  float ev_ms = 0;
  DCF_CUDA_CHECK(cudaEventElapsedTime(&ev_ms, e0, e1));
  const auto entries = prof::collect();
  prof::enable(prof::Clock::off);
  DCF_CUDA_CHECK(cudaEventDestroy(e0));
  DCF_CUDA_CHECK(cudaEventDestroy(e1));
  ASSERT_EQ(entries.size(), 2u);
  const prof::Entry &outer = entries[0], &gemm = entries[1];
  ASSERT_EQ(outer.path, "outer");
  ASSERT_EQ(gemm.path, "outer/gemm");
  EXPECT_EQ(gemm.count, 8);
  EXPECT_NEAR(outer.total_ms, ev_ms, 0.05 * ev_ms + 0.02) << "event pair " << ev_ms << " ms";
  EXPECT_LE(gemm.total_ms, outer.total_ms + 1e-3);
  EXPECT_GT(gemm.total_ms, 0.8 * outer.total_ms);  // eight back-to-back GEMMs: the stream never idles
  EXPECT_NEAR(outer.self_ms, outer.total_ms - gemm.total_ms, 1e-9);
}

TEST_F(GpuTest, GemmBf16InFp32Out) {
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{3, 5, 7}, {100, 33, 129}}) {
    Tensor a = normal({M, K}), b = normal({N, K});
    Tensor ref = Tensor::empty({M, N}, DType::f32);
    matmul(oracle(a, DType::bf16), false, oracle(b, DType::bf16), true, ref);
    Tensor c = nan_gpu({M, N}, DType::f32);
    cuda::gemm_ex(false, true, M, N, K, 1.0, on_gpu(a, DType::bf16), 0, K, on_gpu(b, DType::bf16), 0, K, 0.0, c, 0, N);
    expect_close(c, ref, 1e-5, "bf16 x bf16 -> f32");  // only the summation order differs
  }
}

// ---- elementwise ----------------------------------------------------------------------------------

TEST_P(GpuOps, AddScaleSumSquares) {
  const DType dt = GetParam();
  for (int64_t n : {1, 1000, 100003}) {
    SCOPED_TRACE(n);
    Tensor y0 = normal({n}), x = normal({n});
    Tensor ref = oracle(y0, dt);
    add_(ref, oracle(x, dt), -0.3);
    Tensor y = on_gpu(y0, dt);
    add_(y, on_gpu(x, dt), -0.3);
    expect_close(y, ref, tol_elementwise(dt), "add_");
    scale_(ref, 1.7);
    scale_(y, 1.7);
    expect_close(y, ref, tol_elementwise(dt), "scale_");
    Tensor xs = oracle(x, dt);
    double want = sum_squares(xs), got = sum_squares(on_gpu(x, dt));
    EXPECT_NEAR(got, want, 1e-9 * want) << "sum_squares";
  }
}

TEST_F(GpuTest, CastRoundsLikeTheHost) {
  Tensor m = normal({10007}, 3.0);
  Tensor f = on_gpu(m, DType::f32), b = nan_gpu({10007}, DType::bf16), d = nan_gpu({10007}, DType::f64);
  cuda::cast(f, b);
  expect_close(b, convert(m, DType::bf16), 0.0, "f32 -> bf16 (round to nearest even)");
  cuda::cast(b, d);
  expect_close(d, convert(convert(m, DType::bf16), DType::f64), 0.0, "bf16 -> f64");
}

TEST_P(GpuOps, Embedding) {
  const DType dt = GetParam();
  for (auto [V, E, R, off] : std::vector<std::array<int64_t, 4>>{{37, 1, 1, 0}, {37, 64, 50, 0}, {101, 129, 1000, 50}, {5, 300, 64, 3}}) {
    SCOPED_TRACE(testing::Message() << "V" << V << " E" << E << " R" << R << " off" << off);
    std::vector<int32_t> ids(R);
    for (auto& i : ids) i = rand_int(off - 5, off + V + 5);  // some outside this shard, many repeats
    Tensor idt = ids_tensor(ids);
    Tensor table = normal({V, E});
    Tensor ref = Tensor::empty({R, E}, oracle_dtype(dt));
    embedding_forward(oracle(table, dt), idt, ref, off);
    Tensor out = nan_gpu({R, E}, dt);
    embedding_forward(on_gpu(table, dt), idt.to(gpu()), out, off);
    expect_close(out, ref, 0.0, "embedding_forward");  // a copy: exact
    Tensor dout = normal({R, E}), dtab0 = normal({V, E});
    Tensor dref = oracle(dtab0, dt);
    embedding_backward(oracle(dout, dt), idt, dref, off);
    Tensor dtab = on_gpu(dtab0, dt);
    embedding_backward(on_gpu(dout, dt), idt.to(gpu()), dtab, off);
    expect_close(dtab, dref, tol_elementwise(dt), "embedding_backward");
  }
}

TEST_P(GpuOps, RmsNorm) {
  const DType dt = GetParam();
  const DType st = dt == DType::f64 ? DType::f64 : DType::f32;  // fp32 statistics for bf16
  for (auto [R, C] : std::vector<std::array<int64_t, 2>>{{1, 1}, {3, 7}, {64, 64}, {33, 1025}, {5, 4096}, {1000, 96}})
    for (int with_w = 0; with_w < 2; ++with_w) {
      SCOPED_TRACE(testing::Message() << "R" << R << " C" << C << " w" << with_w);
      Tensor x = normal({R, C}, 2.0, 0.3), w = normal({C}, 0.5, 1.0), dy = normal({R, C}), dw0 = normal({C});
      Tensor wo = with_w ? oracle(w, dt) : Tensor(), wg = with_w ? on_gpu(w, dt) : Tensor();
      Tensor yref = Tensor::empty({R, C}, oracle_dtype(dt)), rref = Tensor::empty({R}, oracle_dtype(dt));
      rmsnorm_forward(oracle(x, dt), wo, yref, rref, 1e-5);
      Tensor y = nan_gpu({R, C}, dt), rstd = nan_gpu({R}, st);
      rmsnorm_forward(on_gpu(x, dt), wg, y, rstd, 1e-5);
      expect_close(y, yref, tol_elementwise(dt), "rmsnorm y");
      expect_close(rstd, rref, dt == DType::f64 ? 1e-12 : 1e-6, "rmsnorm rstd");
      // Backward from the same rstd on both sides.
      Tensor dxref = Tensor::empty({R, C}, oracle_dtype(dt)), dwref = oracle(dw0, dt);
      rmsnorm_backward(oracle(dy, dt), oracle(x, dt), wo, rref, dxref, with_w ? &dwref : nullptr);
      Tensor dx = nan_gpu({R, C}, dt), dw = on_gpu(dw0, dt), rg = convert(rref, st).to(gpu());
      rmsnorm_backward(on_gpu(dy, dt), on_gpu(x, dt), wg, rg, dx, with_w ? &dw : nullptr);
      // For C = 1, dx = rstd dy eps / (x^2 + eps) is pure cancellation: measure against |rstd dy|.
      double floor = 0;
      if (C == 1) {
        std::vector<double> dyv = values(oracle(dy, dt)), rv = values(rref);
        for (int64_t r = 0; r < R; ++r) floor += dyv[r] * rv[r] * dyv[r] * rv[r];
        floor = std::sqrt(floor);
      }
      expect_close(dx, dxref, tol_reduction(dt), "rmsnorm dx", floor);
      if (with_w) expect_close(dw, dwref, tol_reduction(dt), "rmsnorm dw");
    }
}

TEST_P(GpuOps, Rope) {
  const DType dt = GetParam();
  for (auto [B, T, H, D, rot] : std::vector<std::array<int64_t, 5>>{
           {1, 1, 1, 2, 2}, {2, 17, 3, 64, 64}, {1, 33, 2, 128, 32}, {2, 9, 4, 10, 6}, {3, 257, 5, 16, 16}})
    for (int64_t pos0 : {0, 1000}) {
      SCOPED_TRACE(testing::Message() << "B" << B << " T" << T << " H" << H << " D" << D << " rot" << rot << " pos0" << pos0);
      Tensor x = normal({B, T, H, D});
      Tensor ref = oracle(x, dt);
      rope_forward(ref, pos0, 10000.0, rot);
      Tensor g = on_gpu(x, dt);
      rope_forward(g, pos0, 10000.0, rot);
      expect_close(g, ref, tol_elementwise(dt), "rope_forward");
      Tensor dref = oracle(x, dt);
      rope_backward(dref, pos0, 10000.0, rot);
      Tensor dg = on_gpu(x, dt);
      rope_backward(dg, pos0, 10000.0, rot);
      expect_close(dg, dref, tol_elementwise(dt), "rope_backward");
    }
}

TEST_P(GpuOps, SwigluAndGelu) {
  const DType dt = GetParam();
  const DType od = oracle_dtype(dt);
  // expf/tanhf differ from the host's by an ulp or two, and the derivatives cross zero (GELU' near
  // x = -0.75, SwiGLU's near g = -1.28): compare against the O(1) scale of the values, not a single
  // element's size, and allow f32 a little more than plain arithmetic.
  const double tol = dt == DType::f32 ? 5e-5 : tol_elementwise(dt);
  for (int64_t n : {1, 1001, 65537}) {
    SCOPED_TRACE(n);
    const double fl = 0.1 * std::sqrt(double(n));
    Tensor g = normal({n}, 3.0), u = normal({n}), d = normal({n});
    Tensor oref = Tensor::empty({n}, od), out = nan_gpu({n}, dt);
    swiglu_forward(oracle(g, dt), oracle(u, dt), oref);
    swiglu_forward(on_gpu(g, dt), on_gpu(u, dt), out);
    expect_close(out, oref, tol, "swiglu_forward", fl);
    Tensor dgr = Tensor::empty({n}, od), dur = Tensor::empty({n}, od), dgg = nan_gpu({n}, dt), dug = nan_gpu({n}, dt);
    swiglu_backward(oracle(d, dt), oracle(g, dt), oracle(u, dt), dgr, dur);
    swiglu_backward(on_gpu(d, dt), on_gpu(g, dt), on_gpu(u, dt), dgg, dug);
    expect_close(dgg, dgr, tol, "swiglu dgate", fl);
    expect_close(dug, dur, tol, "swiglu dup", fl);
    Tensor yr = Tensor::empty({n}, od), yg = nan_gpu({n}, dt);
    gelu_tanh_forward(oracle(g, dt), yr);
    gelu_tanh_forward(on_gpu(g, dt), yg);
    expect_close(yg, yr, tol, "gelu_tanh_forward", fl);
    Tensor dxr = Tensor::empty({n}, od), dxg = nan_gpu({n}, dt);
    gelu_tanh_backward(oracle(d, dt), oracle(g, dt), dxr);
    gelu_tanh_backward(on_gpu(d, dt), on_gpu(g, dt), dxg);
    expect_close(dxg, dxr, tol, "gelu_tanh_backward", fl);
  }
}

TEST_P(GpuOps, DynamicWeights) {
  const DType dt = GetParam();
  const DType od = oracle_dtype(dt), st = dt == DType::f64 ? DType::f64 : DType::f32;
  for (auto [R, I, N] : std::vector<std::array<int64_t, 3>>{{1, 1, 4}, {37, 2, 16}, {300, 2, 5}, {8, 3, 32}}) {
    SCOPED_TRACE(testing::Message() << "R" << R << " I" << I << " N" << N);
    const int64_t C = 4;
    Tensor y = normal({R, C, 2 * I, N}), z = normal({R, C, N}), ddw = normal({R, C, 2 * I + 1, N});
    Tensor dwr = Tensor::empty({R, C, 2 * I + 1, N}, od), rmsr = Tensor::empty({R, C, I}, od);
    dynw_finalize_forward(oracle(y, dt), oracle(z, dt), dwr, rmsr, I, 1e-6);
    Tensor dwg = nan_gpu({R, C, 2 * I + 1, N}, dt), rmsg = nan_gpu({R, C, I}, st);
    dynw_finalize_forward(on_gpu(y, dt), on_gpu(z, dt), dwg, rmsg, I, 1e-6);
    expect_close(dwg, dwr, tol_elementwise(dt), "dynw dw");
    expect_close(rmsg, rmsr, dt == DType::f64 ? 1e-12 : 1e-6, "dynw rms");
    // Backward from the same forward results on both sides.
    Tensor dyr = Tensor::empty({R, C, 2 * I, N}, od), dzr = Tensor::empty({R, C, N}, od);
    Tensor dw_in = convert(dwr, dt);
    dynw_finalize_backward(oracle(ddw, dt), oracle(y, dt), convert(dw_in, od), rmsr, dyr, dzr, I);
    Tensor dyg = nan_gpu({R, C, 2 * I, N}, dt), dzg = nan_gpu({R, C, N}, dt);
    dynw_finalize_backward(on_gpu(ddw, dt), on_gpu(y, dt), dw_in.to(gpu()), convert(rmsr, st).to(gpu()), dyg, dzg, I);
    expect_close(dyg, dyr, tol_elementwise(dt), "dynw dy");
    expect_close(dzg, dzr, tol_elementwise(dt), "dynw dz");
  }
}

TEST_P(GpuOps, CrossEntropyPieces) {
  const DType dt = GetParam();
  const DType od = oracle_dtype(dt), st = dt == DType::f64 ? DType::f64 : DType::f32;
  for (auto [R, V, off] : std::vector<std::array<int64_t, 3>>{{1, 1, 0}, {7, 33, 0}, {64, 5000, 100}, {3, 50304, 0}}) {
    SCOPED_TRACE(testing::Message() << "R" << R << " V" << V << " off" << off);
    Tensor logits = normal({R, V}, 3.0);
    std::vector<int32_t> tg(R);
    for (auto& t : tg) t = rand_int(off - 3, off + V + 3);
    Tensor tgt = ids_tensor(tg);
    Tensor lo = oracle(logits, dt), lg = on_gpu(logits, dt);
    Tensor mxr = Tensor::empty({R}, od), sumr = Tensor::empty({R}, od), tlr = Tensor::empty({R}, od);
    ce_row_max(lo, mxr);
    ce_row_sumexp(lo, mxr, sumr);
    ce_target_logit(lo, tgt, off, tlr);
    Tensor mxg = nan_gpu({R}, st), sumg = nan_gpu({R}, st), tlg = nan_gpu({R}, st);
    ce_row_max(lg, mxg);
    expect_close(mxg, mxr, 0.0, "ce_row_max");
    ce_row_sumexp(lg, convert(mxr, st).to(gpu()), sumg);
    expect_close(sumg, sumr, dt == DType::f64 ? 1e-12 : 1e-6, "ce_row_sumexp");
    ce_target_logit(lg, tgt.to(gpu()), off, tlg);
    expect_close(tlg, tlr, 0.0, "ce_target_logit");
    std::vector<double> mx = values(mxr), sm = values(sumr);
    Tensor lse = Tensor::empty({R}, od);
    for (int64_t r = 0; r < R; ++r) {
      double v = mx[r] + std::log(sm[r]);
      if (od == DType::f32) lse.data<float>()[r] = float(v); else lse.data<double>()[r] = v;
    }
    Tensor dr = Tensor::empty({R, V}, od), dg = nan_gpu({R, V}, dt);
    ce_backward(lo, tgt, lse, off, 0.125, dr);
    ce_backward(lg, tgt.to(gpu()), convert(lse, st).to(gpu()), off, 0.125, dg);
    expect_close(dg, dr, tol_elementwise(dt) * (dt == DType::f32 ? 10 : 1), "ce_backward");
  }
}

TEST_P(GpuOps, AdamW) {
  const DType dt = GetParam();
  for (int64_t n : {1, 1000, 100001})
    for (int64_t step : {1, 7}) {
      SCOPED_TRACE(testing::Message() << "n" << n << " step" << step);
      AdamWParams hp;
      hp.lr = 3e-3;
      hp.step = step;
      Tensor p = normal({n}), g = normal({n}, 0.1), m = normal({n}, 0.01), v = uniform({n}, 1e-4, 1e-2);
      Tensor pr = oracle(p, dt), mr = oracle(m, dt), vr = oracle(v, dt);
      adamw_update(pr, oracle(g, dt), mr, vr, hp);
      Tensor pg = on_gpu(p, dt), mg = on_gpu(m, dt), vg = on_gpu(v, dt);
      adamw_update(pg, on_gpu(g, dt), mg, vg, hp);
      expect_close(pg, pr, tol_elementwise(dt), "adamw param");
      expect_close(mg, mr, tol_elementwise(dt), "adamw m");
      expect_close(vg, vr, tol_elementwise(dt), "adamw v");
    }
}

TEST_F(GpuTest, AdamWFp32MasterWithBf16Grad) {
  const int64_t n = 4099;
  AdamWParams hp;
  hp.lr = 1e-3;
  hp.step = 3;
  Tensor p = normal({n}), g = normal({n}, 0.1), m = normal({n}, 0.01), v = uniform({n}, 1e-4, 1e-2);
  Tensor pr = oracle(p, DType::f32), mr = oracle(m, DType::f32), vr = oracle(v, DType::f32);
  adamw_update(pr, oracle(g, DType::bf16), mr, vr, hp);
  Tensor pg = on_gpu(p, DType::f32), mg = on_gpu(m, DType::f32), vg = on_gpu(v, DType::f32);
  adamw_update(pg, on_gpu(g, DType::bf16), mg, vg, hp);
  expect_close(pg, pr, 1e-6, "param");
  expect_close(mg, mr, 1e-6, "m");
  expect_close(vg, vr, 1e-6, "v");
}

// The trainer's GPU update: fp32 master weights, the clipping scale applied inside the update and the bf16
// working copy written in the same pass, against the CPU ops run one after the other (scale_ on the
// gradient, AdamW, then the master weights rounded to bf16).
TEST_F(GpuTest, AdamWClipScaleAndBf16CopyInOnePass) {
  const int64_t n = 70001;
  AdamWParams hp;
  hp.lr = 2e-3;
  hp.step = 4;
  hp.grad_scale = 0.37;
  Tensor p = normal({n}), g = normal({n}, 0.1), m = normal({n}, 0.01), v = uniform({n}, 1e-4, 1e-2);
  Tensor pr = oracle(p, DType::f32), mr = oracle(m, DType::f32), vr = oracle(v, DType::f32);
  Tensor gr = oracle(g, DType::f32);
  scale_(gr, hp.grad_scale);
  AdamWParams h1 = hp;
  h1.grad_scale = 1.0;
  adamw_update(pr, gr, mr, vr, h1);
  Tensor copy_ref = convert(pr, DType::bf16);
  Tensor pg = on_gpu(p, DType::f32), mg = on_gpu(m, DType::f32), vg = on_gpu(v, DType::f32);
  Tensor copy = nan_gpu({n}, DType::bf16);
  adamw_update(pg, on_gpu(g, DType::f32), mg, vg, hp, &copy);
  expect_close(pg, pr, 1e-6, "param");
  expect_close(mg, mr, 1e-6, "m");
  expect_close(vg, vr, 1e-6, "v");
  expect_close(copy, copy_ref, 4e-3, "bf16 copy");  // one bf16 rounding of nearly equal values
  // The copy is the GPU's own update rounded once: exactly cast(param) on the GPU.
  Tensor cast_ref = Tensor::empty({n}, DType::bf16, gpu());
  cast(pg, cast_ref);
  expect_close(copy, cast_ref, 0.0, "bf16 copy against cast of the updated param");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuOps, kAllFloat, dtype_param_name);

// ---- DCMHA core ---------------------------------------------------------------------------------

class DcmhaCheck : public GpuTest {
 protected:
  // Runs forward and backward on both devices and compares o, dq, dk, dv, ddw.
  void check(DcmhaShape sh, DType dt) {
    const int64_t B = sh.B, T = sh.T, S = sh.S, N = sh.N, D = sh.D, W = 2 * sh.I + 1;
    Tensor q = normal({B, T, N, D}, 1.0 / std::sqrt(double(D)) * 1.5), k = normal({B, S, N, D}), v = normal({B, S, N, D});
    Tensor dw = normal({B, S, 4, W, N}, 0.3), dout = normal({B, T, N, D});
    Tensor dq0 = normal({B, T, N, D}, 0.1), dk0 = normal({B, S, N, D}, 0.1), dv0 = normal({B, S, N, D}, 0.1),
           ddw0 = normal({B, S, 4, W, N}, 0.1);
    const DType od = oracle_dtype(dt);
    Tensor dwo = sh.compose ? oracle(dw, dt) : Tensor(), dwg = sh.compose ? on_gpu(dw, dt) : Tensor();
    Tensor oref = Tensor::empty({B, T, N, D}, od);
    dcmha_forward(sh, oracle(q, dt), oracle(k, dt), oracle(v, dt), dwo, oref);
    Tensor og = nan_gpu({B, T, N, D}, dt);
    dcmha_forward(sh, on_gpu(q, dt), on_gpu(k, dt), on_gpu(v, dt), dwg, og);
    const double tol = tol_reduction(dt);
    expect_close(og, oref, tol, "dcmha o");
    Tensor dqr = oracle(dq0, dt), dkr = oracle(dk0, dt), dvr = oracle(dv0, dt),
           ddwr = sh.compose ? oracle(ddw0, dt) : Tensor();
    dcmha_backward(sh, oracle(q, dt), oracle(k, dt), oracle(v, dt), dwo, oracle(dout, dt), dqr, dkr, dvr, ddwr);
    Tensor dqg = on_gpu(dq0, dt), dkg = on_gpu(dk0, dt), dvg = on_gpu(dv0, dt),
           ddwg = sh.compose ? on_gpu(ddw0, dt) : Tensor();
    dcmha_backward(sh, on_gpu(q, dt), on_gpu(k, dt), on_gpu(v, dt), dwg, on_gpu(dout, dt), dqg, dkg, dvg, ddwg);
    expect_close(dqg, dqr, tol, "dcmha dq");
    expect_close(dkg, dkr, tol, "dcmha dk");
    expect_close(dvg, dvr, tol, "dcmha dv");
    if (sh.compose) expect_close(ddwg, ddwr, tol, "dcmha ddw");
  }
};

class GpuDcmha : public DcmhaCheck,
                 public ::testing::WithParamInterface<std::tuple<DType, bool, int64_t, int64_t, int64_t, int64_t>> {};

TEST_P(GpuDcmha, ForwardBackwardMatchCpu) {
  auto [dt, compose, window, N, D, T] = GetParam();
  DcmhaShape sh{.B = 2, .T = T, .S = T, .N = N, .D = D, .window = window, .compose = compose, .chunk = 64};
  check(sh, dt);
}

std::string dcmha_name(const ::testing::TestParamInfo<GpuDcmha::ParamType>& info) {
  auto [dt, compose, window, N, D, T] = info.param;
  return std::string(dtype_name(dt)) + (compose ? "_compose" : "_plain") + "_W" + std::to_string(window) + "_N" +
         std::to_string(N) + "_D" + std::to_string(D) + "_T" + std::to_string(T);
}

INSTANTIATE_TEST_SUITE_P(Grid, GpuDcmha,
                         ::testing::Combine(::testing::Values(DType::f32, DType::bf16), ::testing::Bool(),
                                            ::testing::Values<int64_t>(0, 48), ::testing::Values<int64_t>(4, 16),
                                            ::testing::Values<int64_t>(16, 64), ::testing::Values<int64_t>(64, 200)),
                         dcmha_name);

// Query rows that start inside the sequence (q_pos0 > 0, as under TP re-sharding), odd chunk sizes,
// I = 1 and I = 3, odd and large head counts, and f64.
TEST_F(DcmhaCheck, OffsetsChunksRanksAndF64) {
  struct Case {
    DType dt;
    int64_t B, T, S, q_pos0, N, D, I, window, chunk;
    bool compose;
  };
  for (const Case& c : std::vector<Case>{{DType::f32, 1, 100, 200, 100, 4, 16, 2, 0, 37, true},
                                         {DType::bf16, 3, 77, 130, 53, 5, 8, 2, 24, 128, true},
                                         {DType::f32, 2, 65, 65, 0, 3, 32, 1, 0, 16, true},
                                         {DType::f32, 1, 50, 50, 0, 6, 16, 3, 7, 64, true},
                                         {DType::f64, 2, 70, 70, 0, 4, 16, 2, 20, 32, true},
                                         {DType::f64, 1, 40, 90, 50, 4, 8, 2, 0, 16, false},
                                         // Many heads: the Compose kernels' staged weights exceed 48 KiB.
                                         {DType::bf16, 1, 64, 64, 0, 32, 16, 2, 0, 32, true},
                                         {DType::f32, 2, 40, 40, 0, 40, 8, 2, 9, 16, true}}) {
    SCOPED_TRACE(testing::Message() << dtype_name(c.dt) << " B" << c.B << " T" << c.T << " S" << c.S << " q_pos0"
                                    << c.q_pos0 << " N" << c.N << " D" << c.D << " I" << c.I << " W" << c.window
                                    << " chunk" << c.chunk);
    DcmhaShape sh{.B = c.B, .T = c.T, .S = c.S, .N = c.N, .D = c.D, .I = c.I, .q_pos0 = c.q_pos0, .window = c.window,
                  .compose = c.compose, .chunk = c.chunk};
    check(sh, c.dt);
  }
}

}  // namespace
}  // namespace dcf
