// The model's dimensions and switches (plain struct; runtime/ fills it from config.proto), and the
// shard this process holds: which heads/FFN columns/vocabulary rows (tensor parallel) and which
// layers (pipeline stage).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dcf {

struct ModelSpec {
  bool compose = true;  // DCFormer++ (true) or Transformer++ (false): same code path
  int64_t n_layers = 4, d_model = 64, n_heads = 4, head_dim = 16, d_ff = 176, vocab = 256, seq_len = 64;
  std::vector<int64_t> window_pattern;  // per layer, repeating; 0 = global
  bool qk_norm = true;
  double norm_eps = 1e-5, qk_norm_eps = 1e-5, rope_base = 10000.0;
  int64_t dyn_rank = 2;  // I
  double init_std = 0.006;
  int64_t query_chunk = 64;

  static constexpr int64_t kBranches = 4;  // C
  int64_t dyn_hidden() const { return 2 * dyn_rank * n_heads; }  // K = 2 I N
  int64_t window_of(int64_t layer) const {
    return window_pattern.empty() ? 0 : window_pattern[size_t(layer) % window_pattern.size()];
  }
  // Forward FLOPs per token of the whole model (dcmha.md §4.2), DCMHA's extra work counted.
  double forward_flops_per_token() const;
  int64_t param_count() const;
};

struct ShardSpec {
  int64_t tp_size = 1, tp_rank = 0;
  int64_t layer_begin = 0, layer_end = -1;  // [begin, end); end -1 = all layers
  bool has_embedding = true, has_head = true;
};

}  // namespace dcf
