// Trainer: one optimizer step = pipeline schedule over micro-batches, DP gradient sync, global-norm
// clipping, non-finite skip, AdamW (whole flat buffer, or this rank's ZeRO-1 shard + all-gather).
#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <csignal>
#include <cmath>

#include "checkpoint/checkpoint.h"
#include "kernels/profile.h"
#include "dataloader/loader.h"
#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"
#include "monitoring/timed_communicator.h"
#ifdef DCF_WITH_CUDA
#include "kernels/cuda_runtime.h"
#endif

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
  // Device and precision: bf16 compute with fp32 master weights on CUDA by default, fp32 on the CPU.
  if (cfg.run().device() == dcformer::RunConfig::CUDA) {
#ifdef DCF_WITH_CUDA
    std::string why;
    if (!cuda::cuda_available(&why)) throw InputError("run.device: CUDA requested but no GPU is usable: " + why);
    device_ = Device::cuda(cuda::init(-1));
    // NCCL for groups with one GPU per rank; host-staged MPI where ranks share a GPU.
    grid.use_device_communicators(device_.index);
#else
    throw InputError("run.device: CUDA requested but this build has no CUDA backend");
#endif
  }
  const bool bf16 = cfg.run().precision() == dcformer::RunConfig::BF16 ||
                    (cfg.run().precision() == dcformer::RunConfig::PRECISION_UNSPECIFIED && device_.is_cuda());
  dtype_ = bf16 ? DType::bf16 : DType::f32;
  model_ = std::make_unique<DcformerModel>(spec_, shard, dtype_, device_);
  Tensor init_values = model_->initial_values(cfg.run().seed(), DType::f32);
  model_->init_from(init_values);
  if (gs.tp > 1) {
    tp_timed_ = std::make_unique<TimedCommunicator>(grid.tp());
    tp_ops_ = make_tensor_parallel_ops(*tp_timed_);
    model_->set_tp(tp_ops_.get());
  }
  // Data
  const auto& d = cfg.data();
  if (d.format() == dcformer::DataConfig::MEGATRON) {
    data::LoaderConfig lc;
    for (const auto& ds : d.datasets()) {
      data::DatasetSpec spec{{ds.prefixes().begin(), ds.prefixes().end()}, ds.weight() > 0 ? ds.weight() : 1.0};
      if (spec.prefixes.empty()) throw InputError("data.datasets: a dataset without prefixes");
      lc.datasets.push_back(spec);
    }
    if (lc.datasets.empty() && d.prefixes_size() > 0) lc.datasets.push_back({{d.prefixes().begin(), d.prefixes().end()}, 1.0});
    if (lc.datasets.empty()) throw InputError("data.prefixes: MEGATRON data needs at least one .bin/.idx prefix");
    lc.seq_len = spec_.seq_len;
    lc.packing = d.prepacked() ? data::Packing::kPrePacked : data::Packing::kDocuments;
    lc.shuffle = d.shuffle();
    lc.seed = d.seed();
    lc.global_batch = cfg.run().global_batch();
    lc.micro_batch = cfg.run().global_batch() / (gs.dp * cfg.parallel().micro_batches());
    lc.prefetch = d.prefetch() > 0 ? d.prefetch() : 4;
    loader_ = std::make_unique<data::DataLoader>(lc, grid.dp_rank(), gs.dp);
  } else if (d.format() == dcformer::DataConfig::SYNTHETIC) {
    data_ = std::make_unique<SyntheticSource>(d.seed(), spec_.vocab);
  } else {
  if (d.train_path().empty()) throw InputError("data.train_path: must be set");
  TokenFileSource::Format fmt = d.format() == dcformer::DataConfig::BYTES        ? TokenFileSource::Format::bytes
                                : d.format() == dcformer::DataConfig::TOKENS_U16 ? TokenFileSource::Format::u16
                                                                                 : TokenFileSource::Format::i32;
  auto src = std::make_unique<TokenFileSource>(d.train_path(), fmt, d.seed(), spec_.seq_len + 1);
  if (src->max_token_id() >= spec_.vocab)
    throw InputError("data file " + d.train_path() + ": token id " + std::to_string(src->max_token_id()) +
                     " does not fit model.vocab_size " + std::to_string(spec_.vocab));
  data_ = std::move(src);
  }
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
  adam_m_ = Tensor::zeros({zero_count_}, DType::f32, device_);
  adam_v_ = Tensor::zeros({zero_count_}, DType::f32, device_);
  if (dtype_ != DType::f32) {
    // fp32 master weights (this rank's optimizer range), exactly the initial values before rounding;
    // fp32 gradients for reduction, clipping and the update.
    master_ = init_values.flat_range(zero_begin_, zero_count_).to(device_);
    grads32_ = Tensor::zeros({n}, DType::f32, device_);
  }
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
  // Adjacent ranges merged: each range is one reduction and one host synchronisation per step (hundreds
  // of parameters; with tp = 1 and no ZeRO-1 they merge into one range).
  std::sort(norm_ranges_.begin(), norm_ranges_.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (auto r : norm_ranges_) {
    if (!merged.empty() && merged.back().second == r.first) merged.back().second = r.second;
    else merged.push_back(r);
  }
  norm_ranges_ = std::move(merged);
}

