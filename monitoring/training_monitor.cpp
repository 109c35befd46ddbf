// TrainingMonitor: two gathers per step (ranks -> their node's first rank -> world rank 0), then the
// exporters, metrics.jsonl and the progress line. Metric names and meanings: docs/monitoring.md.
#include "monitoring/training_monitor.h"

#include <mpi.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "monitoring/exporter.h"
#include "monitoring/progress.h"
#include "monitoring/system_stats.h"
#include "parallel/mpi_communicator.h"

namespace dcf {

namespace {

using Clock = std::chrono::steady_clock;

// One rank's record in the per-step gathers (doubles).
enum Field {
  kStepTime,
  kForward,  // kForward..kOther: the phases, in the order of kPhases
  kBackward,
  kPipeline,
  kTpComm,
  kDpComm,
  kOptimizer,
  kData,
  kOther,
  kRss,
  kRssPeak,
  kDev,
  kDevPeak,
  kStep,
  kFields
};
constexpr int kNumPhases = kOther - kForward + 1;
constexpr std::array<const char*, kNumPhases> kPhases = {"forward",   "backward",  "pipeline_bubble", "tp_comm",
                                                         "dp_comm",   "optimizer", "data_wait",       "other"};

// Frees an MPI communicator at scope end (MPI still up).
struct CommHolder {
  MPI_Comm c = MPI_COMM_NULL;
  ~CommHolder() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (c != MPI_COMM_NULL && !fin) MPI_Comm_free(&c);
  }
};

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

int env_int(const char* name, int fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::atoi(s) : fallback;
}

}  // namespace

struct TrainingMonitor::Impl {
  MonitorOptions opt;
  int world_rank = 0, world_size = 1, node_rank = 0, node_size = 1, node_index = 0, n_nodes = 1;
  int dp = 0, tp = 0, pp = 0;
  GridShape shape;
  CommHolder world, node, leaders;
  std::vector<int> node_ids;                     // leader: node_size x {world rank, dp, tp, pp}
  std::vector<int> all_world_rank;               // world rank 0: world rank of each slot of all_buf
  std::vector<int> gather_counts, gather_displs;  // world rank 0, over the leaders (in doubles)
  std::vector<double> node_buf, all_buf;
  std::unique_ptr<MetricsExporter> exporter;

  struct RankGauges {
    prometheus::Gauge* step_s = nullptr;
    std::array<prometheus::Gauge*, kNumPhases> phase{};
    prometheus::Gauge *rss = nullptr, *rss_peak = nullptr, *dev = nullptr, *dev_peak = nullptr;
  };
  std::vector<RankGauges> rank_gauges;  // leader: one per rank of the node
  // Leader: the sampled ranges (dcformer_rank_range_seconds), a gauge per rank and path seen so far.
  prometheus::Family<prometheus::Gauge>* range_family = nullptr;
  std::vector<std::map<std::string, prometheus::Gauge*>> range_gauges;
  prometheus::Gauge* g_range_step = nullptr;
  std::vector<prometheus::Labels> rank_labels;
  prometheus::Gauge *g_step = nullptr, *g_last_ts = nullptr;
  // Job level (world rank 0 with an exporter).
  prometheus::Gauge *g_loss = nullptr, *g_lr = nullptr, *g_gnorm = nullptr, *g_step_s = nullptr, *g_tps = nullptr,
                    *g_flops = nullptr, *g_mfu = nullptr, *g_peak = nullptr, *g_fpt = nullptr, *g_run_steps = nullptr,
                    *g_data_wait = nullptr, *g_queue = nullptr, *g_ck_dur = nullptr, *g_ck_size = nullptr,
                    *g_ck_last_ok = nullptr, *g_ck_step = nullptr, *g_ck_every = nullptr;
  prometheus::Counter *c_tokens = nullptr, *c_skipped = nullptr, *c_ck_ok = nullptr, *c_ck_fail = nullptr;
  double tokens_counted = 0;
  double peak_per_device = 0;
  bool checkpoint_seen = false;  // before the first save, the last checkpoint is where the run started

