// Layout equivalence: the tiny DCFormer trained under data x tensor x pipeline parallel layouts (mpirun,
// CPU ranks) gives the single-process losses and gradient norms at every step (fp32, up to summation
// order), with 1F1B and GPipe, with and without the ZeRO-1 optimizer.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "checkpoint/checkpoint.h"
#include "tests/e2e/run_util.h"

namespace fs = std::filesystem;

namespace {

struct Layout {
  int dp, tp, pp;
  std::string extra;  // more --set flags
  std::string name;
};

std::string common_args(const fs::path& dir) {
  std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  // The config file itself serves as a small byte-token corpus: the test needs no setup.
  return " train --config " + cfg + " --set data.train_path=" + cfg +
         " --set run.steps=10 --set run.global_batch=8 --set parallel.micro_batches=4 --set schedule.warmup_steps=2"
         " --set optimizer.lr=1e-2 --set run.run_dir=" + dir.string();
}

struct LayoutRun {
  std::vector<nlohmann::json> rows;
  std::map<std::string, dcf::ckpt::GlobalTensor> params;  // after the last step, from its checkpoint
};

LayoutRun run_layout(const Layout& l) {
  fs::path dir = fs::temp_directory_path() / ("dcf_layout_" + l.name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  int world = l.dp * l.tp * l.pp;
  std::string cmd = (world > 1 ? dcf::test::mpirun() + " -np " + std::to_string(world) + " " : std::string()) +
                    DCF_BINARY + common_args(dir) + " --set parallel.tp=" + std::to_string(l.tp) +
                    " --set parallel.pp=" + std::to_string(l.pp) + " --set checkpoint.every_steps=10 --set checkpoint.dir=" +
                    (dir / "ck").string() + " " + l.extra;
  auto r = dcf::test::run_command(cmd);
  EXPECT_EQ(r.status, 0) << cmd << "\n" << r.output;
  LayoutRun out;
  out.rows = dcf::test::read_jsonl((dir / "metrics.jsonl").string());
  // The checkpoint at step 10 holds every parameter; assembled whole, whatever layout wrote it.
  std::string step = dcf::ckpt::find_latest((dir / "ck").string());
  EXPECT_FALSE(step.empty()) << "no checkpoint written";
  if (!step.empty()) out.params = dcf::ckpt::read_global_tensors(step, dcf::ckpt::read_manifest(step), "param");
  fs::remove_all(dir);
  return out;
}

const LayoutRun& reference() {
  static LayoutRun ref = run_layout({1, 1, 1, "", "ref"});
  return ref;
}

void PrintTo(const Layout& l, std::ostream* os) { *os << l.name; }

class Layouts : public ::testing::TestWithParam<Layout> {};

}  // namespace

TEST_P(Layouts, MatchSingleProcess) {
  const auto& ref_run = reference();
  const auto& ref = ref_run.rows;
  ASSERT_EQ(ref.size(), 10u);
  auto got_run = run_layout(GetParam());
  const auto& got = got_run.rows;
  ASSERT_EQ(got.size(), ref.size());
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double a = ref[i]["loss"], b = got[i]["loss"];
    double ga = ref[i]["grad_norm"], gb = got[i]["grad_norm"];
    worst = std::max(worst, std::abs(a - b) / std::abs(a));
    EXPECT_LE(std::abs(a - b) / std::abs(a), 1e-5) << "step " << i + 1 << ": " << a << " vs " << b;
    EXPECT_LE(std::abs(ga - gb) / std::abs(ga), 1e-4) << "grad norm at step " << i + 1 << ": " << ga << " vs " << gb;
  }
  std::printf("%s: worst relative loss difference %.3g over %zu steps\n", GetParam().name.c_str(), worst, ref.size());
  // The same parameters after 10 steps, every tensor, to 1e-4 relative (norm of the difference).
  ASSERT_FALSE(ref_run.params.empty());
  ASSERT_EQ(got_run.params.size(), ref_run.params.size());
  double worst_param = 0;
  for (const auto& [name, a] : ref_run.params) {
    auto it = got_run.params.find(name);
    ASSERT_NE(it, got_run.params.end()) << name;
    ASSERT_EQ(it->second.values.size(), a.values.size()) << name;
    double num = 0, den = 0;
    for (size_t i = 0; i < a.values.size(); ++i) {
      double d = double(a.values[i]) - double(it->second.values[i]);
      num += d * d;
      den += double(a.values[i]) * double(a.values[i]);
    }
    double rel = std::sqrt(num / std::max(den, 1e-30));
    worst_param = std::max(worst_param, rel);
    EXPECT_LE(rel, 1e-4) << name;
  }
  std::printf("%s: worst relative parameter difference after 10 steps %.3g over %zu tensors\n",
              GetParam().name.c_str(), worst_param, ref_run.params.size());
  // The run must have learned something, or equality would be trivial.
  EXPECT_LT(got.back()["loss"].get<double>(), got.front()["loss"].get<double>() - 0.05);
}

INSTANTIATE_TEST_SUITE_P(
    Grid, Layouts,
    ::testing::Values(Layout{2, 1, 1, "", "dp2"}, Layout{1, 2, 1, "", "tp2"}, Layout{1, 1, 2, "", "pp2"},
                      Layout{1, 4, 1, "", "tp4"}, Layout{1, 1, 4, "", "pp4"}, Layout{4, 1, 1, "--set parallel.micro_batches=2", "dp4"},
                      Layout{2, 2, 1, "", "dp2_tp2"}, Layout{2, 1, 2, "", "dp2_pp2"}, Layout{1, 2, 2, "", "tp2_pp2"},
                      Layout{2, 2, 2, "", "dp2_tp2_pp2"},
                      Layout{2, 1, 2, "--set parallel.schedule=GPIPE", "dp2_pp2_gpipe"},
                      Layout{4, 1, 1, "--set parallel.zero1=true --set parallel.micro_batches=1", "dp4_zero1"},
                      Layout{2, 2, 2, "--set parallel.zero1=true", "dp2_tp2_pp2_zero1"},
                      Layout{1, 1, 3, "--set parallel.stage_layers=1,2,1", "pp3_uneven"}),
    [](const auto& info) { return info.param.name; });
