// MPI session and the job-wide failure path.
#include "launch/mpi_env.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/error.h"

namespace dcf {

int launcher_local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return -1;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  }
  // Errors come back as return codes (checked and thrown), not as MPI's own abort.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  local_rank = launcher_local_rank();
  if (local_rank < 0) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
  }
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

int report_fatal(const std::string& msg, int exit_code) {
  int inited = 0, finalized = 0, size = 1, rank = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  const bool mpi_up = inited && !finalized;
  if (mpi_up) {
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  }
  if (size > 1)
    std::fprintf(stderr, "dcformer: error on rank %d: %s\n", rank, msg.c_str());
  else
    std::fprintf(stderr, "dcformer: error: %s\n", msg.c_str());
  std::fflush(stderr);
  if (mpi_up && size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  if (mpi_up) MPI_Finalize();
  return exit_code;
}

}  // namespace dcf
