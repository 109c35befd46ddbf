// CPU reference kernels on raw pointers, templated on the scalar (float for training, double for
// finite-difference tests). Every CUDA op is checked against these.
#pragma once
#include <cstdint>

#include "kernels/ops.h"

namespace dcf::cpu {

template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

template <typename T>
void embedding_forward(const T* table, int64_t V, int64_t E, const int32_t* ids, int64_t R, T* out, int64_t off);
template <typename T>
void embedding_backward(const T* dout, int64_t V, int64_t E, const int32_t* ids, int64_t R, T* dtable, int64_t off);

template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int64_t R, int64_t C, T eps);
template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t R, int64_t C);

template <typename T>
void rope_apply(T* x, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t pos0, double base, int64_t rot, bool inverse);

template <typename T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n);
template <typename T>
void swiglu_backward(const T* dout, const T* g, const T* u, T* dg, T* du, int64_t n);

template <typename T>
void gelu_tanh_forward(const T* x, T* y, int64_t n);
template <typename T>
void gelu_tanh_backward(const T* dy, const T* x, T* dx, int64_t n);

template <typename T>
void dynw_finalize_forward(const T* y, const T* z, T* dw, T* rms, int64_t R, int64_t C, int64_t I, int64_t N, T eps);
template <typename T>
void dynw_finalize_backward(const T* ddw, const T* y, const T* dw, const T* rms, T* dy, T* dz, int64_t R, int64_t C,
                            int64_t I, int64_t N);

template <typename T>
void dcmha_forward(const DcmhaShape& s, const T* q, const T* k, const T* v, const T* dw, T* o);
template <typename T>
void dcmha_backward(const DcmhaShape& s, const T* q, const T* k, const T* v, const T* dw, const T* dout, T* dq, T* dk,
                    T* dv, T* ddw);

template <typename T>
void ce_row_max(const T* logits, int64_t R, int64_t V, T* mx);
template <typename T>
void ce_row_sumexp(const T* logits, int64_t R, int64_t V, const T* mx, T* sum);
template <typename T>
void ce_target_logit(const T* logits, int64_t R, int64_t V, const int32_t* tgt, int64_t off, T* out);
template <typename T>
void ce_backward(const T* logits, int64_t R, int64_t V, const int32_t* tgt, const T* lse, int64_t off, T scale,
                 T* dlogits);

template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWParams& hp);

}  // namespace dcf::cpu
