// Overlap of two pieces: intersect the blocks as boxes, walk the intersection in runs that are
// contiguous in both blocks (trailing dims that span the whole global tensor merge into one run), and
// clip every run to both element ranges.
#include "checkpoint/piece.h"

#include <algorithm>
#include <cstring>

#include "model/params.h"

namespace dcf::ckpt {

PieceLayout piece_of(const Param& p, const std::string& kind, int64_t begin, int64_t end) {
  PieceLayout l;
  l.kind = kind;
  l.param = p.spec.name;
  l.global_shape = p.spec.global_shape;
  l.shard_dim = p.spec.shard_dim;
  l.offset.assign(l.global_shape.size(), 0);
  if (p.spec.shard_dim >= 0) l.offset[size_t(p.spec.shard_dim)] = p.shard_offset;
  l.block_shape = p.local_shape;
  l.element_begin = begin;
  l.element_end = end < 0 ? shape_numel(p.local_shape) : end;
  return l;
}

int64_t for_each_overlap(const PieceLayout& dst, const PieceLayout& src,
                         const std::function<void(int64_t, int64_t, int64_t)>& copy) {
  const size_t nd = dst.global_shape.size();
  DCF_CHECK(src.global_shape == dst.global_shape, "piece ", src.name(), ": global shape ", shape_str(src.global_shape),
            " vs ", shape_str(dst.global_shape));
  if (dst.numel() <= 0 || src.numel() <= 0) return 0;
  if (nd == 0) {  // scalar
    copy(0, 0, 1);
    return 1;
  }
  // Intersection box [lo, hi) in global coordinates.
  Shape lo(nd), hi(nd);
  for (size_t d = 0; d < nd; ++d) {
    lo[d] = std::max(dst.offset[d], src.offset[d]);
    hi[d] = std::min(dst.offset[d] + dst.block_shape[d], src.offset[d] + src.block_shape[d]);
    if (lo[d] >= hi[d]) return 0;
  }
  // Merge trailing dims that the intersection spans completely (then both blocks do too): a run is
  // contiguous over dims [k, nd) in both blocks.
  size_t k = nd - 1;
  while (k > 0 && lo[k] == 0 && hi[k] == dst.global_shape[k]) --k;
  int64_t run = hi[k] - lo[k];
  for (size_t d = k + 1; d < nd; ++d) run *= dst.global_shape[d];
  // Row-major strides of each block.
  auto strides = [&](const Shape& s) {
    Shape st(nd, 1);
    for (size_t d = nd - 1; d > 0; --d) st[d - 1] = st[d] * s[d];
    return st;
  };
  const Shape ds = strides(dst.block_shape), ss = strides(src.block_shape);
  int64_t total = 0;
  Shape idx(lo.begin(), lo.begin() + long(k));  // index over dims [0, k)
  while (true) {
    int64_t di = 0, si = 0;
    for (size_t d = 0; d < k; ++d) {
      di += (idx[d] - dst.offset[d]) * ds[d];
      si += (idx[d] - src.offset[d]) * ss[d];
    }
    di += (lo[k] - dst.offset[k]) * ds[k];
    si += (lo[k] - src.offset[k]) * ss[k];
    // Clip [0, run) so both di + t and si + t lie in their element ranges.
    int64_t a = std::max<int64_t>({0, dst.element_begin - di, src.element_begin - si});
    int64_t b = std::min<int64_t>({run, dst.element_end - di, src.element_end - si});
    if (a < b) {
      copy(di + a - dst.element_begin, si + a - src.element_begin, b - a);
      total += b - a;
    }
    // Next index over dims [0, k).
    size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < hi[d]) break;
      idx[d] = lo[d];
      if (d == 0) return total;
    }
    if (k == 0) return total;
  }
}

int64_t copy_overlap(const PieceLayout& dst, float* dst_data, const PieceLayout& src, const float* src_data) {
  return for_each_overlap(dst, src, [&](int64_t di, int64_t si, int64_t n) {
    std::memcpy(dst_data + di, src_data + si, size_t(n) * sizeof(float));
  });
}

}  // namespace dcf::ckpt
