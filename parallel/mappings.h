// Megatron's tensor-parallel mappings as named forward/backward pairs. Layers are written with these,
// so the data flow of TP reads in names:
//   copy_to_tp        fwd identity            bwd all-reduce
//   reduce_from_tp    fwd all-reduce          bwd identity
//   scatter_along_dim fwd keep own slice      bwd all-gather
//   gather_along_dim  fwd all-gather          bwd keep own slice
//   all_to_all        fwd split d1/concat d2  bwd split d2/concat d1
// Tensors are contiguous; "dim" slicing splits dimension dim into tp equal parts.
#pragma once
#include "parallel/communicator.h"

namespace dcf {

inline void copy_to_tp_forward(Tensor&, Communicator&) {}
inline void copy_to_tp_backward(Tensor& dx, Communicator& tp) { tp.all_reduce(dx, ReduceOp::sum); }
inline void reduce_from_tp_forward(Tensor& x, Communicator& tp) { tp.all_reduce(x, ReduceOp::sum); }
inline void reduce_from_tp_backward(Tensor&, Communicator&) {}

// Slice rank r of dimension dim (size divisible by the group size).
Tensor split_along_dim(const Tensor& x, int dim, int parts, int index);
// Inverse of split_along_dim: concatenate parts (given in order) along dim.
Tensor concat_along_dim(const std::vector<Tensor>& parts, int dim);

Tensor scatter_along_dim_forward(const Tensor& x, int dim, Communicator& tp);
Tensor scatter_along_dim_backward(const Tensor& dy, int dim, Communicator& tp);
Tensor gather_along_dim_forward(const Tensor& x, int dim, Communicator& tp);
Tensor gather_along_dim_backward(const Tensor& dy, int dim, Communicator& tp);
// Splits x along split_dim into tp parts, sends part j to rank j, concatenates what arrives along
// concat_dim (in rank order).
Tensor all_to_all_forward(const Tensor& x, int split_dim, int concat_dim, Communicator& tp);
Tensor all_to_all_backward(const Tensor& dy, int split_dim, int concat_dim, Communicator& tp);

}  // namespace dcf