Trainer::~Trainer() = default;

void Trainer::fill_micro_batch(MicroBatch& mb, int mb_index) {
  const int64_t T = spec_.seq_len, B = micro_batch_size_;
  mb.batch = B;
  mb.ids = Tensor::empty({B * T}, DType::i32);
  mb.targets = Tensor::empty({B * T}, DType::i32);
  if (loader_) {
    // The loader yields this DP rank's micro-batches of each step in order.
    data::Batch b = loader_->next();
    DCF_CHECK(b.rows == B && b.seq_len == T, "loader batch ", b.rows, "x", b.seq_len, " for ", B, "x", T);
    for (int64_t i = 0; i < B * T; ++i) {
      if (b.ids[size_t(i)] >= spec_.vocab || b.targets[size_t(i)] >= spec_.vocab)
        throw InputError("data: token id " + std::to_string(std::max(b.ids[size_t(i)], b.targets[size_t(i)])) +
                         " does not fit model.vocab_size " + std::to_string(spec_.vocab));
      mb.ids.data<int32_t>()[i] = b.ids[size_t(i)];
      mb.targets.data<int32_t>()[i] = b.targets[size_t(i)];
    }
    return;
  }
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

// Phases end by waiting for the device work they queued, so that on a GPU the phase times (and the step
// time) are device time: kernels run asynchronously, and without the wait a phase's unfinished work is
// counted in whichever later phase first reads a result (the backward's tail in the gradient norm, the
// update in the next step's loss). With one micro-batch the waits cost nothing (the loss and the norm
// read wait anyway); with several, the host queues the next micro-batch after the previous one has run.
void Trainer::wait_device() {
#ifdef DCF_WITH_CUDA
  if (device_.is_cuda()) cuda::synchronize();
#endif
}

Tensor& Trainer::grads32() { return grads32_.defined() ? grads32_ : model_->flat_grads(); }

void Trainer::sync_gradients() {
  if (grads32_.defined()) cast(model_->flat_grads(), grads32_);
  Communicator& dp = grid_.dp();
  if (dp.size() == 1) return;
  Tensor& g = grads32();
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
  Tensor& g = grads32();
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
  hp.grad_scale = clip_scale;  // applied to each gradient in the update's own pass
  Tensor g = grads32().flat_range(zero_begin_, zero_count_);
  Tensor p = model_->flat_values().flat_range(zero_begin_, zero_count_);
  if (master_.defined()) {
    adamw_update(master_, g, adam_m_, adam_v_, hp, &p);  // and the bf16 working copy, in the same pass
  } else {
    adamw_update(p, g, adam_m_, adam_v_, hp);
  }
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
  DCF_RANGE("step");  // the root of a step's ranges (bench --breakdown, sampled training steps)
  StepResult r;
  r.step = step_;
  r.lr = lr_.at(step_);
  auto t0 = Clock::now();
  {
    DCF_RANGE("zero_grads");
    model_->zero_grads();
  }
  const int64_t T = spec_.seq_len, E = spec_.d_model;
  const double loss_scale = 1.0 / double(int64_t(cfg_.run().global_batch()) * T);
  std::vector<MicroBatch> mbs(static_cast<size_t>(micro_batches_));
  double data_s = 0, fwd_s = 0, bwd_s = 0;
  auto tp_s = [&] { return tp_timed_ ? tp_timed_->seconds() : 0.0; };
  const double tp_start = tp_s();
  StageCallbacks cb;
  cb.forward = [&](int i, const Tensor& x_in) {
    auto td = Clock::now();
    fill_micro_batch(mbs[size_t(i)], i);
    data_s += seconds_since(td);
    const double tp0 = tp_s(), tf = seconds_since(t0);
    model_->forward(mbs[size_t(i)], x_in.defined() ? &x_in : nullptr);
    wait_device();
    fwd_s += seconds_since(t0) - tf - (tp_s() - tp0);
    return mbs[size_t(i)].x_out;
  };
  cb.backward = [&](int i, const Tensor& dy) {
    Tensor dx;
    const double tp0 = tp_s(), tb = seconds_since(t0);
    model_->backward(mbs[size_t(i)], dy.defined() ? &dy : nullptr, grid_.first_stage() ? nullptr : &dx, loss_scale);
    wait_device();
    bwd_s += seconds_since(t0) - tb - (tp_s() - tp0);
    return dx;
  };
  cb.make_activation = [&]() { return Tensor::empty({micro_batch_size_ * T, E}, dtype_, device_); };
  auto sched = cfg_.parallel().schedule() == dcformer::ParallelConfig::GPIPE ? PipelineSchedule::gpipe
                                                                            : PipelineSchedule::one_f_one_b;
  PipelineTimes pt = run_pipeline(sched, grid_.pp(), micro_batches_, cb);
  r.forward_backward_s = pt.compute_s - data_s;
  r.pipeline_wait_s = pt.wait_s;
  r.data_s = data_s;
  r.forward_s = fwd_s;
  r.backward_s = bwd_s;
  r.tp_comm_s = tp_s() - tp_start;
  if (loader_) r.data_queue_depth = double(loader_->queue_depth());
  // Loss of the whole global batch, known to every rank.
  Tensor loss = Tensor::zeros({1}, DType::f64);
  if (grid_.last_stage() && grid_.tp_rank() == 0)
    for (auto& mb : mbs) loss.data<double>()[0] += mb.loss_sum;
  grid_.world().all_reduce(loss, ReduceOp::sum);
  r.loss = loss.data<double>()[0] * loss_scale;
  auto tc = Clock::now();
  {
    DCF_RANGE("grad_sync");
    sync_gradients();
  }
  wait_device();
  r.dp_comm_s = seconds_since(tc);
  auto to = Clock::now();
  {
    DCF_RANGE("grad_norm");
    r.grad_norm = global_grad_norm();
  }
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    r.skipped = true;
    ++skipped_total_;
    if (++skipped_in_a_row_ >= cfg_.optimizer().max_skipped_in_a_row())
      throw DcfError("stopping: " + std::to_string(skipped_in_a_row_) + " non-finite steps in a row at step " +
                     std::to_string(step_));
  } else {
    skipped_in_a_row_ = 0;
    const double clip = cfg_.optimizer().grad_clip();
    DCF_RANGE("optimizer");
    optimizer_step(r.lr, (clip > 0 && r.grad_norm > clip) ? clip / r.grad_norm : 1.0);
  }
  wait_device();
  r.optimizer_s = seconds_since(to);
  r.step_time_s = seconds_since(t0);
  r.tokens_per_s = double(cfg_.run().global_batch()) * double(T) / r.step_time_s;
#ifdef DCF_WITH_CUDA
  if (device_.is_cuda()) {
    const auto ms = cuda::memory_stats();
    r.device_memory_bytes = double(ms.allocated_bytes);
    r.device_memory_peak_bytes = double(ms.peak_allocated_bytes);
  }
#endif
  ++step_;
  return r;
}

