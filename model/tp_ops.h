// The narrow interface through which the model talks to its tensor-parallel group. parallel/ implements
// it over a Communicator; the model never sees MPI or NCCL. With tp = 1 the model passes nullptr and
// every exchange is skipped.
#pragma once
#include "kernels/ops.h"

namespace dcf {

class TensorParallelOps {
 public:
  virtual ~TensorParallelOps() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  // Row-parallel output (wo, w_down, vocab-parallel embedding): partial sums -> full activation.
  virtual void reduce_from_tp_forward(Tensor& t) = 0;
  // Gradient of an activation that entered column-parallel layers: sum the ranks' contributions.
  virtual void copy_to_tp_backward(Tensor& t) = 0;
  // Sums per-rank partial results that are not activations (vocab-parallel softmax sums, partial
  // gradients of replicated parameters).
  virtual void sum_partials(Tensor& t) = 0;
  virtual void all_reduce_max(Tensor& t) = 0;
  // DCMHA's query-sharded core (architecture.md §4): exchanges q/k/v from heads to query rows, runs the
  // core on this rank's rows, and brings the output back to heads. Implemented in parallel/.
  virtual void dcmha_core_forward(const DcmhaShape& local_heads, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& dw, Tensor& o) = 0;
  // Accumulates dq, dk, dv (local heads, all rows) and ddw (this rank's partial, summed later over TP).
  virtual void dcmha_core_backward(const DcmhaShape& local_heads, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& dw, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                                   Tensor& ddw) = 0;
};

}  // namespace dcf
