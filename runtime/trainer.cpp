// Trainer: one optimizer step = pipeline schedule over micro-batches, DP gradient sync, global-norm
// clipping, non-finite skip, AdamW (whole flat buffer, or this rank's ZeRO-1 shard + all-gather).
#include "runtime/trainer.h"

#include <chrono>
#include <csignal>
#include <cmath>

#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"

namespace dcf {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Layers of each pipeline stage: the explicit list, or as even as possible (earlier stages take the extra).
std::vector<int64_t> stage_layer_counts(const dcformer::Config& cfg) {
  const auto& p = cfg.parallel();
  std::vector<int64_t> out;
  if (p.stage_layers_size() > 0) {
    for (int n : p.stage_layers()) out.push_back(n);
    return out;
  }
  int64_t L = cfg.model().n_layers(), pp = p.pp();
  for (int64_t s = 0; s < pp; ++s) out.push_back(L / pp + (s < L % pp ? 1 : 0));
  return out;
}
}  // namespace

Trainer::Trainer(const dcformer::Config& cfg, ProcessGrid& grid) : cfg_(cfg), grid_(grid) {
  spec_ = model_spec_from_config(cfg);
  const auto& gs = grid.shape();
  ShardSpec shard;
  shard.tp_size = gs.tp;
  shard.tp_rank = grid.tp_rank();
  auto counts = stage_layer_counts(cfg);
  int64_t begin = 0;
  for (int s = 0; s < grid.pp_rank(); ++s) begin += counts[size_t(s)];
  shard.layer_begin = begin;
  shard.layer_end = begin + counts[size_t(grid.pp_rank())];
  shard.has_embedding = grid.first_stage();
  shard.has_head = grid.last_stage();
  model_ = std::make_unique<DcformerModel>(spec_, shard, DType::f32, Device::cpu());
  model_->init(cfg.run().seed());
  if (gs.tp > 1) {
    tp_ops_ = make_tensor_parallel_ops(grid.tp());
    model_->set_tp(tp_ops_.get());
  }
  // Data
  const auto& d = cfg.data();
  if (d.train_path().empty()) throw InputError("data.train_path: must be set");
  TokenFileSource::Format fmt = d.format() == dcformer::DataConfig::BYTES        ? TokenFileSource::Format::bytes
                                : d.format() == dcformer::DataConfig::TOKENS_U16 ? TokenFileSource::Format::u16
                                                                                 : TokenFileSource::Format::i32;
  auto src = std::make_unique<TokenFileSource>(d.train_path(), fmt, d.seed(), spec_.seq_len + 1);
  if (src->max_token_id() >= spec_.vocab)
    throw InputError("data file " + d.train_path() + ": token id " + std::to_string(src->max_token_id()) +
                     " does not fit model.vocab_size " + std::to_string(spec_.vocab));
  data_ = std::move(src);
  lr_ = {cfg.optimizer().lr(), cfg.schedule().final_lr_fraction(), cfg.schedule().warmup_steps(),
         cfg.schedule().total_steps()};
  micro_batches_ = cfg.parallel().micro_batches();
  micro_batch_size_ = cfg.run().global_batch() / (gs.dp * micro_batches_);
  // Optimizer state: the whole flat buffer, or this rank's ZeRO-1 shard of it (padded to dp).
  const int64_t n = model_->flat_values().numel();
  if (cfg.parallel().zero1()) {
    int64_t shard_len = (n + gs.dp - 1) / gs.dp;
    zero_begin_ = std::min<int64_t>(n, grid.dp_rank() * shard_len);
    zero_count_ = std::min<int64_t>(n, zero_begin_ + shard_len) - zero_begin_;
  } else {
    zero_begin_ = 0;
    zero_count_ = n;
  }
  adam_m_ = Tensor::zeros({zero_count_}, DType::f32);
  adam_v_ = Tensor::zeros({zero_count_}, DType::f32);
  // Ranges counted in the global gradient norm: replicated-over-TP parameters only on tp rank 0; without
  // ZeRO-1 only dp rank 0 counts (gradients are equal over DP), with ZeRO-1 each rank its shard.
  const bool counts_dp = cfg.parallel().zero1() || grid.dp_rank() == 0;
  for (auto& p : model_->params()) {
    if (!counts_dp || (p.replicated() && grid.tp_rank() != 0)) continue;
    int64_t a = model_->param_offset(p), b = a + p.value.numel();
    a = std::max(a, zero_begin_);
    b = std::min(b, zero_begin_ + zero_count_);
    if (a < b) norm_ranges_.push_back({a, b});
  }
}

