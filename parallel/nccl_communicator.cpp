// NCCL communicator (dlopen'ed libnccl.so.2).
#include "parallel/nccl_communicator.h"

#include <dlfcn.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <mutex>
#include <vector>

#include "kernels/cuda_runtime.h"
#include "kernels/profile.h"

namespace dcf {

namespace {

struct NcclApi {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRank) comm_init_rank;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclCommAbort) comm_abort;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclAllGather) all_gather;
  decltype(&ncclReduceScatter) reduce_scatter;
  decltype(&ncclBroadcast) broadcast;
  decltype(&ncclSend) send;
  decltype(&ncclRecv) recv;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
  decltype(&ncclGetErrorString) error_string;
};

const NcclApi& nccl() {
  static NcclApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_GLOBAL);
    if (!h) throw DcfError(std::string("NCCL: cannot load libnccl.so.2: ") + dlerror());
    auto sym = [&](const char* name) {
      void* p = dlsym(h, name);
      if (!p) throw DcfError(std::string("NCCL: symbol ") + name + " missing");
      return p;
    };
    api.get_unique_id = reinterpret_cast<decltype(api.get_unique_id)>(sym("ncclGetUniqueId"));
    api.comm_init_rank = reinterpret_cast<decltype(api.comm_init_rank)>(sym("ncclCommInitRank"));
    api.comm_destroy = reinterpret_cast<decltype(api.comm_destroy)>(sym("ncclCommDestroy"));
    api.comm_abort = reinterpret_cast<decltype(api.comm_abort)>(sym("ncclCommAbort"));
    api.all_reduce = reinterpret_cast<decltype(api.all_reduce)>(sym("ncclAllReduce"));
    api.all_gather = reinterpret_cast<decltype(api.all_gather)>(sym("ncclAllGather"));
    api.reduce_scatter = reinterpret_cast<decltype(api.reduce_scatter)>(sym("ncclReduceScatter"));
    api.broadcast = reinterpret_cast<decltype(api.broadcast)>(sym("ncclBroadcast"));
    api.send = reinterpret_cast<decltype(api.send)>(sym("ncclSend"));
    api.recv = reinterpret_cast<decltype(api.recv)>(sym("ncclRecv"));
    api.group_start = reinterpret_cast<decltype(api.group_start)>(sym("ncclGroupStart"));
    api.group_end = reinterpret_cast<decltype(api.group_end)>(sym("ncclGroupEnd"));
    api.error_string = reinterpret_cast<decltype(api.error_string)>(sym("ncclGetErrorString"));
  });
  return api;
}

void nccl_check(ncclResult_t r, const char* what, const char* file, int line) {
  if (r == ncclSuccess) return;
  throw DcfError(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " + nccl().error_string(r));
}
#define DCF_NCCL(call) nccl_check((call), #call, __FILE__, __LINE__)

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u16: return ncclUint8;  // moved as bytes (count doubled by the caller)
  }
  return ncclUint8;
}

