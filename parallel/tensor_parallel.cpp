// TensorParallelOps over a Communicator. Packing between [B, T, heads, D] layouts is done on the host.
#include "parallel/tensor_parallel.h"

#include "parallel/mappings.h"

#include <cstring>

namespace dcf {

ZigZagBlocks zigzag_blocks(int64_t T, int P, int r) {
  DCF_CHECK(T % (2 * P) == 0, "query-sharded DCMHA needs seq_len (", T, ") divisible by 2*tp (", 2 * P, ")");
  int64_t b = T / (2 * P);
  return {b, r * b, (2 * P - 1 - r) * b};
}

namespace {

// Copies dst[b, i, 0:nh, :] = src[b, r0 + i, h0:h0+nh, :] for i < rows (scatter=false), or the reverse
// direction (scatter=true: src block into dst rows/heads), optionally accumulating.
void move_block(const Tensor& big, int64_t B, int64_t Tb, int64_t Nb, int64_t D, int64_t r0, int64_t rows, int64_t h0,
                int64_t nh, Tensor& small, int64_t small_off, bool to_big, bool accumulate) {
  DCF_CHECK(big.device().is_cpu() && small.device().is_cpu() && big.dtype() == DType::f32, "TP packing on host f32");
  float* bp = big.data<float>();
  float* sp = small.data<float>() + small_off;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < rows; ++i) {
      float* bigrow = bp + ((b * Tb + r0 + i) * Nb + h0) * D;
      float* smallrow = sp + (b * rows + i) * nh * D;
      if (!to_big)
        std::memcpy(smallrow, bigrow, size_t(nh * D) * sizeof(float));
      else if (!accumulate)
        std::memcpy(bigrow, smallrow, size_t(nh * D) * sizeof(float));
      else
        for (int64_t e = 0; e < nh * D; ++e) bigrow[e] += smallrow[e];
    }
}

// Device tensors are exchanged through host memory (the path for ranks that share one GPU; with one
// GPU per rank and NCCL the same exchange runs on the device): host32 stages a copy as fp32 on the
// host, like_ref brings a host result back to the reference tensor's device and dtype.
Tensor host32(const Tensor& t) {
  if (t.device().is_cpu() && t.dtype() == DType::f32) return t;
  Tensor f = t;
  if (t.dtype() != DType::f32) {
    f = Tensor::empty(t.shape(), DType::f32, t.device());
    cast(t, f);
  }
  return f.to(Device::cpu());
}

Tensor like_ref(const Tensor& host, const Tensor& ref) {
  if (ref.device().is_cpu() && ref.dtype() == DType::f32) return host;
  Tensor d = host.to(ref.device());
  if (ref.dtype() == DType::f32) return d;
  Tensor o = Tensor::empty(host.shape(), ref.dtype(), ref.device());
  cast(d, o);
  return o;
}

class TensorParallel : public TensorParallelOps {
 public:
  explicit TensorParallel(Communicator& c) : comm_(c) {}
  int size() const override { return comm_.size(); }
  int rank() const override { return comm_.rank(); }
  void reduce_from_tp_forward(Tensor& t) override { dcf::reduce_from_tp_forward(t, comm_); }
  void copy_to_tp_backward(Tensor& t) override { dcf::copy_to_tp_backward(t, comm_); }
  void sum_partials(Tensor& t) override { comm_.all_reduce(t, ReduceOp::sum); }
  void all_reduce_max(Tensor& t) override { comm_.all_reduce(t, ReduceOp::max); }

  void dcmha_core_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                          Tensor& o) override {
    Exchange x = gather_inputs(s, q, k, v);
    Tensor kf = like_ref(x.kf, q), vf = like_ref(x.vf, q);
    for (int blk = 0; blk < 2; ++blk) {
      DcmhaShape bs = block_shape(s, x, blk);
      Tensor ob = like_ref(x.o[blk], q);
      dcmha_forward(bs, like_ref(x.q[blk], q), kf, vf, dw, ob);
      x.o[blk] = host32(ob);
    }
    Tensor oh = Tensor::empty(o.shape(), DType::f32);
    rows_to_heads(s, x, x.o, oh, false);
    o.copy_from(like_ref(oh, o));
  }