Trainer::~Trainer() = default;

void Trainer::fill_micro_batch(MicroBatch& mb, int mb_index) {
  const int64_t T = spec_.seq_len, B = micro_batch_size_;
  mb.batch = B;
  mb.ids = Tensor::empty({B * T}, DType::i32);
  mb.targets = Tensor::empty({B * T}, DType::i32);
  std::vector<int32_t> row(size_t(T + 1));
  const uint64_t per_dp = uint64_t(micro_batches_) * uint64_t(B);
  for (int64_t b = 0; b < B; ++b) {
    uint64_t index = uint64_t(step_) * uint64_t(cfg_.run().global_batch()) + uint64_t(grid_.dp_rank()) * per_dp +
                     uint64_t(mb_index) * uint64_t(B) + uint64_t(b);
    data_->sample(index, row.data(), T + 1);
    for (int64_t t = 0; t < T; ++t) {
      mb.ids.data<int32_t>()[b * T + t] = row[size_t(t)];
      mb.targets.data<int32_t>()[b * T + t] = row[size_t(t + 1)];
    }
  }
}

void Trainer::sync_gradients() {
  Communicator& dp = grid_.dp();
  if (dp.size() == 1) return;
  Tensor& g = model_->flat_grads();
  const int64_t n = g.numel();
  if (cfg_.parallel().zero1()) {
    // Reduce-scatter into this rank's shard (buffer padded to a multiple of dp).
    const int64_t shard_len = (n + dp.size() - 1) / dp.size();
    Tensor padded = Tensor::zeros({shard_len * dp.size()}, g.dtype(), g.device());
    padded.flat_range(0, n).copy_from(g);
    Tensor mine = Tensor::empty({shard_len}, g.dtype(), g.device());
    dp.reduce_scatter(padded, mine);
    g.flat_range(zero_begin_, zero_count_).copy_from(mine.flat_range(0, zero_count_));
    return;
  }
  // All-reduce in buckets (bounded message size, and the unit that overlaps with backward on GPU).
  const int64_t bucket = std::max<int64_t>(1, int64_t(cfg_.parallel().grad_bucket_mb()) * (1 << 20) / 4);
  for (int64_t a = 0; a < n; a += bucket) {
    Tensor part = g.flat_range(a, std::min(bucket, n - a));
    dp.all_reduce(part, ReduceOp::sum);
  }
}

double Trainer::global_grad_norm() {
  Tensor& g = model_->flat_grads();
  double local = 0;
  for (auto [a, b] : norm_ranges_) local += sum_squares(g.flat_range(a, b - a));
  Tensor t = Tensor::empty({1}, DType::f64);
  t.data<double>()[0] = local;
  grid_.world().all_reduce(t, ReduceOp::sum);
  return std::sqrt(t.data<double>()[0]);
}

void Trainer::optimizer_step(double lr, double clip_scale) {
  AdamWParams hp;
  hp.lr = lr;
  hp.beta1 = cfg_.optimizer().beta1();
  hp.beta2 = cfg_.optimizer().beta2();
  hp.eps = cfg_.optimizer().eps();
  hp.weight_decay = cfg_.optimizer().weight_decay();
  hp.step = step_ + 1 - skipped_total_;
  Tensor g = model_->flat_grads().flat_range(zero_begin_, zero_count_);
  Tensor p = model_->flat_values().flat_range(zero_begin_, zero_count_);
  if (clip_scale != 1.0) scale_(g, clip_scale);
  adamw_update(p, g, adam_m_, adam_v_, hp);
  if (cfg_.parallel().zero1() && grid_.dp().size() > 1) {
    Communicator& dp = grid_.dp();
    const int64_t n = model_->flat_values().numel();
    const int64_t shard_len = (n + dp.size() - 1) / dp.size();
    Tensor mine = Tensor::zeros({shard_len}, p.dtype(), p.device());
    mine.flat_range(0, zero_count_).copy_from(p);
    Tensor all = Tensor::empty({shard_len * dp.size()}, p.dtype(), p.device());
    dp.all_gather(mine, all);
    model_->flat_values().copy_from(all.flat_range(0, n));
  }
}