size_t nccl_count(const Tensor& t) { return t.dtype() == DType::u16 ? t.nbytes() : size_t(t.numel()); }

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(MpiCommunicator& group, int device) : mpi_(group), device_(device) {
    ncclUniqueId id;
    if (group.rank() == 0) DCF_NCCL(nccl().get_unique_id(&id));
    DCF_MPI(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, group.comm()));
    DCF_NCCL(nccl().comm_init_rank(&comm_, group.size(), id, group.rank()));
  }
  ~NcclCommunicator() override {
    if (comm_) nccl().comm_destroy(comm_);
  }
  int size() const override { return mpi_.size(); }
  int rank() const override { return mpi_.rank(); }
  std::string name() const override { return mpi_.name() + "/nccl"; }

  void all_reduce(Tensor& t, ReduceOp op) override {
    if (!t.device().is_cuda()) return mpi_.all_reduce(t, op);
    DCF_RANGE("comm.all_reduce");
    DCF_NCCL(nccl().all_reduce(t.raw(), t.raw(), nccl_count(t), nccl_type(t.dtype()), op == ReduceOp::sum ? ncclSum : ncclMax,
                               comm_, stream()));
    bytes_sent_ += 2 * t.nbytes() * uint64_t(size() - 1) / uint64_t(size());  // ring all-reduce
  }
  void all_gather(const Tensor& send, Tensor& recv) override {
    if (!send.device().is_cuda()) return mpi_.all_gather(send, recv);
    DCF_RANGE("comm.all_gather");
    DCF_NCCL(nccl().all_gather(send.raw(), recv.raw(), nccl_count(send), nccl_type(send.dtype()), comm_, stream()));
    bytes_sent_ += send.nbytes() * uint64_t(size() - 1);
  }
  void reduce_scatter(const Tensor& send, Tensor& recv) override {
    if (!send.device().is_cuda()) return mpi_.reduce_scatter(send, recv);
    DCF_RANGE("comm.reduce_scatter");
    DCF_NCCL(nccl().reduce_scatter(send.raw(), recv.raw(), nccl_count(recv), nccl_type(send.dtype()), ncclSum, comm_,
                                   stream()));
    bytes_sent_ += recv.nbytes() * uint64_t(size() - 1);
  }
  void all_to_all(const Tensor& send, Tensor& recv) override {
    if (!send.device().is_cuda()) return mpi_.all_to_all(send, recv);
    DCF_RANGE("comm.all_to_all");
    const size_t chunk = nccl_count(send) / size_t(size());
    const size_t es = send.dtype() == DType::u16 ? 1 : dtype_size(send.dtype());
    DCF_NCCL(nccl().group_start());
    for (int j = 0; j < size(); ++j) {
      DCF_NCCL(nccl().send(static_cast<const char*>(send.raw()) + j * chunk * es, chunk, nccl_type(send.dtype()), j,
                           comm_, stream()));
      DCF_NCCL(nccl().recv(static_cast<char*>(recv.raw()) + j * chunk * es, chunk, nccl_type(send.dtype()), j, comm_,
                           stream()));
    }
    DCF_NCCL(nccl().group_end());
    bytes_sent_ += chunk * es * uint64_t(size() - 1);
  }
  void broadcast(Tensor& t, int root) override {
    if (!t.device().is_cuda()) return mpi_.broadcast(t, root);
    DCF_RANGE("comm.broadcast");
    DCF_NCCL(nccl().broadcast(t.raw(), t.raw(), nccl_count(t), nccl_type(t.dtype()), root, comm_, stream()));
    if (rank() == root) bytes_sent_ += t.nbytes();
  }
  void send(const Tensor& t, int dst, int tag) override {
    if (!t.device().is_cuda()) return mpi_.send(t, dst, tag);
    DCF_RANGE("comm.send");
    DCF_NCCL(nccl().send(t.raw(), nccl_count(t), nccl_type(t.dtype()), dst, comm_, stream()));
    bytes_sent_ += t.nbytes();
    cuda::synchronize();
  }
  void recv(Tensor& t, int src, int tag) override {
    if (!t.device().is_cuda()) return mpi_.recv(t, src, tag);
    DCF_RANGE("comm.recv");
    DCF_NCCL(nccl().recv(t.raw(), nccl_count(t), nccl_type(t.dtype()), src, comm_, stream()));
  }
  // NCCL sends are asynchronous on the stream; the tensors are kept until wait_sends().
  void send_async(const Tensor& t, int dst, int tag) override {
    if (!t.device().is_cuda()) return mpi_.send_async(t, dst, tag);
    DCF_RANGE("comm.send_async");
    DCF_NCCL(nccl().send(t.raw(), nccl_count(t), nccl_type(t.dtype()), dst, comm_, stream()));
    bytes_sent_ += t.nbytes();
    pending_.push_back(t);
  }
  void wait_sends() override {
    mpi_.wait_sends();
    if (!pending_.empty()) {
      DCF_RANGE("comm.wait_sends");
      cuda::synchronize();
    }
    pending_.clear();
  }
  void barrier() override { mpi_.barrier(); }  // the MPI group's range

 private:
  cudaStream_t stream() const { return cuda::current_stream(); }
  MpiCommunicator& mpi_;
  int device_;
  ncclComm_t comm_ = nullptr;
  std::vector<Tensor> pending_;
};

}  // namespace

bool ranks_have_distinct_gpus(MpiCommunicator& group, int my_device) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::string key = std::string(host) + "#" + std::to_string(my_device);
  const uint64_t mine = std::hash<std::string>{}(key);
  std::vector<uint64_t> all(size_t(group.size()));
  DCF_MPI(MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, group.comm()));
  std::sort(all.begin(), all.end());
  return std::adjacent_find(all.begin(), all.end()) == all.end();
}

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& group, int my_device) {
  return std::make_unique<NcclCommunicator>(group, my_device);
}

}  // namespace dcf