  std::ofstream jsonl;
  std::unique_ptr<ProgressPrinter> progress;
  EtaEstimator eta;
  Clock::time_point last_step_wall;
  bool have_last = false;

  void setup_comms(ProcessGrid& grid);
  void start_outputs();  // metrics.jsonl and the exporters; every rank throws if any failed
  void register_node_metrics();
  void register_job_metrics();
  // Collective over the node: every rank's ranges of a sampled step, to the node's first rank (per rank
  // of the node, in node order; empty elsewhere).
  std::vector<std::vector<std::pair<std::string, double>>> gather_ranges(
      const std::vector<std::pair<std::string, double>>& mine) const;
};

std::vector<std::vector<std::pair<std::string, double>>> TrainingMonitor::Impl::gather_ranges(
    const std::vector<std::pair<std::string, double>>& mine) const {
  // Each rank's ranges as JSON text ([[path, seconds], ...]): lengths, then the texts, to the leader.
  const std::string text = nlohmann::json(mine).dump();
  int len = int(text.size());
  std::vector<int> lens(size_t(node_rank == 0 ? node_size : 0)), displs;
  DCF_MPI(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, node.c));
  std::string all;
  if (node_rank == 0) {
    int off = 0;
    for (int l : lens) displs.push_back(off), off += l;
    all.resize(size_t(off));
  }
  DCF_MPI(MPI_Gatherv(text.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, 0, node.c));
  std::vector<std::vector<std::pair<std::string, double>>> out;
  for (size_t i = 0; i < lens.size(); ++i)
    out.push_back(nlohmann::json::parse(all.substr(size_t(displs[i]), size_t(lens[i])))
                      .get<std::vector<std::pair<std::string, double>>>());
  return out;
}

void TrainingMonitor::Impl::setup_comms(ProcessGrid& grid) {
  MPI_Comm base = MPI_COMM_WORLD;
  if (auto* m = dynamic_cast<MpiCommunicator*>(&grid.world())) base = m->comm();
  DCF_MPI(MPI_Comm_dup(base, &world.c));
  MPI_Comm_rank(world.c, &world_rank);
  MPI_Comm_size(world.c, &world_size);
  // Nodes: ranks that share memory. DCF_MONITOR_RANKS_PER_NODE=k (tests) makes consecutive blocks of k
  // ranks pretend to be nodes, each with its own exporter on port + node index.
  const int fake = env_int("DCF_MONITOR_RANKS_PER_NODE", 0);
  if (fake > 0)
    DCF_MPI(MPI_Comm_split(world.c, world_rank / fake, world_rank, &node.c));
  else
    DCF_MPI(MPI_Comm_split_type(world.c, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node.c));
  MPI_Comm_rank(node.c, &node_rank);
  MPI_Comm_size(node.c, &node_size);
  DCF_MPI(MPI_Comm_split(world.c, node_rank == 0 ? 0 : MPI_UNDEFINED, world_rank, &leaders.c));
  if (node_rank == 0) MPI_Comm_rank(leaders.c, &node_index);
  DCF_MPI(MPI_Bcast(&node_index, 1, MPI_INT, 0, node.c));
  int is_leader = node_rank == 0 ? 1 : 0;
  DCF_MPI(MPI_Allreduce(&is_leader, &n_nodes, 1, MPI_INT, MPI_SUM, world.c));

  dp = grid.dp_rank();
  tp = grid.tp_rank();
  pp = grid.pp_rank();
  shape = grid.shape();
  // Who is who: {world rank, dp, tp, pp} to the node's leader, then the leaders' lists to world rank 0.
  int id[4] = {world_rank, dp, tp, pp};
  if (node_rank == 0) node_ids.resize(size_t(node_size) * 4);
  DCF_MPI(MPI_Gather(id, 4, MPI_INT, node_ids.data(), 4, MPI_INT, 0, node.c));
  node_buf.resize(size_t(node_size) * kFields);
  if (node_rank == 0) {
    int leaders_size = 1;
    MPI_Comm_size(leaders.c, &leaders_size);
    std::vector<int> sizes(static_cast<size_t>(leaders_size));
    DCF_MPI(MPI_Gather(&node_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, leaders.c));
    std::vector<int> id_counts, id_displs, all_ids;
    if (world_rank == 0) {
      int off = 0;
      for (int s : sizes) {
        id_counts.push_back(4 * s);
        id_displs.push_back(4 * off);
        gather_counts.push_back(kFields * s);
        gather_displs.push_back(kFields * off);
        off += s;
      }
      all_ids.resize(size_t(off) * 4);
      all_buf.resize(size_t(off) * kFields);
    }
    DCF_MPI(MPI_Gatherv(node_ids.data(), 4 * node_size, MPI_INT, all_ids.data(), id_counts.data(), id_displs.data(),
                        MPI_INT, 0, leaders.c));
    for (size_t i = 0; i < all_ids.size() / 4; ++i) all_world_rank.push_back(all_ids[4 * i]);
  }
}

