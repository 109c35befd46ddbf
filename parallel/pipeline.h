// Pipeline schedules over m micro-batches: GPipe (all forwards, then all backwards; the simple oracle)
// and 1F1B (warm-up forwards, steady one-forward-one-backward, cool-down backwards). The schedule owns
// the point-to-point traffic between neighbouring stages; the stage's compute comes in as callbacks.
#pragma once
#include <functional>

#include "parallel/communicator.h"

namespace dcf {

struct StageCallbacks {
  // Runs micro-batch i forward; x_in is the received activation (undefined on the first stage);
  // returns the activation to send (ignored on the last stage).
  std::function<Tensor(int i, const Tensor& x_in)> forward;
  // Runs micro-batch i backward; dx_out is the received gradient (undefined on the last stage);
  // returns the gradient for the previous stage (ignored on the first stage).
  std::function<Tensor(int i, const Tensor& dx_out)> backward;
  std::function<Tensor()> make_activation;  // an empty tensor of the activation's shape, to receive into
};

enum class PipelineSchedule { gpipe, one_f_one_b };

struct PipelineTimes {
  double compute_s = 0, wait_s = 0;  // wait = time blocked in receives (bubble + transfer)
};

// pp_comm: ranks of this pipeline in stage order. Returns time spent computing and waiting.
PipelineTimes run_pipeline(PipelineSchedule schedule, Communicator& pp_comm, int micro_batches,
                           const StageCallbacks& stage);

}  // namespace dcf
