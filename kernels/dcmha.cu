// DCMHA attention core on the GPU, version 1 (dcmha.md §4.4 "practical first version"): query rows
// are processed in chunks; for one chunk, all B sequences and N heads at once, the scores of the
// chunk's allowed key range are materialised ([B][N][Qc][Sc], fp32), composed, soft-maxed and
// composed again by cell-wise kernels, and the two products with K and V are strided-batched
// cuBLASLt GEMMs over the heads. The backward recomputes the chunk's scores (no T x S state is kept
// between calls), so memory is O(B * N * chunk * S). Math and accumulators are fp32 for f32/bf16
// storage (fp64 for f64); P' and dA enter the GEMMs in the storage dtype, as in the JAX code.
#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "kernels/attention_cudnn.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/dcmha_fused.h"

namespace dcf::cuda {
namespace {

constexpr int kC = 4;  // branches: pre-q, pre-k, post-q, post-k
constexpr int kThreads = 128;

// Geometry of one query chunk (same for every sequence of the batch).
struct ChunkArgs {
  int64_t Qc = 0, Sc = 0, cell = 0;  // rows, keys, Qc * Sc
  int64_t p0 = 0, lo = 0;            // position of row 0, key index of column 0
  int64_t window = 0;
  int64_t S = 0;  // tokens per sequence (the dynamic weights' batch stride is S * kC * (2I+1) * N)
  int N = 0, I = 0;
};

ChunkArgs chunk_args(const DcmhaShape& sh, int64_t c0) {
  ChunkArgs g;
  int64_t c1 = std::min(sh.T, c0 + sh.chunk);
  g.p0 = sh.q_pos0 + c0;
  int64_t p1 = sh.q_pos0 + c1;
  g.lo = sh.window ? std::max<int64_t>(0, g.p0 - sh.window + 1) : 0;
  int64_t hi = std::min(sh.S, p1);
  g.Qc = c1 - c0;
  g.Sc = hi - g.lo;
  g.cell = g.Qc * g.Sc;
  g.window = sh.window;
  g.S = sh.S;
  g.N = int(sh.N);
  g.I = int(sh.I);
  return g;
}

__device__ __forceinline__ bool allowed(int64_t tpos, int64_t s, int64_t window) {
  return s <= tpos && (window == 0 || tpos - s < window);
}

// Allowed columns of row i: [jlo, jhi] (inclusive; never empty, the diagonal is always there).
__device__ __forceinline__ void row_range(const ChunkArgs& g, int64_t i, int64_t& jlo, int64_t& jhi) {
  int64_t tpos = g.p0 + i;
  int64_t first = g.window ? tpos - g.window + 1 : 0;
  jlo = max(int64_t(0), first - g.lo);
  jhi = min(g.Sc - 1, tpos - g.lo);
}

// Allowed rows of column j: [ilo, ihi] (may be empty).
__device__ __forceinline__ void col_range(const ChunkArgs& g, int64_t j, int64_t& ilo, int64_t& ihi) {
  int64_t s = g.lo + j;
  ilo = max(int64_t(0), s - g.p0);
  ihi = g.window ? min(g.Qc - 1, s + g.window - 1 - g.p0) : g.Qc - 1;
}

constexpr int kRowsPerBlock = 16;  // rows of a Compose block: the staged key weights serve them all

// A Compose block covers rows i0 .. i1-1 and columns j0 .. j0+cols-1 (one thread per column). It stages
// the key-side weights (branch ck) of its columns once as wk [WN][cols] (column-fastest, so thread c
// reads wk[e * cols + c] without bank conflicts; the global reads are contiguous per key) and the
// query-side weights (branch cq) of its rows as wq [rows][WN].
template <typename TW, typename A>
__device__ __forceinline__ void stage_weights(const ChunkArgs& g, const TW* dwb, int64_t i0, int64_t i1, int cq,
                                              int ck, int64_t j0, A* wq, A* wk) {
  const int WN = (2 * g.I + 1) * g.N, cols = blockDim.x;
  const int qtotal = int(i1 - i0) * WN;
  for (int idx = threadIdx.x; idx < qtotal; idx += cols) {
    int r = idx / WN, e = idx - r * WN;
    wq[idx] = Num<TW>::load(dwb[((g.p0 + i0 + r) * kC + cq) * WN + e]);
  }
  const int ncols = int(min(int64_t(cols), g.Sc - j0)), total = ncols * WN;
  const TW* src = dwb + ((g.lo + j0) * kC + ck) * WN;
  for (int idx = threadIdx.x; idx < total; idx += cols) {
    int c = idx / WN, e = idx - c * WN;
    wk[e * cols + c] = Num<TW>::load(src[int64_t(c) * kC * WN + e]);
  }
  __syncthreads();
}

// True when some cell of the block's tile is allowed.
__device__ __forceinline__ bool tile_has_allowed(const ChunkArgs& g, int64_t i0, int64_t i1, int64_t j0) {
  const int64_t j1 = j0 + int64_t(blockDim.x) - 1;
  for (int64_t i = i0; i < i1; ++i) {
    int64_t jlo, jhi;
    row_range(g, i, jlo, jhi);
    if (jlo <= j1 && jhi >= j0) return true;
  }
  return false;
}

size_t compose_smem_bytes(int64_t WN, int cols, size_t asize) { return size_t(WN) * (cols + kRowsPerBlock) * asize; }

// The tiling shared by the Compose kernels: the key-side (wks, [WN][cols]) and query-side (wqs) weights of
// the tile, staged in dynamic shared memory where it has an allowed cell (any), batch b, this thread's
// column j, rows [i0, i1).
template <typename A>
struct ComposeTile {
  A *wks, *wqs;
  int64_t b, j, i0, i1;
  bool any;
  template <typename TW>
  __device__ ComposeTile(const ChunkArgs& g, const TW* dw, int cq, int ck) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int WN = (2 * g.I + 1) * g.N, cols = blockDim.x;
    wks = reinterpret_cast<A*>(smem_raw);
    wqs = wks + WN * cols;
    b = blockIdx.z;
    const int64_t j0 = int64_t(blockIdx.x) * cols;
    j = j0 + threadIdx.x;
    i0 = int64_t(blockIdx.y) * kRowsPerBlock;
    i1 = min(g.Qc, i0 + kRowsPerBlock);
    any = tile_has_allowed(g, i0, i1, j0);
    if (any) stage_weights(g, dw + b * g.S * kC * WN, i0, i1, cq, ck, j0, wqs, wks);
  }
};

// Compose (dcmha.md §1.3) of every cell of the chunk: X [B][N][cell] -> Y [B][N][cell]; masked cells
// get 0. Grid (ceil(Sc / cols), ceil(Qc / kRowsPerBlock), B).
template <int IM, typename TW, typename TY, typename A>
__global__ void compose_forward_kernel(ChunkArgs g, const A* __restrict__ X, TY* __restrict__ Y,
                                       const TW* __restrict__ dw, int cq, int ck) {
  const int N = g.N, I = g.I, WN = (2 * I + 1) * N, cols = blockDim.x;
  const auto [wks, wqs, b, j, i0, i1, any] = ComposeTile<A>(g, dw, cq, ck);
  X += b * N * g.cell;
  Y += b * N * g.cell;
  if (j >= g.Sc) return;
  const A* wk = wks + threadIdx.x;  // wk[e * cols] is this column's weight e
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t off = i * g.Sc + j;
    if (!any || !allowed(g.p0 + i, g.lo + j, g.window)) {
      for (int n = 0; n < N; ++n) Y[n * g.cell + off] = Num<TY>::store(A(0));
      continue;
    }
    const A* wq = wqs + (i - i0) * WN;
    A hq[IM], hk[IM];
#pragma unroll
    for (int r = 0; r < IM; ++r) hq[r] = hk[r] = A(0);
    for (int n = 0; n < N; ++n) {
      A x = X[n * g.cell + off];
#pragma unroll
      for (int r = 0; r < IM; ++r)
        if (r < I) {
          hq[r] += wq[r * N + n] * x;
          hk[r] += wk[(r * N + n) * cols] * x;
        }
    }
    for (int m = 0; m < N; ++m) {
      A y = X[m * g.cell + off] * (A(1) + wq[2 * I * N + m] + wk[(2 * I * N + m) * cols]);
#pragma unroll
      for (int r = 0; r < IM; ++r)
        if (r < I) y += wq[(I + r) * N + m] * hq[r] + wk[((I + r) * N + m) * cols] * hk[r];
      Y[m * g.cell + off] = Num<TY>::store(y);
    }
  }
}

