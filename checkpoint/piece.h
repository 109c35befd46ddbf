// Pieces: where a checkpointed array sits in its global tensor, independent of the layout that wrote it.
// A piece is elements [element_begin, element_end) (row-major) of a block, the box `block_shape` at
// `offset` of the global tensor. A tensor-parallel shard of a parameter is one block; a ZeRO-1 moment
// shard is an element range of such a block. Loading copies every overlap of saved pieces with the
// pieces this rank needs, so any (dp, tp, pp, ZeRO-1) layout reads any other's checkpoint.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "kernels/tensor.h"  // defines: Shape, shape_numel, shape_str

namespace dcf {
struct Param;
}

namespace dcf::ckpt {

inline constexpr const char* kKindParam = "param";
inline constexpr const char* kKindAdamM = "adam_m";
inline constexpr const char* kKindAdamV = "adam_v";

struct PieceLayout {
  std::string kind;   // kKindParam, kKindAdamM, kKindAdamV
  std::string param;  // parameter name
  Shape global_shape;
  int shard_dim = -1;
  Shape offset;       // block origin in the global tensor, per dim
  Shape block_shape;
  int64_t element_begin = 0, element_end = 0;

  int64_t numel() const { return element_end - element_begin; }
  bool whole_block() const { return element_begin == 0 && element_end == shape_numel(block_shape); }
  std::string name() const { return kind + "/" + param; }
};

// The piece of kind `kind` over elements [begin, end) of this process's shard of p (end -1: all of it).
PieceLayout piece_of(const Param& p, const std::string& kind, int64_t begin = 0, int64_t end = -1);

// Calls copy(dst_index, src_index, count) for every run of elements that pieces dst and src share:
// dst_index / src_index count from each piece's element_begin. Both must describe the same global
// shape. Returns the number of shared elements.
int64_t for_each_overlap(const PieceLayout& dst, const PieceLayout& src,
                         const std::function<void(int64_t, int64_t, int64_t)>& copy);

// Copies what src holds of dst's elements; returns how many.
int64_t copy_overlap(const PieceLayout& dst, float* dst_data, const PieceLayout& src, const float* src_data);

}  // namespace dcf::ckpt
