// GEMM on the GPU: row-major (strided-batched) products through cuBLASLt, with plans (descriptors and
// the heuristic's algorithm) cached per shape. f32 runs in strict fp32 (no TF32), bf16 with fp32
// accumulation (output bf16 or fp32), f64 through cuBLAS. Row-major C = op(A) op(B) is computed as
// the column-major C^T = op(B)^T op(A)^T, so no data is transposed.
// cuBLAS and cuBLASLt are opened with dlopen at the first GEMM: linking them costs every process
// about a second at start-up (their initialisers), which CPU-only runs and tests should not pay.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <dlfcn.h>

#include <array>
#include <map>
#include <mutex>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace dcf::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// ---- the cuBLAS entry points, resolved at first use -------------------------------------------
void* open_lib(const char* stem) {
  std::string name = std::string(stem) + ".so." + std::to_string(CUBLAS_VER_MAJOR);
  void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!h) h = dlopen((std::string(stem) + ".so").c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!h) throw DcfError("cannot load " + name + " for GEMMs on the GPU: " + dlerror());
  return h;
}

template <typename F>
F symbol(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (!p) throw DcfError(std::string("cuBLAS symbol ") + name + " not found: " + dlerror());
  return reinterpret_cast<F>(p);
}

#define DCF_BLAS_FN(lib, fn) decltype(&::fn) fn = symbol<decltype(&::fn)>(lib, #fn)
struct BlasApi {
  void* lt = open_lib("libcublasLt");
  void* blas = open_lib("libcublas");
  DCF_BLAS_FN(lt, cublasLtCreate);
  DCF_BLAS_FN(lt, cublasLtMatmulDescCreate);
  DCF_BLAS_FN(lt, cublasLtMatmulDescSetAttribute);
  DCF_BLAS_FN(lt, cublasLtMatrixLayoutCreate);
  DCF_BLAS_FN(lt, cublasLtMatrixLayoutSetAttribute);
  DCF_BLAS_FN(lt, cublasLtMatmulPreferenceCreate);
  DCF_BLAS_FN(lt, cublasLtMatmulPreferenceSetAttribute);
  DCF_BLAS_FN(lt, cublasLtMatmulPreferenceDestroy);
  DCF_BLAS_FN(lt, cublasLtMatmulAlgoGetHeuristic);
  DCF_BLAS_FN(lt, cublasLtMatmul);
  DCF_BLAS_FN(blas, cublasCreate_v2);
  DCF_BLAS_FN(blas, cublasSetStream_v2);
  DCF_BLAS_FN(blas, cublasGemmStridedBatchedEx_64);
  DCF_BLAS_FN(blas, cublasGemmBatchedEx_64);
};
#undef DCF_BLAS_FN

const BlasApi& blas_api() {
  static BlasApi* a = new BlasApi;  // never destroyed, like the handles
  return *a;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw DcfError(std::string("gemm: unsupported dtype ") + dtype_name(t));
  }
}

using PlanKey = std::array<int64_t, 19>;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;  // false: no cuBLASLt algorithm, use cuBLAS
};

struct GemmContext {
  std::mutex mu;
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;
};

GemmContext& ctx() {
  static GemmContext* c = new GemmContext;  // never destroyed: handles outlive static destruction
  return *c;
}

// Largest power of two (<= 256) dividing the address and, for batches, the batch stride in bytes.
uint32_t alignment(const void* p, int64_t stride_elems, size_t esize, int64_t batch) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (batch > 1) a |= static_cast<uintptr_t>(stride_elems) * esize;
  uint32_t al = 256;
  while (al > 1 && (a % al)) al >>= 1;
  return al;
}

template <typename V>
void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, V v) {
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v)));
}
template <typename V>
void set_attr(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, V v) {
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatrixLayoutSetAttribute(l, a, &v, sizeof(v)));
}
template <typename V>
void set_attr(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, V v) {
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatmulPreferenceSetAttribute(p, a, &v, sizeof(v)));
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                                   int64_t batch) {
  cublasLtMatrixLayout_t l = nullptr;
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    set_attr(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, static_cast<int32_t>(batch));
    set_attr(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride);
  }
  return l;
}