void TrainingMonitor::Impl::start_outputs() {
  std::string err;
  if (world_rank == 0 && !opt.metrics_path.empty()) {
    auto dir = std::filesystem::path(opt.metrics_path).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
    jsonl.open(opt.metrics_path, std::ios::app);
    if (!jsonl) err = "run.run_dir: cannot write " + opt.metrics_path;
  }
  if (err.empty() && node_rank == 0 && opt.port != 0) {
    const int fake = env_int("DCF_MONITOR_RANKS_PER_NODE", 0);
    try {
      exporter = std::make_unique<MetricsExporter>(opt.listen_address, opt.port + (fake > 0 ? node_index : 0));
    } catch (const std::exception& e) {
      err = e.what();
      if (n_nodes > 1) err += " (node " + std::to_string(node_index) + ", host " + host_name() + ")";
    }
  }
  // Every rank learns whether any exporter failed, and the first failure's message.
  int bad = err.empty() ? INT_MAX : world_rank, first = INT_MAX;
  DCF_MPI(MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, world.c));
  if (first == INT_MAX) return;
  std::array<char, 1024> msg{};
  if (world_rank == first) std::strncpy(msg.data(), err.c_str(), msg.size() - 1);
  DCF_MPI(MPI_Bcast(msg.data(), int(msg.size()), MPI_CHAR, first, world.c));
  exporter.reset();
  throw InputError(msg.data());
}

