// DCFormer++ / Transformer++ with explicit forward and backward per layer (dcmha.md §1-§2). One
// object holds this process's shard: its pipeline stage's layers and its tensor-parallel slice of each.
// A MicroBatch carries what forward saved for backward, so several can be in flight (1F1B).
#pragma once
#include <memory>
#include <vector>

#include "model/model_spec.h"
#include "model/params.h"
#include "model/tp_ops.h"

namespace dcf {

struct LayerSaved {
  Tensor x_in, h1, rstd1;
  Tensor q_raw, k_raw, q_rstd, k_rstd;  // before qk-norm (qk-norm on)
  Tensor q, k, v;                        // after qk-norm and RoPE; q scaled by 1/sqrt(D)
  Tensor hpre, hg, y, z, dw, read_rms;   // dynamic weights
  Tensor o, x_mid, h2, rstd2, gate, up, act;
  Tensor attn_stats;  // fp32 [B, T, N, 2] softmax statistics of the fused DCMHA core (CUDA, compose, no TP)
};

struct MicroBatch {
  int64_t batch = 0;            // sequences
  Tensor ids, targets;          // i32 [B*T]
  std::vector<LayerSaved> layers;
  Tensor x_out;                 // stage output [B*T, E] (not on the last stage)
  Tensor xf, hf, rstd_f, logits, lse;  // last stage
  double loss_sum = 0;          // sum of token losses (last stage)
};

class DcformerModel {
 public:
  DcformerModel(const ModelSpec& spec, const ShardSpec& shard, DType dtype = DType::f32, Device dev = Device::cpu());

  const ModelSpec& spec() const { return spec_; }
  const ShardSpec& shard() const { return shard_; }
  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  Param* find(const std::string& name);
  void set_tp(TensorParallelOps* tp) { tp_ = tp; }
  void init(uint64_t seed);
  void init_from(const Tensor& host_values);  // flat host values (f32 or f64), cast to the compute dtype
  // The initial values of this shard's flat buffer on the host, in f32 (or f64): what init() stores,
  // before any rounding to a narrower compute dtype (the fp32 master weights start from these).
  Tensor initial_values(uint64_t seed, DType dtype) const;
  DType dtype() const { return dtype_; }
  Device device() const { return dev_; }
  void zero_grads();
  // Every parameter's value and gradient are views into these flat buffers (optimizer, DP sync, ZeRO-1).
  Tensor& flat_values() { return flat_values_; }
  Tensor& flat_grads() { return flat_grads_; }
  int64_t param_offset(const Param& p) const;  // element offset of p inside the flat buffers

  // Forward of this stage for one micro-batch of mb.batch sequences. x_in: previous stage's output
  // (nullptr on the first stage, which embeds mb.ids). On the last stage computes mb.loss_sum;
  // loss_scale is the weight of each token's loss in the objective (1 / tokens in the global batch).
  void forward(MicroBatch& mb, const Tensor* x_in);
  // Backward: dx_out = gradient w.r.t. this stage's output (nullptr on the last stage); writes dx_in
  // (the gradient for the previous stage) unless this is the first stage. Frees mb's saved tensors.
  void backward(MicroBatch& mb, const Tensor* dx_out, Tensor* dx_in, double loss_scale);

  int64_t local_heads() const { return spec_.n_heads / shard_.tp_size; }

 private:
  struct LayerRefs {
    int64_t index;
    Param *attn_norm, *wq, *wk, *wv, *q_norm, *k_norm, *w1, *w2, *wg, *wo, *mlp_norm, *w_gate, *w_up, *w_down;
  };
  void add_param(const std::string& name, Shape shape, int shard_dim, ParamSpec::Init init, double std);
  void layer_forward(const LayerRefs& L, LayerSaved& s, const Tensor& x, Tensor& out, int64_t B);
  void layer_backward(const LayerRefs& L, LayerSaved& s, Tensor& dx, int64_t B);
  DcmhaShape core_shape(const LayerRefs& L, int64_t B) const;
  Tensor new_tensor(const Shape& s) const { return Tensor::empty(s, dtype_, dev_); }
  Tensor new_zeros(const Shape& s) const { return Tensor::zeros(s, dtype_, dev_); }
  // Statistics (norm rstd, softmax sums) stay in fp32 when activations are bf16.
  DType stat_dtype() const { return dtype_ == DType::f64 ? DType::f64 : DType::f32; }
  Tensor new_stat(const Shape& s) const { return Tensor::empty(s, stat_dtype(), dev_); }
  // Megatron's mappings by name (no-ops without tensor parallelism).
  void reduce_from_tp(Tensor& t) {
    if (tp_) tp_->reduce_from_tp_forward(t);
  }
  void copy_to_tp_backward(Tensor& t) {
    if (tp_) tp_->copy_to_tp_backward(t);
  }
  void sum_tp_partials(Tensor& t) {
    if (tp_) tp_->sum_partials(t);
  }

  ModelSpec spec_;
  ShardSpec shard_;
  DType dtype_;
  Device dev_;
  std::vector<Param> params_;
  std::vector<int64_t> offsets_;
  Tensor flat_values_, flat_grads_;
  std::vector<LayerRefs> layers_;
  Param *embed_ = nullptr, *final_norm_ = nullptr, *head_ = nullptr;
  TensorParallelOps* tp_ = nullptr;
};

}  // namespace dcf