// Softmax over the allowed keys of every (b, n, row), in place on P (fp32); masked cells get 0.
// Optionally also writes the result in the storage dtype to P2. One warp per row.
template <typename A, typename TO>
__global__ void softmax_rows_kernel(ChunkArgs g, A* __restrict__ P, TO* __restrict__ P2, int64_t rows_total) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows_total) return;  // row = (b * N + n) * Qc + i
  const int64_t i = row % g.Qc;
  A* z = P + row * g.Sc;
  TO* z2 = P2 ? P2 + row * g.Sc : nullptr;
  int64_t jlo, jhi;
  row_range(g, i, jlo, jhi);
  A mx = -INFINITY;
  for (int64_t j = jlo + lane; j <= jhi; j += 32) mx = max(mx, z[j]);
  mx = warp_max(mx);
  A sum = 0;
  for (int64_t j = jlo + lane; j <= jhi; j += 32) {
    A e = dexp(z[j] - mx);
    z[j] = e;
    sum += e;
  }
  A inv = A(1) / warp_sum(sum);
  for (int64_t j = jlo + lane; j <= jhi; j += 32) {
    A p = z[j] * inv;
    z[j] = p;
    if (z2) z2[j] = Num<TO>::store(p);
  }
  for (int64_t j = lane; j < g.Sc; j += 32)
    if (j < jlo || j > jhi) {
      z[j] = A(0);
      if (z2) z2[j] = Num<TO>::store(A(0));
    }
}

