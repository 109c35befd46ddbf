// Tensor-parallel mappings for the model (TensorParallelOps over a Communicator): the all-reduces of
// Megatron's copy_to_tp / reduce_from_tp pairs, and DCMHA's query-sharded attention core
// (architecture.md §4): Q all-to-all from heads to query rows, K/V all-gather, the full DCMHA for this
// rank's rows (zig-zag blocks r and 2P-1-r for causal balance), O all-to-all back to heads. The backward
// mirrors it (dQ all-to-all, dK/dV reduce-scatter). Traffic is O(T*E) per layer; nothing grows with T^2.
#pragma once
#include <memory>

#include "model/tp_ops.h"
#include "parallel/communicator.h"

namespace dcf {

std::unique_ptr<TensorParallelOps> make_tensor_parallel_ops(Communicator& tp);

// Query rows held by TP rank r of P in the query-sharded core: blocks r and 2P-1-r of T/(2P) rows.
struct ZigZagBlocks {
  int64_t block_rows;
  int64_t first_begin, second_begin;
};
ZigZagBlocks zigzag_blocks(int64_t T, int P, int r);

}  // namespace dcf
