// Plain Transformer++ attention (DcmhaShape with compose = false: causal or sliding-window MHA)
// through cuDNN's fused flash attention, forward and backward. Only built with the CUDA backend.
//
// The graphs are cuDNN 9 backend-API operation graphs (cudnnBackend* descriptors; no cudnn-frontend
// header exists on our machines) in the exact shape the cudnn-frontend "SDPA" composite node lowers
// to, which the runtime fusion engine recognises as flash attention:
//   forward:  S = Q K^T * scale -> causal (and left-bound) mask -> softmax (max, exp, sum, Stats =
//             max + log sum) -> O = P V
//   backward: softmax_sum = rowsum(dO * O); P = exp(Q K^T * scale - Stats) (masked); dV = P^T dO;
//             dS = P * (dO V^T - softmax_sum) * scale; dK = dS^T Q; dQ = dS K (fp32 accumulator)
// Plans (op graph, heuristics, execution plan) are built once per shape and cached.
// libcudnn.so.9 is opened with dlopen at the first use, like cuBLAS (gemm.cu): CPU-only processes
// never load it and pay no start-up cost; when it cannot be loaded, or no engine supports a shape,
// these functions return false and the caller keeps the v1 path (dcmha.cu).
//
// Measured (one H200, cuDNN 9.19, bf16, fwd+bwd, median of 20, bench_attention; two runs agreed
// within 2%): B8 T2048 N16 D64 causal 0.75 ms (320 TFLOP/s at 3.5x the causal forward's matmuls),
// B2 T2048 N32 D128 causal 0.60 ms (400 TFLOP/s); PyTorch SDPA on cuDNN in the same runs 0.91-0.95 and
// 0.70-0.78 ms; the v1 path 8.4 and 5.3 ms (11x, 8.8x slower). Through the dcmha_backward contract
// (forward recomputed, gradients accumulated) the same pairs take 1.00-1.02 and 0.81-0.83 ms.
// Sliding window W=256: 0.38-0.39 and 0.30-0.31 ms.
//
// Supported: bf16 storage; q [B,T,N,D] (already scaled by 1/sqrt(D)), k, v [B,S,N,D] contiguous and
// 16-byte aligned; T == S and q_pos0 == 0 (whole sequences: the model's layout); D % 8 == 0 and
// D <= 256; window 0 (causal) or W > 0 (keys t-W+1 .. t).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/ops.h"
#include "kernels/tensor.h"

namespace dcf::cuda {

// DCF_ATTN_IMPL: unset, "auto" or "cudnn": the dcmha dispatch sends plain bf16 attention to cuDNN
// where supported; "v1": always the v1 path (for comparison). Read at every call.
bool cudnn_attention_enabled();

// Whether the shape and dtype are in the supported set above and libcudnn loads (no plan is built,
// so a later call can still return false if no engine takes the graph). *why gets the reason.
bool cudnn_attention_supported(const DcmhaShape& s, DType dt, std::string* why = nullptr);
// Same, and additionally checks the tensors (CUDA, dtype, contiguous sizes, 16-byte alignment).
bool cudnn_attention_supported(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                               std::string* why = nullptr);

// Writes o [B,T,N,D] and, when stats is given, the per-row logsumexp of the masked scores
// (f32, [B,N,T] contiguous; natural log) that the backward needs. Returns false, having written
// nothing, when cuDNN cannot run the shape.
bool cudnn_attention_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                             Tensor* stats = nullptr);

// Writes (overwrites, does not accumulate) dq, dk, dv from the forward's o and stats.
bool cudnn_attention_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                              const Tensor& stats, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv);

// The dcmha_backward contract (no state kept from the forward; accumulate into dq, dk, dv): runs
// the cuDNN forward again for o and stats (one extra forward, about 1/3.5 of fwd+bwd), the cuDNN
// backward into scratch gradients, and one fused pass dq += .., dk += .., dv += ...
bool cudnn_attention_backward_accumulate(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv);

// Executions so far (tests check that the dispatch really took the cuDNN path) and plans built.
struct CudnnAttentionCounters {
  int64_t forward = 0, backward = 0, plans_built = 0, plans_failed = 0;
};
CudnnAttentionCounters cudnn_attention_counters();

// Builds and finalizes every tensor and operation descriptor and the operation graph of the forward
// and backward graphs for the shape, without a device (no handle, no plan): a check of the graph's
// construction (cuDNN validates dims, types and connectivity there) that runs wherever libcudnn loads. False with the failing call in *why.
bool cudnn_attention_graph_check(const DcmhaShape& s, std::string* why = nullptr);

// cuDNN's version (e.g. 91900) once loaded, 0 when the library cannot be loaded (*why: the reason).
int64_t cudnn_version(std::string* why = nullptr);

}  // namespace dcf::cuda