std::vector<StepResult> Trainer::train(const std::function<void(const StepResult&)>& on_step) {
  std::vector<StepResult> out;
  checkpoint_begin();
  while (step_ < cfg_.run().steps()) {
    if (before_step) before_step(step_);
    out.push_back(step());
    if (on_step) on_step(out.back());
    checkpoint_after_step();
  }
  checkpoint_end();
  return out;
}

// ---- Checkpoints (checkpoint/checkpoint.h) ------------------------------------------------------
// What is saved: for every parameter, the part of this rank's shard that lies in its optimizer range
// [zero_begin_, zero_begin_ + zero_count_) of the flat buffer (all of it without ZeRO-1), as fp32
// master weights and both Adam moments. Each element has one writer: without ZeRO-1 dp rank 0 (the
// others hold the same numbers), and parameters replicated over TP only on tp rank 0.

std::string Trainer::checkpoint_dir() const {
  const auto& c = cfg_.checkpoint();
  return c.dir().empty() ? (std::filesystem::path(cfg_.run().run_dir()) / "checkpoints").string() : c.dir();
}

void Trainer::checkpoint_begin() {
  const auto& c = cfg_.checkpoint();
  if (c.every_steps() <= 0 || ckpt_) return;
  if (c.keep_every() < 0) throw InputError("checkpoint.keep_every: must be >= 0");
  ckpt::CheckpointOptions o;
  o.dir = checkpoint_dir();
  o.async = c.async();
  o.keep_last = c.keep_last();
  o.keep_every = c.keep_every();
  ckpt::ShardFileAttrs a;
  a.rank = grid_.world_rank();
  a.tp_rank = grid_.tp_rank();
  a.dp_rank = grid_.dp_rank();
  a.pp_rank = grid_.pp_rank();
  ckpt_ = std::make_unique<ckpt::Checkpointer>(o, grid_.world(), a);
  ckpt_->clean_stale();
  // Host-resident state is snapshotted into the checkpointer's buffer: allocate it now, in the background.
  if (c.async() && device_.is_cpu() && (cfg_.parallel().zero1() || grid_.dp_rank() == 0))
    ckpt_->reserve_snapshot(size_t(3 * zero_count_));
}

