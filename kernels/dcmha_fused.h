// Fused DCMHA attention forward for Hopper (dcmha.md §4.4): all N heads of a (batch, 16-query tile)
// in one CTA, two passes over the key tiles (pass 1: per-head row max/sum of the pre-Composed logits;
// pass 2: recompute, normalise exactly, post-Compose, multiply by V). No B x N x T x S tensor is
// written; the only state is the 2N row statistics per query row, in shared memory.
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

}  // namespace dcf::cuda
