// TrainingMonitor across 4 MPI ranks (tp 2 x pp 2) pretending to be 2 nodes of 2 ranks
// (DCF_MONITOR_RANKS_PER_NODE=2, set by ctest): each node's first rank exports its own ranks' metrics
// with the right labels, world rank 0 alone exports the job-level metrics and writes metrics.jsonl with
// every rank's step time (the two-level gather); a port in use on node 1 fails every rank with node 1's
// message; port 0 runs without exporters. Run: mpirun -np 4 test_monitor_mpi.
#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "monitoring/training_monitor.h"
#include "tests/monitoring/exposition.h"
#include "tests/monitoring/http_util.h"

using namespace dcf;
namespace fs = std::filesystem;

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

bool port_free(int p) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_port = htons(uint16_t(p));
  s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = p > 0 && p < 65536 && ::bind(fd, reinterpret_cast<sockaddr*>(&s), sizeof s) == 0;
  ::close(fd);
  return ok;
}

// Two consecutive free ports, chosen by rank 0 and known to all.
int two_free_ports() {
  int p = 0;
  if (world_rank() == 0)
    for (int tries = 0; tries < 100; ++tries)
      if (port_free(p = dcf::test::free_port()) && port_free(p + 1)) break;
  MPI_Bcast(&p, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return p;
}

std::string temp_dir(const std::string& tag) {
  std::string d;
  if (world_rank() == 0) d = (fs::temp_directory_path() / ("dcf_mon_mpi_" + tag + "_" + std::to_string(::getpid()))).string();
  int n = int(d.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  d.resize(size_t(n));
  MPI_Bcast(d.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  return d;
}

StepMetrics metrics_of(int rank, int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 5.0 - double(step);
  m.lr = 1e-3 * double(step + 1);
  m.grad_norm = 0.5;
  m.step_time_s = 1.0 + 0.1 * rank + 0.01 * double(step);
  m.tokens_per_s = 2000;
  m.forward_s = 0.1 * (rank + 1);
  m.backward_s = 0.2 * (rank + 1);
  m.tp_comm_s = 0.01;
  m.pipeline_wait_s = 0.02;
  m.dp_comm_s = 0.03;
  m.optimizer_s = 0.04;
  m.data_wait_s = 0.005;
  m.device_memory_bytes = 1000.0 * (rank + 1);
  return m;
}

MonitorOptions options(int port, const std::string& dir) {
  MonitorOptions o;
  o.port = port;
  o.total_steps = 3;
  o.tokens_per_step = 1000;
  o.train_flops_per_token = 1e6;
  o.peak_flops_per_device = 1e9;
  o.checkpoint_every_steps = 50;
  o.metrics_path = dir + "/metrics.jsonl";
  o.progress = 3;  // off
  return o;
}

// The two exporters' scrapes (node 0 on port, node 1 on port + 1), parsed; empty where a scrape failed.
std::pair<std::vector<dcf::test::Sample>, std::vector<dcf::test::Sample>> scrape_nodes(int port) {
  auto n0 = dcf::test::http_get("127.0.0.1", port, "/metrics");
  auto n1 = dcf::test::http_get("127.0.0.1", port + 1, "/metrics");
  EXPECT_EQ(n0.status, 200);
  EXPECT_EQ(n1.status, 200);
  if (n0.status != 200 || n1.status != 200) return {};
  return {dcf::test::parse_exposition(n0.body), dcf::test::parse_exposition(n1.body)};
}

std::vector<nlohmann::json> read_rows(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace

TEST(MonitorMpi, TwoNodesExportTheirRanksAndRankZeroTheJob) {
  ProcessGrid grid(MPI_COMM_WORLD, GridShape{2, 1, 2});
  const int port = two_free_ports();
  const std::string dir = temp_dir("nodes");
  {
    TrainingMonitor mon(options(port, dir), grid);
    const int r = world_rank();
    EXPECT_EQ(mon.exporter_url().empty(), r % 2 != 0) << "exporters on ranks 0 and 2 only";
    for (int64_t s = 0; s < 3; ++s) mon.on_step(metrics_of(r, s));
    if (r == 0) mon.on_checkpoint({2, true, 1.5, 12345});
    MPI_Barrier(MPI_COMM_WORLD);
    if (r == 0) {
      const auto [s0, s1] = scrape_nodes(port);
      ASSERT_FALSE(s0.empty() || s1.empty());
      using dcf::test::find_sample;
      for (int rank = 0; rank < 4; ++rank) {
        const auto& mine = rank < 2 ? s0 : s1;
        const auto& other = rank < 2 ? s1 : s0;
        std::map<std::string, std::string> l = {{"rank", std::to_string(rank)},
                                                {"tp", std::to_string(rank % 2)},
                                                {"pp", std::to_string(rank / 2)},
                                                {"dp", "0"}};
        auto st = find_sample(mine, "dcformer_rank_step_seconds", l);
        ASSERT_TRUE(st) << "rank " << rank;
        EXPECT_DOUBLE_EQ(*st, metrics_of(rank, 2).step_time_s);
        EXPECT_FALSE(find_sample(other, "dcformer_rank_step_seconds", {{"rank", std::to_string(rank)}}));
        auto fwd = l, other_phase = l;
        fwd["phase"] = "forward";
        other_phase["phase"] = "other";
        EXPECT_DOUBLE_EQ(*find_sample(mine, "dcformer_rank_phase_seconds", fwd), 0.1 * (rank + 1));
        const auto m = metrics_of(rank, 2);
        const double rest = m.step_time_s - (m.forward_s + m.backward_s + m.tp_comm_s + m.pipeline_wait_s + m.dp_comm_s +
                                             m.optimizer_s + m.data_wait_s);
        EXPECT_NEAR(*find_sample(mine, "dcformer_rank_phase_seconds", other_phase), rest, 1e-12);
        EXPECT_DOUBLE_EQ(*find_sample(mine, "dcformer_rank_device_memory_bytes", l), 1000.0 * (rank + 1));
        EXPECT_GT(*find_sample(mine, "dcformer_rank_host_memory_bytes", l), 1e6);
      }
      // Every node: the step; world rank 0 only: the job.
      EXPECT_EQ(*find_sample(s0, "dcformer_step"), 3);
      EXPECT_EQ(*find_sample(s1, "dcformer_step"), 3);
      EXPECT_GT(*find_sample(s1, "dcformer_last_step_timestamp_seconds"), 1.6e9);
      EXPECT_FALSE(find_sample(s1, "dcformer_loss"));
      EXPECT_DOUBLE_EQ(*find_sample(s0, "dcformer_loss"), 3.0);
      EXPECT_DOUBLE_EQ(*find_sample(s0, "dcformer_learning_rate"), 3e-3);
      EXPECT_EQ(*find_sample(s0, "dcformer_tokens_total"), 3000);
      EXPECT_DOUBLE_EQ(*find_sample(s0, "dcformer_mfu_ratio"), 2000 * 1e6 / (4 * 1e9));
      EXPECT_DOUBLE_EQ(*find_sample(s0, "dcformer_peak_flops_per_second"), 4e9);
      EXPECT_EQ(*find_sample(s0, "dcformer_checkpoint_size_bytes"), 12345);
      EXPECT_EQ(*find_sample(s0, "dcformer_checkpoint_last_step"), 2);
      EXPECT_EQ(*find_sample(s0, "dcformer_checkpoints_total"), 1);
      EXPECT_EQ(*find_sample(s0, "dcformer_checkpoint_interval_steps"), 50);
      EXPECT_EQ(*find_sample(s0, "dcformer_job_info", {{"world", "4"}, {"tp", "2"}, {"pp", "2"}, {"nodes", "2"}}), 1);
      EXPECT_FALSE(find_sample(s0, "dcformer_range_sample_step")) << "no sampled ranges without profile_every";
      // metrics.jsonl: one line per step with every rank's step time, by world rank.
      const auto rows = read_rows(dir + "/metrics.jsonl");
      ASSERT_EQ(rows.size(), 3u);
      for (int64_t s = 0; s < 3; ++s) {
        EXPECT_EQ(rows[size_t(s)]["step"], s + 1);
        EXPECT_DOUBLE_EQ(rows[size_t(s)]["loss"].get<double>(), 5.0 - double(s));
        ASSERT_EQ(rows[size_t(s)]["rank_step_time_s"].size(), 4u);
        for (int rank = 0; rank < 4; ++rank)
          EXPECT_DOUBLE_EQ(rows[size_t(s)]["rank_step_time_s"][size_t(rank)].get<double>(),
                           metrics_of(rank, s).step_time_s);
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (world_rank() == 0) fs::remove_all(dir);
}

// monitoring.profile_every = 2: the ranges of steps 2 and 4 (0-based 1 and 3) are exported per rank by its
// node's exporter, a range absent from the last sample reads 0, and metrics.jsonl carries world rank 0's
// ranges on those steps only.
namespace {
std::vector<std::pair<std::string, double>> ranges_of(int rank, int64_t step) {
  std::vector<std::pair<std::string, double>> r = {{"step", 1.0 + 0.1 * rank + 0.01 * double(step)},
                                                   {"step/forward", 0.1 * (rank + 1) + 0.001 * double(step)}};
  if (step == 1) r.emplace_back("step/comm.all_reduce", 0.05);
  if (rank == 3) r.emplace_back("step/backward/layer/attn.core.global", 0.25 + 0.001 * double(step));
  return r;
}
}  // namespace

TEST(MonitorMpi, SampledStepsExportEachRanksRanges) {
  ProcessGrid grid(MPI_COMM_WORLD, GridShape{2, 1, 2});
  const int port = two_free_ports();
  const std::string dir = temp_dir("ranges");
  {
    auto o = options(port, dir);
    o.total_steps = 5;
    o.profile_every = 2;
    TrainingMonitor mon(o, grid);
    const int r = world_rank();
    for (int64_t s = 0; s < 5; ++s) {
      EXPECT_EQ(mon.samples_step(s), s == 1 || s == 3) << s;
      StepMetrics m = metrics_of(r, s);
      if (mon.samples_step(s)) m.ranges = ranges_of(r, s);
      mon.on_step(m);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (r == 0) {
      const auto [s0, s1] = scrape_nodes(port);
      ASSERT_FALSE(s0.empty() || s1.empty());
      using dcf::test::find_sample;
      EXPECT_EQ(*find_sample(s0, "dcformer_range_sample_step"), 4);
      EXPECT_EQ(*find_sample(s1, "dcformer_range_sample_step"), 4);
      for (int rank = 0; rank < 4; ++rank) {
        const auto& mine = rank < 2 ? s0 : s1;
        const auto& other = rank < 2 ? s1 : s0;
        auto at = [&](const std::string& path) {
          return find_sample(mine, "dcformer_rank_range_seconds", {{"rank", std::to_string(rank)}, {"range", path}});
        };
        ASSERT_TRUE(at("step")) << "rank " << rank;
        EXPECT_DOUBLE_EQ(*at("step"), 1.0 + 0.1 * rank + 0.03);
        EXPECT_DOUBLE_EQ(*at("step/forward"), 0.1 * (rank + 1) + 0.003);
        ASSERT_TRUE(at("step/comm.all_reduce")) << "sampled at step 2";
        EXPECT_EQ(*at("step/comm.all_reduce"), 0.0) << "not run in the last sampled step";
        EXPECT_EQ(bool(at("step/backward/layer/attn.core.global")), rank == 3);
        EXPECT_FALSE(find_sample(other, "dcformer_rank_range_seconds", {{"rank", std::to_string(rank)}}));
      }
      auto l3 = find_sample(s1, "dcformer_rank_range_seconds",
                            {{"rank", "3"}, {"tp", "1"}, {"pp", "1"}, {"dp", "0"}, {"range", "step/backward/layer/attn.core.global"}});
      ASSERT_TRUE(l3);
      EXPECT_DOUBLE_EQ(*l3, 0.253);
      const auto rows = read_rows(dir + "/metrics.jsonl");
      ASSERT_EQ(rows.size(), 5u);
      for (int64_t s = 0; s < 5; ++s) {
        const auto& row = rows[size_t(s)];
        ASSERT_EQ(row.contains("ranges_s"), s == 1 || s == 3) << "step " << s + 1;
        if (!row.contains("ranges_s")) continue;
        const auto want = ranges_of(0, s);
        EXPECT_EQ(row["ranges_s"].size(), want.size());
        for (const auto& [path, sec] : want) EXPECT_DOUBLE_EQ(row["ranges_s"][path].get<double>(), sec) << path;
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(MonitorMpi, PortInUseOnOneNodeFailsEveryRank) {
  ProcessGrid grid(MPI_COMM_WORLD, GridShape{2, 1, 2});
  const std::string dir = temp_dir("busy");
  std::unique_ptr<dcf::test::PortHolder> held;
  int held_port = 0;
  if (world_rank() == 0) {
    // Rank 0's process holds node 1's port (the configured port + 1); node 0's port is free.
    for (int tries = 0; tries < 100; ++tries) {
      held = std::make_unique<dcf::test::PortHolder>();
      if (port_free(held->port - 1)) break;
    }
    held_port = held->port;
  }
  MPI_Bcast(&held_port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  try {
    TrainingMonitor mon(options(held_port - 1, dir), grid);
    ADD_FAILURE() << "expected InputError on rank " << world_rank();
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("cannot listen on 127.0.0.1:" + std::to_string(held_port)), std::string::npos) << msg;
    EXPECT_NE(msg.find("Address already in use"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(node 1, host "), std::string::npos) << msg;
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(MonitorMpi, PortZeroHasNoExporterButWritesMetrics) {
  ProcessGrid grid(MPI_COMM_WORLD, GridShape{1, 4, 1});
  const std::string dir = temp_dir("off");
  {
    TrainingMonitor mon(options(0, dir), grid);
    EXPECT_EQ(mon.exporter_url(), "");
    for (int64_t s = 0; s < 3; ++s) mon.on_step(metrics_of(world_rank(), s));
  }
  if (world_rank() == 0) {
    const auto rows = read_rows(dir + "/metrics.jsonl");
    for (size_t n = 0; n < rows.size(); ++n)
      EXPECT_DOUBLE_EQ(rows[n]["rank_step_time_s"][3].get<double>(), metrics_of(3, int64_t(n)).step_time_s);
    EXPECT_EQ(rows.size(), 3u);
    fs::remove_all(dir);
  }
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (world_rank() != 0) GTEST_FLAG_SET(brief, true);  // other ranks report only failures
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
