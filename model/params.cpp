// Parameter sharding and layout-invariant initialisation.
#include "model/params.h"

#include "kernels/rng.h"

namespace dcf {

Shape shard_shape(const ParamSpec& spec, int64_t tp_size, int64_t tp_rank, int64_t* offset) {
  Shape s = spec.global_shape;
  *offset = 0;
  if (spec.shard_dim >= 0) {
    int64_t g = s[size_t(spec.shard_dim)];
    DCF_CHECK(g % tp_size == 0, "parameter ", spec.name, " dim ", spec.shard_dim, " (", g, ") not divisible by tp ",
              tp_size);
    s[size_t(spec.shard_dim)] = g / tp_size;
    *offset = tp_rank * (g / tp_size);
  }
  return s;
}

int64_t global_index(const Param& p, int64_t i) {
  if (p.spec.shard_dim < 0) return i;
  const Shape& ls = p.local_shape;
  const Shape& gs = p.spec.global_shape;
  size_t d = size_t(p.spec.shard_dim);
  int64_t inner = 1;
  for (size_t k = d + 1; k < ls.size(); ++k) inner *= ls[k];
  int64_t in = i % inner;
  int64_t j = (i / inner) % ls[d];
  int64_t outer = i / (inner * ls[d]);
  return (outer * gs[d] + p.shard_offset + j) * inner + in;
}

void init_param(Param& p, uint64_t seed) {
  DCF_CHECK(p.value.device().is_cpu(), "init on host, then copy");
  const int64_t n = p.value.numel();
  const uint64_t stream = fnv1a64(p.spec.name);
  auto val = [&](int64_t i) -> double {
    switch (p.spec.init) {
      case ParamSpec::Init::ones: return 1.0;
      case ParamSpec::Init::zeros: return 0.0;
      case ParamSpec::Init::normal: return p.spec.std * philox_normal(seed, stream, uint64_t(global_index(p, i)));
    }
    return 0.0;
  };
  if (p.value.dtype() == DType::f32) {
    float* v = p.value.data<float>();
    for (int64_t i = 0; i < n; ++i) v[i] = float(val(i));
  } else {
    DCF_CHECK(p.value.dtype() == DType::f64, "init dtype ", p.value.desc());
    double* v = p.value.data<double>();
    for (int64_t i = 0; i < n; ++i) v[i] = val(i);
  }
}

}  // namespace dcf
