// `dcformer bench`: builds the job of a config (synthetic tokens unless --real-data), runs warm-up
// steps, then times steps (CUDA events on the GPU, the host clock on the CPU) and prints tokens/s,
// model TFLOP/s, MFU against the device's peak, peak device memory and the step-time breakdown;
// --json prints one machine-readable object instead.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

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
  GridShape gs{cfg.parallel().tp(), mpi.world_size / (cfg.parallel().tp() * cfg.parallel().pp()), cfg.parallel().pp()};
  ProcessGrid grid(MPI_COMM_WORLD, gs);
  Trainer trainer(cfg, grid);
  const bool gpu = cfg.run().device() == dcformer::RunConfig::CUDA;
  std::vector<double> times, fb, wait, dpc, optim;
  StepResult last;
  for (int i = 0; i < opt.warmup + opt.steps; ++i) {
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
    if (i < opt.warmup) continue;
    times.push_back(t);
    fb.push_back(last.forward_backward_s);
    wait.push_back(last.pipeline_wait_s);
    dpc.push_back(last.dp_comm_s);
    optim.push_back(last.optimizer_s);
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
  sub->add_option("--warmup", opt->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  sub->add_option("--steps", opt->steps, "timed steps")->check(CLI::PositiveNumber);
  sub->add_option("--peak-tflops", opt->peak_tflops, "device peak for MFU (default: by device and precision)");
  sub->add_flag("--json", opt->json, "print one JSON object");
  sub->add_flag("--real-data", opt->real_data, "read the config's data instead of synthetic tokens");
  return [opt]() { return run_bench(*opt); };
}

}  // namespace dcf