// Softmax backward with its own per-head Delta (dcmha.md §3.2): dP <- P (dP - sum_s P dP), in place.
template <typename A>
__global__ void softmax_backward_kernel(ChunkArgs g, const A* __restrict__ P, A* __restrict__ dP, int64_t rows_total) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows_total) return;
  const int64_t i = row % g.Qc;
  const A* p = P + row * g.Sc;
  A* d = dP + row * g.Sc;
  int64_t jlo, jhi;
  row_range(g, i, jlo, jhi);
  A delta = 0;
  for (int64_t j = jlo + lane; j <= jhi; j += 32) delta += p[j] * d[j];
  delta = warp_sum(delta);
  for (int64_t j = jlo + lane; j <= jhi; j += 32) d[j] = p[j] * (d[j] - delta);
  for (int64_t j = lane; j < g.Sc; j += 32)
    if (j < jlo || j > jhi) d[j] = A(0);
}

// Backward of one Compose per cell (dcmha.md §3.1): dX from dY (dX may not alias dY), plus the
// per-cell reads hq, hk and back-reads eq, ek into H [B][4][I][cell] for the weight-gradient
// reductions. Same tiling as compose_forward_kernel.
template <int IM, typename TW, typename TO, typename A>
__global__ void compose_backward_kernel(ChunkArgs g, const A* __restrict__ X, const A* __restrict__ dY,
                                        TO* __restrict__ dX, A* __restrict__ H, const TW* __restrict__ dw, int cq,
                                        int ck) {
  const int N = g.N, I = g.I, WN = (2 * I + 1) * N, cols = blockDim.x;
  const auto [wks, wqs, b, j, i0, i1, any] = ComposeTile<A>(g, dw, cq, ck);
  X += b * N * g.cell;
  dY += b * N * g.cell;
  dX += b * N * g.cell;
  H += b * 4 * I * g.cell;
  if (j >= g.Sc) return;
  const A* wk = wks + threadIdx.x;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t off = i * g.Sc + j;
    if (!any || !allowed(g.p0 + i, g.lo + j, g.window)) {
      for (int n = 0; n < N; ++n) dX[n * g.cell + off] = Num<TO>::store(A(0));
      for (int r = 0; r < 4 * I; ++r) H[r * g.cell + off] = A(0);
      continue;
    }
    const A* wq = wqs + (i - i0) * WN;
    A hq[IM], hk[IM], eq[IM], ek[IM];
#pragma unroll
    for (int r = 0; r < IM; ++r) hq[r] = hk[r] = eq[r] = ek[r] = A(0);
    for (int n = 0; n < N; ++n) {
      A x = X[n * g.cell + off], dy = dY[n * g.cell + off];
#pragma unroll
      for (int r = 0; r < IM; ++r)
        if (r < I) {
          hq[r] += wq[r * N + n] * x;
          hk[r] += wk[(r * N + n) * cols] * x;
          eq[r] += wq[(I + r) * N + n] * dy;
          ek[r] += wk[((I + r) * N + n) * cols] * dy;
        }
    }
    for (int n = 0; n < N; ++n) {
      A dx = dY[n * g.cell + off] * (A(1) + wq[2 * I * N + n] + wk[(2 * I * N + n) * cols]);
#pragma unroll
      for (int r = 0; r < IM; ++r)
        if (r < I) dx += wq[r * N + n] * eq[r] + wk[(r * N + n) * cols] * ek[r];
      dX[n * g.cell + off] = Num<TO>::store(dx);
    }
#pragma unroll
    for (int r = 0; r < IM; ++r)
      if (r < I) {
        H[(0 * I + r) * g.cell + off] = hq[r];
        H[(1 * I + r) * g.cell + off] = hk[r];
        H[(2 * I + r) * g.cell + off] = eq[r];
        H[(3 * I + r) * g.cell + off] = ek[r];
      }
  }
}

// compose = false: dX = dY in the storage dtype (masked cells are already 0 after the softmax
// backward). Grid-stride over the chunk's B * N * cell values.
template <typename TO, typename A>
__global__ void convert_kernel(const A* __restrict__ x, TO* __restrict__ y, int64_t n) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x)
    y[idx] = Num<TO>::store(x[idx]);
}

