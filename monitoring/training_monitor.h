// TrainingMonitor: what the job reports about itself while it trains (architecture.md §8).
//  - Prometheus: an exporter (MetricsExporter) on each node's first rank. Every rank's per-step numbers
//    are gathered over MPI to its node's first rank, which exports them with labels rank/dp/tp/pp; world
//    rank 0 also exports the job-level metrics (loss, lr, tokens/s, MFU, checkpoints, ...). Each step's
//    numbers are published atomically: a scrape never mixes two steps. docs/monitoring.md lists them.
//  - metrics.jsonl (world rank 0): one JSON object per step, including every rank's step time.
//  - The progress line (world rank 0): step/total, loss, tokens/s, MFU, ETA.
// monitoring/ sits below runtime/: the caller converts the trainer's step result into StepMetrics.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/process_grid.h"

namespace dcf {

// Peak dense bf16 FLOP/s of one NVIDIA H200 (SXM), the MFU denominator of a GPU rank.
constexpr double kH200Bf16PeakFlops = 989e12;

// What one rank measured in one optimizer step.
struct StepMetrics {
  int64_t step = 0;  // 0-based index of the step just finished (metrics say step + 1 steps done)
  double loss = 0, lr = 0, grad_norm = 0;
  bool skipped = false;  // non-finite loss or gradient: the update was skipped
  double step_time_s = 0, tokens_per_s = 0;
  // Disjoint parts of step_time_s on this rank; what they leave is reported as "other".
  double forward_s = 0, backward_s = 0;  // model compute (TP communication excluded)
  double pipeline_wait_s = 0;            // blocked on the neighbouring pipeline stages (bubble + transfer)
  double tp_comm_s = 0, dp_comm_s = 0, optimizer_s = 0;
  double data_wait_s = 0;                // building this rank's micro-batches
  double data_queue_depth = 0;           // micro-batches ready in the loader's prefetch queue (0: none)
  double device_memory_bytes = 0, device_memory_peak_bytes = 0;  // GPU memory (0 on CPU ranks)
  // On a sampled step (TrainingMonitor::samples_step): this rank's time per named range (kernels/profile.h),
  // as (path, seconds); empty otherwise.
  std::vector<std::pair<std::string, double>> ranges;
};

// One checkpoint save attempt, reported by world rank 0.
struct CheckpointMetrics {
  int64_t step = 0;  // steps done when it was taken
  bool ok = true;
  double duration_s = 0;
  double size_bytes = 0;
};

struct MonitorOptions {
  std::string listen_address = "127.0.0.1";
  int port = 0;       // 0: no exporter
  int log_every = 1;  // plain progress lines every N steps (a terminal gets one line updated in place)
  int64_t total_steps = 0;
  int64_t tokens_per_step = 0;         // global batch x sequence length
  double train_flops_per_token = 0;    // model FLOPs per trained token: 3 x forward (dcmha.md §4.2)
  double peak_flops_per_device = 0;    // one rank's device; 0: H200 bf16 peak on GPU, measured GEMM rate on CPU
  bool gpu = false;
  int64_t checkpoint_every_steps = 0;  // exported for the "checkpoint failing" alert (0: none configured)
  std::string metrics_path;            // world rank 0 appends one JSON line per step; empty: none
  std::string model_name = "dcformer";
  // Progress line (config MonitoringConfig.Progress): 0 auto (in place on a terminal, plain lines when
  // stdout is not one or the process was started by an MPI launcher), 1 plain lines, 2 in place, 3 off.
  int progress = 0;
  FILE* progress_out = stdout;
  int profile_every = 0;  // every N-th step's ranges are exported (StepMetrics::ranges); 0: none
};

class TrainingMonitor {
 public:
  // Collective over the grid's world. Starts the exporters; when any cannot listen, every rank throws
  // InputError with the failing node's one-line message.
  TrainingMonitor(const MonitorOptions& options, ProcessGrid& grid);
  ~TrainingMonitor();
  TrainingMonitor(const TrainingMonitor&) = delete;
  TrainingMonitor& operator=(const TrainingMonitor&) = delete;

  // Collective: every rank, after every step, with its own numbers.
  void on_step(const StepMetrics& m);
  // Whether the step of this 0-based index is sampled: its StepMetrics::ranges are exported (every rank
  // answers the same; on_step gathers the ranges of such a step over each node).
  bool samples_step(int64_t step) const;
  // World rank 0 (no-op elsewhere), after each checkpoint save attempt.
  void on_checkpoint(const CheckpointMetrics& c);
  // Ends the in-place progress line (world rank 0).
  void finish();

  std::string exporter_url() const;     // this rank's exporter, "" when it has none
  double peak_flops_per_device() const;  // the MFU denominator per rank (world rank 0; 0 elsewhere)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dcf