void TrainingMonitor::Impl::register_node_metrics() {
  auto& reg = exporter->registry();
  g_step = &prometheus::BuildGauge()
                .Name("dcformer_step")
                .Help("Optimizer steps completed; the other metrics of a scrape belong to this step")
                .Register(reg)
                .Add({});
  g_last_ts = &prometheus::BuildGauge()
                   .Name("dcformer_last_step_timestamp_seconds")
                   .Help("Unix time at which the last step finished")
                   .Register(reg)
                   .Add({});
  auto& step_s = prometheus::BuildGauge()
                     .Name("dcformer_rank_step_seconds")
                     .Help("Wall time of this rank's last step")
                     .Register(reg);
  auto& phase = prometheus::BuildGauge()
                    .Name("dcformer_rank_phase_seconds")
                    .Help("This rank's last step by phase: forward and backward compute, pipeline_bubble (waiting "
                          "for other stages), tp_comm, dp_comm, optimizer (with the grad-norm all-reduce), data_wait, "
                          "other (the rest)")
                    .Register(reg);
  auto& rss = prometheus::BuildGauge()
                  .Name("dcformer_rank_host_memory_bytes")
                  .Help("Resident host memory of this rank's process")
                  .Register(reg);
  auto& rss_peak = prometheus::BuildGauge()
                       .Name("dcformer_rank_host_memory_peak_bytes")
                       .Help("Peak resident host memory of this rank's process")
                       .Register(reg);
  auto& dev = prometheus::BuildGauge()
                  .Name("dcformer_rank_device_memory_bytes")
                  .Help("GPU memory allocated by this rank (0 on CPU ranks)")
                  .Register(reg);
  auto& dev_peak = prometheus::BuildGauge()
                       .Name("dcformer_rank_device_memory_peak_bytes")
                       .Help("Peak GPU memory allocated by this rank (0 on CPU ranks)")
                       .Register(reg);
  for (int i = 0; i < node_size; ++i) {
    const int* id = &node_ids[size_t(i) * 4];
    prometheus::Labels l = {{"rank", std::to_string(id[0])},
                            {"dp", std::to_string(id[1])},
                            {"tp", std::to_string(id[2])},
                            {"pp", std::to_string(id[3])}};
    RankGauges g;
    g.step_s = &step_s.Add(l);
    for (int p = 0; p < kNumPhases; ++p) {
      auto lp = l;
      lp["phase"] = kPhases[size_t(p)];
      g.phase[size_t(p)] = &phase.Add(lp);
    }
    g.rss = &rss.Add(l);
    g.rss_peak = &rss_peak.Add(l);
    g.dev = &dev.Add(l);
    g.dev_peak = &dev_peak.Add(l);
    rank_gauges.push_back(g);
    rank_labels.push_back(l);
  }
  if (opt.profile_every > 0) {
    range_family = &prometheus::BuildGauge()
                        .Name("dcformer_rank_range_seconds")
                        .Help("This rank's time in each named range of the last sampled step (monitoring.profile_every): "
                              "forward and backward by layer phase (summed over layers and micro-batches), the "
                              "optimizer, the collectives; ranges nest, a path names its enclosing ranges")
                        .Register(reg);
    range_gauges.resize(size_t(node_size));
    g_range_step = &prometheus::BuildGauge()
                        .Name("dcformer_range_sample_step")
                        .Help("The step (1-based) whose ranges dcformer_rank_range_seconds shows; 0: none sampled yet")
                        .Register(reg)
                        .Add({});
  }
}