// Partial sums of one side's weight gradients of head n (side 0: query, 1: key): d a_r = sum X * back-read
// r, d b_r = sum read r * dY, d g = sum X * dY, over the cells added (X and dY at head n, H as written
// by compose_backward_kernel: reads hq, hk, back-reads eq, ek). add_to adds them to the ddw row o.
template <int IM, typename A>
struct WeightGrads {
  A da[IM], db[IM], dg = A(0);
  __device__ WeightGrads() {
#pragma unroll
    for (int r = 0; r < IM; ++r) da[r] = db[r] = A(0);
  }
  __device__ void add(const ChunkArgs& g, const A* X, const A* dY, const A* H, int64_t off, int side) {
    const int I = g.I;
    const A x = X[off], dy = dY[off];
    dg += x * dy;
#pragma unroll
    for (int r = 0; r < IM; ++r)
      if (r < I) {
        da[r] += x * H[((2 + side) * I + r) * g.cell + off];
        db[r] += H[(side * I + r) * g.cell + off] * dy;
      }
  }
  __device__ void add_to(const ChunkArgs& g, A* o, int64_t n) const {
    const int N = g.N, I = g.I;
    for (int r = 0; r < I; ++r) {
      o[r * N + n] += da[r];
      o[(I + r) * N + n] += db[r];
    }
    o[2 * I * N + n] += dg;
  }
};

// Query-side dynamic-weight grads of one Compose (reductions over the keys of a row), added to
// ddw[b, tpos, cq]: d a_q = sum_s X eq, d b_q = sum_s hq dY, d g_q = sum_s X dY. Grid (Qc, N, B).
template <int IM, typename A>
__global__ void query_side_grads_kernel(ChunkArgs g, const A* __restrict__ X, const A* __restrict__ dY,
                                        const A* __restrict__ H, A* __restrict__ ddw, int cq) {
  const int N = g.N, I = g.I, W = 2 * I + 1;
  const int64_t i = blockIdx.x, n = blockIdx.y, b = blockIdx.z;
  X += b * N * g.cell + n * g.cell;
  dY += b * N * g.cell + n * g.cell;
  H += b * 4 * I * g.cell;
  int64_t jlo, jhi;
  row_range(g, i, jlo, jhi);
  WeightGrads<IM, A> s;
  for (int64_t j = jlo + threadIdx.x; j <= jhi; j += blockDim.x) s.add(g, X, dY, H, i * g.Sc + j, 0);
  s.dg = block_sum(s.dg);
#pragma unroll
  for (int r = 0; r < IM; ++r)
    if (r < I) {
      s.da[r] = block_sum(s.da[r]);
      s.db[r] = block_sum(s.db[r]);
    }
  if (threadIdx.x == 0) s.add_to(g, ddw + b * g.S * kC * W * N + ((g.p0 + i) * kC + cq) * W * N, n);
}

// Key-side grads (reductions over the rows of a column), added to ddw[b, s, ck]. One thread per
// (column, head); consecutive threads read consecutive columns. Grid (ceil(Sc / 128), N, B).
template <int IM, typename A>
__global__ void key_side_grads_kernel(ChunkArgs g, const A* __restrict__ X, const A* __restrict__ dY,
                                      const A* __restrict__ H, A* __restrict__ ddw, int ck) {
  const int N = g.N, I = g.I, W = 2 * I + 1;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, n = blockIdx.y, b = blockIdx.z;
  if (j >= g.Sc) return;
  X += b * N * g.cell + n * g.cell;
  dY += b * N * g.cell + n * g.cell;
  H += b * 4 * I * g.cell;
  int64_t ilo, ihi;
  col_range(g, j, ilo, ihi);
  if (ilo > ihi) return;
  WeightGrads<IM, A> s;
  for (int64_t i = ilo; i <= ihi; ++i) s.add(g, X, dY, H, i * g.Sc + j, 1);
  s.add_to(g, ddw + b * g.S * kC * W * N + ((g.lo + j) * kC + ck) * W * N, n);
}

void check_shape(const DcmhaShape& sh) {
  DCF_CHECK(sh.B > 0 && sh.T > 0 && sh.S > 0 && sh.N > 0 && sh.D > 0 && sh.chunk > 0, "dcmha shape");
  DCF_CHECK(sh.I >= 1 && sh.I <= 16, "dcmha rank I=", sh.I);
  DCF_CHECK(sh.q_pos0 >= 0 && sh.q_pos0 + sh.T <= sh.S, "dcmha query rows outside the sequence");
  DCF_CHECK(sh.chunk <= 65535 && sh.B <= 65535 && sh.N <= 65535, "dcmha: chunk, B and N must be < 65536 on the GPU");
}

void check_tensors(const DcmhaShape& sh, const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& dw) {
  need_cuda(q, op, "q");
  need_dtype(k, q.dtype(), op, "k");
  need_dtype(v, q.dtype(), op, "v");
  if (sh.compose) need_dtype(dw, q.dtype(), op, "dw");
}

int64_t max_cell(const DcmhaShape& sh) {
  int64_t m = 0;
  for (int64_t c0 = 0; c0 < sh.T; c0 += sh.chunk) m = std::max(m, chunk_args(sh, c0).cell);
  return m;
}

