// CUDA runtime services: device init, the caching allocator behind Tensor's device hooks, the
// current stream, checked-call helpers and NVTX ranges. See cuda_runtime.h.
#include <cublas_api.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda_runtime.h"
#include "kernels/tensor.h"  // defines: register_device_allocator, DeviceAllocator

namespace dcf::cuda {

namespace detail {

void throw_cuda(int err, const char* expr, const char* file, int line) {
  auto e = static_cast<cudaError_t>(err);
  cudaGetLastError();  // clear a non-sticky error so the next launch check does not report it again
  throw DcfError(dcf::detail::concat(file, ":", line, ": CUDA error ", cudaGetErrorName(e), " (",
                                     cudaGetErrorString(e), ") in ", expr));
}

// Names from cublas_api.h (cuBLAS itself is loaded lazily, so its string function is not linked).
static const char* cublas_status_name(int s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

void throw_cublas(int status, const char* expr, const char* file, int line) {
  throw DcfError(
      dcf::detail::concat(file, ":", line, ": cuBLAS error ", status, " (", cublas_status_name(status), ") in ", expr));
}

static bool sync_after_launch() {
  static const bool on = [] {
    const char* e = std::getenv("DCF_CUDA_SYNC");
    return e && e[0] == '1';
  }();
  return on;
}

void after_launch(const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(static_cast<int>(e), "kernel launch", file, line);
  if (sync_after_launch()) {
    e = cudaStreamSynchronize(current_stream());
    if (e != cudaSuccess) throw_cuda(static_cast<int>(e), "kernel execution (DCF_CUDA_SYNC=1)", file, line);
  }
}

}  // namespace detail

// ---- availability and device selection ----------------------------------------------------------

bool cuda_available(std::string* why) {
  static std::string reason;
  static const bool ok = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      reason = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      cudaGetLastError();  // clear the sticky-free error state
      return false;
    }
    if (n == 0) {
      reason = "no CUDA device found";
      return false;
    }
    return true;
  }();
  if (why) *why = ok ? std::string() : reason;
  return ok;
}

int local_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(name)) {
      char* end = nullptr;
      long r = std::strtol(v, &end, 10);
      if (end != v && r >= 0) return static_cast<int>(r);
    }
  }
  return -1;
}

namespace {

struct RuntimeState {
  std::mutex mu;
  bool initialized = false;
  int device = -1;
  cudaStream_t main_stream = nullptr;
};

RuntimeState& state() {
  static RuntimeState* s = new RuntimeState;  // never destroyed: CUDA may be gone at exit
  return *s;
}

thread_local cudaStream_t tls_stream = nullptr;
thread_local bool tls_stream_set = false;

// ---- caching allocator ----------------------------------------------------------------------------
// Sizes are rounded (512 B up to 1 MiB, 2 MiB above) and freed blocks are kept per stream in a
// size-ordered pool; an allocation takes the smallest cached block of its stream that fits without
// wasting more than 1/8 (or 2x for small blocks). When cudaMalloc fails, the cache is emptied and the
// allocation retried once.
class CachingAllocator {
 public:
  void* alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
    size_t size = round_size(bytes);
    cudaStream_t stream = current_stream();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(size);
    size_t limit = size <= kSmall ? 2 * size : size + size / 8;
    for (; it != free_.end() && it->first <= limit; ++it) {
      if (it->second.stream == stream) {
        Block b = it->second;
        free_.erase(it);
        live_.emplace(b.ptr, b);
        note_alloc(b.size);
        return b.ptr;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release_cached_locked();
      e = cudaMalloc(&p, size);
      if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw DcfError(dcf::detail::concat("CUDA out of memory: asked for ", bytes, " bytes; allocated ", allocated_,
                                           ", reserved ", reserved_, ", device free ", free_b, " of ", total_b,
                                           " (", cudaGetErrorString(e), ")"));
      }
    }
    ++num_mallocs_;
    reserved_ += size;
    Block b{p, size, stream};
    live_.emplace(p, b);
    note_alloc(size);
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: ignore rather than crash in a destructor
    Block b = it->second;
    live_.erase(it);
    allocated_ -= b.size;
    free_.emplace(b.size, b);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {allocated_, reserved_, peak_, num_mallocs_};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = allocated_;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
    cudaStream_t stream;
  };
  static constexpr size_t kSmall = size_t(1) << 20;
  static constexpr size_t kLargeRound = size_t(2) << 20;

  static size_t round_size(size_t b) {
    if (b <= kSmall) return (b + 511) / 512 * 512;
    return (b + kLargeRound - 1) / kLargeRound * kLargeRound;
  }
  void note_alloc(size_t size) {
    allocated_ += size;
    if (allocated_ > peak_) peak_ = allocated_;
  }
  void release_cached_locked() {
    if (free_.empty()) return;
    cudaDeviceSynchronize();  // blocks may still be in use by queued work
    for (auto& kv : free_) {
      cudaFree(kv.second.ptr);
      reserved_ -= kv.second.size;
    }
    free_.clear();
  }

  std::mutex mu_;
  std::multimap<size_t, Block> free_;
  std::unordered_map<void*, Block> live_;
  size_t allocated_ = 0, reserved_ = 0, peak_ = 0, num_mallocs_ = 0;
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator;  // never destroyed (see state())
  return *a;
}

void copy_hook(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  cudaStream_t s = current_stream();
  DCF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
  // Host memory is pageable and the caller may read or free it right after: finish the copy.
  if (dst_dev.is_cpu() || src_dev.is_cpu()) DCF_CUDA_CHECK(cudaStreamSynchronize(s));
}

void zero_hook(void* p, size_t bytes, int /*device*/) { DCF_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, current_stream())); }

}  // namespace

int init(int local_rank) {
  RuntimeState& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  if (st.initialized) return st.device;
  std::string why;
  if (!cuda_available(&why)) throw DcfError("CUDA backend: no usable GPU (" + why + ")");
  int n = 0;
  DCF_CUDA_CHECK(cudaGetDeviceCount(&n));
  int lr = local_rank >= 0 ? local_rank : local_rank_from_env();
  int dev = (lr < 0 ? 0 : lr) % n;
  DCF_CUDA_CHECK(cudaSetDevice(dev));
  DCF_CUDA_CHECK(cudaStreamCreateWithFlags(&st.main_stream, cudaStreamNonBlocking));
  st.device = dev;
  DeviceAllocator hooks;
  hooks.alloc = [](size_t bytes, int) { return allocator().alloc(bytes); };
  hooks.free = [](void* p, size_t, int) { allocator().free(p); };
  hooks.copy = copy_hook;
  hooks.zero = zero_hook;
  register_device_allocator(hooks);
  st.initialized = true;
  return dev;
}

bool initialized() { return state().initialized; }
int current_device() { return state().device; }

cudaStream_t main_stream() { return state().main_stream; }
cudaStream_t current_stream() { return tls_stream_set ? tls_stream : state().main_stream; }
void set_current_stream(cudaStream_t s) {
  tls_stream = s;
  tls_stream_set = true;
}
void synchronize() { DCF_CUDA_CHECK(cudaStreamSynchronize(current_stream())); }

void* device_alloc(size_t bytes) { return allocator().alloc(bytes); }
void device_free(void* p) { allocator().free(p); }
MemoryStats memory_stats() { return allocator().stats(); }
void reset_peak_memory() { allocator().reset_peak(); }
void empty_cache() { allocator().empty_cache(); }

NvtxRange::NvtxRange(const char* name) { nvtxRangePushA(name); }
NvtxRange::~NvtxRange() { nvtxRangePop(); }

}  // namespace dcf::cuda
