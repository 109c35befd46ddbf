// MPI start-up and shutdown for subcommands that run distributed, rank discovery from the launcher's
// environment (mpirun: OMPI_COMM_WORLD_*; Slurm: SLURM_*), and the fatal-error path: one line, then
// MPI_Abort when other ranks are running, so a failing rank brings the whole job down.
#pragma once
#include <string>

namespace dcf {

struct MpiSession {
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  int world_rank = 0, world_size = 1, local_rank = 0;
};

// Prints "dcformer: error: <msg>" (with the rank when distributed) and aborts the job if MPI is up
// with several ranks; otherwise returns exit_code for main to return.
int report_fatal(const std::string& msg, int exit_code);
// Local rank as the launcher exports it (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID, MPI_LOCALRANKID), or -1.
int launcher_local_rank();

}  // namespace dcf
