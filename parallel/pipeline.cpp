// GPipe and 1F1B. Sends are posted without waiting for the receiver (kept alive in a pending list
// until the schedule ends) and receives block: with blocking sends, 1F1B's steady state would
// deadlock (stage s sends forward to s+1 while s+1 sends backward to s).
#include "parallel/pipeline.h"

#include <chrono>

namespace dcf {
namespace {

using Clock = std::chrono::steady_clock;

struct Runner {
  Communicator& comm;
  const StageCallbacks& cb;
  int stage, stages;
  PipelineTimes times;

  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
  static int tag(int i, bool fwd) { return 2 * i + (fwd ? 0 : 1); }

  void fwd(int i) {
    Tensor x;
    if (!first()) {
      x = cb.make_activation();
      auto t0 = Clock::now();
      comm.recv(x, stage - 1, tag(i, true));
      times.wait_s += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    auto t0 = Clock::now();
    Tensor y = cb.forward(i, x);
    times.compute_s += std::chrono::duration<double>(Clock::now() - t0).count();
    if (!last()) comm.send_async(y, stage + 1, tag(i, true));
  }

  void bwd(int i) {
    Tensor dy;
    if (!last()) {
      dy = cb.make_activation();
      auto t0 = Clock::now();
      comm.recv(dy, stage + 1, tag(i, false));
      times.wait_s += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    auto t0 = Clock::now();
    Tensor dx = cb.backward(i, dy);
    times.compute_s += std::chrono::duration<double>(Clock::now() - t0).count();
    if (!first()) comm.send_async(dx, stage - 1, tag(i, false));
  }
};

}  // namespace

PipelineTimes run_pipeline(PipelineSchedule schedule, Communicator& comm, int m, const StageCallbacks& cb) {
  Runner r{comm, cb, comm.rank(), comm.size(), {}};
  if (schedule == PipelineSchedule::gpipe || r.stages == 1) {
    for (int i = 0; i < m; ++i) r.fwd(i);
    for (int i = 0; i < m; ++i) r.bwd(i);
    comm.wait_sends();
    return r.times;
  }
  DCF_CHECK(m >= r.stages, "1F1B needs at least as many micro-batches (", m, ") as stages (", r.stages, ")");
  const int warm = std::min(r.stages - r.stage - 1, m);
  for (int i = 0; i < warm; ++i) r.fwd(i);
  for (int i = 0; i < m - warm; ++i) {
    r.fwd(warm + i);
    r.bwd(i);
  }
  for (int i = m - warm; i < m; ++i) r.bwd(i);
  comm.wait_sends();
  return r.times;
}

}  // namespace dcf
