// DCFormer++ layers: forward and backward side by side, in the order of dcmha.md §1.4 and §3.
#include "model/dcformer.h"

#include <atomic>
#include <cmath>
#include <thread>

#include "kernels/profile.h"

namespace dcf {

namespace {
constexpr int64_t kC = ModelSpec::kBranches;
}

double ModelSpec::forward_flops_per_token() const {
  // 2 FLOPs per multiply-add. Dense: attention projections, MLP, head; attention: QK^T and PV over the
  // mean number of allowed keys; DCMHA: dynamic-weight MLP and both Composes (dcmha.md §4.2).
  const double E = double(d_model), N = double(n_heads), D = double(head_dim), F = double(d_ff), V = double(vocab);
  const double I = double(dyn_rank), T = double(seq_len);
  double total = 2.0 * E * V;  // head
  for (int64_t l = 0; l < n_layers; ++l) {
    double W = double(window_of(l));
    double s_eff = (W == 0 || W >= T) ? (T + 1) / 2 : (W * (W + 1) / 2 + (T - W) * W) / T;
    total += 8.0 * E * N * D + 6.0 * E * F + 4.0 * s_eff * N * D;
    if (compose) total += 2.0 * (8 * I + 4) * N * E + 32.0 * I * I * N * N + 2.0 * (8 * I + 3) * N * s_eff;
  }
  return total;
}

int64_t ModelSpec::param_count() const {
  int64_t E = d_model, N = n_heads, D = head_dim, F = d_ff, K = dyn_hidden(), I = dyn_rank;
  int64_t per = 2 * E + 4 * E * N * D + 3 * E * F;
  if (qk_norm) per += 2 * D;
  if (compose) per += E * kC * K + kC * K * 2 * I * N + E * kC * N;
  return n_layers * per + 2 * vocab * E + E;
}

DcformerModel::DcformerModel(const ModelSpec& spec, const ShardSpec& shard, DType dtype, Device dev)
    : spec_(spec), shard_(shard), dtype_(dtype), dev_(dev) {
  if (shard_.layer_end < 0) shard_.layer_end = spec_.n_layers;
  const int64_t E = spec.d_model, N = spec.n_heads, D = spec.head_dim, F = spec.d_ff, V = spec.vocab;
  const int64_t K = spec.dyn_hidden(), I = spec.dyn_rank;
  DCF_CHECK(N % shard.tp_size == 0 && F % shard.tp_size == 0 && V % shard.tp_size == 0, "tp does not divide the model");
  using I_ = ParamSpec::Init;
  const double std = spec.init_std;
  params_.reserve(size_t(4 + 16 * (shard_.layer_end - shard_.layer_begin)));  // stable addresses
  if (shard.has_embedding) add_param("embed", {V, E}, 0, I_::normal, std);
  for (int64_t l = shard_.layer_begin; l < shard_.layer_end; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add_param(p + "attn_norm", {E}, -1, I_::ones, 0);
    add_param(p + "attn.wq", {E, N, D}, 1, I_::normal, std);
    add_param(p + "attn.wk", {E, N, D}, 1, I_::normal, std);
    add_param(p + "attn.wv", {E, N, D}, 1, I_::normal, std);
    if (spec.qk_norm) {
      add_param(p + "attn.q_norm", {D}, -1, I_::ones, 0);
      add_param(p + "attn.k_norm", {D}, -1, I_::ones, 0);
    }
    if (spec.compose) {
      add_param(p + "attn.dyn.w1", {E, kC, K}, -1, I_::normal, std::sqrt(2.0 / double(N * D + K)));
      add_param(p + "attn.dyn.w2", {kC, K, 2 * I, N}, -1, I_::normal, 0.01 * 2.0 / double(N + I) / std::sqrt(double(K)));
      add_param(p + "attn.dyn.wg", {E, kC, N}, -1, I_::normal, 0.005 * std::sqrt(2.0 / double(N * D + N)));
    }
    add_param(p + "attn.wo", {N, D, E}, 0, I_::normal, std);
    add_param(p + "mlp_norm", {E}, -1, I_::ones, 0);
    add_param(p + "mlp.w_gate", {E, F}, 1, I_::normal, std);
    add_param(p + "mlp.w_up", {E, F}, 1, I_::normal, std);
    add_param(p + "mlp.w_down", {F, E}, 0, I_::normal, std);
  }
  if (shard.has_head) {
    add_param("final_norm", {E}, -1, I_::ones, 0);
    add_param("head", {E, V}, 1, I_::normal, std);
  }
  // One flat buffer each for values and gradients; parameters are views into them.
  int64_t total = 0;
  for (auto& p : params_) {
    offsets_.push_back(total);
    total += shape_numel(p.local_shape);
  }
  flat_values_ = Tensor::zeros({total}, dtype_, dev_);
  flat_grads_ = Tensor::zeros({total}, dtype_, dev_);
  for (size_t i = 0; i < params_.size(); ++i) {
    int64_t n = shape_numel(params_[i].local_shape);
    params_[i].value = flat_values_.flat_range(offsets_[i], n).view(params_[i].local_shape);
    params_[i].grad = flat_grads_.flat_range(offsets_[i], n).view(params_[i].local_shape);
  }
  embed_ = find("embed");
  final_norm_ = find("final_norm");
  head_ = find("head");
  for (int64_t l = shard_.layer_begin; l < shard_.layer_end; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    layers_.push_back({l, find(p + "attn_norm"), find(p + "attn.wq"), find(p + "attn.wk"), find(p + "attn.wv"),
                       find(p + "attn.q_norm"), find(p + "attn.k_norm"), find(p + "attn.dyn.w1"),
                       find(p + "attn.dyn.w2"), find(p + "attn.dyn.wg"), find(p + "attn.wo"), find(p + "mlp_norm"),
                       find(p + "mlp.w_gate"), find(p + "mlp.w_up"), find(p + "mlp.w_down")});
  }
}

void DcformerModel::add_param(const std::string& name, Shape shape, int shard_dim, ParamSpec::Init init, double std) {
  Param p;
  p.spec = {name, std::move(shape), shard_dim, init, std};
  p.local_shape = shard_shape(p.spec, shard_.tp_size, shard_.tp_rank, &p.shard_offset);
  params_.push_back(std::move(p));
}

Param* DcformerModel::find(const std::string& name) {
  for (auto& p : params_)
    if (p.spec.name == name) return &p;
  return nullptr;
}

Tensor DcformerModel::initial_values(uint64_t seed, DType dtype) const {
  DCF_CHECK(dtype == DType::f32 || dtype == DType::f64, "initial values in f32 or f64");
  Tensor flat = Tensor::empty({flat_values_.numel()}, dtype);
  // Every element is an independent draw, so the parameters are filled by several threads.
  std::atomic<size_t> next{0};
  auto work = [&]() {
    for (size_t i; (i = next.fetch_add(1)) < params_.size();) {
      Param hp = params_[i];
      hp.value = flat.flat_range(offsets_[i], shape_numel(hp.local_shape)).view(hp.local_shape);
      init_param(hp, seed);
    }
  };
  std::vector<std::thread> pool;
  const unsigned n = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  for (unsigned t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return flat;
}

void DcformerModel::init(uint64_t seed) { init_from(initial_values(seed, dtype_ == DType::f64 ? DType::f64 : DType::f32)); }

void DcformerModel::init_from(const Tensor& host) {
  const DType host_dt = host.dtype();
  DCF_CHECK(host.numel() == flat_values_.numel(), "init_from: ", host.desc(), " for ", flat_values_.desc());
  if (dtype_ == host_dt) {
    flat_values_.copy_from(host);
  } else {
    Tensor dev = host.to(dev_);
    cast(dev, flat_values_);
  }
}

void DcformerModel::zero_grads() { flat_grads_.zero_(); }

int64_t DcformerModel::param_offset(const Param& p) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (&params_[i] == &p) return offsets_[i];
  throw DcfError("parameter " + p.spec.name + " is not part of this model");
}

DcmhaShape DcformerModel::core_shape(const LayerRefs& L, int64_t B) const {
  return DcmhaShape{.B = B, .T = spec_.seq_len, .S = spec_.seq_len, .N = local_heads(), .D = spec_.head_dim,
                    .I = spec_.dyn_rank, .window = spec_.window_of(L.index), .compose = spec_.compose,
                    .chunk = spec_.query_chunk};
}

// ---------------------------------------------------------------------------------------------
// One layer. Activations are [R = B*T, E] row-major; heads are [B, T, Nl, D].

void DcformerModel::layer_forward(const LayerRefs& L, LayerSaved& s, const Tensor& x, Tensor& out, int64_t B) {
  const int64_t T = spec_.seq_len, E = spec_.d_model, Nl = local_heads(), D = spec_.head_dim;
  const int64_t R = B * T, HD = Nl * D, Fl = spec_.d_ff / shard_.tp_size, I = spec_.dyn_rank, K = spec_.dyn_hidden();
  const int64_t N = spec_.n_heads;
  s.x_in = x;
  DCF_RANGE("layer");
  prof::Phases ph;
  ph.next("attn.qkv");
  // Attention sub-layer: h1 = RMSNorm(x)
  s.h1 = new_tensor({R, E});
  s.rstd1 = new_stat({R});
  rmsnorm_forward(x, L.attn_norm->value, s.h1, s.rstd1, spec_.norm_eps);
  // q, k, v projections (column-parallel by heads)
  auto proj = [&](Param* w) {
    Tensor t = new_tensor({B, T, Nl, D});
    Tensor t2 = t.view({R, HD});
    matmul(s.h1, false, w->value.view({E, HD}), false, t2);
    return t;
  };
  Tensor q = proj(L.wq), k = proj(L.wk);
  s.v = proj(L.wv);
  if (spec_.qk_norm) {
    s.q_raw = q;
    s.k_raw = k;
    s.q = new_tensor({B, T, Nl, D});
    s.k = new_tensor({B, T, Nl, D});
    s.q_rstd = new_stat({R * Nl});
    s.k_rstd = new_stat({R * Nl});
    rmsnorm_forward(q, L.q_norm->value, s.q, s.q_rstd, spec_.qk_norm_eps);
    rmsnorm_forward(k, L.k_norm->value, s.k, s.k_rstd, spec_.qk_norm_eps);
  } else {
    s.q = q;
    s.k = k;
  }
  rope_forward(s.q, 0, spec_.rope_base, D);
  rope_forward(s.k, 0, spec_.rope_base, D);
  scale_(s.q, 1.0 / std::sqrt(double(D)));
  // Dynamic weights from h1 (replicated on every TP rank): dw [R, C, 2I+1, N]
  if (spec_.compose) {
    ph.next("attn.dynw");
    s.hpre = new_tensor({R, kC * K});
    matmul(s.h1, false, L.w1->value.view({E, kC * K}), false, s.hpre);
    s.hg = new_tensor({R, kC * K});
    gelu_tanh_forward(s.hpre, s.hg);
    s.y = new_tensor({R, kC, 2 * I, N});
    for (int64_t c = 0; c < kC; ++c)
      gemm_ex(false, false, R, 2 * I * N, K, 1.0, s.hg, c * K, kC * K, L.w2->value, c * K * 2 * I * N, 2 * I * N, 0.0,
              s.y, c * 2 * I * N, kC * 2 * I * N);
    s.z = new_tensor({R, kC, N});
    Tensor z2 = s.z.view({R, kC * N});
    matmul(s.h1, false, L.wg->value.view({E, kC * N}), false, z2);
    s.dw = new_tensor({B, T, kC, 2 * I + 1, N});
    s.read_rms = new_stat({R, kC, I});
    dynw_finalize_forward(s.y, s.z, s.dw, s.read_rms, I, 1e-6);
  }
  // Attention core
  ph.next(spec_.window_of(L.index) > 0 ? "attn.core.local" : "attn.core.global");
  s.o = new_tensor({B, T, Nl, D});
  DcmhaShape cs = core_shape(L, B);
  if (tp_ && tp_->size() > 1) {
    tp_->dcmha_core_forward(cs, s.q, s.k, s.v, s.dw, s.o);
  } else {
    if (spec_.compose && dev_.is_cuda()) {  // kept for the backward (skips its statistics pass)
      s.attn_stats = Tensor::empty({B, T, Nl, 2}, DType::f32, dev_);
      cs.softmax_stats = s.attn_stats.data<float>();
    }
    dcmha_forward(cs, s.q, s.k, s.v, s.dw, s.o);
  }
  // Row-parallel projection plus residual: out = res + a w. With one TP rank the GEMM adds into the copy of
  // the residual (beta = 1: one pass over out instead of writing the product and adding it); with several,
  // the ranks' partial products are summed before the residual is added once.
  auto project_add = [&](const Tensor& a, const Tensor& w, const Tensor& res, Tensor& out) {
    out = res.clone();
    if (!tp_ || tp_->size() == 1) {
      matmul(a, false, w, false, out, 1.0, 1.0);
      return;
    }
    Tensor part = new_tensor({R, E});
    matmul(a, false, w, false, part);
    reduce_from_tp(part);
    add_(out, part);
  };
  // Output projection (row-parallel) + residual
  ph.next("attn.out");
  project_add(s.o.view({R, HD}), L.wo->value.view({HD, E}), x, s.x_mid);
  // MLP sub-layer
  ph.next("mlp");
  s.h2 = new_tensor({R, E});
  s.rstd2 = new_stat({R});
  rmsnorm_forward(s.x_mid, L.mlp_norm->value, s.h2, s.rstd2, spec_.norm_eps);
  s.gate = new_tensor({R, Fl});
  s.up = new_tensor({R, Fl});
  s.act = new_tensor({R, Fl});
  matmul(s.h2, false, L.w_gate->value, false, s.gate);
  matmul(s.h2, false, L.w_up->value, false, s.up);
  swiglu_forward(s.gate, s.up, s.act);
  project_add(s.act, L.w_down->value, s.x_mid, out);
}

// dx: in = gradient w.r.t. the layer output; out = gradient w.r.t. the layer input.
void DcformerModel::layer_backward(const LayerRefs& L, LayerSaved& s, Tensor& dx, int64_t B) {
  const int64_t T = spec_.seq_len, E = spec_.d_model, Nl = local_heads(), D = spec_.head_dim;
  const int64_t R = B * T, HD = Nl * D, Fl = spec_.d_ff / shard_.tp_size, I = spec_.dyn_rank, K = spec_.dyn_hidden();
  const int64_t N = spec_.n_heads;
  DCF_RANGE("layer");
  prof::Phases ph;
  ph.next("mlp");
  // MLP: out = x_mid + W_down(swiglu(h2 Wg, h2 Wu))
  Tensor dact = new_tensor({R, Fl});
  matmul(dx, false, L.w_down->value, true, dact);
  matmul(s.act, true, dx, false, L.w_down->grad, 1.0, 1.0);
  Tensor dgate = new_tensor({R, Fl}), dup = new_tensor({R, Fl});
  swiglu_backward(dact, s.gate, s.up, dgate, dup);
  Tensor dh2 = new_tensor({R, E});
  matmul(dgate, false, L.w_gate->value, true, dh2);
  matmul(dup, false, L.w_up->value, true, dh2, 1.0, 1.0);
  matmul(s.h2, true, dgate, false, L.w_gate->grad, 1.0, 1.0);
  matmul(s.h2, true, dup, false, L.w_up->grad, 1.0, 1.0);
  copy_to_tp_backward(dh2);
  Tensor dxm = new_tensor({R, E});
  rmsnorm_backward(dh2, s.x_mid, L.mlp_norm->value, s.rstd2, dxm, &L.mlp_norm->grad);
  add_(dx, dxm);  // dx is now d x_mid
  s.gate = s.up = s.act = s.h2 = s.rstd2 = Tensor();
  // Attention output projection
  ph.next("attn.out");
  Tensor d_o = new_tensor({B, T, Nl, D});
  Tensor d_o2 = d_o.view({R, HD});
  matmul(dx, false, L.wo->value.view({HD, E}), true, d_o2);
  Tensor dwo = L.wo->grad.view({HD, E});
  matmul(s.o.view({R, HD}), true, dx, false, dwo, 1.0, 1.0);
  // Core
  ph.next(spec_.window_of(L.index) > 0 ? "attn.core.local" : "attn.core.global");
  Tensor dq = new_zeros({B, T, Nl, D}), dk = new_zeros({B, T, Nl, D}), dv = new_zeros({B, T, Nl, D});
  Tensor ddw;
  if (spec_.compose) ddw = new_zeros({B, T, kC, 2 * I + 1, N});
  DcmhaShape cs = core_shape(L, B);
  if (tp_ && tp_->size() > 1) {
    tp_->dcmha_core_backward(cs, s.q, s.k, s.v, s.dw, d_o, dq, dk, dv, ddw);
    if (spec_.compose) sum_tp_partials(ddw);  // each rank holds the partial of its query rows
  } else {
    if (s.attn_stats.defined()) cs.softmax_stats = s.attn_stats.data<float>();
    dcmha_backward(cs, s.q, s.k, s.v, s.dw, d_o, dq, dk, dv, ddw);
    s.attn_stats = Tensor();
  }
  // Back through q scaling, RoPE, qk-norm
  ph.next("attn.qkv");
  scale_(dq, 1.0 / std::sqrt(double(D)));
  rope_backward(dq, 0, spec_.rope_base, D);
  rope_backward(dk, 0, spec_.rope_base, D);
  if (spec_.qk_norm) {
    Tensor dqr = new_tensor({B, T, Nl, D}), dkr = new_tensor({B, T, Nl, D});
    Tensor gq = new_zeros({D}), gk = new_zeros({D});
    rmsnorm_backward(dq, s.q_raw, L.q_norm->value, s.q_rstd, dqr, &gq);
    rmsnorm_backward(dk, s.k_raw, L.k_norm->value, s.k_rstd, dkr, &gk);
    sum_tp_partials(gq);  // the shared scale sees only this rank's heads
    sum_tp_partials(gk);
    add_(L.q_norm->grad, gq);
    add_(L.k_norm->grad, gk);
    dq = dqr;
    dk = dkr;
  }
  // q, k, v projections
  Tensor dh1 = new_tensor({R, E});
  matmul(dq.view({R, HD}), false, L.wq->value.view({E, HD}), true, dh1);
  matmul(dk.view({R, HD}), false, L.wk->value.view({E, HD}), true, dh1, 1.0, 1.0);
  matmul(dv.view({R, HD}), false, L.wv->value.view({E, HD}), true, dh1, 1.0, 1.0);
  Tensor gwq = L.wq->grad.view({E, HD}), gwk = L.wk->grad.view({E, HD}), gwv = L.wv->grad.view({E, HD});
  matmul(s.h1, true, dq.view({R, HD}), false, gwq, 1.0, 1.0);
  matmul(s.h1, true, dk.view({R, HD}), false, gwk, 1.0, 1.0);
  matmul(s.h1, true, dv.view({R, HD}), false, gwv, 1.0, 1.0);
  copy_to_tp_backward(dh1);
  // Dynamic-weight projection (replicated; ddw is complete here, so its dh1 part is added after the reduce)
  if (spec_.compose) {
    ph.next("attn.dynw");
    Tensor dy = new_tensor({R, kC, 2 * I, N}), dz = new_tensor({R, kC, N});
    dynw_finalize_backward(ddw, s.y, s.dw, s.read_rms, dy, dz, I);
    Tensor dhg = new_tensor({R, kC * K});
    for (int64_t c = 0; c < kC; ++c) {
      gemm_ex(false, true, R, K, 2 * I * N, 1.0, dy, c * 2 * I * N, kC * 2 * I * N, L.w2->value, c * K * 2 * I * N,
              2 * I * N, 0.0, dhg, c * K, kC * K);
      gemm_ex(true, false, K, 2 * I * N, R, 1.0, s.hg, c * K, kC * K, dy, c * 2 * I * N, kC * 2 * I * N, 1.0,
              L.w2->grad, c * K * 2 * I * N, 2 * I * N);
    }
    Tensor dhpre = new_tensor({R, kC * K});
    gelu_tanh_backward(dhg, s.hpre, dhpre);
    matmul(dhpre, false, L.w1->value.view({E, kC * K}), true, dh1, 1.0, 1.0);
    Tensor dz2 = dz.view({R, kC * N});
    matmul(dz2, false, L.wg->value.view({E, kC * N}), true, dh1, 1.0, 1.0);
    Tensor gw1 = L.w1->grad.view({E, kC * K}), gwg = L.wg->grad.view({E, kC * N});
    matmul(s.h1, true, dhpre, false, gw1, 1.0, 1.0);
    matmul(s.h1, true, dz2, false, gwg, 1.0, 1.0);
  }
  ph.next("attn.norm");
  Tensor dxa = new_tensor({R, E});
  rmsnorm_backward(dh1, s.x_in, L.attn_norm->value, s.rstd1, dxa, &L.attn_norm->grad);
  add_(dx, dxa);
  s = LayerSaved();
}

// ---------------------------------------------------------------------------------------------

void DcformerModel::forward(MicroBatch& mb, const Tensor* x_in) {
  const int64_t B = mb.batch, T = spec_.seq_len, E = spec_.d_model, R = B * T;
  DCF_RANGE("forward");
  Tensor x;
  if (shard_.has_embedding) {
    DCF_RANGE("embed");
    DCF_CHECK(mb.ids.numel() == R, "micro-batch ids ", mb.ids.desc(), " for B=", B, " T=", T);
    if (!(mb.ids.device() == dev_)) mb.ids = mb.ids.to(dev_);
    x = new_tensor({R, E});
    embedding_forward(embed_->value, mb.ids, x, shard_.tp_rank * (spec_.vocab / shard_.tp_size));
    reduce_from_tp(x);  // vocab-parallel embedding: rows outside the shard are 0
  } else {
    DCF_CHECK(x_in && x_in->numel() == R * E, "stage input");
    x = *x_in;
  }
  mb.layers.assign(layers_.size(), LayerSaved());
  for (size_t i = 0; i < layers_.size(); ++i) {
    Tensor out;
    layer_forward(layers_[i], mb.layers[i], x, out, B);
    x = out;
  }
  if (!shard_.has_head) {
    mb.x_out = x;
    return;
  }
  // Final norm, vocab-parallel head and cross-entropy (full logits are never gathered).
  DCF_RANGE("head");
  if (!(mb.targets.device() == dev_)) mb.targets = mb.targets.to(dev_);
  const int64_t Vl = spec_.vocab / shard_.tp_size, voff = shard_.tp_rank * Vl;
  mb.xf = x;
  mb.hf = new_tensor({R, E});
  mb.rstd_f = new_stat({R});
  rmsnorm_forward(x, final_norm_->value, mb.hf, mb.rstd_f, spec_.norm_eps);
  mb.logits = new_tensor({R, Vl});
  matmul(mb.hf, false, head_->value, false, mb.logits);
  Tensor mx = new_stat({R}), sum = new_stat({R}), tgt = new_stat({R});
  ce_row_max(mb.logits, mx);
  if (tp_) tp_->all_reduce_max(mx);
  ce_row_sumexp(mb.logits, mx, sum);
  ce_target_logit(mb.logits, mb.targets, voff, tgt);
  sum_tp_partials(sum);
  sum_tp_partials(tgt);
  // lse and the loss are tiny [R] vectors: finish them on the host.
  Tensor mx_h = mx.to(Device::cpu()), sum_h = sum.to(Device::cpu()), tgt_h = tgt.to(Device::cpu());
  const DType st = stat_dtype();
  Tensor lse_h = Tensor::empty({R}, st);
  double loss = 0;
  for (int64_t r = 0; r < R; ++r) {
    double m = st == DType::f32 ? mx_h.data<float>()[r] : mx_h.data<double>()[r];
    double sm = st == DType::f32 ? sum_h.data<float>()[r] : sum_h.data<double>()[r];
    double tg = st == DType::f32 ? tgt_h.data<float>()[r] : tgt_h.data<double>()[r];
    double lse = m + std::log(sm);
    if (st == DType::f32)
      lse_h.data<float>()[r] = float(lse);
    else
      lse_h.data<double>()[r] = lse;
    loss += lse - tg;
  }
  mb.lse = lse_h.to(dev_);
  mb.loss_sum = loss;
}

void DcformerModel::backward(MicroBatch& mb, const Tensor* dx_out, Tensor* dx_in, double loss_scale) {
  const int64_t B = mb.batch, T = spec_.seq_len, E = spec_.d_model, R = B * T;
  DCF_RANGE("backward");
  Tensor dx;
  if (shard_.has_head) {
    DCF_RANGE("head");
    const int64_t Vl = spec_.vocab / shard_.tp_size, voff = shard_.tp_rank * Vl;
    Tensor dlogits = new_tensor({R, Vl});
    ce_backward(mb.logits, mb.targets, mb.lse, voff, loss_scale, dlogits);
    Tensor dhf = new_tensor({R, E});
    matmul(dlogits, false, head_->value, true, dhf);
    matmul(mb.hf, true, dlogits, false, head_->grad, 1.0, 1.0);
    copy_to_tp_backward(dhf);
    dx = new_tensor({R, E});
    rmsnorm_backward(dhf, mb.xf, final_norm_->value, mb.rstd_f, dx, &final_norm_->grad);
    mb.logits = mb.hf = mb.xf = Tensor();
  } else {
    DCF_CHECK(dx_out && dx_out->numel() == R * E, "stage output gradient");
    dx = dx_out->clone();
  }
  for (size_t i = layers_.size(); i-- > 0;) layer_backward(layers_[i], mb.layers[i], dx, B);
  mb.layers.clear();
  if (shard_.has_embedding) {
    DCF_RANGE("embed");
    embedding_backward(dx, mb.ids, embed_->grad, shard_.tp_rank * (spec_.vocab / shard_.tp_size));
  } else {
    DCF_CHECK(dx_in, "missing stage input gradient buffer");
    *dx_in = dx;
  }
}

}  // namespace dcf
