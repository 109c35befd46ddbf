// CUDA runtime services for the op set: device selection, a caching device allocator (registered as
// the Tensor storage hooks, so no cudaMalloc happens in the step loop once the cache is warm), the
// current stream, checked calls that throw dcf::DcfError with file:line, and NVTX ranges.
// Only built with the CUDA backend (DCF_WITH_CUDA); CPU-only code never includes this header.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "kernels/error.h"  // defines: DcfError

namespace dcf::cuda {

// True when a CUDA driver and at least one device are usable. Otherwise false, with the reason in
// *why (e.g. "CUDA driver version is insufficient for CUDA runtime version" on a machine without a
// GPU). Never throws; the result is computed once.
bool cuda_available(std::string* why = nullptr);

// Local rank from the launcher's environment (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID, LOCAL_RANK), or -1 when none is set.
int local_rank_from_env();

// Selects the device (local_rank % device count; local_rank < 0: from the environment, else 0),
// creates its main stream and cuBLAS handles lazily, and registers the caching allocator as the
// Tensor device hooks. Idempotent; returns the device index. Throws DcfError if no GPU is usable.
int init(int local_rank = -1);
bool initialized();
int current_device();

// The stream every op launches on. Thread-local; defaults to the device's main stream (a
// non-blocking stream created by init()).
cudaStream_t current_stream();
cudaStream_t main_stream();
void set_current_stream(cudaStream_t s);
// RAII: makes s current for the scope.
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t s) : prev_(current_stream()) { set_current_stream(s); }
  ~StreamGuard() { set_current_stream(prev_); }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  cudaStream_t prev_;
};
void synchronize();  // waits for the current stream

// Caching allocator. Blocks are reused on the stream they were allocated on; a block freed while
// other streams still use it needs an explicit event wait by the caller.
void* device_alloc(size_t bytes);
void device_free(void* p);
struct MemoryStats {
  size_t allocated_bytes = 0;       // live blocks (rounded sizes)
  size_t reserved_bytes = 0;        // cudaMalloc'd in total (live + cached)
  size_t peak_allocated_bytes = 0;  // since start or the last reset
  size_t num_device_mallocs = 0;    // cudaMalloc calls so far (should stop growing after warm-up)
};
MemoryStats memory_stats();
void reset_peak_memory();
void empty_cache();  // returns cached free blocks to the driver (synchronizes the device)

// NVTX ranges (visible in nsys); cheap no-ops when no profiler is attached.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name);
  ~NvtxRange();
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

namespace detail {
void throw_cuda(int err, const char* expr, const char* file, int line);
void throw_cublas(int status, const char* expr, const char* file, int line);
void after_launch(const char* file, int line);  // last-error check; syncs when DCF_CUDA_SYNC=1
inline void check_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  if (e != cudaSuccess) throw_cuda(static_cast<int>(e), expr, file, line);
}
}  // namespace detail

}  // namespace dcf::cuda

#define DCF_CUDA_CHECK(expr) ::dcf::cuda::detail::check_cuda((expr), #expr, __FILE__, __LINE__)
#define DCF_CUBLAS_CHECK(expr)                                                      \
  do {                                                                              \
    int dcf_st_ = static_cast<int>(expr);                                           \
    if (dcf_st_ != 0) ::dcf::cuda::detail::throw_cublas(dcf_st_, #expr, __FILE__, __LINE__); \
  } while (0)
// After every kernel launch.
#define DCF_CUDA_LAUNCH_CHECK() ::dcf::cuda::detail::after_launch(__FILE__, __LINE__)
#define DCF_NVTX_CONCAT2(a, b) a##b
#define DCF_NVTX_CONCAT(a, b) DCF_NVTX_CONCAT2(a, b)
#define DCF_NVTX_RANGE(name) ::dcf::cuda::NvtxRange DCF_NVTX_CONCAT(dcf_nvtx_, __LINE__)(name)