void TrainingMonitor::Impl::register_job_metrics() {
  auto& reg = exporter->registry();
  auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge* {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(reg).Add({});
  };
  auto counter = [&](const char* name, const char* help) -> prometheus::Counter* {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(reg).Add({});
  };
  prometheus::BuildGauge()
      .Name("dcformer_job_info")
      .Help("The job's model and layout (value 1)")
      .Register(reg)
      .Add({{"model", opt.model_name},
            {"device", opt.gpu ? "cuda" : "cpu"},
            {"world", std::to_string(world_size)},
            {"tp", std::to_string(shape.tp)},
            {"dp", std::to_string(shape.dp)},
            {"pp", std::to_string(shape.pp)},
            {"nodes", std::to_string(n_nodes)}})
      .Set(1);
  g_run_steps = gauge("dcformer_run_steps", "Optimizer steps this run is configured to reach");
  g_loss = gauge("dcformer_loss", "Training loss of the last step (mean cross-entropy per token, nats)");
  g_lr = gauge("dcformer_learning_rate", "Learning rate of the last step");
  g_gnorm = gauge("dcformer_grad_norm", "Global gradient norm of the last step, before clipping");
  g_step_s = gauge("dcformer_step_seconds", "Wall time of the last step on world rank 0");
  g_tps = gauge("dcformer_tokens_per_second", "Training throughput of the last step, whole job");
  c_tokens = counter("dcformer_tokens_total", "Tokens trained by the job (counted from step 0, resumed runs included)");
  g_fpt = gauge("dcformer_model_flops_per_token",
                "Model FLOPs per trained token: 3 x forward, DCMHA's extra work included (dcmha.md 4.2)");
  g_flops = gauge("dcformer_model_flops_per_second", "Model FLOP/s of the last step, whole job");
  g_peak = gauge("dcformer_peak_flops_per_second",
                 "Peak FLOP/s of all the job's devices (the MFU denominator; H200 bf16 dense, or measured CPU GEMM)");
  g_mfu = gauge("dcformer_mfu_ratio", "Model FLOPs utilization of the last step (0..1)");
  c_skipped = counter("dcformer_skipped_steps_total", "Steps whose update was skipped for a non-finite loss or gradient");
  g_data_wait = gauge("dcformer_data_wait_seconds", "Time world rank 0 waited for its micro-batches in the last step");
  g_queue = gauge("dcformer_data_queue_depth", "Micro-batches ready in world rank 0's data-loader queue");
  g_ck_dur = gauge("dcformer_checkpoint_duration_seconds", "Duration of the last checkpoint save attempt");
  g_ck_size = gauge("dcformer_checkpoint_size_bytes", "Size of the last successful checkpoint");
  g_ck_last_ok = gauge("dcformer_checkpoint_last_success_timestamp_seconds",
                       "Unix time of the last successful checkpoint (0: none yet)");
  g_ck_step = gauge("dcformer_checkpoint_last_step",
                    "Step of the last successful checkpoint (before the first save: the step the run started from)");
  g_ck_every = gauge("dcformer_checkpoint_interval_steps", "Configured steps between checkpoints (0: none)");
  c_ck_ok = counter("dcformer_checkpoints_total", "Checkpoints saved successfully");
  c_ck_fail = counter("dcformer_checkpoint_failures_total", "Checkpoint saves that failed");
  g_run_steps->Set(double(opt.total_steps));
  g_fpt->Set(opt.train_flops_per_token);
  g_peak->Set(peak_per_device * world_size);
  g_ck_every->Set(double(opt.checkpoint_every_steps));
}

TrainingMonitor::TrainingMonitor(const MonitorOptions& options, ProcessGrid& grid) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opt = options;
  if (!(m.opt.peak_flops_per_device >= 0) || !std::isfinite(m.opt.peak_flops_per_device))
    throw InputError("monitoring.peak_flops_per_device: must be >= 0 (0: H200 peak on CUDA, measured on CPU)");
  if (m.opt.profile_every < 0) throw InputError("monitoring.profile_every: must be >= 0 (0: never)");
  m.setup_comms(grid);
  m.start_outputs();
  if (m.world_rank == 0) {
    if (m.opt.peak_flops_per_device > 0)
      m.peak_per_device = m.opt.peak_flops_per_device;
    else if (m.opt.gpu)
      m.peak_per_device = kH200Bf16PeakFlops;
    else
      m.peak_per_device = measure_cpu_gemm_flops();
    const int mode = m.opt.progress == 1 ? 1 : m.opt.progress == 2 ? 2 : m.opt.progress == 3 ? 0 : -1;
    m.progress = std::make_unique<ProgressPrinter>(m.opt.progress_out, mode, m.opt.log_every);
  }
  if (m.exporter) {
    m.exporter->update([&] {
      m.register_node_metrics();
      if (m.world_rank == 0) m.register_job_metrics();
    });
    std::fprintf(stderr, "dcformer: metrics at %s (node %d of %d, ranks %d..%d)\n", m.exporter->url().c_str(),
                 m.node_index, m.n_nodes, m.node_ids.front(), m.node_ids[size_t(m.node_size - 1) * 4]);
  }
}

TrainingMonitor::~TrainingMonitor() = default;

std::string TrainingMonitor::exporter_url() const { return impl_->exporter ? impl_->exporter->url() : ""; }
double TrainingMonitor::peak_flops_per_device() const { return impl_->peak_per_device; }