// Launch shape of the Compose kernels: 128 columns per block when the staged weights fit in 200 KiB
// of shared memory (the default 48 KiB limit is raised as needed), else 64 or 32.
struct ComposeLaunch {
  int cols = 128;
  size_t smem = 0;
};

ComposeLaunch compose_launch(const DcmhaShape& sh, size_t asize) {
  const int64_t WN = (2 * sh.I + 1) * sh.N;
  ComposeLaunch l;
  for (int cols : {128, 64, 32}) {
    l.cols = cols;
    l.smem = compose_smem_bytes(WN, cols, asize);
    if (l.smem <= 200 * 1024) break;
  }
  DCF_CHECK(l.smem <= 227 * 1024, "dcmha: N=", sh.N, " I=", sh.I, " needs more shared memory than a block has");
  return l;
}

template <typename Kernel>
void allow_smem(Kernel k, size_t smem) {
  if (smem > 48 * 1024) DCF_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

dim3 cell_grid(const ChunkArgs& g, int64_t B, int cols) {
  return dim3(unsigned((g.Sc + cols - 1) / cols), unsigned((g.Qc + kRowsPerBlock - 1) / kRowsPerBlock), unsigned(B));
}

unsigned row_blocks(int64_t rows) { return unsigned((rows + 7) / 8); }  // 8 warps of 256 threads

// The chunk's batched GEMMs run over (sequence, head) pairs in one cuBLAS call (pointer arrays);
// DCF_DCMHA_GEMM_LOOP=1 issues one strided-batched cuBLASLt call per sequence instead (for timing).
bool gemm_per_sequence() {
  static const bool on = [] {
    const char* e = std::getenv("DCF_DCMHA_GEMM_LOOP");
    return e && e[0] == '1';
  }();
  return on;
}

void bgemm(DType ab, DType ct, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
           int64_t sa, int64_t soa, const void* B, int64_t ldb, int64_t sb, int64_t sob, double beta, void* C,
           int64_t ldc, int64_t sc, int64_t soc, int64_t heads, int64_t seqs) {
  if (!gemm_per_sequence()) {
    gemm_raw_2level(ab, ct, ta, tb, M, N, K, 1.0, A, lda, sa, soa, B, ldb, sb, sob, beta, C, ldc, sc, soc, heads, seqs);
    return;
  }
  const size_t ea = dtype_size(ab), ec = dtype_size(ct);
  for (int64_t o = 0; o < seqs; ++o)
    gemm_raw(ab, ct, ta, tb, M, N, K, 1.0, static_cast<const char*>(A) + o * soa * ea, lda, sa,
             static_cast<const char*>(B) + o * sob * ea, ldb, sb, beta, static_cast<char*>(C) + o * soc * ec, ldc, sc,
             heads);
}

// Scores of one chunk for every sequence: Abuf[b][n] = q_chunk[b, :, n] k_range[b, :, n]^T (fp32 out).
template <typename T, typename A>
void chunk_scores(const DcmhaShape& sh, const ChunkArgs& g, int64_t c0, const T* q, const T* k, A* Abuf) {
  const int64_t ND = sh.N * sh.D;
  bgemm(Num<T>::dtype, Num<A>::dtype, false, true, g.Qc, g.Sc, sh.D, q + c0 * ND, ND, sh.D, sh.T * ND, k + g.lo * ND, ND,
        sh.D, sh.S * ND, 0.0, Abuf, g.Sc, g.cell, sh.N * g.cell, sh.N, sh.B);
}

// A -> (pre-Compose) -> softmax -> (post-Compose) -> P2 in the storage dtype; P keeps the fp32
// probabilities (with compose = false P aliases Abuf).
template <int IM, typename T, typename A>
void chunk_probs(const DcmhaShape& sh, const ChunkArgs& g, const T* dw, A* Abuf, A* Pbuf, T* P2, A** P_out) {
  cudaStream_t st = current_stream();
  const int64_t rows = sh.B * sh.N * g.Qc;
  if (sh.compose) {
    const ComposeLaunch cl = compose_launch(sh, sizeof(A));
    allow_smem(compose_forward_kernel<IM, T, A, A>, cl.smem);
    allow_smem(compose_forward_kernel<IM, T, T, A>, cl.smem);
    compose_forward_kernel<IM, T, A, A>
        <<<cell_grid(g, sh.B, cl.cols), cl.cols, cl.smem, st>>>(g, Abuf, Pbuf, dw, 0, 1);
    DCF_CUDA_LAUNCH_CHECK();
    softmax_rows_kernel<A, T><<<row_blocks(rows), 256, 0, st>>>(g, Pbuf, nullptr, rows);
    DCF_CUDA_LAUNCH_CHECK();
    compose_forward_kernel<IM, T, T, A>
        <<<cell_grid(g, sh.B, cl.cols), cl.cols, cl.smem, st>>>(g, Pbuf, P2, dw, 2, 3);
    DCF_CUDA_LAUNCH_CHECK();
    *P_out = Pbuf;
  } else {
    softmax_rows_kernel<A, T><<<row_blocks(rows), 256, 0, st>>>(g, Abuf, P2, rows);
    DCF_CUDA_LAUNCH_CHECK();
    *P_out = Abuf;
  }
}

template <int IM, typename T>
void forward_impl(const DcmhaShape& sh, const T* q, const T* k, const T* v, const T* dw, T* o, Device dev) {
  using A = typename Num<T>::acc;
  const int64_t ND = sh.N * sh.D, cellmax = max_cell(sh), slab = sh.B * sh.N * cellmax;
  Tensor a_t = Tensor::empty({slab}, Num<A>::dtype, dev);
  Tensor p_t = sh.compose ? Tensor::empty({slab}, Num<A>::dtype, dev) : Tensor();
  Tensor p2_t = Tensor::empty({slab}, Num<T>::dtype, dev);
  A* Abuf = a_t.data<A>();
  A* Pbuf = sh.compose ? p_t.data<A>() : nullptr;
  T* P2 = p2_t.data<T>();
  for (int64_t c0 = 0; c0 < sh.T; c0 += sh.chunk) {
    ChunkArgs g = chunk_args(sh, c0);
    chunk_scores<T, A>(sh, g, c0, q, k, Abuf);
    A* P = nullptr;
    chunk_probs<IM, T, A>(sh, g, dw, Abuf, Pbuf, P2, &P);
    bgemm(Num<T>::dtype, Num<T>::dtype, false, false, g.Qc, sh.D, g.Sc, P2, g.Sc, g.cell, sh.N * g.cell,
          v + g.lo * ND, ND, sh.D, sh.S * ND, 0.0, o + c0 * ND, ND, sh.D, sh.T * ND, sh.N, sh.B);
  }
}

template <int IM, typename T>
void backward_impl(const DcmhaShape& sh, const T* q, const T* k, const T* v, const T* dw, const T* dout, T* dq, T* dk,
                   T* dv, T* ddw, Device dev) {
  using A = typename Num<T>::acc;
  constexpr bool direct = std::is_same_v<T, A>;  // accumulate straight into the outputs
  cudaStream_t st = current_stream();
  const int64_t N = sh.N, D = sh.D, ND = N * D, W = 2 * sh.I + 1, cellmax = max_cell(sh),
                slab = sh.B * N * cellmax;
  const bool want_ddw = sh.compose && ddw != nullptr;
  Tensor a_t = Tensor::empty({slab}, Num<A>::dtype, dev);
  Tensor p_t = sh.compose ? Tensor::empty({slab}, Num<A>::dtype, dev) : Tensor();
  Tensor p2_t = Tensor::empty({slab}, Num<T>::dtype, dev);  // P2, later dA in the storage dtype
  Tensor g_t = Tensor::empty({slab}, Num<A>::dtype, dev);   // dP2
  Tensor dp_t = sh.compose ? Tensor::empty({slab}, Num<A>::dtype, dev) : Tensor();
  Tensor h_t = sh.compose ? Tensor::empty({sh.B * 4 * sh.I * cellmax}, Num<A>::dtype, dev) : Tensor();
  A* Abuf = a_t.data<A>();
  A* Pbuf = sh.compose ? p_t.data<A>() : nullptr;
  T* P2 = p2_t.data<T>();
  A* G = g_t.data<A>();
  A* dPbuf = sh.compose ? dp_t.data<A>() : G;
  A* H = sh.compose ? h_t.data<A>() : nullptr;
  // fp32 accumulators when the outputs are bf16.
  Tensor dq_t, dk_t, dv_t, ddw_t;
  A *dq_acc, *dk_acc, *dv_acc, *ddw_acc = nullptr;
  if constexpr (direct) {
    dq_acc = dq;
    dk_acc = dk;
    dv_acc = dv;
    ddw_acc = want_ddw ? ddw : nullptr;
  } else {
    dq_t = Tensor::zeros({sh.B * sh.T * ND}, Num<A>::dtype, dev);
    dk_t = Tensor::zeros({sh.B * sh.S * ND}, Num<A>::dtype, dev);
    dv_t = Tensor::zeros({sh.B * sh.S * ND}, Num<A>::dtype, dev);
    dq_acc = dq_t.data<A>();
    dk_acc = dk_t.data<A>();
    dv_acc = dv_t.data<A>();
    if (want_ddw) {
      ddw_t = Tensor::zeros({sh.B * sh.S * kC * W * N}, Num<A>::dtype, dev);
      ddw_acc = ddw_t.data<A>();
    }
  }
  const ComposeLaunch cl = compose_launch(sh, sizeof(A));
  if (sh.compose) {
    allow_smem(compose_backward_kernel<IM, T, A, A>, cl.smem);
    allow_smem(compose_backward_kernel<IM, T, T, A>, cl.smem);
  }
  for (int64_t c0 = 0; c0 < sh.T; c0 += sh.chunk) {
    ChunkArgs g = chunk_args(sh, c0);
    const int64_t rows = sh.B * N * g.Qc;
    // Dynamic-weight grads of one Compose (X its input, dY its output gradient, H the reads the
    // Compose backward left): query side (branch cq, row sums) and key side (cq + 1, column sums).
    auto weight_grads = [&](const A* X, const A* dY, int cq) {
      query_side_grads_kernel<IM, A>
          <<<dim3(unsigned(g.Qc), unsigned(N), unsigned(sh.B)), kThreads, 0, st>>>(g, X, dY, H, ddw_acc, cq);
      DCF_CUDA_LAUNCH_CHECK();
      key_side_grads_kernel<IM, A>
          <<<dim3(unsigned((g.Sc + kThreads - 1) / kThreads), unsigned(N), unsigned(sh.B)), kThreads, 0, st>>>(
              g, X, dY, H, ddw_acc, cq + 1);
      DCF_CUDA_LAUNCH_CHECK();
    };
    chunk_scores<T, A>(sh, g, c0, q, k, Abuf);
    A* P = nullptr;
    chunk_probs<IM, T, A>(sh, g, dw, Abuf, Pbuf, P2, &P);
    // dP2 = dO V^T and dV += P2^T dO.
    bgemm(Num<T>::dtype, Num<A>::dtype, false, true, g.Qc, g.Sc, D, dout + c0 * ND, ND, D, sh.T * ND, v + g.lo * ND,
          ND, D, sh.S * ND, 0.0, G, g.Sc, g.cell, N * g.cell, N, sh.B);
    bgemm(Num<T>::dtype, Num<A>::dtype, true, false, g.Sc, D, g.Qc, P2, g.Sc, g.cell, N * g.cell, dout + c0 * ND, ND, D,
          sh.T * ND, 1.0, dv_acc + g.lo * ND, ND, D, sh.S * ND, N, sh.B);
    if (sh.compose) {
      // Post-Compose backward (X = P, dY = dP2) -> dP, and the post dynamic-weight grads.
      compose_backward_kernel<IM, T, A, A>
          <<<cell_grid(g, sh.B, cl.cols), cl.cols, cl.smem, st>>>(g, Pbuf, G, dPbuf, H, dw, 2, 3);
      DCF_CUDA_LAUNCH_CHECK();
      if (want_ddw) weight_grads(Pbuf, G, 2);
    }
    // Softmax backward, in place: dP -> dZ.
    softmax_backward_kernel<A><<<row_blocks(rows), 256, 0, st>>>(g, P, dPbuf, rows);
    DCF_CUDA_LAUNCH_CHECK();
    // Pre-Compose backward (X = A, dY = dZ) -> dA in the storage dtype (into P2's space: the dV
    // GEMM that read P2 is earlier on this stream), and the pre dynamic-weight grads.
    T* dA = P2;
    if (sh.compose) {
      compose_backward_kernel<IM, T, T, A>
          <<<cell_grid(g, sh.B, cl.cols), cl.cols, cl.smem, st>>>(g, Abuf, dPbuf, dA, H, dw, 0, 1);
      DCF_CUDA_LAUNCH_CHECK();
      if (want_ddw) weight_grads(Abuf, dPbuf, 0);
    } else {
      convert_kernel<T, A><<<grid_for(sh.B * N * g.cell), 256, 0, st>>>(dPbuf, dA, sh.B * N * g.cell);
      DCF_CUDA_LAUNCH_CHECK();
    }
    // dq = dA k, dk += dA^T q.
    bgemm(Num<T>::dtype, Num<A>::dtype, false, false, g.Qc, D, g.Sc, dA, g.Sc, g.cell, N * g.cell, k + g.lo * ND, ND,
          D, sh.S * ND, 1.0, dq_acc + c0 * ND, ND, D, sh.T * ND, N, sh.B);
    bgemm(Num<T>::dtype, Num<A>::dtype, true, false, g.Sc, D, g.Qc, dA, g.Sc, g.cell, N * g.cell, q + c0 * ND, ND, D,
          sh.T * ND, 1.0, dk_acc + g.lo * ND, ND, D, sh.S * ND, N, sh.B);
  }
  if constexpr (!direct) {
    accumulate_into(Num<T>::dtype, dq, Num<A>::dtype, dq_acc, sh.B * sh.T * ND);
    accumulate_into(Num<T>::dtype, dk, Num<A>::dtype, dk_acc, sh.B * sh.S * ND);
    accumulate_into(Num<T>::dtype, dv, Num<A>::dtype, dv_acc, sh.B * sh.S * ND);
    if (want_ddw) accumulate_into(Num<T>::dtype, ddw, Num<A>::dtype, ddw_acc, sh.B * sh.S * kC * W * N);
  }
}

// DCF_DCMHA_IMPL=v1 turns the fused DCMHA kernels off (read once).
bool dcmha_fused_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("DCF_DCMHA_IMPL");
    return !(e && std::string(e) == "v1");
  }();
  return on;
}

