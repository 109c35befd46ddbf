// The CPU DCMHA reference (dcf::cpu::dcmha_forward / dcmha_backward, f32) spread over threads, for tests
// whose reference at long sequences would otherwise take minutes (T = 8192 global: ~1 minute for one
// backward on one core). Work items are (batch element, block of query rows), the heaviest (causal: the
// last rows) first; each runs the same reference on a sub-problem of those rows (B = 1, T = the block,
// q_pos0 advanced by the block's first row, all keys and dynamic weights of the batch element). Rows are
// independent in the forward and in dq; the key-side gradients (dk, dv and the key-side branches of ddw,
// summed over query rows) are added into per-thread buffers and summed at the end. The result equals one
// serial call up to the order of the f32 additions. OpenBLAS is set to one thread per call, and left so
// for the rest of the process (workers that each start a pool of their own would oversubscribe the cores).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "kernels/cpu_kernels.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace dcf::test {

struct DcmhaRefItem {
  int64_t b, r0, r1;
};

// Items of `rows` query rows each, the later (heavier) rows of every batch element first.
inline std::vector<DcmhaRefItem> dcmha_ref_items(const DcmhaShape& sh, int64_t rows) {
  std::vector<DcmhaRefItem> items;
  for (int64_t r1 = sh.T; r1 > 0; r1 -= rows)
    for (int64_t b = 0; b < sh.B; ++b) items.push_back({b, std::max<int64_t>(0, r1 - rows), r1});
  return items;
}

inline int dcmha_ref_threads(int threads, size_t items) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  return int(std::min<size_t>(size_t(threads), std::max<size_t>(1, items)));
}

// Runs fn(item, worker) over the items on `threads` workers (0: one per hardware thread).
template <class Fn>
void dcmha_ref_run(const std::vector<DcmhaRefItem>& items, int threads, Fn&& fn) {
  std::atomic<size_t> next{0};
  auto work = [&](int w) {
    for (size_t i = next++; i < items.size(); i = next++) fn(items[i], w);
  };
  set_cpu_gemm_threads(1);
  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
}

// The sub-problem of item it: rows [r0, r1) of batch element b.
inline DcmhaShape dcmha_ref_sub(const DcmhaShape& sh, const DcmhaRefItem& it) {
  DcmhaShape s = sh;
  s.B = 1;
  s.T = it.r1 - it.r0;
  s.q_pos0 = sh.q_pos0 + it.r0;
  s.softmax_stats = nullptr;
  return s;
}

// o = DCMHA(q, k, v, dw): f32 CPU tensors [B, T, N, D], [B, S, N, D] x 2, [B, S, 4, (2I + 1) N].
inline void dcmha_forward_threads(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& dw, Tensor& o, int threads = 0, int64_t rows = 64) {
  const auto items = dcmha_ref_items(sh, rows);
  const int64_t ND = sh.N * sh.D, WB = sh.S * 4 * (2 * sh.I + 1) * sh.N;
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  const float* dwp = sh.compose ? dw.data<float>() : nullptr;
  float* op = o.data<float>();
  dcmha_ref_run(items, dcmha_ref_threads(threads, items.size()), [&](const DcmhaRefItem& it, int) {
    const int64_t qo = (it.b * sh.T + it.r0) * ND, ko = it.b * sh.S * ND;
    cpu::dcmha_forward<float>(dcmha_ref_sub(sh, it), qp + qo, kp + ko, vp + ko, dwp ? dwp + it.b * WB : nullptr,
                              op + qo);
  });
}

// Adds the DCMHA gradients to dq, dk, dv, ddw (f32 CPU tensors, as dcf::dcmha_backward).
inline void dcmha_backward_threads(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& dw, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                                   Tensor& ddw, int threads = 0, int64_t rows = 64) {
  const auto items = dcmha_ref_items(sh, rows);
  const int nt = dcmha_ref_threads(threads, items.size());
  const int64_t ND = sh.N * sh.D, WB = sh.S * 4 * (2 * sh.I + 1) * sh.N;
  const int64_t nkv = sh.B * sh.S * ND, nw = sh.compose ? sh.B * WB : 0;
  // Per worker: dk, dv, ddw of every batch element (zeroed), summed below.
  std::vector<std::vector<float>> pk(size_t(nt), std::vector<float>(size_t(nkv), 0.f)),
      pv(size_t(nt), std::vector<float>(size_t(nkv), 0.f)), pw(size_t(nt), std::vector<float>(size_t(nw), 0.f));
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>(), *gp = dout.data<float>();
  const float* dwp = sh.compose ? dw.data<float>() : nullptr;
  float* dqp = dq.data<float>();
  dcmha_ref_run(items, nt, [&](const DcmhaRefItem& it, int w) {
    const int64_t qo = (it.b * sh.T + it.r0) * ND, ko = it.b * sh.S * ND;
    cpu::dcmha_backward<float>(dcmha_ref_sub(sh, it), qp + qo, kp + ko, vp + ko, dwp ? dwp + it.b * WB : nullptr,
                               gp + qo, dqp + qo, pk[size_t(w)].data() + ko, pv[size_t(w)].data() + ko,
                               dwp ? pw[size_t(w)].data() + it.b * WB : nullptr);
  });
  float *dkp = dk.data<float>(), *dvp = dv.data<float>();
  float* dwo = sh.compose ? ddw.data<float>() : nullptr;
  for (int w = 0; w < nt; ++w) {
    for (int64_t i = 0; i < nkv; ++i) dkp[i] += pk[size_t(w)][size_t(i)], dvp[i] += pv[size_t(w)][size_t(i)];
    for (int64_t i = 0; i < nw; ++i) dwo[i] += pw[size_t(w)][size_t(i)];
  }
}

}  // namespace dcf::test
