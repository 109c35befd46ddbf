// Helpers for the checkpoint tests that run the dcformer executable: the tiny training command on a
// layout, per-step losses from metrics.jsonl, file fingerprints, background runs that can be SIGKILLed.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/checksum.h"
#include "tests/e2e/run_util.h"  // defines: run_command, read_jsonl

namespace dcf::test {

namespace fs = std::filesystem;

inline fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dcf_ckpt_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

struct Layout {
  Layout(int dp_ = 1, int tp_ = 1, int pp_ = 1, std::string extra_ = "")
      : dp(dp_), tp(tp_), pp(pp_), extra(std::move(extra_)) {}
  int dp, tp, pp;
  std::string extra;  // more --set flags
  int world() const { return dp * tp * pp; }
  std::string name() const { return std::to_string(dp) + "x" + std::to_string(tp) + "x" + std::to_string(pp); }
};

// `dcformer train` of the tiny config on its own text as byte tokens: global batch 8 in 4 micro-batches,
// lr 3e-3 (at 1e-2 this tiny model is chaotic enough that fp32 summation-order differences between
// layouts grow past 1e-5 within 10 steps), a checkpoint every `every` steps into run_dir/ckpt. A fixed
// peak FLOP/s spares each start the monitor's GEMM-rate measurement.
inline std::string train_cmd(const Layout& l, const fs::path& run_dir, int64_t steps, int64_t every,
                             const std::string& extra = "") {
  const std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  std::string cmd = l.world() > 1 ? std::string(DCF_MPIRUN_CMD) + " -np " + std::to_string(l.world()) + " " : "";
  cmd += std::string(DCF_BINARY) + " train --config " + cfg + " --set data.train_path=" + cfg +
         " --set run.global_batch=8 --set parallel.micro_batches=4 --set schedule.warmup_steps=2"
         " --set optimizer.lr=3e-3 --set monitoring.log_every=1000 --set monitoring.peak_flops_per_device=1e11"
         " --set run.steps=" +
         std::to_string(steps) + " --set checkpoint.every_steps=" + std::to_string(every) +
         " --set checkpoint.keep_last=5 --set run.run_dir=" + run_dir.string() +
         " --set checkpoint.dir=" + (run_dir / "ckpt").string() + " --set parallel.tp=" + std::to_string(l.tp) +
         " --set parallel.pp=" + std::to_string(l.pp) + " " + l.extra + " " + extra;
  return cmd;
}

// step -> row of metrics.jsonl; a step logged twice (re-run after a resume) keeps its last row.
inline std::map<int64_t, nlohmann::json> rows_by_step(const fs::path& run_dir) {
  std::map<int64_t, nlohmann::json> m;
  for (auto& r : read_jsonl(run_dir / "metrics.jsonl")) m[r["step"].get<int64_t>()] = r;
  return m;
}

// XXH64 of every regular file under dir (relative path -> hash): "nothing was modified" checks.
inline std::map<std::string, uint64_t> fingerprint(const fs::path& dir) {
  std::map<std::string, uint64_t> out;
  if (!fs::exists(dir)) return out;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string s = ss.str();
    out[fs::relative(e.path(), dir).string()] = ckpt::xxh64(s.data(), s.size());
  }
  return out;
}

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A command running in the background (its own process group), output to a file.
class Background {
 public:
  Background(const std::string& cmd, const fs::path& log) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      const std::string full = "exec " + cmd + " >>" + log.string() + " 2>&1";
      execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);
  }
  ~Background() {
    if (pid_ > 0 && status_ < 0) {
      ::kill(-pid_, SIGKILL);
      wait(30);
    }
  }
  pid_t pid() const { return pid_; }
  // Direct children of the process (mpirun's ranks).
  std::vector<pid_t> children() const {
    std::vector<pid_t> out;
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    pid_t c;
    while (in >> c) out.push_back(c);
    return out;
  }
  // Waits up to timeout_s; returns the exit status (128 + signal), or -1 if still running.
  int wait(double timeout_s) {
    if (status_ >= 0) return status_;
    auto t0 = std::chrono::steady_clock::now();
    while (true) {
      int st = 0;
      pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
      }
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

}  // namespace dcf::test
