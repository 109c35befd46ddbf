// TimedCommunicator: a Communicator that forwards every call to another one and adds up the wall time
// spent in them (and the bytes sent). The trainer wraps its tensor-parallel group in one to report TP
// communication time per step.
#pragma once
#include <chrono>

#include "parallel/communicator.h"

namespace dcf {

class TimedCommunicator : public Communicator {
 public:
  explicit TimedCommunicator(Communicator& inner) : inner_(inner) {}

  double seconds() const { return seconds_; }  // since construction
  int size() const override { return inner_.size(); }
  int rank() const override { return inner_.rank(); }
  std::string name() const override { return inner_.name(); }

  void all_reduce(Tensor& t, ReduceOp op) override { timed([&] { inner_.all_reduce(t, op); }); }
  void all_gather(const Tensor& s, Tensor& r) override { timed([&] { inner_.all_gather(s, r); }); }
  void reduce_scatter(const Tensor& s, Tensor& r) override { timed([&] { inner_.reduce_scatter(s, r); }); }
  void all_to_all(const Tensor& s, Tensor& r) override { timed([&] { inner_.all_to_all(s, r); }); }
  void broadcast(Tensor& t, int root) override { timed([&] { inner_.broadcast(t, root); }); }
  void send(const Tensor& t, int dst, int tag) override { timed([&] { inner_.send(t, dst, tag); }); }
  void recv(Tensor& t, int src, int tag) override { timed([&] { inner_.recv(t, src, tag); }); }
  void send_async(const Tensor& t, int dst, int tag) override { timed([&] { inner_.send_async(t, dst, tag); }); }
  void wait_sends() override { timed([&] { inner_.wait_sends(); }); }
  void barrier() override { timed([&] { inner_.barrier(); }); }

 private:
  template <typename F>
  void timed(F&& f) {
    const uint64_t b0 = inner_.bytes_sent();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bytes_sent_ += inner_.bytes_sent() - b0;
  }
  Communicator& inner_;
  double seconds_ = 0;
};

}  // namespace dcf
