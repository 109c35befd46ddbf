// `dcformer train`: load and check the config (exit 2 on any problem, before work starts), start MPI,
// build the process grid, train, print one line per step on rank 0 and append run_dir/metrics.jsonl.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/profile.h"
#include "launch/commands.h"
#include "launch/mpi_env.h"
#include "runtime/config.h"
#include "runtime/trainer.h"
#include "monitoring/training_monitor.h"

namespace dcf {

namespace {

int env_int(std::initializer_list<const char*> names, int fallback) {
  for (const char* n : names)
    if (const char* s = std::getenv(n)) return std::atoi(s);
  return fallback;
}

struct TrainOptions {
  std::string config;
  std::vector<std::string> sets;
  std::string inject_failure;  // "RANK:STEP", test-only
  std::string resume;          // "auto" or a checkpoint path (checkpoint/checkpoint.h)
};

// Monitoring (monitoring/training_monitor.h): exporter, metrics.jsonl, progress line.
MonitorOptions monitor_options(const dcformer::Config& cfg) {
  MonitorOptions o;
  o.listen_address = cfg.monitoring().listen_address().empty() ? "127.0.0.1" : cfg.monitoring().listen_address();
  o.port = cfg.monitoring().port();
  o.log_every = cfg.monitoring().log_every();
  o.peak_flops_per_device = cfg.monitoring().peak_flops_per_device();
  o.progress = int(cfg.monitoring().progress());
  o.total_steps = cfg.run().steps();
  o.tokens_per_step = int64_t(cfg.run().global_batch()) * cfg.model().seq_len();
  o.train_flops_per_token = 3.0 * model_spec_from_config(cfg).forward_flops_per_token();
  o.gpu = cfg.run().device() == dcformer::RunConfig::CUDA;
  o.checkpoint_every_steps = cfg.checkpoint().every_steps();
  o.metrics_path = (std::filesystem::path(cfg.run().run_dir()) / "metrics.jsonl").string();
  o.profile_every = cfg.monitoring().profile_every();
  o.model_name = cfg.model().kind() == dcformer::ModelConfig::DCFORMER ? "DCFormer++" : "Transformer++";
  return o;
}

// Sampled ranges exported per rank: paths of at most this many names ("step/backward/layer/attn.core.global");
// the ops nested below them (every GEMM, every norm) stay out of the metrics.
constexpr int kExportedRangeDepth = 4;

StepMetrics step_metrics(const StepResult& r) {
  StepMetrics m;
  m.step = r.step;
  m.loss = r.loss;
  m.lr = r.lr;
  m.grad_norm = r.grad_norm;
  m.skipped = r.skipped;
  m.step_time_s = r.step_time_s;
  m.tokens_per_s = r.tokens_per_s;
  m.forward_s = r.forward_s;
  m.backward_s = r.backward_s;
  m.tp_comm_s = r.tp_comm_s;
  m.pipeline_wait_s = r.pipeline_wait_s;
  m.dp_comm_s = r.dp_comm_s;
  m.optimizer_s = r.optimizer_s;
  m.data_wait_s = r.data_s;
  m.data_queue_depth = r.data_queue_depth;
  m.device_memory_bytes = r.device_memory_bytes;
  m.device_memory_peak_bytes = r.device_memory_peak_bytes;
  return m;
}

int run_train(const TrainOptions& opt) {
  const int env_rank = env_int({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "PMI_RANK"}, 0);
  dcformer::Config cfg;
  try {
    cfg = load_config(opt.config, opt.sets);
  } catch (const InputError& e) {
    if (env_rank == 0) std::fprintf(stderr, "dcformer: error: %s\n", e.what());
    return kExitBadInput;
  }
  int argc = 0;
  char** argv = nullptr;
  MpiSession mpi(&argc, &argv);
  // Several ranks per node: one BLAS thread each, unless the user chose otherwise.
  if (mpi.world_size > 1 && !std::getenv("OPENBLAS_NUM_THREADS")) set_cpu_gemm_threads(1);
  std::unique_ptr<ProcessGrid> grid;
  std::unique_ptr<Trainer> trainer;
  std::unique_ptr<TrainingMonitor> monitor;
  try {
    validate_config(cfg, mpi.world_size);
    GridShape gs{cfg.parallel().tp(), mpi.world_size / (cfg.parallel().tp() * cfg.parallel().pp()),
                 cfg.parallel().pp()};
    if (cfg.parallel().tp() > 1 && cfg.model().seq_len() % (2 * cfg.parallel().tp()) != 0)
      throw InputError("model.seq_len: " + std::to_string(cfg.model().seq_len()) +
                       " must be divisible by 2*tp for the query-sharded DCMHA core");
    grid = std::make_unique<ProcessGrid>(MPI_COMM_WORLD, gs);
    trainer = std::make_unique<Trainer>(cfg, *grid);
    monitor = std::make_unique<TrainingMonitor>(monitor_options(cfg), *grid);
  } catch (const InputError& e) {
    if (mpi.world_rank == 0) std::fprintf(stderr, "dcformer: error: %s\n", e.what());
    return kExitBadInput;
  }
  if (!opt.inject_failure.empty()) {
    // RANK:STEP[:throw|kill]
    auto c1 = opt.inject_failure.find(':'), c2 = opt.inject_failure.find(':', c1 + 1);
    std::string how = c2 == std::string::npos ? "throw" : opt.inject_failure.substr(c2 + 1);
    trainer->inject_failure(std::atoi(opt.inject_failure.substr(0, c1).c_str()),
                            std::atoll(opt.inject_failure.substr(c1 + 1, c2 - c1 - 1).c_str()), how);
  }
  if (!opt.resume.empty()) {
    // A damaged checkpoint may be seen by one rank only: report_fatal ends the whole job (exit 2).
    try {
      trainer->resume(opt.resume);
    } catch (const DcfError& e) {
      return report_fatal(e.what(), e.exit_code());
    }
  }
  const bool rank0 = mpi.world_rank == 0;
  const std::filesystem::path run_dir = cfg.run().run_dir();
  if (rank0) {
    std::filesystem::create_directories(run_dir);
    std::ofstream(run_dir / "config.textproto") << config_to_text(cfg);
    const auto& g = grid->shape();
    std::fprintf(stderr, "dcformer: %s, %lld parameters, world %d = tp %d x dp %d x pp %d, %d micro-batches/step\n",
                 cfg.model().kind() == dcformer::ModelConfig::DCFORMER ? "DCFormer++" : "Transformer++",
                 (long long)model_spec_from_config(cfg).param_count(), g.world(), g.tp, g.dp, g.pp,
                 cfg.parallel().micro_batches());
  }
  // A failure past this point is reported and aborts the job right here, before any destructor runs a
  // collective (communicator frees, MPI_Finalize) that the other ranks would never join.
  try {
  trainer->on_checkpoint = [&](int64_t step, double duration_s, double bytes) {
    monitor->on_checkpoint({step, true, duration_s, bytes});
  };
  // Sampled steps (monitoring.profile_every) run with the named ranges on, on the clock of the device.
  const auto clock = cfg.run().device() == dcformer::RunConfig::CUDA ? prof::Clock::device : prof::Clock::host;
  trainer->before_step = [&](int64_t step) {
    if (monitor->samples_step(step)) prof::enable(clock);
  };
  trainer->train([&](const StepResult& r) {
    StepMetrics m = step_metrics(r);
    if (prof::mode() != prof::Clock::off) {
      for (const prof::Entry& e : prof::collect())
        if (std::count(e.path.begin(), e.path.end(), '/') < kExportedRangeDepth)
          m.ranges.emplace_back(e.path, e.total_ms * 1e-3);
      prof::enable(prof::Clock::off);
    }
    monitor->on_step(m);
  });
  } catch (const DcfError& e) {
    monitor->finish();
    std::fflush(stdout);
    return report_fatal(e.what(), e.exit_code());
  } catch (const std::exception& e) {
    monitor->finish();
    std::fflush(stdout);
    return report_fatal(e.what(), kExitFailure);
  }
  monitor->finish();
  std::fflush(stdout);
  monitor.reset();
  trainer.reset();
  grid.reset();
  return 0;
}

}  // namespace

CommandRunner add_train_command(CLI::App& app) {
  auto opt = std::make_shared<TrainOptions>();
  CLI::App* sub = app.add_subcommand("train", "train a model (single process, or under mpirun / srun)");
  sub->add_option("--config", opt->config, "textproto config file (configs/*.textproto)")->required();
  sub->add_option("--set", opt->sets, "override a field: section.field=value (repeatable)");
  sub->add_option("--inject-failure", opt->inject_failure, "test only: RANK:STEP[:throw|kill] fails that rank at that step")
      ->group("");
  sub->add_option("--resume", opt->resume,
                  "continue from a checkpoint: 'auto' (the newest under checkpoint.dir; none: start fresh), a "
                  "checkpoint directory, or a checkpoint root (its `latest`)");
  return [opt]() { return run_train(*opt); };
}

}  // namespace dcf