void Trainer::checkpoint_after_step() {
  if (!ckpt_) return;
  bool was_pending = ckpt_->pending();
  ckpt_->poll();
  report_commit(was_pending);
  if (step_ % cfg_.checkpoint().every_steps() == 0) {
    save_checkpoint();
    report_commit(true);  // a sync save has committed by now; an async one is still pending
  }
}

void Trainer::checkpoint_end() {
  if (!ckpt_) return;
  if (checkpoint_step_ != step_) {
    save_checkpoint();
    report_commit(true);
  }
  bool was_pending = ckpt_->pending();
  ckpt_->wait();
  report_commit(was_pending);
}

// Collective (every rank reaches it at the same points): tells on_checkpoint about a save that has just
// committed, with its duration on this rank and its size over all ranks.
void Trainer::report_commit(bool was_pending) {
  if (!was_pending || ckpt_->pending()) return;
  const ckpt::SaveStats& st = ckpt_->last_stats();
  Tensor bytes = Tensor::empty({1}, DType::f64);
  bytes.data<double>()[0] = double(st.bytes);
  grid_.world().all_reduce(bytes, ReduceOp::sum);
  if (on_checkpoint) on_checkpoint(st.step, st.stall_s + st.write_s, bytes.data<double>()[0]);
}

void Trainer::save_checkpoint() {
  checkpoint_begin();
  DCF_CHECK(ckpt_, "checkpointing is off (checkpoint.every_steps = 0)");
  const auto& gs = grid_.shape();
  ckpt::Manifest h;
  h.set_step(step_);
  h.set_config(cfg_.SerializeAsString());
  h.set_config_text(config_to_text(cfg_));
  auto* g = h.mutable_grid();
  g->set_tp(gs.tp);
  g->set_dp(gs.dp);
  g->set_pp(gs.pp);
  g->set_zero1(cfg_.parallel().zero1());
  g->set_world(gs.world());
  auto* d = h.mutable_data();
  d->set_consumed_samples(uint64_t(step_) * uint64_t(cfg_.run().global_batch()));
  d->set_seed(cfg_.data().seed());
  d->set_train_path(cfg_.data().train_path());
  auto* rng = h.mutable_rng();
  rng->set_generator("philox4x32-10");
  rng->set_init_seed(cfg_.run().seed());
  rng->set_data_seed(cfg_.data().seed());
  auto* sc = h.mutable_schedule();
  sc->set_step(step_);
  sc->set_skipped_total(skipped_total_);
  sc->set_skipped_in_a_row(skipped_in_a_row_);
  sc->set_next_lr(lr_.at(step_));
  sc->set_total_steps(cfg_.schedule().total_steps());
  // Host views of the optimizer range (copies when the state lives on a GPU: the snapshot).
  Tensor range[3] = {master_.defined() ? master_ : model_->flat_values().flat_range(zero_begin_, zero_count_),
                     adam_m_, adam_v_};
  std::vector<Tensor> snapshot;
  for (Tensor& t : range)
    if (!t.device().is_cpu()) snapshot.push_back(t = t.to(Device::cpu()));
  const char* kinds[3] = {ckpt::kKindParam, ckpt::kKindAdamM, ckpt::kKindAdamV};
  std::vector<ckpt::WritePiece> pieces;
  if (cfg_.parallel().zero1() || grid_.dp_rank() == 0) {
    for (auto& p : model_->params()) {
      if (p.replicated() && grid_.tp_rank() != 0) continue;
      const int64_t off = model_->param_offset(p);
      const int64_t a = std::max(off, zero_begin_), b = std::min(off + p.value.numel(), zero_begin_ + zero_count_);
      if (a >= b) continue;
      for (int k = 0; k < 3; ++k)
        pieces.push_back({ckpt::piece_of(p, kinds[k], a - off, b - off), range[k].data<float>() + (a - zero_begin_)});
    }
  }
  ckpt_->save(h, pieces, std::move(snapshot));
  checkpoint_step_ = step_;
}