// Column-major view: the cuBLAS "A" operand is our B, "B" is our A, the output is C^T (N x M).
Plan build_plan(GemmContext& c, DType ab, DType ct, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda,
                int64_t sa, int64_t ldb, int64_t sb, int64_t ldc, int64_t sc, int64_t batch, uint32_t al_a,
                uint32_t al_b, uint32_t al_c) {
  Plan p;
  cudaDataType_t tab = cuda_type(ab), tc = cuda_type(ct);
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_attr(p.op, CUBLASLT_MATMUL_DESC_TRANSA, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_attr(p.op, CUBLASLT_MATMUL_DESC_TRANSB, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  p.la = tb ? make_layout(tab, K, N, ldb, sb, batch) : make_layout(tab, N, K, ldb, sb, batch);
  p.lb = ta ? make_layout(tab, M, K, lda, sa, batch) : make_layout(tab, K, M, lda, sa, batch);
  p.lc = make_layout(tc, N, M, ldc, sc, batch);
  cublasLtMatmulPreference_t pref = nullptr;
  DCF_CUBLAS_CHECK(blas_api().cublasLtMatmulPreferenceCreate(&pref));
  set_attr(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kWorkspaceBytes));
  // cuBLAS "A" is our B and vice versa.
  set_attr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b);
  set_attr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a);
  set_attr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c);
  set_attr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  cublasStatus_t st = blas_api().cublasLtMatmulAlgoGetHeuristic(c.lt, p.op, p.la, p.lb, p.lc, p.lc, pref, 1, &res, &found);
  blas_api().cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
    p.algo = res.algo;
    p.usable = true;
  }
  return p;
}

void init_handles(GemmContext& c) {
  if (c.lt) return;
  DCF_CUBLAS_CHECK(blas_api().cublasLtCreate(&c.lt));
  DCF_CUBLAS_CHECK(blas_api().cublasCreate_v2(&c.blas));
  c.workspace = device_alloc(kWorkspaceBytes);
}

// C = beta * C on a strided batch of M x N row-major blocks (the K = 0 case).
template <typename T>
__global__ void scale_blocks_kernel(T* C, int64_t M, int64_t N, int64_t ldc, int64_t sc, int64_t batch, double beta) {
  int64_t total = batch * M * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t bi = i / (M * N), r = (i / N) % M, col = i % N;
    T* p = C + bi * sc + r * ldc + col;
    using A = typename Num<T>::acc;
    *p = beta == 0 ? Num<T>::store(A(0)) : Num<T>::store(A(beta) * Num<T>::load(*p));
  }
}

