// `dcformer bench`: builds the job of a config (synthetic tokens unless --real-data), runs warm-up
// steps, then times steps (CUDA events on the GPU, the host clock on the CPU) and prints tokens/s,
// model TFLOP/s, MFU against the device's peak, peak device memory and the step-time breakdown;
// --json prints one machine-readable object instead. --breakdown then runs as many steps again with
// every named range timed (kernels/profile.h: ops, layer phases, optimizer) and prints one rank's median
// time per range (rank 0, or --breakdown-rank); those steps are not part of the figures above, since timing
// each range costs host time.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/profile.h"
#include "launch/commands.h"
#include "launch/mpi_env.h"
#include "runtime/config.h"
#include "runtime/trainer.h"
#ifdef DCF_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda_runtime.h"
#endif

namespace dcf {

namespace {

struct BenchOptions {
  std::string config;
  std::vector<std::string> sets;
  int warmup = 3, steps = 10;
  bool json = false, real_data = false;
  bool breakdown = false;  // then as many profiled steps again, with every named range timed
  int breakdown_rank = 0;  // whose ranges are reported (pipeline stages and TP ranks differ)
  double peak_tflops = 0;  // 0: by device (H200 bf16 dense 989, fp32 67; CPU: measured below)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

int run_bench(const BenchOptions& opt) {
  std::vector<std::string> sets = opt.sets;
  if (!opt.real_data) sets.insert(sets.begin(), "data.format=SYNTHETIC");
  dcformer::Config cfg;
  try {
    cfg = load_config(opt.config, sets);
  } catch (const InputError& e) {
    std::fprintf(stderr, "dcformer: error: %s\n", e.what());
    return kExitBadInput;
  }
  cfg.mutable_run()->set_steps(opt.warmup + opt.steps);
  int argc = 0;
  char** argv = nullptr;
  MpiSession mpi(&argc, &argv);
  validate_config(cfg, mpi.world_size);
  if (opt.breakdown_rank >= mpi.world_size)
    throw InputError("--breakdown-rank " + std::to_string(opt.breakdown_rank) + ": the world has " +
                     std::to_string(mpi.world_size) + " rank(s), 0.." + std::to_string(mpi.world_size - 1));
  GridShape gs{cfg.parallel().tp(), mpi.world_size / (cfg.parallel().tp() * cfg.parallel().pp()), cfg.parallel().pp()};
  ProcessGrid grid(MPI_COMM_WORLD, gs);
  Trainer trainer(cfg, grid);
  const bool gpu = cfg.run().device() == dcformer::RunConfig::CUDA;
  std::vector<double> times, fb, wait, dpc, optim;
  StepResult last;
  // One step, timed on the device (GPU) or the host clock (CPU); seconds.
  auto timed_step = [&]() {
    double t = 0;
#ifdef DCF_WITH_CUDA
    if (gpu) {
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      cuda::synchronize();
      cudaEventRecord(a, cuda::main_stream());
      last = trainer.step();
      cudaEventRecord(b, cuda::main_stream());
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      t = ms / 1e3;
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
#endif
    if (!gpu) {
      last = trainer.step();
      t = last.step_time_s;
    }
    return t;
  };
  for (int i = 0; i < opt.warmup + opt.steps; ++i) {
    const double t = timed_step();
    if (i < opt.warmup) continue;
    times.push_back(t);
    fb.push_back(last.forward_backward_s);
    wait.push_back(last.pipeline_wait_s);
    dpc.push_back(last.dp_comm_s);
    optim.push_back(last.optimizer_s);
  }
  // --breakdown: the profiled steps, after the timed ones. Per path: the median over steps of its time per
  // step (inclusive and self) and its count per step.
  struct PathTimes {
    std::vector<double> total, self;
    int64_t count = 0;
  };
  // Tree order: a range's nested paths right after it ('/' compared as lower than any character).
  struct TreeLess {
    bool operator()(const std::string& a, const std::string& b) const {
      return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
        return (x == '/' ? 0 : int(static_cast<unsigned char>(x)) + 1) < (y == '/' ? 0 : int(static_cast<unsigned char>(y)) + 1);
      });
    }
  };
  std::map<std::string, PathTimes, TreeLess> prof_paths;
  std::vector<double> prof_times;
  if (opt.breakdown) {
    prof::enable(gpu ? prof::Clock::device : prof::Clock::host);
    for (int i = 0; i < opt.steps; ++i) {
      prof_times.push_back(timed_step());
      for (const prof::Entry& e : prof::collect()) {
        PathTimes& p = prof_paths[e.path];
        p.total.push_back(e.total_ms);
        p.self.push_back(e.self_ms);
        p.count = std::max(p.count, e.count);
      }
    }
    prof::enable(prof::Clock::off);
  }
  // A path missing from some profiled steps counts 0 ms there (the median is over all of them).
  auto med_all = [&](std::vector<double> v) {
    v.resize(prof_times.size(), 0.0);
    return median(v);
  };
  nlohmann::json prof_rows;  // this rank's {ranges, step_time_s_median}; on rank 0, the reported rank's
  if (opt.breakdown) {
    nlohmann::json ranges = nlohmann::json::array();
    for (const auto& [path, p] : prof_paths)
      ranges.push_back({{"path", path}, {"ms", med_all(p.total)}, {"self_ms", med_all(p.self)}, {"count", p.count}});
    prof_rows = {{"ranges", ranges}, {"step_time_s_median", median(prof_times)}};
    // The reported rank's rows to rank 0, which prints them.
    if (opt.breakdown_rank != 0) {
      if (mpi.world_rank == opt.breakdown_rank) {
        const std::string text = prof_rows.dump();
        const int n = int(text.size());
        MPI_Send(&n, 1, MPI_INT, 0, 7101, MPI_COMM_WORLD);
        MPI_Send(text.data(), n, MPI_CHAR, 0, 7102, MPI_COMM_WORLD);
      } else if (mpi.world_rank == 0) {
        int n = 0;
        MPI_Recv(&n, 1, MPI_INT, opt.breakdown_rank, 7101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        std::string text(size_t(n), '\0');
        MPI_Recv(text.data(), n, MPI_CHAR, opt.breakdown_rank, 7102, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        prof_rows = nlohmann::json::parse(text);
      }
    }
  }
  const ModelSpec spec = model_spec_from_config(cfg);
  const double tokens = double(cfg.run().global_batch()) * double(spec.seq_len);
  const double step_s = median(times);
  const double tok_s = tokens / step_s;
  // Model FLOPs: 3x the forward (forward + backward), DCMHA's extra work counted; recompute not counted.
  const double flops = 3.0 * spec.forward_flops_per_token() * tokens;
  const double tflops_per_device = flops / step_s / 1e12 / double(mpi.world_size);
  double peak = opt.peak_tflops;
  std::string device = "cpu";
  size_t peak_mem = 0;
#ifdef DCF_WITH_CUDA
  if (gpu) {
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, cuda::current_device());
    device = prop.name;
    peak_mem = cuda::memory_stats().peak_allocated_bytes;
    if (peak == 0) peak = cfg.run().precision() == dcformer::RunConfig::FP32 ? 67.0 : 989.0;  // H100/H200 SXM
  }
#endif
  if (peak == 0) peak = 0.1;  // nominal CPU peak unless given with --peak-tflops
  if (mpi.world_rank == 0) {
    nlohmann::json j = {{"config", opt.config},
                        {"device", device},
                        {"world", mpi.world_size},
                        {"tp", gs.tp},
                        {"dp", gs.dp},
                        {"pp", gs.pp},
                        {"global_batch", cfg.run().global_batch()},
                        {"seq_len", spec.seq_len},
                        {"timed_steps", opt.steps},
                        {"step_time_s_median", step_s},
                        {"tokens_per_s", tok_s},
                        {"model_tflops_per_device", tflops_per_device},
                        {"mfu", tflops_per_device / peak},
                        {"peak_tflops", peak},
                        {"peak_device_memory_bytes", peak_mem},
                        {"forward_backward_s", median(fb)},
                        {"pipeline_wait_s", median(wait)},
                        {"dp_comm_s", median(dpc)},
                        {"optimizer_s", median(optim)},
                        {"loss_last", last.loss}};
    if (opt.breakdown)
      j["breakdown"] = {{"steps", prof_times.size()},
                        {"clock", gpu ? "device" : "host"},
                        {"rank", opt.breakdown_rank},
                        {"step_time_s_median", prof_rows["step_time_s_median"]},
                        {"ranges", prof_rows["ranges"]}};
    if (opt.json) {
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("bench %s on %s (world %d = tp %d x dp %d x pp %d), %d timed steps after %d warm-up\n",
                  opt.config.c_str(), device.c_str(), mpi.world_size, gs.tp, gs.dp, gs.pp, opt.steps, opt.warmup);
      std::printf("  step time (median)   %10.4f s\n", step_s);
      std::printf("  tokens/s             %10.0f\n", tok_s);
      std::printf("  model TFLOP/s/device %10.2f\n", tflops_per_device);
      std::printf("  MFU                  %10.4f  (peak %.1f TFLOP/s)\n", tflops_per_device / peak, peak);
      std::printf("  peak device memory   %10.2f GiB\n", double(peak_mem) / (1 << 30));
      std::printf("  breakdown (median s): forward+backward %.4f, pipeline wait %.4f, DP comm %.4f, optimizer %.4f\n",
                  median(fb), median(wait), median(dpc), median(optim));
      if (opt.breakdown) {
        std::printf("  breakdown: %zu profiled steps (%s clock), step %.4f s (median; ranges timed, so slower)\n",
                    prof_times.size(), gpu ? "device" : "host", prof_rows["step_time_s_median"].get<double>());
        const std::string head = "range (rank " + std::to_string(opt.breakdown_rank) + "; median ms per step)";
        std::printf("    %-58s %10s %10s %7s\n", head.c_str(), "ms", "self ms", "count");
        for (const auto& row : prof_rows["ranges"]) {
          const std::string path = row["path"].get<std::string>();
          const size_t depth = size_t(std::count(path.begin(), path.end(), '/'));
          const std::string name = std::string(2 * depth, ' ') + path.substr(path.rfind('/') + 1);
          std::printf("    %-58s %10.3f %10.3f %7lld\n", name.c_str(), row["ms"].get<double>(),
                      row["self_ms"].get<double>(), static_cast<long long>(row["count"].get<int64_t>()));
        }
      }
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

CommandRunner add_bench_command(CLI::App& app) {
  auto opt = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand("bench", "time training steps of a config (tokens/s, TFLOP/s, MFU, memory)");
  sub->add_option("--config", opt->config, "textproto config file")->required();
  sub->add_option("--set", opt->sets, "override a field: section.field=value (repeatable)");
  sub->add_option("--warmup", opt->warmup, "untimed steps first")->check(integer_at_least(0));
  sub->add_option("--steps", opt->steps, "timed steps")->check(integer_at_least(1));
  sub->add_option("--peak-tflops", opt->peak_tflops, "device peak for MFU (default: by device and precision)")
      ->check(number_above(0));
  sub->add_flag("--json", opt->json, "print one JSON object");
  sub->add_flag("--real-data", opt->real_data, "read the config's data instead of synthetic tokens");
  sub->add_flag("--breakdown", opt->breakdown,
                "then as many steps again with every named range timed; print the median per range");
  sub->add_option("--breakdown-rank", opt->breakdown_rank, "the rank whose ranges --breakdown reports (default 0)")
      ->check(integer_at_least(0));
  return [opt]() { return run_bench(*opt); };
}

}  // namespace dcf
