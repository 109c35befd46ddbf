// Named TP mappings over a Communicator (host-side packing of slices).
#include "parallel/mappings.h"

#include <cstring>

namespace dcf {

namespace {
// outer x (dim size) x inner decomposition of a contiguous shape.
void dims_around(const Shape& s, int dim, int64_t* outer, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < dim; ++i) *outer *= s[size_t(i)];
  for (size_t i = size_t(dim) + 1; i < s.size(); ++i) *inner *= s[i];
}
}  // namespace

Tensor split_along_dim(const Tensor& x, int dim, int parts, int index) {
  DCF_CHECK(x.device().is_cpu(), "split_along_dim on host tensors");
  Shape s = x.shape();
  DCF_CHECK(dim >= 0 && dim < x.ndim() && s[size_t(dim)] % parts == 0, "split ", x.desc(), " dim ", dim, " in ", parts);
  int64_t outer, inner;
  dims_around(s, dim, &outer, &inner);
  const int64_t part = s[size_t(dim)] / parts, es = int64_t(dtype_size(x.dtype()));
  s[size_t(dim)] = part;
  Tensor out = Tensor::empty(s, x.dtype());
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dst + o * part * inner * es, src + (o * x.shape()[size_t(dim)] + index * part) * inner * es,
                size_t(part * inner * es));
  return out;
}

Tensor concat_along_dim(const std::vector<Tensor>& parts, int dim) {
  DCF_CHECK(!parts.empty(), "concat of nothing");
  Shape s = parts[0].shape();
  const int64_t part = s[size_t(dim)];
  s[size_t(dim)] = part * int64_t(parts.size());
  Tensor out = Tensor::empty(s, parts[0].dtype());
  int64_t outer, inner;
  dims_around(s, dim, &outer, &inner);
  const int64_t es = int64_t(dtype_size(out.dtype()));
  char* dst = static_cast<char*>(out.raw());
  for (size_t p = 0; p < parts.size(); ++p) {
    DCF_CHECK(parts[p].shape() == parts[0].shape() && parts[p].device().is_cpu(), "concat parts differ");
    const char* src = static_cast<const char*>(parts[p].raw());
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(dst + (o * s[size_t(dim)] + int64_t(p) * part) * inner * es, src + o * part * inner * es,
                  size_t(part * inner * es));
  }
  return out;
}

Tensor scatter_along_dim_forward(const Tensor& x, int dim, Communicator& tp) {
  return split_along_dim(x, dim, tp.size(), tp.rank());
}

Tensor gather_along_dim_forward(const Tensor& x, int dim, Communicator& tp) {
  Tensor all = Tensor::empty({int64_t(tp.size()) * x.numel()}, x.dtype());
  tp.all_gather(x.view({x.numel()}), all);
  std::vector<Tensor> parts;
  for (int r = 0; r < tp.size(); ++r) parts.push_back(all.flat_range(r * x.numel(), x.numel()).view(x.shape()));
  return concat_along_dim(parts, dim);
}

Tensor scatter_along_dim_backward(const Tensor& dy, int dim, Communicator& tp) {
  return gather_along_dim_forward(dy, dim, tp);
}

Tensor gather_along_dim_backward(const Tensor& dy, int dim, Communicator& tp) {
  return split_along_dim(dy, dim, tp.size(), tp.rank());
}

Tensor all_to_all_forward(const Tensor& x, int split_dim, int concat_dim, Communicator& tp) {
  const int P = tp.size();
  std::vector<Tensor> pieces;
  for (int j = 0; j < P; ++j) pieces.push_back(split_along_dim(x, split_dim, P, j));
  Tensor send = Tensor::empty({x.numel()}, x.dtype()), recv = Tensor::empty({x.numel()}, x.dtype());
  const int64_t n = pieces[0].numel();
  for (int j = 0; j < P; ++j) send.flat_range(j * n, n).copy_from(pieces[size_t(j)].view({n}));
  tp.all_to_all(send, recv);
  std::vector<Tensor> got;
  for (int j = 0; j < P; ++j) got.push_back(recv.flat_range(j * n, n).view(pieces[0].shape()));
  return concat_along_dim(got, concat_dim);
}

Tensor all_to_all_backward(const Tensor& dy, int split_dim, int concat_dim, Communicator& tp) {
  return all_to_all_forward(dy, concat_dim, split_dim, tp);
}

}  // namespace dcf
