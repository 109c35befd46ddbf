// Communicator over MPI for CPU tensors; device tensors are copied to host and back.
#include "parallel/mpi_communicator.h"

#include <cstring>

#include "kernels/profile.h"

namespace dcf {

void mpi_check(int rc, const char* what, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw DcfError(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " + std::string(msg, len));
}

namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u16: return MPI_UINT16_T;
    case DType::bf16: return MPI_UINT16_T;  // moved as raw bits; not reducible
  }
  return MPI_BYTE;
}

// Host view of a tensor: itself if on the CPU, else a staged copy written back by finish().
struct HostStage {
  Tensor& orig;
  Tensor host;
  explicit HostStage(Tensor& t, bool copy_in = true) : orig(t) {
    if (t.device().is_cpu()) {
      host = t;
    } else {
      host = Tensor::empty(t.shape(), t.dtype());
      if (copy_in) host.copy_from(t);
    }
  }
  void finish() {
    if (!orig.device().is_cpu()) orig.copy_from(host);
  }
};

Tensor host_copy(const Tensor& t) { return t.device().is_cpu() ? t : t.to(Device::cpu()); }

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  DCF_MPI(MPI_Comm_size(comm_, &size_));
  DCF_MPI(MPI_Comm_rank(comm_, &rank_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized)
    for (auto& [req, t] : pending_) MPI_Wait(&req, MPI_STATUS_IGNORE);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  DCF_RANGE("comm.all_reduce");
  if (size_ == 1 || t.numel() == 0) return;
  DCF_CHECK(t.dtype() != DType::bf16, "all_reduce of bf16 over MPI: reduce in fp32");
  HostStage h(t);
  DCF_MPI(MPI_Allreduce(MPI_IN_PLACE, h.host.raw(), int(t.numel()), mpi_type(t.dtype()),
                        op == ReduceOp::sum ? MPI_SUM : MPI_MAX, comm_));
  bytes_sent_ += t.nbytes();
  h.finish();
}

void MpiCommunicator::all_gather(const Tensor& send, Tensor& recv) {
  DCF_RANGE("comm.all_gather");
  DCF_CHECK(recv.numel() == send.numel() * size_ && recv.dtype() == send.dtype(), "all_gather sizes ", send.desc(),
            " -> ", recv.desc());
  Tensor s = host_copy(send);
  HostStage r(recv, false);
  DCF_MPI(MPI_Allgather(s.raw(), int(send.numel()), mpi_type(send.dtype()), r.host.raw(), int(send.numel()),
                        mpi_type(send.dtype()), comm_));
  bytes_sent_ += send.nbytes() * uint64_t(size_ - 1);
  r.finish();
}

void MpiCommunicator::reduce_scatter(const Tensor& send, Tensor& recv) {
  DCF_RANGE("comm.reduce_scatter");
  DCF_CHECK(send.numel() == recv.numel() * size_ && recv.dtype() == send.dtype(), "reduce_scatter sizes");
  Tensor s = host_copy(send);
  HostStage r(recv, false);
  DCF_MPI(MPI_Reduce_scatter_block(s.raw(), r.host.raw(), int(recv.numel()), mpi_type(send.dtype()), MPI_SUM, comm_));
  bytes_sent_ += recv.nbytes() * uint64_t(size_ - 1);
  r.finish();
}

void MpiCommunicator::all_to_all(const Tensor& send, Tensor& recv) {
  DCF_RANGE("comm.all_to_all");
  DCF_CHECK(send.numel() == recv.numel() && send.numel() % size_ == 0 && recv.dtype() == send.dtype(),
            "all_to_all sizes ", send.desc(), " -> ", recv.desc());
  int chunk = int(send.numel() / size_);
  Tensor s = host_copy(send);
  HostStage r(recv, false);
  DCF_MPI(MPI_Alltoall(s.raw(), chunk, mpi_type(send.dtype()), r.host.raw(), chunk, mpi_type(send.dtype()), comm_));
  bytes_sent_ += uint64_t(chunk) * dtype_size(send.dtype()) * uint64_t(size_ - 1);
  r.finish();
}

void MpiCommunicator::broadcast(Tensor& t, int root) {
  DCF_RANGE("comm.broadcast");
  if (size_ == 1) return;
  HostStage h(t, rank_ == root);
  DCF_MPI(MPI_Bcast(h.host.raw(), int(t.numel()), mpi_type(t.dtype()), root, comm_));
  if (rank_ == root) bytes_sent_ += t.nbytes();
  h.finish();
}

void MpiCommunicator::send(const Tensor& t, int dst, int tag) {
  DCF_RANGE("comm.send");
  Tensor s = host_copy(t);
  DCF_MPI(MPI_Send(s.raw(), int(t.numel()), mpi_type(t.dtype()), dst, tag, comm_));
  bytes_sent_ += t.nbytes();
}

void MpiCommunicator::recv(Tensor& t, int src, int tag) {
  DCF_RANGE("comm.recv");
  HostStage h(t, false);
  DCF_MPI(MPI_Recv(h.host.raw(), int(t.numel()), mpi_type(t.dtype()), src, tag, comm_, MPI_STATUS_IGNORE));
  h.finish();
}

void MpiCommunicator::send_async(const Tensor& t, int dst, int tag) {
  DCF_RANGE("comm.send_async");
  Tensor s = t.device().is_cpu() ? t : t.to(Device::cpu());
  MPI_Request req;
  DCF_MPI(MPI_Isend(s.raw(), int(t.numel()), mpi_type(t.dtype()), dst, tag, comm_, &req));
  pending_.emplace_back(req, s);
  bytes_sent_ += t.nbytes();
}

void MpiCommunicator::wait_sends() {
  DCF_RANGE("comm.wait_sends");
  for (auto& [req, t] : pending_) DCF_MPI(MPI_Wait(&req, MPI_STATUS_IGNORE));
  pending_.clear();
}

void MpiCommunicator::barrier() {
  DCF_RANGE("comm.barrier");
  DCF_MPI(MPI_Barrier(comm_));
}

}  // namespace dcf