template <typename T>
const T* opt_ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void dcmha_forward(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                   Tensor& o) {
  DCF_NVTX_RANGE("dcmha_forward");
  check_shape(sh);
  check_tensors(sh, "dcmha_forward", q, k, v, dw);
  need_dtype(o, q.dtype(), "dcmha_forward", "o");
  DCF_CHECK(o.numel() == q.numel(), "dcmha_forward: o ", o.desc(), " for q ", q.desc());
  // Plain bf16 attention: cuDNN's fused flash attention (attention_cudnn.h) where it takes the
  // shape; DCF_ATTN_IMPL=v1 forces the path below.
  if (!sh.compose && q.dtype() == DType::bf16 && cudnn_attention_enabled() &&
      cudnn_attention_forward(sh, q, k, v, o, nullptr))
    return;
  // DCMHA (compose on, bf16): the fused two-pass kernel (dcmha_fused.h) where it takes the shape;
  // DCF_DCMHA_IMPL=v1 forces the path below.
  if (sh.compose && dcmha_fused_enabled() && dcmha_fused_supported(sh, q, k, v, dw, o)) {
    dcmha_fused_forward(sh, q.raw(), k.raw(), v.raw(), dw.raw(), o.raw(), current_stream());
    return;
  }
  // Statistics requested but not produced on this path: poison them, so a backward that would read
  // them yields NaN instead of silently wrong gradients.
  if (sh.softmax_stats)
    DCF_CUDA_CHECK(cudaMemsetAsync(sh.softmax_stats, 0xff, size_t(sh.B * sh.T * sh.N) * 2 * sizeof(float),
                                   current_stream()));
  DCF_CUDA_FLOAT_SWITCH(q.dtype(), "dcmha_forward", {
    if (sh.I <= 2)
      forward_impl<2, T>(sh, q.data<T>(), k.data<T>(), v.data<T>(), opt_ptr<T>(dw), o.data<T>(), q.device());
    else
      forward_impl<16, T>(sh, q.data<T>(), k.data<T>(), v.data<T>(), opt_ptr<T>(dw), o.data<T>(), q.device());
  });
}

