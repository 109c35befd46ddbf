// The training loop: builds this rank's model shard from the config and the process grid, then for
// every step runs the pipeline schedule over the micro-batches, synchronises gradients over data
// parallel ranks, clips by the global norm, skips non-finite steps, and applies AdamW (optionally as a
// ZeRO-1 distributed optimizer). Rank 0 prints one line per step and appends to run_dir/metrics.jsonl.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/dcformer.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/lr_schedule.h"
#include "runtime/token_source.h"

namespace dcf {
namespace data {
class DataLoader;
}

class TimedCommunicator;
namespace ckpt {
class Checkpointer;
}

struct StepResult {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  double step_time_s = 0, tokens_per_s = 0;
  bool skipped = false;
  double forward_backward_s = 0, pipeline_wait_s = 0, dp_comm_s = 0, optimizer_s = 0, data_s = 0;
  // forward_backward_s split for monitoring: model compute without TP communication, and TP communication.
  double forward_s = 0, backward_s = 0, tp_comm_s = 0;
  double device_memory_bytes = 0, device_memory_peak_bytes = 0;  // GPU allocator (0 on CPU)
  double data_queue_depth = 0;  // micro-batches ready in the prefetching loader after this step (0 without one)
};

class Trainer {
 public:
  Trainer(const dcformer::Config& cfg, ProcessGrid& grid);
  ~Trainer();

  // Runs run.steps steps (or until the schedule ends); returns the per-step results on every rank.
  std::vector<StepResult> train(const std::function<void(const StepResult&)>& on_step = {});
  StepResult step();
  // Called on every rank when a checkpoint has committed: its step, the save's duration on this rank
  // (stall + write) and the bytes written by all ranks.
  std::function<void(int64_t step, double duration_s, double bytes)> on_checkpoint;
  // Called by train() on every rank right before each step, with the step's 0-based index.
  std::function<void(int64_t step)> before_step;

  DcformerModel& model() { return *model_; }
  int64_t current_step() const { return step_; }
  const dcformer::Config& config() const { return cfg_; }
  // Fault injection for tests: this world rank fails at the given step, by throwing ("throw") or by
  // dying at once without any cleanup ("kill": SIGKILL to itself).
  void inject_failure(int world_rank, int64_t at_step, std::string how = "throw") {
    fail_rank_ = world_rank;
    fail_step_ = at_step;
    fail_how_ = std::move(how);
  }
  // Checkpoints (checkpoint/checkpoint.h). resume: `what` is "auto" (the newest checkpoint under the
  // checkpoint dir; none: start fresh) or a checkpoint or checkpoint-root path; the saved layout may
  // differ from this one. Returns the step resumed at, or -1. InputError on a damaged checkpoint.
  int64_t resume(const std::string& what);
  // Saves the training state at the current step (collective).
  void save_checkpoint();
  std::string checkpoint_dir() const;  // checkpoint.dir, or run_dir/checkpoints

 private:
  void fill_micro_batch(MicroBatch& mb, int mb_index);
  void sync_gradients();
  double global_grad_norm();
  void wait_device();  // on a GPU: until the work queued so far has run
  void optimizer_step(double lr, double clip_scale);

  dcformer::Config cfg_;
  ProcessGrid& grid_;
  ModelSpec spec_;
  std::unique_ptr<DcformerModel> model_;
  std::unique_ptr<TimedCommunicator> tp_timed_;  // the TP group, timed (monitoring)
  std::unique_ptr<TensorParallelOps> tp_ops_;
  std::unique_ptr<TokenSource> data_;
  std::unique_ptr<data::DataLoader> loader_;  // MEGATRON datasets (else data_)
  LrSchedule lr_;
  int64_t step_ = 0;
  int micro_batches_ = 1, micro_batch_size_ = 1;
  Tensor adam_m_, adam_v_;   // flat fp32 moments (this rank's ZeRO-1 shard when zero1)
  Tensor master_;            // fp32 master weights of the same range (when the model computes in bf16)
  Tensor grads32_;           // fp32 gradients (when the model's gradients are bf16)
  Tensor& grads32();
  Device device_ = Device::cpu();
  DType dtype_ = DType::f32;
  int skipped_in_a_row_ = 0;
  int64_t skipped_total_ = 0;
  int fail_rank_ = -1;
  int64_t fail_step_ = -1;
  std::string fail_how_;
  int64_t zero_begin_ = 0, zero_count_ = 0;  // ZeRO-1 shard of the flat buffers
  std::vector<std::pair<int64_t, int64_t>> norm_ranges_;  // flat ranges counted in the grad norm on this rank
  // Checkpoints: started by train() when checkpoint.every_steps > 0.
  void checkpoint_begin();
  void checkpoint_after_step();
  void checkpoint_end();
  void report_commit(bool was_pending);
  std::unique_ptr<ckpt::Checkpointer> ckpt_;
  int64_t checkpoint_step_ = -1;  // step of the last checkpoint saved or resumed from
};

}  // namespace dcf
