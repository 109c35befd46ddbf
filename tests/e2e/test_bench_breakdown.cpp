// `dcformer bench --breakdown` on the tiny CPU config: the ranges' counts follow from the model's structure
// (layers, micro-batches, GEMMs per sub-layer), the times nest (a range holds at least its nested ones) and
// the step's range holds the step time the trainer measures on its own clock. `dcformer train` with
// monitoring.profile_every: the sampled steps' ranges in metrics.jsonl against the trainer's own timings.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "tests/e2e/run_util.h"

using dcf::test::run_command;

namespace {

struct Row {
  double ms = 0, self_ms = 0;
  int64_t count = 0;
};

const std::string kTiny = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";

// Runs cmd; the JSON object it prints last (the last line that starts with '{'), or a null value with a
// test failure when it fails or prints none.
nlohmann::json bench_json(const std::string& cmd) {
  auto r = run_command(cmd);
  EXPECT_EQ(r.status, 0) << cmd << "\n" << r.output;
  nlohmann::json j = dcf::test::last_json_line(r.output);
  if (r.status != 0 || j.is_null()) {
    ADD_FAILURE() << "no JSON line in:\n" << r.output;
    return nlohmann::json();
  }
  return j;
}

TEST(BenchBreakdown, CountsFollowTheModelAndTimesNest) {
  // 3 layers (window pattern [16, 0]: layers 0 and 2 local, 1 global), 2 micro-batches.
  const nlohmann::json j = bench_json(std::string(DCF_BINARY) + " bench --config " + kTiny +
                                      " --set model.n_layers=3 --set parallel.micro_batches=2 --steps 3 --warmup 1"
                                      " --breakdown --json");
  ASSERT_TRUE(j.contains("breakdown")) << j.dump();
  const auto& b = j["breakdown"];
  EXPECT_EQ(b["steps"].get<int>(), 3);
  EXPECT_EQ(b["clock"].get<std::string>(), "host");
  std::map<std::string, Row> m;
  for (const auto& row : b["ranges"])
    m[row["path"].get<std::string>()] = {row["ms"].get<double>(), row["self_ms"].get<double>(),
                                         row["count"].get<int64_t>()};
  auto count = [&](const std::string& p) { return m.count(p) ? m[p].count : -1; };
  EXPECT_EQ(count("step"), 1);
  EXPECT_EQ(count("step/forward"), 2);
  EXPECT_EQ(count("step/backward"), 2);
  EXPECT_EQ(count("step/forward/layer"), 6);
  EXPECT_EQ(count("step/backward/layer"), 6);
  EXPECT_EQ(count("step/forward/layer/attn.core.local/dcmha_forward"), 4);
  EXPECT_EQ(count("step/forward/layer/attn.core.global/dcmha_forward"), 2);
  EXPECT_EQ(count("step/backward/layer/attn.core.global/dcmha_backward"), 2);
  EXPECT_EQ(count("step/forward/layer/mlp/gemm"), 18);    // gate, up, down
  EXPECT_EQ(count("step/backward/layer/mlp/gemm"), 36);   // per weight: input gradient and weight gradient
  EXPECT_EQ(count("step/forward/layer/attn.qkv/gemm"), 18);  // q, k, v
  EXPECT_EQ(count("step/forward/head/gemm"), 2);
  EXPECT_EQ(count("step/optimizer/adamw_update"), 1);
  for (const auto& [path, row] : m) {
    EXPECT_GE(row.ms, 0.0) << path;
    EXPECT_GE(row.self_ms, -1e-3) << path << ": nested ranges exceed it";
    EXPECT_LE(row.self_ms, row.ms + 1e-9) << path;
    const auto cut = path.rfind('/');
    if (cut != std::string::npos) {
      EXPECT_TRUE(m.count(path.substr(0, cut))) << path << " has no parent";
    }
  }
  // The step range encloses the trainer's own step timing, with little more.
  const double step_ms = 1e3 * b["step_time_s_median"].get<double>();
  EXPECT_GE(m["step"].ms, step_ms);
  EXPECT_LE(m["step"].ms, 1.25 * step_ms + 5.0);
  // Forward and backward hold most of a step of this model.
  EXPECT_GT(m["step/forward"].ms + m["step/backward"].ms, 0.5 * m["step"].ms);
}

// Two tensor-parallel ranks: each layer's output projections all-reduce once per sub-layer, so the
// communicator's ranges appear under attn.out and mlp once per layer.
TEST(BenchBreakdown, TensorParallelCollectivesAreRanges) {
  const nlohmann::json j = bench_json(dcf::test::mpirun() + " -np 2 " + DCF_BINARY + " bench --config " + kTiny +
                                      " --set parallel.tp=2 --steps 2 --warmup 1 --breakdown --json");
  ASSERT_TRUE(j.contains("breakdown")) << j.dump();
  EXPECT_EQ(j["tp"].get<int>(), 2);
  std::map<std::string, int64_t> count;
  for (const auto& row : j["breakdown"]["ranges"]) count[row["path"].get<std::string>()] = row["count"].get<int64_t>();
  EXPECT_EQ(count["step/forward/layer"], 4);
  EXPECT_EQ(count["step/forward/layer/attn.out/comm.all_reduce"], 4);
  EXPECT_EQ(count["step/forward/layer/mlp/comm.all_reduce"], 4);
}

// Two pipeline stages: the first holds the embedding, the last the head, two layers each; --breakdown-rank
// picks whose ranges are reported.
TEST(BenchBreakdown, ReportsTheChosenRank) {
  for (int rank : {0, 1}) {
    const nlohmann::json j = bench_json(dcf::test::mpirun() + " -np 2 " + DCF_BINARY + " bench --config " + kTiny +
                                        " --set parallel.pp=2 --set parallel.micro_batches=2 --steps 2 --warmup 1"
                                        " --breakdown --json --breakdown-rank " + std::to_string(rank));
    ASSERT_TRUE(j.contains("breakdown")) << j.dump();
    EXPECT_EQ(j["breakdown"]["rank"].get<int>(), rank);
    std::map<std::string, int64_t> count;
    for (const auto& row : j["breakdown"]["ranges"]) count[row["path"].get<std::string>()] = row["count"].get<int64_t>();
    EXPECT_EQ(count.count("step/forward/embed"), rank == 0 ? 1u : 0u) << "rank " << rank;
    EXPECT_EQ(count.count("step/forward/head"), rank == 1 ? 1u : 0u) << "rank " << rank;
    EXPECT_EQ(count["step/forward/layer"], 4) << "rank " << rank;  // 2 layers x 2 micro-batches
  }
}

TEST(BenchBreakdown, RankOutsideTheWorldIsRefused) {
  auto r = run_command(std::string(DCF_BINARY) + " bench --config " + kTiny + " --steps 1 --breakdown --breakdown-rank 1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--breakdown-rank 1: the world has 1 rank(s), 0..0"), std::string::npos) << r.output;
}

