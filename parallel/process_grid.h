// ProcessGrid: world = dp x pp x tp with tp fastest, then dp, then pp:
//   rank = (pp_idx * dp + dp_idx) * tp + tp_idx
// so a tensor-parallel group sits on one node. Each group is its own communicator.
#pragma once
#include <memory>

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

  Communicator& world() { return *world_; }
  Communicator& tp() { return *tp_; }
  Communicator& dp() { return *dp_; }
  Communicator& pp() { return *pp_; }       // ranks with the same (dp, tp), ordered by stage
  Communicator& dp_tp() { return *dp_tp_; }  // all ranks of one pipeline stage

  static int rank_of(const GridShape& s, int tp_idx, int dp_idx, int pp_idx) {
    return (pp_idx * s.dp + dp_idx) * s.tp + tp_idx;
  }

 private:
  GridShape shape_;
  int world_rank_ = 0, tp_rank_ = 0, dp_rank_ = 0, pp_rank_ = 0;
  std::unique_ptr<MpiCommunicator> world_, tp_, dp_, pp_, dp_tp_;
};

}  // namespace dcf
