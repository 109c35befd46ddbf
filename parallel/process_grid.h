// ProcessGrid: world = dp x pp x tp with tp fastest, then dp, then pp:
//   rank = (pp_idx * dp + dp_idx) * tp + tp_idx
// so a tensor-parallel group sits on one node. Each group is its own communicator.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"

namespace dcf {

struct GridShape {
  int tp = 1, dp = 1, pp = 1;
  int world() const { return tp * dp * pp; }
};

class ProcessGrid {
 public:
  // world must be an MPI communicator of tp*dp*pp ranks.
  ProcessGrid(MPI_Comm world, GridShape shape);

  const GridShape& shape() const { return shape_; }
  int world_rank() const { return world_rank_; }
  int tp_rank() const { return tp_rank_; }
  int dp_rank() const { return dp_rank_; }
  int pp_rank() const { return pp_rank_; }
  bool first_stage() const { return pp_rank_ == 0; }
  bool last_stage() const { return pp_rank_ == shape_.pp - 1; }

  Communicator& world() { return pick(world_, world_dev_); }
  Communicator& tp() { return pick(tp_, tp_dev_); }
  Communicator& dp() { return pick(dp_, dp_dev_); }
  Communicator& pp() { return pick(pp_, pp_dev_); }          // ranks with the same (dp, tp), ordered by stage
  Communicator& dp_tp() { return pick(dp_tp_, dp_tp_dev_); }  // all ranks of one pipeline stage

  // GPU runs: every group whose ranks drive distinct GPUs moves GPU tensors through NCCL; groups
  // whose ranks share a GPU keep the MPI path, staging through host memory. Returns the names of the
  // groups that use NCCL.
  std::vector<std::string> use_device_communicators(int device);

  static int rank_of(const GridShape& s, int tp_idx, int dp_idx, int pp_idx) {
    return (pp_idx * s.dp + dp_idx) * s.tp + tp_idx;
  }

 private:
  GridShape shape_;
  int world_rank_ = 0, tp_rank_ = 0, dp_rank_ = 0, pp_rank_ = 0;
  std::unique_ptr<MpiCommunicator> world_, tp_, dp_, pp_, dp_tp_;
  std::unique_ptr<Communicator> world_dev_, tp_dev_, dp_dev_, pp_dev_, dp_tp_dev_;
  static Communicator& pick(const std::unique_ptr<MpiCommunicator>& m, const std::unique_ptr<Communicator>& d) {
    return d ? *d : *m;
  }
};

}  // namespace dcf