void gemm_cublas_fallback(GemmContext& c, DType ab, DType ct, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                          double alpha, const void* A, int64_t lda, int64_t sa, const void* B, int64_t ldb,
                          int64_t sb, double beta, void* C, int64_t ldc, int64_t sc, int64_t batch) {
  DCF_CUBLAS_CHECK(blas_api().cublasSetStream_v2(c.blas, current_stream()));
  cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (ab == DType::f64) {
    DCF_CUBLAS_CHECK(blas_api().cublasGemmStridedBatchedEx_64(c.blas, opa, opb, N, M, K, &alpha, B, CUDA_R_64F, ldb, sb, A,
                                                   CUDA_R_64F, lda, sa, &beta, C, CUDA_R_64F, ldc, sc, batch,
                                                   CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
  } else {
    float fa = float(alpha), fb = float(beta);
    DCF_CUBLAS_CHECK(blas_api().cublasGemmStridedBatchedEx_64(c.blas, opa, opb, N, M, K, &fa, B, cuda_type(ab), ldb, sb, A,
                                                   cuda_type(ab), lda, sa, &fb, C, cuda_type(ct), ldc, sc, batch,
                                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace

void gemm_raw(DType ab, DType ct, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const void* A,
              int64_t lda, int64_t sa, const void* B, int64_t ldb, int64_t sb, double beta, void* C, int64_t ldc,
              int64_t sc, int64_t batch) {
  DCF_CHECK(ct == ab || (ab == DType::bf16 && ct == DType::f32), "gemm: output dtype ", dtype_name(ct), " for inputs ",
            dtype_name(ab));
  if (M <= 0 || N <= 0 || batch <= 0) return;
  if (K <= 0) {
    DCF_CUDA_FLOAT_SWITCH(ct, "gemm", {
      scale_blocks_kernel<T><<<grid_for(batch * M * N), 256, 0, current_stream()>>>(static_cast<T*>(C), M, N, ldc, sc,
                                                                                     batch, beta);
      DCF_CUDA_LAUNCH_CHECK();
    });
    return;
  }
  GemmContext& c = ctx();
  std::lock_guard<std::mutex> lock(c.mu);
  init_handles(c);
  if (ab == DType::f64) {
    gemm_cublas_fallback(c, ab, ct, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
    return;
  }
  size_t ea = dtype_size(ab), ec = dtype_size(ct);
  uint32_t al_a = alignment(A, sa, ea, batch), al_b = alignment(B, sb, ea, batch), al_c = alignment(C, sc, ec, batch);
  PlanKey key{int64_t(ab), int64_t(ct), ta, tb, M, N, K, lda, ldb, ldc, batch > 1 ? sa : 0, batch > 1 ? sb : 0,
              batch > 1 ? sc : 0, batch, al_a, al_b, al_c, beta == 0.0, 0};
  auto it = c.plans.find(key);
  if (it == c.plans.end())
    it = c.plans.emplace(key, build_plan(c, ab, ct, ta, tb, M, N, K, lda, sa, ldb, sb, ldc, sc, batch, al_a, al_b, al_c))
             .first;
  Plan& p = it->second;
  if (p.usable) {
    float fa = float(alpha), fb = float(beta);
    cublasStatus_t st = blas_api().cublasLtMatmul(c.lt, p.op, &fa, B, p.la, A, p.lb, &fb, C, p.lc, C, p.lc, &p.algo, c.workspace,
                                       kWorkspaceBytes, current_stream());
    if (st == CUBLAS_STATUS_SUCCESS) return;
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) DCF_CUBLAS_CHECK(st);
    p.usable = false;  // remember: this shape goes to cuBLAS from now on
  }
  gemm_cublas_fallback(c, ab, ct, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

namespace {
// Pointer arrays of a two-level strided batch, in the cuBLAS operand order (ours B, A, C).
__global__ void fill_batch_pointers(const char* A, int64_t sa, int64_t soa, const char* B, int64_t sb, int64_t sob,
                                    char* C, int64_t sc, int64_t soc, int64_t inner, int64_t total, const void** pa,
                                    const void** pb, void** pc) {
  int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  int64_t o = idx / inner, i = idx % inner;
  pa[idx] = B + o * sob + i * sb;
  pb[idx] = A + o * soa + i * sa;
  pc[idx] = C + o * soc + i * sc;
}
}  // namespace

void gemm_raw_2level(DType ab, DType ct, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                     const void* A, int64_t lda, int64_t sa, int64_t soa, const void* B, int64_t ldb, int64_t sb,
                     int64_t sob, double beta, void* C, int64_t ldc, int64_t sc, int64_t soc, int64_t inner,
                     int64_t outer) {
  if (outer == 1 || K <= 0 || ab == DType::f64) {
    for (int64_t o = 0; o < outer; ++o)
      gemm_raw(ab, ct, ta, tb, M, N, K, alpha, static_cast<const char*>(A) + o * soa * dtype_size(ab), lda, sa,
               static_cast<const char*>(B) + o * sob * dtype_size(ab), ldb, sb, beta,
               static_cast<char*>(C) + o * soc * dtype_size(ct), ldc, sc, inner);
    return;
  }
  DCF_CHECK(ct == ab || (ab == DType::bf16 && ct == DType::f32), "gemm: output dtype ", dtype_name(ct),
            " for inputs ", dtype_name(ab));
  if (M <= 0 || N <= 0 || inner <= 0 || outer <= 0) return;
  const int64_t total = inner * outer;
  const size_t ea = dtype_size(ab), ec = dtype_size(ct);
  void* ptrs = device_alloc(3 * size_t(total) * sizeof(void*));  // stream-ordered reuse: safe to free below
  void** slots = static_cast<void**>(ptrs);
  const void** pa = const_cast<const void**>(slots);
  const void** pb = pa + total;
  void** pc = slots + 2 * total;
  cudaStream_t st = current_stream();
  fill_batch_pointers<<<unsigned((total + 255) / 256), 256, 0, st>>>(
      static_cast<const char*>(A), sa * int64_t(ea), soa * int64_t(ea), static_cast<const char*>(B), sb * int64_t(ea),
      sob * int64_t(ea), static_cast<char*>(C), sc * int64_t(ec), soc * int64_t(ec), inner, total, pa, pb, pc);
  DCF_CUDA_LAUNCH_CHECK();
  GemmContext& c = ctx();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    init_handles(c);
    DCF_CUBLAS_CHECK(blas_api().cublasSetStream_v2(c.blas, st));
    float fa = float(alpha), fb = float(beta);
    DCF_CUBLAS_CHECK(blas_api().cublasGemmBatchedEx_64(
        c.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &fa, pa, cuda_type(ab), ldb,
        pb, cuda_type(ab), lda, &fb, pc, cuda_type(ct), ldc, total, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  device_free(ptrs);
}

void gemm_ex(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& a, int64_t a_off,
             int64_t lda, const Tensor& b, int64_t b_off, int64_t ldb, double beta, Tensor& c, int64_t c_off,
             int64_t ldc) {
  DCF_NVTX_RANGE("gemm");
  need_cuda(a, "gemm", "A");
  need_cuda(b, "gemm", "B");
  need_cuda(c, "gemm", "C");
  DCF_CHECK(a.dtype() == b.dtype() && (c.dtype() == a.dtype() || (a.dtype() == DType::bf16 && c.dtype() == DType::f32)),
            "gemm dtypes ", a.desc(), b.desc(), c.desc());
  size_t ea = dtype_size(a.dtype()), ec = dtype_size(c.dtype());
  gemm_raw(a.dtype(), c.dtype(), ta, tb, M, N, K, alpha, static_cast<const char*>(a.raw()) + a_off * ea, lda, 0,
           static_cast<const char*>(b.raw()) + b_off * ea, ldb, 0, beta, static_cast<char*>(c.raw()) + c_off * ec, ldc,
           0, 1);
}

}  // namespace dcf::cuda
