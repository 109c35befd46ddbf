// The 2x2x2 job launched through a real Slurm (munge, slurmctld and slurmd started on this machine by
// the test) with srun --mpi=pmix gives the same per-step losses as one process.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "tests/e2e/run_util.h"

namespace fs = std::filesystem;

namespace {

std::string train_args(const fs::path& run_dir) {
  std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  return std::string(DCF_BINARY) + " train --config " + cfg + " --set data.train_path=" + cfg +
         " --set run.steps=10 --set run.global_batch=8 --set parallel.micro_batches=4 --set schedule.warmup_steps=2"
         " --set optimizer.lr=1e-2 --set run.run_dir=" + run_dir.string();
}

class SlurmCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dcf_slurm_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    auto r = dcf::test::run_command("bash " + std::string(DCF_SOURCE_DIR) + "/launch/slurm_local.sh start " +
                                    (dir_ / "cluster").string());
    ASSERT_EQ(r.status, 0) << "could not start the local Slurm cluster:\n" << r.output;
    started_ = true;
  }
  void TearDown() override {
    if (started_)
      dcf::test::run_command("bash " + std::string(DCF_SOURCE_DIR) + "/launch/slurm_local.sh stop " +
                             (dir_ / "cluster").string());
    fs::remove_all(dir_);
  }
  fs::path dir_;
  bool started_ = false;
};

}  // namespace

TEST_F(SlurmCluster, SrunTwoByTwoByTwoMatchesOneProcess) {
  auto ref = dcf::test::run_command(train_args(dir_ / "ref"));
  ASSERT_EQ(ref.status, 0) << ref.output;
  const std::string conf = "SLURM_CONF=" + (dir_ / "cluster" / "slurm.conf").string();
  auto r = dcf::test::run_command(conf + " timeout 300 srun --mpi=pmix -n 8 --overcommit --kill-on-bad-exit=1 " +
                                  train_args(dir_ / "slurm") + " --set parallel.tp=2 --set parallel.pp=2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("world 8 = tp 2 x dp 2 x pp 2"), std::string::npos) << r.output;
  auto a = dcf::test::read_jsonl((dir_ / "ref" / "metrics.jsonl").string());
  auto b = dcf::test::read_jsonl((dir_ / "slurm" / "metrics.jsonl").string());
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < a.size(); ++i) {
    double x = a[i]["loss"], y = b[i]["loss"];
    EXPECT_LE(std::abs(x - y) / std::abs(x), 1e-5) << "step " << i + 1 << ": " << x << " vs " << y;
  }
}
