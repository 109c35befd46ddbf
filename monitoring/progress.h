// The live progress line of world rank 0 and the small formatting helpers behind it.
#pragma once
#include <cstdint>
#include <cstdio>
#include <deque>
#include <string>

namespace dcf {

struct ProgressInfo {
  int64_t step = 0, total = 0;  // steps done, steps of the run
  double loss = 0, lr = 0, grad_norm = 0;
  bool skipped = false;
  double tokens_per_s = 0, mfu = 0, step_time_s = 0;
  double eta_s = -1;  // < 0: unknown
};

// "step    120/300 | loss 2.3456 | lr 1.20e-03 | gnorm 0.512 | 12.3k tok/s | MFU 4.1% | 0.052 s/step | ETA 9s"
std::string format_progress(const ProgressInfo& p);
// 9s, 3m05s, 2h07m, 3d04h
std::string format_duration(double seconds);
// 950, 12.3k, 4.56M, 7.89G
std::string format_si(double v);

// True when mpirun/srun/PMI started this process (their ranks' stdout is a pty even when redirected).
bool started_by_mpi_launcher();

// Time left from the wall-clock time between recent steps (everything counted: checkpoints, logging).
class EtaEstimator {
 public:
  explicit EtaEstimator(size_t window = 50) : window_(window) {}
  void add(double step_wall_s);
  double seconds_left(int64_t steps_left) const;  // -1 before the first step

 private:
  size_t window_;
  std::deque<double> recent_;
  double sum_ = 0;
};

// Writes the line: on a terminal one line rewritten in place (at most 10 times a second, and always at
// the last step), otherwise a plain line every `every` steps and at the last step.
class ProgressPrinter {
 public:
  // mode: -1 auto (in place when out is a terminal and no MPI launcher started us), 0 off, 1 plain lines,
  // 2 in place.
  ProgressPrinter(FILE* out, int mode, int every);
  void update(const ProgressInfo& p);
  void finish();  // ends an in-place line
  bool in_place() const { return mode_ == 2; }

 private:
  FILE* out_;
  int mode_, every_;
  bool open_line_ = false;
  double last_print_ = -1e9;
};

}  // namespace dcf
