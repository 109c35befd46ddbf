// NCCL implementation of Communicator for GPU tensors, one NCCL communicator per process group: rank 0
// of the group creates the unique id and sends it over the group's MPI communicator. libnccl is
// loaded at first use (dlopen), so CPU-only runs never load it. CPU tensors given to it go through
// the MPI path. Built only with the CUDA backend.
#pragma once
#include <memory>

#include "parallel/mpi_communicator.h"

namespace dcf {

// Whether every rank of `group` drives a different GPU (NCCL refuses two ranks on one device).
bool ranks_have_distinct_gpus(MpiCommunicator& group, int my_device);

// A communicator for `group` (same ranks and order) that runs GPU tensors through NCCL on the current
// CUDA stream and everything else through `group` itself.
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& group, int my_device);

}  // namespace dcf