void dcmha_backward(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                    const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw) {
  DCF_NVTX_RANGE("dcmha_backward");
  check_shape(sh);
  check_tensors(sh, "dcmha_backward", q, k, v, dw);
  need_dtype(dout, q.dtype(), "dcmha_backward", "dout");
  need_dtype(dq, q.dtype(), "dcmha_backward", "dq");
  need_dtype(dk, q.dtype(), "dcmha_backward", "dk");
  need_dtype(dv, q.dtype(), "dcmha_backward", "dv");
  DCF_CHECK(dout.numel() == q.numel() && dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
            "dcmha_backward: gradient shapes");
  if (sh.compose && ddw.defined()) {
    need_dtype(ddw, q.dtype(), "dcmha_backward", "ddw");
    DCF_CHECK(ddw.numel() == dw.numel(), "dcmha_backward: ddw ", ddw.desc(), " for dw ", dw.desc());
  }
  // Plain bf16 attention through cuDNN: no state is kept between the calls, so this recomputes the
  // cuDNN forward (o and the softmax stats), then runs the cuDNN backward and adds into dq, dk, dv.
  if (!sh.compose && q.dtype() == DType::bf16 && cudnn_attention_enabled() &&
      cudnn_attention_backward_accumulate(sh, q, k, v, dout, dq, dk, dv))
    return;
  // DCMHA (compose on, bf16): the fused kernel (dcmha_fused.h); DCF_DCMHA_IMPL=v1 forces the path below.
  if (sh.compose && dcmha_fused_enabled() &&
      dcmha_fused_backward_supported(sh, q, k, v, dw, dout, dq, dk, dv, ddw)) {
    dcmha_fused_backward(sh, q, k, v, dw, dout, dq, dk, dv, ddw, current_stream());
    return;
  }
  DCF_CUDA_FLOAT_SWITCH(q.dtype(), "dcmha_backward", {
    T* ddw_p = (sh.compose && ddw.defined()) ? ddw.data<T>() : nullptr;
    if (sh.I <= 2)
      backward_impl<2, T>(sh, q.data<T>(), k.data<T>(), v.data<T>(), opt_ptr<T>(dw), dout.data<T>(), dq.data<T>(),
                          dk.data<T>(), dv.data<T>(), ddw_p, q.device());
    else
      backward_impl<16, T>(sh, q.data<T>(), k.data<T>(), v.data<T>(), opt_ptr<T>(dw), dout.data<T>(), dq.data<T>(),
                           dk.data<T>(), dv.data<T>(), ddw_p, q.device());
  });
}

}  // namespace dcf::cuda