  void dcmha_core_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                           const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw) override {
    Exchange x = gather_inputs(s, q, k, v);
    Tensor dob[2];
    heads_to_rows(s, x, host32(dout), dob);
    const int64_t P = size(), N = s.N * P, Tb = x.z.block_rows;
    Tensor kf = like_ref(x.kf, q), vf = like_ref(x.vf, q);
    Tensor dkf = Tensor::zeros({s.B, s.S, N, s.D}, q.dtype(), q.device()), dvf = Tensor::zeros(dkf.shape(), q.dtype(), q.device());
    Tensor dqb[2];
    for (int blk = 0; blk < 2; ++blk) {
      DcmhaShape bs = block_shape(s, x, blk);
      Tensor dqd = Tensor::zeros({s.B, Tb, N, s.D}, q.dtype(), q.device());
      dcmha_backward(bs, like_ref(x.q[blk], q), kf, vf, dw, like_ref(dob[blk], q), dqd, dkf, dvf, ddw);
      dqb[blk] = host32(dqd);
    }
    Tensor dqh = Tensor::zeros(dq.shape(), DType::f32);
    rows_to_heads(s, x, dqb, dqh, false);
    add_(dq, like_ref(dqh, dq));
    Tensor dkh = host32(dkf), dvh = host32(dvf);
    // dK, dV: every rank holds partials for all heads; rank j needs the sum over ranks of its heads.
    for (auto [full, out] : {std::pair<Tensor*, Tensor*>{&dkh, &dk}, {&dvh, &dv}}) {
      Tensor send = Tensor::empty({P, s.B, s.S, s.N, s.D});
      for (int64_t j = 0; j < P; ++j)
        move_block(*full, s.B, s.S, N, s.D, 0, s.S, j * s.N, s.N, send, j * s.B * s.S * s.N * s.D, false, false);
      Tensor mine = Tensor::empty({s.B, s.S, s.N, s.D});
      comm_.reduce_scatter(send, mine);
      add_(*out, like_ref(mine, *out));
    }
  }

 private:
  struct Exchange {
    ZigZagBlocks z;
    Tensor q[2], o[2];  // [B, Tb, N, D] per block (all heads)
    Tensor kf, vf;      // [B, S, N, D]
  };

  DcmhaShape block_shape(const DcmhaShape& s, const Exchange& x, int blk) const {
    DcmhaShape bs = s;
    bs.softmax_stats = nullptr;  // the statistics buffer is per call shape; blocks recompute theirs
    bs.N = s.N * size();
    bs.T = x.z.block_rows;
    bs.q_pos0 = blk == 0 ? x.z.first_begin : x.z.second_begin;
    return bs;
  }

  // q (local heads, all rows) -> per-block all-heads tensors.
  void heads_to_rows(const DcmhaShape& s, const Exchange& x, const Tensor& src, Tensor out[2]) {
    const int64_t P = size(), Tb = x.z.block_rows, chunk = s.B * 2 * Tb * s.N * s.D;
    Tensor send = Tensor::empty({P * chunk});
    for (int64_t j = 0; j < P; ++j) {
      ZigZagBlocks zj = zigzag_blocks(s.S, int(P), int(j));
      move_block(src, s.B, s.S, s.N, s.D, zj.first_begin, Tb, 0, s.N, send, j * chunk, false, false);
      move_block(src, s.B, s.S, s.N, s.D, zj.second_begin, Tb, 0, s.N, send, j * chunk + s.B * Tb * s.N * s.D, false,
                 false);
    }
    Tensor recv = Tensor::empty({P * chunk});
    comm_.all_to_all(send, recv);
    for (int blk = 0; blk < 2; ++blk) {
      out[blk] = Tensor::empty({s.B, Tb, s.N * P, s.D});
      for (int64_t j = 0; j < P; ++j)
        move_block(out[blk], s.B, Tb, s.N * P, s.D, 0, Tb, j * s.N, s.N, recv, j * chunk + blk * s.B * Tb * s.N * s.D,
                   true, false);
    }
  }

  // per-block all-heads tensors -> local heads, all rows (written, or accumulated into dst).
  void rows_to_heads(const DcmhaShape& s, const Exchange& x, Tensor blocks[2], Tensor& dst, bool accumulate) {
    const int64_t P = size(), Tb = x.z.block_rows, chunk = s.B * 2 * Tb * s.N * s.D;
    Tensor send = Tensor::empty({P * chunk});
    for (int64_t j = 0; j < P; ++j)
      for (int blk = 0; blk < 2; ++blk)
        move_block(blocks[blk], s.B, Tb, s.N * P, s.D, 0, Tb, j * s.N, s.N, send, j * chunk + blk * s.B * Tb * s.N * s.D,
                   false, false);
    Tensor recv = Tensor::empty({P * chunk});
    comm_.all_to_all(send, recv);
    for (int64_t j = 0; j < P; ++j) {
      ZigZagBlocks zj = zigzag_blocks(s.S, int(P), int(j));
      move_block(dst, s.B, s.S, s.N, s.D, zj.first_begin, Tb, 0, s.N, recv, j * chunk, true, accumulate);
      move_block(dst, s.B, s.S, s.N, s.D, zj.second_begin, Tb, 0, s.N, recv, j * chunk + s.B * Tb * s.N * s.D, true,
                 accumulate);
    }
  }

  Exchange gather_inputs(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v) {
    DCF_CHECK(s.T == s.S && s.q_pos0 == 0, "the TP core takes whole sequences");
    Exchange x;
    x.z = zigzag_blocks(s.S, size(), rank());
    heads_to_rows(s, x, host32(q), x.q);
    const int64_t P = size(), N = s.N * P;
    for (int blk = 0; blk < 2; ++blk) x.o[blk] = Tensor::empty({s.B, x.z.block_rows, N, s.D});
    for (auto [src, dst] : {std::pair<const Tensor*, Tensor*>{&k, &x.kf}, {&v, &x.vf}}) {
      Tensor all = Tensor::empty({P, s.B, s.S, s.N, s.D});
      Tensor flat = host32(*src).view({src->numel()});
      comm_.all_gather(flat, all);
      *dst = Tensor::empty({s.B, s.S, N, s.D});
      for (int64_t j = 0; j < P; ++j)
        move_block(*dst, s.B, s.S, N, s.D, 0, s.S, j * s.N, s.N, all, j * s.B * s.S * s.N * s.D, true, false);
    }
    return x;
  }

  Communicator& comm_;
};

}  // namespace

std::unique_ptr<TensorParallelOps> make_tensor_parallel_ops(Communicator& tp) {
  return std::make_unique<TensorParallel>(tp);
}

}  // namespace dcf
