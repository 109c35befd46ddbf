// `dcformer train`: load and check the config (exit 2 on any problem, before work starts), start MPI,
// build the process grid, train, print one line per step on rank 0 and append run_dir/metrics.jsonl.
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/mpi_env.h"
#include "runtime/config.h"
#include "runtime/trainer.h"

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
};

std::string progress_line(const StepResult& r, int64_t total) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %6lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | %.3f s%s",
                (long long)(r.step + 1), (long long)total, r.loss, r.lr, r.grad_norm, r.tokens_per_s, r.step_time_s,
                r.skipped ? " | skipped (non-finite)" : "");
  return buf;
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
  try {
    validate_config(cfg, mpi.world_size);
    GridShape gs{cfg.parallel().tp(), mpi.world_size / (cfg.parallel().tp() * cfg.parallel().pp()),
                 cfg.parallel().pp()};
    if (cfg.parallel().tp() > 1 && cfg.model().seq_len() % (2 * cfg.parallel().tp()) != 0)
      throw InputError("model.seq_len: " + std::to_string(cfg.model().seq_len()) +
                       " must be divisible by 2*tp for the query-sharded DCMHA core");
    grid = std::make_unique<ProcessGrid>(MPI_COMM_WORLD, gs);
    trainer = std::make_unique<Trainer>(cfg, *grid);
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
  const bool rank0 = mpi.world_rank == 0;
  const std::filesystem::path run_dir = cfg.run().run_dir();
  std::ofstream metrics;
  if (rank0) {
    std::filesystem::create_directories(run_dir);
    std::ofstream(run_dir / "config.textproto") << config_to_text(cfg);
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
    if (!metrics) throw InputError("run.run_dir: cannot write " + (run_dir / "metrics.jsonl").string());
    const auto& g = grid->shape();
    std::fprintf(stderr, "dcformer: %s, %lld parameters, world %d = tp %d x dp %d x pp %d, %d micro-batches/step\n",
                 cfg.model().kind() == dcformer::ModelConfig::DCFORMER ? "DCFormer++" : "Transformer++",
                 (long long)model_spec_from_config(cfg).param_count(), g.world(), g.tp, g.dp, g.pp,
                 cfg.parallel().micro_batches());
  }
  const bool tty = isatty(fileno(stdout));
  // A failure past this point is reported and aborts the job right here, before any destructor runs a
  // collective (communicator frees, MPI_Finalize) that the other ranks would never join.
  try {
  trainer->train([&](const StepResult& r) {
    if (!rank0) return;
    nlohmann::json j = {{"step", r.step + 1},          {"loss", r.loss},
                        {"lr", r.lr},                  {"grad_norm", r.grad_norm},
                        {"tokens_per_s", r.tokens_per_s}, {"step_time_s", r.step_time_s},
                        {"skipped", r.skipped},        {"forward_backward_s", r.forward_backward_s},
                        {"pipeline_wait_s", r.pipeline_wait_s}, {"dp_comm_s", r.dp_comm_s},
                        {"optimizer_s", r.optimizer_s}, {"data_s", r.data_s}};
    metrics << j.dump() << "\n";
    metrics.flush();
    if ((r.step + 1) % cfg.monitoring().log_every() == 0 || r.step + 1 == cfg.run().steps()) {
      std::printf("%s\n", progress_line(r, cfg.run().steps()).c_str());
      if (tty) std::fflush(stdout);
    }
  });
  } catch (const DcfError& e) {
    std::fflush(stdout);
    return report_fatal(e.what(), e.exit_code());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    return report_fatal(e.what(), kExitFailure);
  }
  std::fflush(stdout);
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
  return [opt]() { return run_train(*opt); };
}

}  // namespace dcf
