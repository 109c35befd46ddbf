// Fused DCMHA attention for Hopper (dcmha.md §3, §4.4): all N heads of a (batch, 16-query tile) in one
// CTA. Forward: two passes over the key tiles (pass 1: per-head row max/sum of the pre-Composed logits;
// pass 2: recompute, normalise exactly, post-Compose, multiply by V). Backward: row statistics, the
// softmax term Delta, then every gradient in a third pass. No B x N x T x S tensor is written; the
// backward's extra memory is fp32 gradient workspaces, linear in T.
// Internal to kernels/ (dcmha.cu dispatches here); see docs/perf/dcmha_fused.md for the design.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

#include "kernels/ops.h"

namespace dcf::cuda {

// True when dcmha_fused_forward handles this call: bf16, compose on, I = 2, N in {16, 32},
// D in {64, 128}, 16-byte aligned q/k/v/dw/o. Otherwise false with the reason in *why.
bool dcmha_fused_supported(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& dw, const Tensor& o, std::string* why = nullptr);

// o [B,T,N,D] (bf16) from q (scaled), k, v and the dynamic weights dw [B,S,4,5,N] (all bf16).
void dcmha_fused_forward(const DcmhaShape& sh, const void* q, const void* k, const void* v, const void* dw, void* o,
                         cudaStream_t st);

// True when dcmha_fused_backward handles this call: the forward's conditions, 16-byte aligned gradients,
// ddw (if given) in bf16.
bool dcmha_fused_backward_supported(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& dw, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv, const Tensor& ddw, std::string* why = nullptr);

// Whether the timing-only kernel builds are compiled in (CMake option DCF_KERNEL_TIMING_BUILDS): the
// backward's ablations below and the builds that DCF_DCMHA_FUSED_OCC=1 / DCF_DCMHA_FUSED_PAIR=1 /
// DCF_DCMHA_FUSED_PF=1 / DCF_DCMHA_FUSED_HP4=1 or 2 (the backward with four heads per warp, alone or in
// clusters of two) select (N16 D64, for benchmarks); without them those requests are errors.
bool dcmha_fused_timing_builds();

// Adds the gradients of o = DCMHA(q, k, v, dw) given dout into dq, dk, dv and (if defined) ddw, all bf16;
// the same accumulate contract as dcmha_backward. Runs on stream st (= the current stream).
// ablate != 0 (N16 D64 only, timing builds only, wrong results): 1 skips the tensor-core stage, 2 the
// weight gradients, 3 both, 4 only the reductions (bulk adds to global memory) of the tensor-core stage;
// 5 runs the one-CTA kernel the default (2-CTA cluster) build replaced, with correct results; 6 skips
// pass A (the Delta pass).
void dcmha_fused_backward(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                          const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw, cudaStream_t st,
                          int ablate = 0);

}  // namespace dcf::cuda
