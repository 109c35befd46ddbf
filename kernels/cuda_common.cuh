// Shared device-side helpers for the CUDA ops (internal to kernels/*.cu): scalar types and their
// fp32/fp64 math types, runtime-typed pointers for mixed-precision side tensors (statistics, master
// weights), warp/block reductions, dtype dispatch and the raw strided-batched GEMM entry.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda_runtime.h"  // defines: DCF_CUDA_CHECK, DCF_CUDA_LAUNCH_CHECK, current_stream
#include "kernels/tensor.h"

namespace dcf::cuda {

using bf16 = __nv_bfloat16;

// Num<T>: storage type T, math type acc (fp32 for f32 and bf16, fp64 for f64).
template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  static constexpr DType dtype = DType::f32;
  __host__ __device__ static float load(float v) { return v; }
  __host__ __device__ static float store(float v) { return v; }
};
template <>
struct Num<double> {
  using acc = double;
  static constexpr DType dtype = DType::f64;
  __host__ __device__ static double load(double v) { return v; }
  __host__ __device__ static double store(double v) { return v; }
};
template <>
struct Num<bf16> {
  using acc = float;
  static constexpr DType dtype = DType::bf16;
  __device__ static float load(bf16 v) { return __bfloat162float(v); }
  __device__ static bf16 store(float v) { return __float2bfloat16_rn(v); }
};

// Math helpers overloaded on float/double.
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

// A pointer whose element type is chosen at run time (f32, f64 or bf16): for side tensors such as
// rstd, row statistics, gradients fed to AdamW, whose precision may differ from the main operand.
struct AnyPtr {
  void* p = nullptr;
  int dt = 0;  // 0 f32, 1 f64, 2 bf16
  template <typename A>
  __device__ __forceinline__ A get(int64_t i) const {
    if (dt == 0) return A(static_cast<const float*>(p)[i]);
    if (dt == 1) return A(static_cast<const double*>(p)[i]);
    return A(__bfloat162float(static_cast<const bf16*>(p)[i]));
  }
  template <typename A>
  __device__ __forceinline__ void set(int64_t i, A v) const {
    if (dt == 0)
      static_cast<float*>(p)[i] = float(v);
    else if (dt == 1)
      static_cast<double*>(p)[i] = double(v);
    else
      static_cast<bf16*>(p)[i] = __float2bfloat16_rn(float(v));
  }
  __device__ __forceinline__ bool valid() const { return p != nullptr; }
};

inline bool is_float_dtype(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

inline AnyPtr any_ptr(const Tensor& t, const char* op, const char* name) {
  AnyPtr a;
  if (!t.defined()) return a;
  DCF_CHECK(t.device().is_cuda(), op, ": ", name, " must be on a CUDA device, got ", t.desc());
  DCF_CHECK(is_float_dtype(t.dtype()), op, ": ", name, " has unsupported dtype ", t.desc());
  a.p = t.raw();
  a.dt = t.dtype() == DType::f32 ? 0 : t.dtype() == DType::f64 ? 1 : 2;
  return a;
}

inline void need_cuda(const Tensor& t, const char* op, const char* name) {
  DCF_CHECK(t.defined() && t.device().is_cuda(), op, ": ", name, " must be a CUDA tensor, got ",
            t.defined() ? t.desc() : std::string("undefined"));
}

inline void need_dtype(const Tensor& t, DType dt, const char* op, const char* name) {
  need_cuda(t, op, name);
  DCF_CHECK(t.dtype() == dt, op, ": ", name, " must be ", dtype_name(dt), ", got ", t.desc());
}

// Calls the body with T = float, double or bf16 according to dt.
#define DCF_CUDA_FLOAT_SWITCH(dt, op, ...)                                              \
  do {                                                                                  \
    switch (dt) {                                                                       \
      case ::dcf::DType::f32: {                                                         \
        using T = float;                                                                \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      case ::dcf::DType::f64: {                                                         \
        using T = double;                                                               \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      case ::dcf::DType::bf16: {                                                        \
        using T = ::dcf::cuda::bf16;                                                    \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      default:                                                                          \
        throw ::dcf::DcfError(std::string(op) + ": unsupported dtype " + ::dcf::dtype_name(dt)); \
    }                                                                                   \
  } while (0)

// ---- reductions ---------------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A sh[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  A r = lane < nw ? sh[lane] : A(0);
  return warp_sum(r);
}
template <typename A>
__device__ A block_max(A v, A lowest) {
  __shared__ A sh[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  A r = lane < nw ? sh[lane] : lowest;
  return warp_max(r);
}

inline unsigned grid_for(int64_t n, int threads = 256, int64_t cap = int64_t(1) << 20) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

// ---- GEMM building block (gemm.cu) ------------------------------------------------------------
// Row-major strided-batched C = alpha * op(A) op(B) + beta * C for i in [0, batch): A + i*sa, etc.
// A and B share dtype ab (f32, bf16 or f64); C is of dtype c, either ab or f32 (bf16 inputs with
// fp32 output). Accumulation is fp32 (fp64 for f64). Runs on the current stream.
void gemm_raw(DType ab, DType c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void* A,
              int64_t lda, int64_t sa, const void* B, int64_t ldb, int64_t sb, double beta, void* C, int64_t ldc,
              int64_t sc, int64_t batch);

// Two-level strided batch: for o < outer, i < inner the product on A + o*soa + i*sa (likewise B, C),
// in one cuBLAS call through device pointer arrays (f64: a loop of gemm_raw calls).
void gemm_raw_2level(DType ab, DType c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void* A,
                     int64_t lda, int64_t sa, int64_t soa, const void* B, int64_t ldb, int64_t sb, int64_t sob,
                     double beta, void* C, int64_t ldc, int64_t sc, int64_t soc, int64_t inner, int64_t outer);

// y[i] += x[i] over n elements; x of type acc (f32 or f64), y of type ty. For accumulators kept in
// fp32 while the result tensor is bf16 (elementwise.cu).
void accumulate_into(DType ty, void* y, DType tx, const void* x, int64_t n);

}  // namespace dcf::cuda