bool TrainingMonitor::samples_step(int64_t step) const {
  return impl_->opt.profile_every > 0 && (step + 1) % impl_->opt.profile_every == 0;
}

void TrainingMonitor::on_step(const StepMetrics& s) {
  Impl& m = *impl_;
  std::array<double, kFields> rec{};
  rec[kStepTime] = s.step_time_s;
  rec[kForward] = s.forward_s;
  rec[kBackward] = s.backward_s;
  rec[kPipeline] = s.pipeline_wait_s;
  rec[kTpComm] = s.tp_comm_s;
  rec[kDpComm] = s.dp_comm_s;
  rec[kOptimizer] = s.optimizer_s;
  rec[kData] = s.data_wait_s;
  double parts = 0;
  for (int p = kForward; p < kOther; ++p) parts += rec[size_t(p)];
  rec[kOther] = std::max(0.0, s.step_time_s - parts);
  HostMemory hm = read_host_memory();
  rec[kRss] = hm.resident_bytes;
  rec[kRssPeak] = hm.peak_resident_bytes;
  rec[kDev] = s.device_memory_bytes;
  rec[kDevPeak] = s.device_memory_peak_bytes;
  rec[kStep] = double(s.step);
  DCF_MPI(MPI_Gather(rec.data(), kFields, MPI_DOUBLE, m.node_buf.data(), kFields, MPI_DOUBLE, 0, m.node.c));
  if (m.node_rank == 0)
    DCF_MPI(MPI_Gatherv(m.node_buf.data(), kFields * m.node_size, MPI_DOUBLE, m.all_buf.data(), m.gather_counts.data(),
                        m.gather_displs.data(), MPI_DOUBLE, 0, m.leaders.c));
  const double now = unix_now();
  const double steps_done = double(s.step + 1);
  const double tokens_total = steps_done * double(m.opt.tokens_per_step);
  const double model_flops = s.tokens_per_s * m.opt.train_flops_per_token;
  const double peak = m.peak_per_device * m.world_size;
  const double mfu = peak > 0 ? model_flops / peak : 0;
  const bool sampled = samples_step(s.step);
  std::vector<std::vector<std::pair<std::string, double>>> node_ranges;
  if (sampled) node_ranges = m.gather_ranges(s.ranges);

  if (m.exporter) {
    m.exporter->update([&] {
      m.g_step->Set(steps_done);
      m.g_last_ts->Set(now);
      if (sampled && m.range_family) {
        m.g_range_step->Set(steps_done);
        for (int i = 0; i < m.node_size; ++i) {
          auto& gauges = m.range_gauges[size_t(i)];
          for (auto& [path, g] : gauges) g->Set(0);  // a range not run in this step took no time
          for (const auto& [path, sec] : node_ranges[size_t(i)]) {
            auto it = gauges.find(path);
            if (it == gauges.end()) {
              auto l = m.rank_labels[size_t(i)];
              l["range"] = path;
              it = gauges.emplace(path, &m.range_family->Add(l)).first;
            }
            it->second->Set(sec);
          }
        }
      }
      for (int i = 0; i < m.node_size; ++i) {
        const double* r = &m.node_buf[size_t(i) * kFields];
        auto& g = m.rank_gauges[size_t(i)];
        g.step_s->Set(r[kStepTime]);
        for (int p = 0; p < kNumPhases; ++p) g.phase[size_t(p)]->Set(r[kForward + p]);
        g.rss->Set(r[kRss]);
        g.rss_peak->Set(r[kRssPeak]);
        g.dev->Set(r[kDev]);
        g.dev_peak->Set(r[kDevPeak]);
      }
      if (m.world_rank != 0) return;
      m.g_loss->Set(s.loss);
      m.g_lr->Set(s.lr);
      m.g_gnorm->Set(s.grad_norm);
      m.g_step_s->Set(s.step_time_s);
      m.g_tps->Set(s.tokens_per_s);
      if (tokens_total > m.tokens_counted) m.c_tokens->Increment(tokens_total - m.tokens_counted);
      if (s.skipped) m.c_skipped->Increment();
      m.g_flops->Set(model_flops);
      m.g_mfu->Set(mfu);
      if (!m.checkpoint_seen) m.g_ck_step->Set(double(s.step));
      m.g_data_wait->Set(s.data_wait_s);
      m.g_queue->Set(s.data_queue_depth);
    });
  }
  m.tokens_counted = std::max(m.tokens_counted, tokens_total);
  if (m.world_rank != 0) return;

  if (m.jsonl.is_open()) {
    nlohmann::json rank_step = nlohmann::json::array();
    std::vector<double> by_rank(size_t(m.world_size), 0.0);
    for (size_t i = 0; i < m.all_world_rank.size(); ++i)
      by_rank[size_t(m.all_world_rank[i])] = m.all_buf[i * kFields + kStepTime];
    for (double v : by_rank) rank_step.push_back(v);
    nlohmann::json j = {{"step", s.step + 1},
                        {"time", now},
                        {"loss", s.loss},
                        {"lr", s.lr},
                        {"grad_norm", s.grad_norm},
                        {"skipped", s.skipped},
                        {"tokens_per_s", s.tokens_per_s},
                        {"tokens_total", tokens_total},
                        {"model_flops_per_s", model_flops},
                        {"mfu", mfu},
                        {"step_time_s", s.step_time_s},
                        {"forward_backward_s", s.forward_s + s.backward_s + s.tp_comm_s},
                        {"forward_s", s.forward_s},
                        {"backward_s", s.backward_s},
                        {"tp_comm_s", s.tp_comm_s},
                        {"pipeline_wait_s", s.pipeline_wait_s},
                        {"dp_comm_s", s.dp_comm_s},
                        {"optimizer_s", s.optimizer_s},
                        {"data_s", s.data_wait_s},
                        {"host_memory_bytes", hm.resident_bytes},
                        {"rank_step_time_s", rank_step}};
    if (sampled) {
      nlohmann::json r = nlohmann::json::object();
      for (const auto& [path, sec] : s.ranges) r[path] = sec;
      j["ranges_s"] = r;
    }
    m.jsonl << j.dump() << "\n";
    m.jsonl.flush();
  }
  const auto wall = Clock::now();
  m.eta.add(m.have_last ? std::chrono::duration<double>(wall - m.last_step_wall).count() : s.step_time_s);
  m.last_step_wall = wall;
  m.have_last = true;
  if (m.progress) {
    ProgressInfo p;
    p.step = s.step + 1;
    p.total = m.opt.total_steps;
    p.loss = s.loss;
    p.lr = s.lr;
    p.grad_norm = s.grad_norm;
    p.skipped = s.skipped;
    p.tokens_per_s = s.tokens_per_s;
    p.mfu = mfu;
    p.step_time_s = s.step_time_s;
    p.eta_s = m.eta.seconds_left(m.opt.total_steps - (s.step + 1));
    m.progress->update(p);
  }
}

void TrainingMonitor::on_checkpoint(const CheckpointMetrics& c) {
  Impl& m = *impl_;
  if (m.world_rank != 0 || !m.exporter) return;
  const double now = unix_now();
  m.exporter->update([&] {
    m.checkpoint_seen = true;
    m.g_ck_dur->Set(c.duration_s);
    if (c.ok) {
      m.g_ck_size->Set(c.size_bytes);
      m.g_ck_last_ok->Set(now);
      m.g_ck_step->Set(double(c.step));
      m.c_ck_ok->Increment();
    } else {
      m.c_ck_fail->Increment();
    }
  });
}

void TrainingMonitor::finish() {
  if (impl_->progress) impl_->progress->finish();
}

}  // namespace dcf
