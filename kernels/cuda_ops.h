// CUDA twins of the op set in ops.h, same signatures; ops.cpp calls these when the first tensor lives
// on a CUDA device. Every op takes f32 and bf16 tensors (bf16 storage, fp32 math and statistics);
// f64 works too (fp64 math). Side tensors that hold statistics (rmsnorm rstd, dynamic-weight rms,
// cross-entropy row max/sum/lse/target logits) and AdamW's grad and moments may have a different
// float dtype from the main operand (e.g. fp32 statistics for bf16 activations, fp32 master weights
// with bf16 grads). All launches go to cuda::current_stream(). Sources: gemm.cu, elementwise.cu,
// dcmha.cu.
#pragma once
#include <cstdint>

#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace dcf::cuda {

// gemm.cu: cuBLASLt for f32 (strict fp32, no TF32) and bf16 (fp32 accumulate); cuBLAS for f64.
void gemm_ex(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& a, int64_t a_off,
             int64_t lda, const Tensor& b, int64_t b_off, int64_t ldb, double beta, Tensor& c, int64_t c_off,
             int64_t ldc);

// elementwise.cu
void add_(Tensor& y, const Tensor& x, double alpha);
void scale_(Tensor& y, double s);
double sum_squares(const Tensor& x);  // synchronizes the current stream
void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out, int64_t vocab_offset);
// Deterministic: rows are sorted by id and each id's rows summed in fp32 before one add.
void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable, int64_t vocab_offset);
void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, double eps);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw);
void rope_forward(Tensor& x, int64_t pos0, double base, int64_t rot_dims);
void rope_backward(Tensor& dx, int64_t pos0, double base, int64_t rot_dims);
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);
void gelu_tanh_forward(const Tensor& x, Tensor& y);
void gelu_tanh_backward(const Tensor& dy, const Tensor& x, Tensor& dx);
void dynw_finalize_forward(const Tensor& y, const Tensor& z, Tensor& dw, Tensor& read_rms, int64_t I, double eps);
void dynw_finalize_backward(const Tensor& ddw, const Tensor& y, const Tensor& dw, const Tensor& read_rms, Tensor& dy,
                            Tensor& dz, int64_t I);
void ce_row_max(const Tensor& logits, Tensor& row_max);
void ce_row_sumexp(const Tensor& logits, const Tensor& row_max, Tensor& row_sum);
void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset, Tensor& tgt);
void ce_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t vocab_offset, double scale,
                 Tensor& dlogits);
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                  Tensor* param_copy = nullptr);

// dcmha.cu: version 1 of dcmha.md §4.4 (query chunks, per-chunk materialised scores, batched
// cuBLASLt GEMMs + Compose kernels, everything recomputed in the backward). Workspace is
// O(N * chunk * keys-per-chunk), never O(N * T * S).
void dcmha_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw, Tensor& o);
void dcmha_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                    const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw);

// Not in the dispatch table: dtype conversion between float tensors (f32, f64, bf16) of equal numel,
// both on the GPU (e.g. fp32 master weights -> bf16 working copy).
void cast(const Tensor& src, Tensor& dst);

}  // namespace dcf::cuda