TEST(BenchBreakdown, TextTableListsTheRanges) {
  auto r = run_command(std::string(DCF_BINARY) + " bench --config " + kTiny + " --steps 1 --warmup 0 --breakdown");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("breakdown: 1 profiled steps (host clock)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("attn.core.global"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("adamw_update"), std::string::npos) << r.output;
}

}  // namespace

// Every second step of a training run is sampled: metrics.jsonl carries its ranges (paths of at most four
// names), whose step and forward ranges agree with the trainer's own step and forward (+ TP communication)
// timings of that step.
namespace {

void train_sampled(const std::string& launcher, const std::string& sets, int ranks) {
  const auto dir = std::filesystem::temp_directory_path() / ("dcf_sampled_" + std::to_string(::getpid()) + "_" +
                                                            std::to_string(ranks));
  std::filesystem::remove_all(dir);
  const std::string cmd = launcher + DCF_BINARY + " train --config " + kTiny +
                          " --set data.format=SYNTHETIC --set run.steps=4 --set monitoring.profile_every=2"
                          " --set model.n_layers=3 --set run.run_dir=" + dir.string() + " " + sets;
  auto r = run_command(cmd);
  ASSERT_EQ(r.status, 0) << cmd << "\n" << r.output;
  const auto rows = dcf::test::read_jsonl((dir / "metrics.jsonl").string());
  ASSERT_EQ(rows.size(), 4u);
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].contains("ranges_s"), i % 2 == 1) << "step " << i + 1;
    if (i % 2 == 0) continue;
    const auto& rs = rows[i]["ranges_s"];
    for (const auto& [path, sec] : rs.items()) {
      EXPECT_LE(std::count(path.begin(), path.end(), '/'), 3) << path;
      EXPECT_GE(sec.get<double>(), 0.0) << path;
    }
    ASSERT_TRUE(rs.contains("step")) << rs.dump();
    // The trainer's forward time leaves out TP communication (its own phase, forward and backward together);
    // the forward range holds the forward's share of it.
    const double step_s = rows[i]["step_time_s"].get<double>(), fwd_s = rows[i]["forward_s"].get<double>(),
                 tp_s = rows[i]["tp_comm_s"].get<double>();
    EXPECT_GE(rs["step"].get<double>(), step_s);
    EXPECT_LE(rs["step"].get<double>(), 1.1 * step_s + 2e-3);
    ASSERT_TRUE(rs.contains("step/forward")) << rs.dump();
    EXPECT_GE(rs["step/forward"].get<double>(), 0.9 * fwd_s - 1e-3);
    EXPECT_LE(rs["step/forward"].get<double>(), 1.1 * (fwd_s + tp_s) + 2e-3);
    EXPECT_TRUE(rs.contains("step/forward/layer/attn.core.local")) << rs.dump();
    EXPECT_TRUE(rs.contains("step/backward/layer/attn.core.global")) << rs.dump();
    EXPECT_TRUE(rs.contains("step/optimizer")) << rs.dump();
    EXPECT_LE(rs["step/forward/layer"].get<double>(), rs["step/forward"].get<double>() + 1e-9);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace

