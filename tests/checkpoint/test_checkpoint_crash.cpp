// Crash safety: training with a checkpoint every step is killed with SIGKILL at random moments while
// checkpoints are being written (a test hook, DCF_TEST_CKPT_WRITE_DELAY_MS, slows every dataset write
// so that most of the run's time is spent inside saves), at least 20 times, with synchronous and
// asynchronous saves, single-process and under mpirun (where one rank is killed and the job dies).
// After every kill, `latest` must name a checkpoint that verifies (every checksum, exact coverage),
// every committed checkpoint must verify, and the next run (`--resume auto`) must continue from it.
#include <gtest/gtest.h>

#include <random>

#include "checkpoint/checkpoint.h"
#include "tests/checkpoint/ckpt_test_util.h"

using namespace dcf::test;
namespace ck = dcf::ckpt;

namespace {

int64_t step_of(const std::string& step_dir) {
  return step_dir.empty() ? -1 : std::stoll(fs::path(step_dir).filename().string().substr(5));
}

bool any_tmp(const fs::path& ckpt) {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(ckpt, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) return true;
  }
  return false;
}

}  // namespace

TEST(CrashSafety, TwentyKillsDuringCheckpointWrites) {
  const fs::path dir = fresh_dir("crash"), ckpt = dir / "ckpt", log = dir / "log.txt";
  std::mt19937 rng(20261129);
  // A first checkpoint, uninterrupted.
  auto r = run_command(train_cmd({1, 1, 1}, dir, 2, 1));
  ASSERT_EQ(r.status, 0) << r.output;
  int64_t latest = step_of(ck::find_latest(ckpt.string()));
  ASSERT_EQ(latest, 2);
  int kills = 0, during_write = 0, mpi_kills = 0, async_kills = 0;
  for (int iter = 0; kills < 20 || during_write < 20; ++iter) {
    ASSERT_LT(iter, 60) << "only " << during_write << " of " << kills << " kills landed inside a checkpoint write";
    const bool mpi = iter % 4 == 3, async = iter % 2 == 0;
    const Layout l = mpi ? Layout(1, 2, 1) : Layout(1, 1, 1);
    const size_t rows_before = read_jsonl(dir / "metrics.jsonl").size();
    const int64_t resumed_from = latest;
    Background run("env DCF_TEST_CKPT_WRITE_DELAY_MS=3 " +
                       train_cmd(l, dir, 1000000, 1,
                                 std::string("--resume auto --set checkpoint.keep_last=2 --set checkpoint.async=") +
                                     (async ? "true" : "false")),
                   log);
    // Wait until this run has removed the previous kill's temporaries and a save of its own is under
    // way (a step_*.tmp directory exists), then kill at a random moment within the next 0.8 s.
    bool cleaned = false;
    auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 60) {
      const bool tmp = any_tmp(ckpt);
      if (!tmp) cleaned = true;
      if (tmp && cleaned) break;
      ASSERT_EQ(run.wait(0), -1) << "the run ended by itself:\n" << read_text(log);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 800000)(rng)));
    std::vector<pid_t> ranks = run.children();
    if (mpi && !ranks.empty()) {
      ::kill(ranks[size_t(std::uniform_int_distribution<int>(0, int(ranks.size()) - 1)(rng))], SIGKILL);
    } else {
      ::kill(run.pid(), SIGKILL);
    }
    const bool hit_write = any_tmp(ckpt);  // nobody is left to change it
    const int status = run.wait(60);
    for (pid_t p : ranks) ::kill(p, SIGKILL);  // mpirun normally takes its ranks down itself
    ASSERT_NE(status, -1) << "the job did not end after a rank was killed";
    ++kills;
    during_write += hit_write;
    mpi_kills += mpi;
    async_kills += async;

    // `latest` names a checkpoint that verifies; every committed checkpoint verifies.
    const std::string found = ck::find_latest(ckpt.string());
    ASSERT_FALSE(found.empty());
    ASSERT_NO_THROW(ck::verify_checkpoint(ck::resolve_checkpoint(ckpt.string()))) << "after kill " << kills;
    for (auto& e : fs::directory_iterator(ckpt))
      if (e.is_directory() && e.path().extension() != ".tmp") {
        EXPECT_NO_THROW(ck::verify_checkpoint(e.path().string())) << e.path();
      }
    const int64_t now = step_of(found);
    EXPECT_GE(now, latest);
    // The run continued from the checkpoint it resumed: its first logged step follows it.
    auto rows = read_jsonl(dir / "metrics.jsonl");
    if (rows.size() > rows_before) {
      EXPECT_EQ(rows[rows_before]["step"].get<int64_t>(), resumed_from + 1);
    }
    latest = now;
  }
  // A last run without a kill continues and ends normally.
  const int64_t end = latest + 3;
  r = run_command(train_cmd({1, 1, 1}, dir, end, 1, "--resume auto"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(step_of(ck::find_latest(ckpt.string())), end);
  auto v = run_command(std::string(DCF_BINARY) + " ckpt verify " + ckpt.string());
  EXPECT_EQ(v.status, 0) << v.output;
  auto rows = rows_by_step(dir);
  EXPECT_EQ(rows.rbegin()->first, end);
  for (int64_t s = 1; s <= end; ++s) EXPECT_TRUE(rows.count(s)) << "step " << s << " never ran";
  std::printf("%d SIGKILLs (%d under mpirun, %d with async saves), %d while a checkpoint was being written; "
              "training reached step %lld through %d resumes\n",
              kills, mpi_kills, async_kills, during_write, (long long)end, kills + 1);
  fs::remove_all(dir);
}
