// MPI implementation of Communicator. GPU tensors are staged through host memory (the path used when
// several ranks share one GPU, where NCCL refuses).
#pragma once
#include <mpi.h>

#include <utility>
#include <vector>

#include "parallel/communicator.h"

namespace dcf {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of comm (freed in the destructor unless it is MPI_COMM_WORLD).
  MpiCommunicator(MPI_Comm comm, std::string name);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int size() const override { return size_; }
  int rank() const override { return rank_; }
  std::string name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  void all_reduce(Tensor& t, ReduceOp op) override;
  void all_gather(const Tensor& send, Tensor& recv) override;
  void reduce_scatter(const Tensor& send, Tensor& recv) override;
  void all_to_all(const Tensor& send, Tensor& recv) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override;
  void recv(Tensor& t, int src, int tag) override;
  void send_async(const Tensor& t, int dst, int tag) override;
  void wait_sends() override;
  void barrier() override;

 private:
  MPI_Comm comm_;
  std::string name_;
  int size_ = 1, rank_ = 0;
  std::vector<std::pair<MPI_Request, Tensor>> pending_;
};

// Checks an MPI return code, naming file:line.
void mpi_check(int rc, const char* what, const char* file, int line);
#define DCF_MPI(call) ::dcf::mpi_check((call), #call, __FILE__, __LINE__)

}  // namespace dcf