TEST(TrainSampledRanges, EverySecondStepAgainstTheTrainersTimings) { train_sampled("", "", 1); }

// Two tensor-parallel ranks: the sampled step's ranges are gathered (a collective on sampled steps only)
// without stalling the run, and the attention output's all-reduce sits in its phase.
TEST(TrainSampledRanges, TensorParallelRanks) {
  train_sampled(dcf::test::mpirun() + " -np 2 ", "--set parallel.tp=2", 2);
}

TEST(TrainSampledRanges, NegativeIntervalIsRefused) {
  auto r = run_command(std::string(DCF_BINARY) + " train --config " + kTiny +
                       " --set data.format=SYNTHETIC --set run.steps=1 --set monitoring.profile_every=-1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("monitoring.profile_every: must be >= 0"), std::string::npos) << r.output;
}

// scripts/breakdown_compare.py over two training runs' metrics.jsonl: the dynamic-weight projection's rows
// (forward and backward) hold time in the DCFormer++ run and none in the Transformer++ run, which has no
// such phase.
TEST(TrainSampledRanges, CompareScriptReadsTwoRuns) {
  const auto base = std::filesystem::temp_directory_path() / ("dcf_cmp_" + std::to_string(::getpid()));
  std::filesystem::remove_all(base);
  for (const char* kind : {"DCFORMER", "TRANSFORMER_PP"}) {
    auto r = run_command(std::string(DCF_BINARY) + " train --config " + kTiny + " --set model.kind=" + kind +
                         " --set data.format=SYNTHETIC --set run.steps=2 --set monitoring.profile_every=1"
                         " --set run.run_dir=" + (base / kind).string());
    ASSERT_EQ(r.status, 0) << r.output;
  }
  auto r = run_command("python3 " + std::string(DCF_SOURCE_DIR) + "/scripts/breakdown_compare.py " +
                       (base / "DCFORMER" / "metrics.jsonl").string() + " " +
                       (base / "TRANSFORMER_PP" / "metrics.jsonl").string() + " --depth 4");
  ASSERT_EQ(r.status, 0) << r.output;
  int dynw_rows = 0;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    std::string name;
    double a = -1, b = -1;
    if (!(f >> name >> a >> b) || name != "attn.dynw") continue;
    ++dynw_rows;
    EXPECT_GT(a, 0.0) << line;
    EXPECT_EQ(b, 0.0) << line;
  }
  EXPECT_EQ(dynw_rows, 2) << r.output;
  EXPECT_NE(r.output.find("DCFORMER: 2 sampled of 2 steps"), std::string::npos) << r.output;
  std::filesystem::remove_all(base);
}
