// A rank that fails mid-run (an exception, or death by SIGKILL) brings the whole mpirun job down with a
// non-zero status well under 60 s, naming the failing rank; nothing hangs.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "tests/e2e/run_util.h"

namespace fs = std::filesystem;

namespace {

void run_failure(const std::string& how, bool expect_message) {
  fs::path dir = fs::temp_directory_path() / ("dcf_fail_" + how + std::to_string(::getpid()));
  std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  std::string cmd = "timeout 120 " + dcf::test::mpirun() + " -np 4 " + DCF_BINARY + " train --config " + cfg +
                    " --set data.train_path=" + cfg + " --set parallel.tp=2 --set run.steps=50 --set run.run_dir=" +
                    dir.string() + " --inject-failure 2:3:" + how;
  auto t0 = std::chrono::steady_clock::now();
  auto r = dcf::test::run_command(cmd);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.status, 124) << "the job hung until the 120 s timeout";
  EXPECT_LT(secs, 60.0);
  if (expect_message) {
    EXPECT_NE(r.output.find("error on rank 2"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("injected failure"), std::string::npos) << r.output;
  }
  // Training had started and stopped early: fewer than the 50 requested steps were logged.
  auto rows = dcf::test::read_jsonl((dir / "metrics.jsonl").string());
  EXPECT_GE(rows.size(), 2u);
  EXPECT_LT(rows.size(), 50u);
  std::printf("%s: exit status %d after %.1f s, %zu steps logged\n", how.c_str(), r.status, secs, rows.size());
  fs::remove_all(dir);
}

}  // namespace

TEST(Failures, ExceptionOnOneRankEndsTheJob) { run_failure("throw", true); }
TEST(Failures, KilledRankEndsTheJob) { run_failure("kill", false); }