int64_t Trainer::resume(const std::string& what) {
  std::string dir;
  if (what == "auto") {
    dir = ckpt::find_latest(checkpoint_dir());
    if (dir.empty()) {
      if (grid_.world_rank() == 0)
        std::fprintf(stderr, "dcformer: --resume auto: no checkpoint under %s, starting at step 0\n",
                     checkpoint_dir().c_str());
      return -1;
    }
  } else {
    dir = ckpt::resolve_checkpoint(what);
  }
  const ckpt::Manifest m = ckpt::read_manifest(dir);
  // Every rank needs its whole shard of the weights, and the moments of its optimizer range.
  const int64_t n = model_->flat_values().numel();
  Tensor values = Tensor::empty({n}, DType::f32), mom_m = Tensor::empty({zero_count_}, DType::f32),
         mom_v = Tensor::empty({zero_count_}, DType::f32);
  std::vector<ckpt::ReadPiece> targets;
  for (auto& p : model_->params()) {
    const int64_t off = model_->param_offset(p);
    targets.push_back({ckpt::piece_of(p, ckpt::kKindParam), values.data<float>() + off});
    const int64_t a = std::max(off, zero_begin_), b = std::min(off + p.value.numel(), zero_begin_ + zero_count_);
    if (a >= b) continue;
    targets.push_back({ckpt::piece_of(p, ckpt::kKindAdamM, a - off, b - off), mom_m.data<float>() + (a - zero_begin_)});
    targets.push_back({ckpt::piece_of(p, ckpt::kKindAdamV, a - off, b - off), mom_v.data<float>() + (a - zero_begin_)});
  }
  ckpt::load_pieces(dir, m, targets);
  if (master_.defined()) master_.copy_from(values.flat_range(zero_begin_, zero_count_));
  if (model_->flat_values().dtype() == DType::f32) {
    model_->flat_values().copy_from(values);
  } else {  // the low-precision working copy is the rounded master weights, as after every update
    Tensor dev = values.to(model_->flat_values().device());
    cast(dev, model_->flat_values());
  }
  adam_m_.copy_from(mom_m);
  adam_v_.copy_from(mom_v);
  step_ = m.schedule().step();
  skipped_total_ = m.schedule().skipped_total();
  skipped_in_a_row_ = m.schedule().skipped_in_a_row();
  checkpoint_step_ = step_;
  if (grid_.world_rank() == 0)
    std::fprintf(stderr, "dcformer: resumed from %s at step %lld (saved on tp %d x dp %d x pp %d%s)\n", dir.c_str(),
                 (long long)step_, m.grid().tp(), m.grid().dp(), m.grid().pp(), m.grid().zero1() ? ", ZeRO-1" : "");
  return step_;
}

}  // namespace dcf
