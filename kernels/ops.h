// The op set, at tensor level. Each op has a CPU reference (templated on float/double, in
// <op>_cpu.cpp) and a CUDA twin (<op>.cu) with the same signature; these wrappers dispatch on the
// device of the inputs. Backward ops accumulate into parameter gradients (dw += ...) and write
// input gradients (dx = ...) unless the name says otherwise.
#pragma once
#include <cstdint>

#include "kernels/tensor.h"

namespace dcf {

// ---- GEMM (OpenBLAS | cuBLASLt). 2-D row-major views: C = alpha * op(A) op(B) + beta * C.
void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha = 1.0,
            double beta = 0.0);
// The general form on strided sub-matrices: element offsets and leading dimensions into flat tensors.
void gemm_ex(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& a, int64_t a_off,
             int64_t lda, const Tensor& b, int64_t b_off, int64_t ldb, double beta, Tensor& c, int64_t c_off,
             int64_t ldc);

// Threads the CPU GEMM may use (several MPI ranks on one node each take one).
void set_cpu_gemm_threads(int n);

// ---- dtype conversion between float tensors (f32, f64, bf16) of equal numel on one device.
void cast(const Tensor& src, Tensor& dst);

// ---- elementwise helpers
void add_(Tensor& y, const Tensor& x, double alpha = 1.0);  // y += alpha * x
void scale_(Tensor& y, double s);                           // y *= s
double sum_squares(const Tensor& x);                        // sum of x^2 in double

// ---- embedding: out[r,:] = table[ids[r]-vocab_offset,:] if the id is in this shard, else 0.
void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out, int64_t vocab_offset = 0);
void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable, int64_t vocab_offset = 0);

// ---- RMSNorm over the last dim of x [R, C]: y = x * rstd * w (w undefined: no scale).
void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, double eps);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw);

// ---- half-split ("NeoX") RoPE, in place, on x [B, T, H, D]; positions pos0 + t; the first rot_dims
// dims are rotated (pairs j, j + rot_dims/2). backward applies the inverse rotation to dx in place.
void rope_forward(Tensor& x, int64_t pos0, double base, int64_t rot_dims);
void rope_backward(Tensor& dx, int64_t pos0, double base, int64_t rot_dims);

// ---- SwiGLU: out = silu(gate) * up.
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);

// ---- GELU, tanh form (jax.nn.gelu default).
void gelu_tanh_forward(const Tensor& x, Tensor& y);
void gelu_tanh_backward(const Tensor& dy, const Tensor& x, Tensor& dx);

// ---- DCMHA dynamic weights, finishing step. From the raw MLP output y [R, C, 2I, N] and the
// pre-tanh gate z [R, C, N], write dw [R, C, 2I+1, N] = (a = scale-free RMSNorm of the reads over N,
// b = writes, g = tanh(z)) and the per-(r, c, i) rms of the reads.
void dynw_finalize_forward(const Tensor& y, const Tensor& z, Tensor& dw, Tensor& read_rms, int64_t I, double eps);
void dynw_finalize_backward(const Tensor& ddw, const Tensor& y, const Tensor& dw, const Tensor& read_rms, Tensor& dy,
                            Tensor& dz, int64_t I);

// ---- DCMHA attention core (dcmha.md §1.3-§1.4, §3): query rows [q_pos0, q_pos0 + T) of sequences of
// S tokens. q [B,T,N,D] already scaled by 1/sqrt(D); k, v [B,S,N,D]; dw [B,S,4,2I+1,N] dynamic weights
// of every token (branches pre-q, pre-k, post-q, post-k). Query chunks keep memory at
// O(N * chunk * S). compose = false gives plain multi-head attention (Transformer++).
struct DcmhaShape {
  int64_t B = 0, T = 0, S = 0, N = 0, D = 0, I = 2;
  int64_t q_pos0 = 0;
  int64_t window = 0;  // 0: global causal; W > 0: keys t-W+1 .. t
  bool compose = true;
  int64_t chunk = 64;
  // Optional device buffer of B*T*N float pairs (fp32): the per-head softmax statistics (row max, 1/sum)
  // of the pre-Composed logits. When set on a CUDA call, the fused DCMHA forward writes them (other
  // forward paths fill it with NaN) and the fused backward reads them instead of recomputing them. The
  // caller passes the same buffer, unchanged, to the backward of the same forward. CPU paths ignore it.
  float* softmax_stats = nullptr;
};
void dcmha_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                   Tensor& o);
// Accumulates into dq, dk, dv and ddw (the caller zeroes them).
void dcmha_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                    const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw);

// ---- vocab-parallel cross-entropy pieces. logits [R, Vshard] holds vocabulary ids
// [vocab_offset, vocab_offset + Vshard). The caller combines the partial maxima/sums over shards.
void ce_row_max(const Tensor& logits, Tensor& row_max);                                // [R]
void ce_row_sumexp(const Tensor& logits, const Tensor& row_max, Tensor& row_sum);      // [R]
void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, Tensor& tgt);  // [R], 0 off-shard
// dlogits = scale * (softmax(logits) - onehot(target)), softmax from lse = max + log(sum).
void ce_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t vocab_offset, double scale,
                 Tensor& dlogits);

// ---- AdamW (bias-corrected moments, eps outside the sqrt, decoupled weight decay times lr).
struct AdamWParams {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  int64_t step = 1;         // 1-based count of updates, for the bias correction
  double grad_scale = 1.0;  // the gradient is multiplied by this first (global-norm clipping), in its own precision
};
// param_copy (optional, same numel): also receives the updated param, converted to its own dtype (the
// bf16 working copy of fp32 master weights) in the same pass, as cast(param, *param_copy) would.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                  Tensor* param_copy = nullptr);

}  // namespace dcf
