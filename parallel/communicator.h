// Communicator: the collective and point-to-point operations of one process group. MpiCommunicator
// moves CPU tensors (and host-staged GPU tensors) over MPI; the NCCL implementation for GPU tensors
// implements the same interface. Every call counts the bytes it sends, so traffic can be measured.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/tensor.h"

namespace dcf {

enum class ReduceOp { sum, max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  virtual std::string name() const = 0;

  virtual void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  // recv = concatenation over ranks of send (equal sizes), in rank order.
  virtual void all_gather(const Tensor& send, Tensor& recv) = 0;
  // send holds size() equal chunks; recv = sum over ranks of their chunk number rank().
  virtual void reduce_scatter(const Tensor& send, Tensor& recv) = 0;
  // send holds size() equal chunks; chunk j goes to rank j; recv chunk j came from rank j.
  virtual void all_to_all(const Tensor& send, Tensor& recv) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int dst, int tag) = 0;
  virtual void recv(Tensor& t, int src, int tag) = 0;
  // A send that does not wait for the receiver; the tensor is kept alive until wait_sends().
  virtual void send_async(const Tensor& t, int dst, int tag) = 0;
  virtual void wait_sends() = 0;
  virtual void barrier() = 0;

  // Bytes this rank has sent through the group since construction (or the last reset).
  uint64_t bytes_sent() const { return bytes_sent_; }
  void reset_bytes() { bytes_sent_ = 0; }

 protected:
  uint64_t bytes_sent_ = 0;
};

}  // namespace dcf
