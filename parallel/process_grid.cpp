// Splits the world communicator into the tp, dp, pp and per-stage groups.
#include "parallel/process_grid.h"
#ifdef DCF_WITH_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace dcf {

ProcessGrid::ProcessGrid(MPI_Comm world, GridShape shape) : shape_(shape) {
  int ws = 0;
  DCF_MPI(MPI_Comm_size(world, &ws));
  DCF_MPI(MPI_Comm_rank(world, &world_rank_));
  DCF_CHECK(ws == shape.world(), "grid ", shape.tp, "x", shape.dp, "x", shape.pp, " needs ", shape.world(),
            " ranks, world has ", ws);
  tp_rank_ = world_rank_ % shape.tp;
  dp_rank_ = (world_rank_ / shape.tp) % shape.dp;
  pp_rank_ = world_rank_ / (shape.tp * shape.dp);
  MPI_Comm dup;
  DCF_MPI(MPI_Comm_dup(world, &dup));
  world_ = std::make_unique<MpiCommunicator>(dup, "world");
  auto split = [&](int color, int key, const char* name) {
    MPI_Comm c;
    DCF_MPI(MPI_Comm_split(world, color, key, &c));
    return std::make_unique<MpiCommunicator>(c, name);
  };
  tp_ = split(pp_rank_ * shape.dp + dp_rank_, tp_rank_, "tp");
  dp_ = split(pp_rank_ * shape.tp + tp_rank_, dp_rank_, "dp");
  pp_ = split(dp_rank_ * shape.tp + tp_rank_, pp_rank_, "pp");
  dp_tp_ = split(pp_rank_, dp_rank_ * shape.tp + tp_rank_, "stage");
}

std::vector<std::string> ProcessGrid::use_device_communicators(int device) {
  std::vector<std::string> nccl_groups;
#ifdef DCF_WITH_CUDA
  std::pair<std::unique_ptr<MpiCommunicator>*, std::unique_ptr<Communicator>*> groups[] = {
      {&world_, &world_dev_}, {&tp_, &tp_dev_}, {&dp_, &dp_dev_}, {&pp_, &pp_dev_}, {&dp_tp_, &dp_tp_dev_}};
  for (auto [mpi, dev] : groups) {
    // Collective over the group: every member reaches the same decision.
    if ((*mpi)->size() > 1 && ranks_have_distinct_gpus(**mpi, device)) {
      *dev = make_nccl_communicator(**mpi, device);
      nccl_groups.push_back((*mpi)->name());
    }
  }
#else
  (void)device;
#endif
  return nccl_groups;
}

}  // namespace dcf
