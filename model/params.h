// Parameters: ParamSpec is the single source of truth (name, global shape, shard dim, init) used by
// initialisation, the optimizer, checkpoints and export. A Param is this process's shard of it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace dcf {

struct ParamSpec {
  enum class Init { normal, ones, zeros };
  std::string name;
  Shape global_shape;
  int shard_dim = -1;  // -1: replicated over tensor-parallel ranks
  Init init = Init::normal;
  double std = 0.0;
};

struct Param {
  ParamSpec spec;
  Shape local_shape;
  int64_t shard_offset = 0;  // start along shard_dim in the global tensor
  Tensor value, grad;
  bool replicated() const { return spec.shard_dim < 0; }
};

// Local shard of a global shape: dim shard_dim split evenly over tp_size ranks.
Shape shard_shape(const ParamSpec& spec, int64_t tp_size, int64_t tp_rank, int64_t* offset);

// Fills p.value from the counter-based RNG keyed by (seed, name, global element index).
void init_param(Param& p, uint64_t seed);

// Global element index of local element i of a shard (row-major in both).
int64_t global_index(const Param& p, int64_t local_index);

}  // namespace dcf