StepResult Trainer::step() {
  if (fail_rank_ == grid_.world_rank() && fail_step_ == step_ && fail_how_ == "kill") raise(SIGKILL);
  if (fail_rank_ == grid_.world_rank() && fail_step_ == step_)
    throw DcfError("injected failure on rank " + std::to_string(fail_rank_) + " at step " + std::to_string(step_));
  StepResult r;
  r.step = step_;
  r.lr = lr_.at(step_);
  auto t0 = Clock::now();
  model_->zero_grads();
  const int64_t T = spec_.seq_len, E = spec_.d_model;
  const double loss_scale = 1.0 / double(int64_t(cfg_.run().global_batch()) * T);
  std::vector<MicroBatch> mbs(static_cast<size_t>(micro_batches_));
  double data_s = 0;
  StageCallbacks cb;
  cb.forward = [&](int i, const Tensor& x_in) {
    auto td = Clock::now();
    fill_micro_batch(mbs[size_t(i)], i);
    data_s += seconds_since(td);
    model_->forward(mbs[size_t(i)], x_in.defined() ? &x_in : nullptr);
    return mbs[size_t(i)].x_out;
  };
  cb.backward = [&](int i, const Tensor& dy) {
    Tensor dx;
    model_->backward(mbs[size_t(i)], dy.defined() ? &dy : nullptr, grid_.first_stage() ? nullptr : &dx, loss_scale);
    return dx;
  };
  cb.make_activation = [&]() { return Tensor::empty({micro_batch_size_ * T, E}, DType::f32); };
  auto sched = cfg_.parallel().schedule() == dcformer::ParallelConfig::GPIPE ? PipelineSchedule::gpipe
                                                                            : PipelineSchedule::one_f_one_b;
  PipelineTimes pt = run_pipeline(sched, grid_.pp(), micro_batches_, cb);
  r.forward_backward_s = pt.compute_s - data_s;
  r.pipeline_wait_s = pt.wait_s;
  r.data_s = data_s;
  // Loss of the whole global batch, known to every rank.
  Tensor loss = Tensor::zeros({1}, DType::f64);
  if (grid_.last_stage() && grid_.tp_rank() == 0)
    for (auto& mb : mbs) loss.data<double>()[0] += mb.loss_sum;
  grid_.world().all_reduce(loss, ReduceOp::sum);
  r.loss = loss.data<double>()[0] * loss_scale;
  auto tc = Clock::now();
  sync_gradients();
  r.dp_comm_s = seconds_since(tc);
  auto to = Clock::now();
  r.grad_norm = global_grad_norm();
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    r.skipped = true;
    ++skipped_total_;
    if (++skipped_in_a_row_ >= cfg_.optimizer().max_skipped_in_a_row())
      throw DcfError("stopping: " + std::to_string(skipped_in_a_row_) + " non-finite steps in a row at step " +
                     std::to_string(step_));
  } else {
    skipped_in_a_row_ = 0;
    const double clip = cfg_.optimizer().grad_clip();
    optimizer_step(r.lr, (clip > 0 && r.grad_norm > clip) ? clip / r.grad_norm : 1.0);
  }
  r.optimizer_s = seconds_since(to);
  r.step_time_s = seconds_since(t0);
  r.tokens_per_s = double(cfg_.run().global_batch()) * double(T) / r.step_time_s;
  ++step_;
  return r;
}

std::vector<StepResult> Trainer::train(const std::function<void(const StepResult&)>& on_step) {
  std::vector<StepResult> out;
  while (step_ < cfg_.run().steps()) {
    out.push_back(step());
    if (on_step) on_step(out.back());
  }
  return out;
}

}  // namespace dcf
