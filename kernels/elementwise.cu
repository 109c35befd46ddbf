// Elementwise and row-wise CUDA ops: add/scale/sum of squares, embedding, RMSNorm, RoPE, SwiGLU,
// GELU, DCMHA dynamic-weight finishing, cross-entropy pieces, AdamW, casts. Storage f32, bf16 or f64;
// math in fp32 (fp64 for f64); statistics through runtime-typed pointers so they can stay fp32 when
// the activations are bf16. One thread per element (grid-stride) or one warp/block per row.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

#define DCF_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

namespace dcf::cuda {
namespace {

cudaStream_t stream() { return current_stream(); }

template <typename A>
constexpr DType acc_dtype() {
  return sizeof(A) == 8 ? DType::f64 : DType::f32;
}

// ---- add, scale, sum of squares, cast, accumulate -------------------------------------------------

template <typename T>
__global__ void add_kernel(T* y, const T* x, int64_t n, double alpha) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) y[i] = Num<T>::store(Num<T>::load(y[i]) + A(alpha) * Num<T>::load(x[i]));
}

template <typename T>
__global__ void scale_kernel(T* y, int64_t n, double s) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) y[i] = Num<T>::store(Num<T>::load(y[i]) * A(s));
}

template <typename T>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* partial) {
  double acc = 0;
  DCF_GRID_LOOP(i, n) {
    double v = double(Num<T>::load(x[i]));
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double* partial, int n, double* out) {
  double acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[0] = acc;
}

__global__ void cast_kernel(AnyPtr dst, AnyPtr src, int64_t n) {
  if (dst.dt != 1 && src.dt != 1) {
    DCF_GRID_LOOP(i, n) dst.set(i, src.get<float>(i));
  } else {
    DCF_GRID_LOOP(i, n) dst.set(i, src.get<double>(i));
  }
}

template <typename T>
__global__ void accumulate_kernel(T* y, AnyPtr x, int64_t n) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) y[i] = Num<T>::store(Num<T>::load(y[i]) + x.get<A>(i));
}

// ---- embedding ----------------------------------------------------------------------------------

template <typename T>
__global__ void embedding_forward_kernel(const T* table, int64_t V, int64_t E, const int32_t* ids, int64_t R, T* out,
                                         int64_t off) {
  DCF_GRID_LOOP(i, R * E) {
    int64_t r = i / E, e = i % E;
    int64_t id = int64_t(ids[r]) - off;
    out[i] = (id >= 0 && id < V) ? table[id * E + e] : Num<T>::store(typename Num<T>::acc(0));
  }
}

__global__ void iota_kernel(int32_t* p, int64_t n) {
  DCF_GRID_LOOP(i, n) p[i] = int32_t(i);
}

// One block per sorted position; the block that starts a run of equal ids sums the run's rows in
// fp32 (fp64) and adds once into the table: deterministic and free of atomics.
template <typename T>
__global__ void embedding_backward_runs_kernel(const T* dout, const int32_t* keys, const int32_t* rows, int64_t R,
                                               int64_t V, int64_t E, T* dtable, int64_t off) {
  using A = typename Num<T>::acc;
  int64_t i = blockIdx.x;
  int32_t key = keys[i];
  if (i > 0 && keys[i - 1] == key) return;
  int64_t id = int64_t(key) - off;
  if (id < 0 || id >= V) return;
  int64_t end = i + 1;
  while (end < R && keys[end] == key) ++end;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    A acc = 0;
    for (int64_t j = i; j < end; ++j) acc += Num<T>::load(dout[int64_t(rows[j]) * E + e]);
    T* p = dtable + id * E + e;
    *p = Num<T>::store(Num<T>::load(*p) + acc);
  }
}

// ---- RMSNorm (one warp per row) -------------------------------------------------------------------

template <typename T>
__global__ void rmsnorm_forward_kernel(const T* x, AnyPtr w, T* y, AnyPtr rstd, int64_t R, int64_t C, double eps) {
  using A = typename Num<T>::acc;
  int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (row >= R) return;
  const T* xr = x + row * C;
  A ss = 0;
  for (int64_t c = lane; c < C; c += 32) {
    A v = Num<T>::load(xr[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  A rs = A(1.0 / sqrt(double(ss) / double(C) + eps));
  if (lane == 0) rstd.set(row, rs);
  T* yr = y + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    A v = Num<T>::load(xr[c]) * rs;
    if (w.valid()) v *= w.get<A>(c);
    yr[c] = Num<T>::store(v);
  }
}

template <typename T>
__global__ void rmsnorm_backward_dx_kernel(const T* dy, const T* x, AnyPtr w, AnyPtr rstd, T* dx, int64_t R,
                                           int64_t C) {
  using A = typename Num<T>::acc;
  int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (row >= R) return;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  A rs = rstd.get<A>(row);
  A dot = 0;
  for (int64_t c = lane; c < C; c += 32) {
    A dxh = Num<T>::load(dyr[c]) * (w.valid() ? w.get<A>(c) : A(1));
    dot += dxh * (Num<T>::load(xr[c]) * rs);
  }
  A mean = warp_sum(dot) / A(C);
  T* dxr = dx + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    A dxh = Num<T>::load(dyr[c]) * (w.valid() ? w.get<A>(c) : A(1));
    dxr[c] = Num<T>::store(rs * (dxh - Num<T>::load(xr[c]) * rs * mean));
  }
}

// dw partial sums: block (32 columns x 8 row lanes) per (column tile, row group).
template <typename T, typename A>
__global__ void rmsnorm_dw_partial_kernel(const T* dy, const T* x, AnyPtr rstd, int64_t R, int64_t C, A* partial) {
  __shared__ A sh[8][33];
  int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  int64_t c = blockIdx.x * 32 + tx;
  A acc = 0;
  if (c < C)
    for (int64_t r = blockIdx.y * 8 + ty; r < R; r += int64_t(gridDim.y) * 8)
      acc += Num<T>::load(dy[r * C + c]) * Num<T>::load(x[r * C + c]) * rstd.get<A>(r);
  sh[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < C) {
    A s = 0;
    for (int k = 0; k < 8; ++k) s += sh[k][tx];
    partial[blockIdx.y * C + c] = s;
  }
}

template <typename A>
__global__ void rmsnorm_dw_final_kernel(const A* partial, int64_t G, int64_t C, AnyPtr dw) {
  DCF_GRID_LOOP(c, C) {
    A s = 0;
    for (int64_t g = 0; g < G; ++g) s += partial[g * C + c];
    dw.set(c, dw.get<A>(c) + s);
  }
}

// ---- RoPE ---------------------------------------------------------------------------------------

// cos/sin per (t, j) in fp64, as the CPU reference computes the angle.
__global__ void rope_table_kernel(double* tab, int64_t Tn, int64_t half, int64_t pos0, double base, int64_t rot) {
  DCF_GRID_LOOP(i, Tn * half) {
    int64_t t = i / half, j = i % half;
    double ang = double(pos0 + t) * pow(base, -2.0 * double(j) / double(rot));
    double s, c;
    sincos(ang, &s, &c);
    tab[2 * i] = c;
    tab[2 * i + 1] = s;
  }
}

template <typename T>
__global__ void rope_apply_kernel(T* x, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t half, const double* tab,
                                  bool inverse) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, B * Tn * H * half) {
    int64_t j = i % half;
    int64_t h = (i / half) % H;
    int64_t t = (i / (half * H)) % Tn;
    int64_t b = i / (half * H * Tn);
    A c = A(tab[2 * (t * half + j)]), s = A(tab[2 * (t * half + j) + 1]);
    if (inverse) s = -s;
    T* p = x + ((b * Tn + t) * H + h) * D;
    A x1 = Num<T>::load(p[j]), x2 = Num<T>::load(p[j + half]);
    p[j] = Num<T>::store(x1 * c - x2 * s);
    p[j + half] = Num<T>::store(x2 * c + x1 * s);
  }
}

// ---- SwiGLU, GELU -------------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + dexp(-x));
}

template <typename T>
__global__ void swiglu_forward_kernel(const T* g, const T* u, T* out, int64_t n) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) {
    A gv = Num<T>::load(g[i]);
    out[i] = Num<T>::store(gv * sigmoid(gv) * Num<T>::load(u[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* dout, const T* g, const T* u, T* dg, T* du, int64_t n) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) {
    A gv = Num<T>::load(g[i]), uv = Num<T>::load(u[i]), d = Num<T>::load(dout[i]);
    A s = sigmoid(gv);
    du[i] = Num<T>::store(d * gv * s);
    dg[i] = Num<T>::store(d * uv * (s * (A(1) + gv * (A(1) - s))));
  }
}

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)

template <typename T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) {
    A v = Num<T>::load(x[i]);
    A inner = A(kGeluC) * (v + A(0.044715) * v * v * v);
    y[i] = Num<T>::store(A(0.5) * v * (A(1) + dtanh(inner)));
  }
}

template <typename T>
__global__ void gelu_backward_kernel(const T* dy, const T* x, T* dx, int64_t n) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) {
    A v = Num<T>::load(x[i]);
    A inner = A(kGeluC) * (v + A(0.044715) * v * v * v);
    A th = dtanh(inner);
    A dinner = A(kGeluC) * (A(1) + A(3 * 0.044715) * v * v);
    dx[i] = Num<T>::store(Num<T>::load(dy[i]) * (A(0.5) * (A(1) + th) + A(0.5) * v * (A(1) - th * th) * dinner));
  }
}

// ---- DCMHA dynamic weights (one thread per (row, branch)) -----------------------------------------

template <typename T>
__global__ void dynw_forward_kernel(const T* y, const T* z, T* dw, AnyPtr rms, int64_t RC, int64_t I, int64_t N,
                                    double eps) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(rc, RC) {
    const T* yc = y + rc * 2 * I * N;
    const T* zc = z + rc * N;
    T* o = dw + rc * (2 * I + 1) * N;
    for (int64_t i = 0; i < I; ++i) {
      A ss = 0;
      for (int64_t n = 0; n < N; ++n) {
        A v = Num<T>::load(yc[i * N + n]);
        ss += v * v;
      }
      A rr = A(sqrt(double(ss) / double(N) + eps));
      rms.set(rc * I + i, rr);
      for (int64_t n = 0; n < N; ++n) o[i * N + n] = Num<T>::store(Num<T>::load(yc[i * N + n]) / rr);
    }
    for (int64_t n = 0; n < I * N; ++n) o[I * N + n] = yc[I * N + n];
    for (int64_t n = 0; n < N; ++n) o[2 * I * N + n] = Num<T>::store(dtanh(Num<T>::load(zc[n])));
  }
}

template <typename T>
__global__ void dynw_backward_kernel(const T* ddw, const T* dw, AnyPtr rms, T* dy, T* dz, int64_t RC, int64_t I,
                                     int64_t N) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(rc, RC) {
    const T* d = ddw + rc * (2 * I + 1) * N;
    const T* o = dw + rc * (2 * I + 1) * N;
    T* dyc = dy + rc * 2 * I * N;
    T* dzc = dz + rc * N;
    for (int64_t i = 0; i < I; ++i) {
      A rr = rms.get<A>(rc * I + i);
      A dot = 0;
      for (int64_t n = 0; n < N; ++n) dot += Num<T>::load(d[i * N + n]) * Num<T>::load(o[i * N + n]);
      A mean = dot / A(N);
      for (int64_t n = 0; n < N; ++n)
        dyc[i * N + n] = Num<T>::store((Num<T>::load(d[i * N + n]) - Num<T>::load(o[i * N + n]) * mean) / rr);
    }
    for (int64_t n = 0; n < I * N; ++n) dyc[I * N + n] = d[I * N + n];
    for (int64_t n = 0; n < N; ++n) {
      A g = Num<T>::load(o[2 * I * N + n]);
      dzc[n] = Num<T>::store(Num<T>::load(d[2 * I * N + n]) * (A(1) - g * g));
    }
  }
}

// ---- cross-entropy pieces (one block per row) -------------------------------------------------------

template <typename T>
__global__ void ce_row_max_kernel(const T* logits, int64_t V, AnyPtr mx) {
  using A = typename Num<T>::acc;
  const T* l = logits + blockIdx.x * V;
  A m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = max(m, Num<T>::load(l[j]));
  m = block_max(m, A(-INFINITY));
  if (threadIdx.x == 0) mx.set(blockIdx.x, m);
}

template <typename T>
__global__ void ce_row_sumexp_kernel(const T* logits, int64_t V, AnyPtr mx, AnyPtr sum) {
  using A = typename Num<T>::acc;
  const T* l = logits + blockIdx.x * V;
  A m = mx.get<A>(blockIdx.x);
  A s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += dexp(Num<T>::load(l[j]) - m);
  s = block_sum(s);
  if (threadIdx.x == 0) sum.set(blockIdx.x, s);
}

template <typename T>
__global__ void ce_target_logit_kernel(const T* logits, int64_t R, int64_t V, const int32_t* tgt, int64_t off,
                                       AnyPtr out) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(r, R) {
    int64_t j = int64_t(tgt[r]) - off;
    out.set(r, (j >= 0 && j < V) ? Num<T>::load(logits[r * V + j]) : A(0));
  }
}

template <typename T>
__global__ void ce_backward_kernel(const T* logits, int64_t R, int64_t V, const int32_t* tgt, AnyPtr lse, int64_t off,
                                   double scale, T* dlogits) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, R * V) {
    int64_t r = i / V, j = i % V;
    A p = dexp(Num<T>::load(logits[i]) - lse.get<A>(r));
    A hot = (j == int64_t(tgt[r]) - off) ? A(1) : A(0);
    dlogits[i] = Num<T>::store(A(scale) * (p - hot));
  }
}

// ---- AdamW ----------------------------------------------------------------------------------------

// gs scales the gradient first (clipping; x * 1 is exact, so no branch); out, where valid, receives the
// updated param in its own dtype (the working copy of master weights).
template <typename T>
__global__ void adamw_kernel(T* p, AnyPtr g, AnyPtr m, AnyPtr v, AnyPtr out, int64_t n, double lr, double b1,
                             double b2, double eps, double wd, double bc1, double bc2, double gs) {
  using A = typename Num<T>::acc;
  DCF_GRID_LOOP(i, n) {
    A gi = g.get<A>(i) * A(gs);
    A mi = A(b1) * m.get<A>(i) + (A(1) - A(b1)) * gi;
    A vi = A(b2) * v.get<A>(i) + (A(1) - A(b2)) * gi * gi;
    m.set(i, mi);
    v.set(i, vi);
    A mhat = A(mi / bc1), vhat = A(vi / bc2);
    A pi = Num<T>::load(p[i]);
    A upd = mhat / (dsqrt(vhat) + A(eps)) + A(wd) * pi;
    const T np = Num<T>::store(pi - A(lr) * upd);
    p[i] = np;
    if (out.valid()) out.set(i, Num<T>::load(np));
  }
}

void same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  need_cuda(a, op, na);
  need_cuda(b, op, nb);
  DCF_CHECK(a.dtype() == b.dtype(), op, ": ", na, " and ", nb, " dtypes differ: ", a.desc(), " ", b.desc());
}

}  // namespace

// ================================ host wrappers ===================================================

void add_(Tensor& y, const Tensor& x, double alpha) {
  same_dtype(y, x, "add_", "y", "x");
  int64_t n = y.numel();
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(y.dtype(), "add_", {
    add_kernel<T><<<grid_for(n), 256, 0, stream()>>>(y.data<T>(), x.data<T>(), n, alpha);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void scale_(Tensor& y, double s) {
  need_cuda(y, "scale_", "y");
  int64_t n = y.numel();
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(y.dtype(), "scale_", {
    scale_kernel<T><<<grid_for(n), 256, 0, stream()>>>(y.data<T>(), n, s);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

double sum_squares(const Tensor& x) {
  need_cuda(x, "sum_squares", "x");
  int64_t n = x.numel();
  if (n == 0) return 0.0;
  unsigned nb = grid_for(n, 256, 1024);
  Tensor partial = Tensor::empty({int64_t(nb) + 1}, DType::f64, x.device());
  double* pp = partial.data<double>();
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "sum_squares", {
    sum_squares_partial_kernel<T><<<nb, 256, 0, stream()>>>(x.data<T>(), n, pp);
    DCF_CUDA_LAUNCH_CHECK();
  });
  sum_partials_kernel<<<1, 1024, 0, stream()>>>(pp, int(nb), pp + nb);
  DCF_CUDA_LAUNCH_CHECK();
  double out = 0;
  DCF_CUDA_CHECK(cudaMemcpyAsync(&out, pp + nb, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  DCF_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return out;
}

void cast(const Tensor& src, Tensor& dst) {
  DCF_CHECK(src.numel() == dst.numel(), "cast: numel differs ", src.desc(), " -> ", dst.desc());
  AnyPtr s = any_ptr(src, "cast", "src"), d = any_ptr(dst, "cast", "dst");
  int64_t n = src.numel();
  if (n == 0) return;
  cast_kernel<<<grid_for(n), 256, 0, stream()>>>(d, s, n);
  DCF_CUDA_LAUNCH_CHECK();
}

void accumulate_into(DType ty, void* y, DType tx, const void* x, int64_t n) {
  if (n == 0) return;
  AnyPtr xp;
  xp.p = const_cast<void*>(x);
  xp.dt = tx == DType::f32 ? 0 : tx == DType::f64 ? 1 : 2;
  DCF_CUDA_FLOAT_SWITCH(ty, "accumulate", {
    accumulate_kernel<T><<<grid_for(n), 256, 0, stream()>>>(static_cast<T*>(y), xp, n);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out, int64_t off) {
  DCF_NVTX_RANGE("embedding_forward");
  same_dtype(table, out, "embedding_forward", "table", "out");
  need_dtype(ids, DType::i32, "embedding_forward", "ids");
  int64_t V = table.dim(0), E = table.dim(1), R = ids.numel();
  if (R * E == 0) return;
  DCF_CUDA_FLOAT_SWITCH(table.dtype(), "embedding_forward", {
    embedding_forward_kernel<T><<<grid_for(R * E), 256, 0, stream()>>>(table.data<T>(), V, E, ids.data<int32_t>(), R,
                                                                        out.data<T>(), off);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable, int64_t off) {
  DCF_NVTX_RANGE("embedding_backward");
  same_dtype(dtable, dout, "embedding_backward", "dtable", "dout");
  need_dtype(ids, DType::i32, "embedding_backward", "ids");
  int64_t V = dtable.dim(0), E = dtable.dim(1), R = ids.numel();
  DCF_CHECK(dout.numel() == R * E, "embedding_backward: dout ", dout.desc(), " for ", R, " ids of width ", E);
  if (R == 0 || E == 0) return;
  DCF_CHECK(R < (int64_t(1) << 31), "embedding_backward: too many rows");
  Device dev = dtable.device();
  Tensor keys = Tensor::empty({R}, DType::i32, dev), rows_in = Tensor::empty({R}, DType::i32, dev),
         rows = Tensor::empty({R}, DType::i32, dev);
  iota_kernel<<<grid_for(R), 256, 0, stream()>>>(rows_in.data<int32_t>(), R);
  DCF_CUDA_LAUNCH_CHECK();
  size_t temp_bytes = 0;
  DCF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids.data<int32_t>(), keys.data<int32_t>(),
                                                 rows_in.data<int32_t>(), rows.data<int32_t>(), int(R), 0, 32,
                                                 stream()));
  Tensor temp = Tensor::empty({int64_t(temp_bytes / 4 + 1)}, DType::i32, dev);
  DCF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw(), temp_bytes, ids.data<int32_t>(), keys.data<int32_t>(),
                                                 rows_in.data<int32_t>(), rows.data<int32_t>(), int(R), 0, 32,
                                                 stream()));
  int threads = E >= 256 ? 256 : int((E + 31) / 32 * 32);
  DCF_CUDA_FLOAT_SWITCH(dtable.dtype(), "embedding_backward", {
    embedding_backward_runs_kernel<T><<<unsigned(R), threads, 0, stream()>>>(
        dout.data<T>(), keys.data<int32_t>(), rows.data<int32_t>(), R, V, E, dtable.data<T>(), off);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, double eps) {
  DCF_NVTX_RANGE("rmsnorm_forward");
  same_dtype(x, y, "rmsnorm_forward", "x", "y");
  int64_t C = x.dim(-1), R = x.numel() / C;
  AnyPtr wp = any_ptr(w, "rmsnorm_forward", "w"), rp = any_ptr(rstd, "rmsnorm_forward", "rstd");
  if (R == 0) return;
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "rmsnorm_forward", {
    rmsnorm_forward_kernel<T><<<unsigned((R + 7) / 8), 256, 0, stream()>>>(x.data<T>(), wp, y.data<T>(), rp, R, C, eps);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw) {
  DCF_NVTX_RANGE("rmsnorm_backward");
  same_dtype(x, dy, "rmsnorm_backward", "x", "dy");
  same_dtype(x, dx, "rmsnorm_backward", "x", "dx");
  int64_t C = x.dim(-1), R = x.numel() / C;
  AnyPtr wp = any_ptr(w, "rmsnorm_backward", "w"), rp = any_ptr(rstd, "rmsnorm_backward", "rstd");
  if (R == 0) return;
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "rmsnorm_backward", {
    rmsnorm_backward_dx_kernel<T>
        <<<unsigned((R + 7) / 8), 256, 0, stream()>>>(dy.data<T>(), x.data<T>(), wp, rp, dx.data<T>(), R, C);
    DCF_CUDA_LAUNCH_CHECK();
    if (dw && dw->defined()) {
      DCF_CHECK(dw->numel() == C, "rmsnorm_backward: dw ", dw->desc(), " for width ", C);
      AnyPtr dwp = any_ptr(*dw, "rmsnorm_backward", "dw");
      using A = typename Num<T>::acc;
      int64_t G = std::min<int64_t>(256, (R + 63) / 64);
      Tensor partial = Tensor::empty({G, C}, acc_dtype<A>(), x.device());
      rmsnorm_dw_partial_kernel<T, A><<<dim3(unsigned((C + 31) / 32), unsigned(G)), 256, 0, stream()>>>(
          dy.data<T>(), x.data<T>(), rp, R, C, partial.data<A>());
      DCF_CUDA_LAUNCH_CHECK();
      rmsnorm_dw_final_kernel<A><<<grid_for(C), 256, 0, stream()>>>(partial.data<A>(), G, C, dwp);
      DCF_CUDA_LAUNCH_CHECK();
    }
  });
}

static void rope_run(Tensor& x, int64_t pos0, double base, int64_t rot, bool inverse) {
  need_cuda(x, "rope", "x");
  int64_t B = x.dim(0), Tn = x.dim(1), H = x.dim(2), D = x.dim(3), half = rot / 2;
  if (half == 0 || B * Tn * H == 0) return;
  Tensor tab = Tensor::empty({Tn, half, 2}, DType::f64, x.device());
  rope_table_kernel<<<grid_for(Tn * half), 256, 0, stream()>>>(tab.data<double>(), Tn, half, pos0, base, rot);
  DCF_CUDA_LAUNCH_CHECK();
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "rope", {
    rope_apply_kernel<T><<<grid_for(B * Tn * H * half), 256, 0, stream()>>>(x.data<T>(), B, Tn, H, D, half,
                                                                             tab.data<double>(), inverse);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void rope_forward(Tensor& x, int64_t pos0, double base, int64_t rot) {
  DCF_NVTX_RANGE("rope_forward");
  rope_run(x, pos0, base, rot, false);
}
void rope_backward(Tensor& dx, int64_t pos0, double base, int64_t rot) {
  DCF_NVTX_RANGE("rope_backward");
  rope_run(dx, pos0, base, rot, true);
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  same_dtype(gate, up, "swiglu_forward", "gate", "up");
  same_dtype(gate, out, "swiglu_forward", "gate", "out");
  int64_t n = gate.numel();
  DCF_CHECK(up.numel() == n && out.numel() == n, "swiglu_forward shapes");
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(gate.dtype(), "swiglu_forward", {
    swiglu_forward_kernel<T><<<grid_for(n), 256, 0, stream()>>>(gate.data<T>(), up.data<T>(), out.data<T>(), n);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  same_dtype(gate, up, "swiglu_backward", "gate", "up");
  same_dtype(gate, dout, "swiglu_backward", "gate", "dout");
  same_dtype(gate, dgate, "swiglu_backward", "gate", "dgate");
  same_dtype(gate, dup, "swiglu_backward", "gate", "dup");
  int64_t n = gate.numel();
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(gate.dtype(), "swiglu_backward", {
    swiglu_backward_kernel<T><<<grid_for(n), 256, 0, stream()>>>(dout.data<T>(), gate.data<T>(), up.data<T>(),
                                                                  dgate.data<T>(), dup.data<T>(), n);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void gelu_tanh_forward(const Tensor& x, Tensor& y) {
  same_dtype(x, y, "gelu_tanh_forward", "x", "y");
  int64_t n = x.numel();
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "gelu_tanh_forward", {
    gelu_forward_kernel<T><<<grid_for(n), 256, 0, stream()>>>(x.data<T>(), y.data<T>(), n);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void gelu_tanh_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  same_dtype(x, dy, "gelu_tanh_backward", "x", "dy");
  same_dtype(x, dx, "gelu_tanh_backward", "x", "dx");
  int64_t n = x.numel();
  if (n == 0) return;
  DCF_CUDA_FLOAT_SWITCH(x.dtype(), "gelu_tanh_backward", {
    gelu_backward_kernel<T><<<grid_for(n), 256, 0, stream()>>>(dy.data<T>(), x.data<T>(), dx.data<T>(), n);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void dynw_finalize_forward(const Tensor& y, const Tensor& z, Tensor& dw, Tensor& rms, int64_t I, double eps) {
  DCF_NVTX_RANGE("dynw_finalize_forward");
  same_dtype(y, z, "dynw_finalize_forward", "y", "z");
  same_dtype(y, dw, "dynw_finalize_forward", "y", "dw");
  AnyPtr rp = any_ptr(rms, "dynw_finalize_forward", "read_rms");
  int64_t RC = y.dim(0) * y.dim(1), N = y.dim(3);
  if (RC == 0) return;
  DCF_CUDA_FLOAT_SWITCH(y.dtype(), "dynw_finalize_forward", {
    dynw_forward_kernel<T><<<grid_for(RC, 128), 128, 0, stream()>>>(y.data<T>(), z.data<T>(), dw.data<T>(), rp, RC, I,
                                                                     N, eps);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void dynw_finalize_backward(const Tensor& ddw, const Tensor& y, const Tensor& dw, const Tensor& rms, Tensor& dy,
                            Tensor& dz, int64_t I) {
  DCF_NVTX_RANGE("dynw_finalize_backward");
  same_dtype(y, ddw, "dynw_finalize_backward", "y", "ddw");
  same_dtype(y, dw, "dynw_finalize_backward", "y", "dw");
  same_dtype(y, dy, "dynw_finalize_backward", "y", "dy");
  same_dtype(y, dz, "dynw_finalize_backward", "y", "dz");
  AnyPtr rp = any_ptr(rms, "dynw_finalize_backward", "read_rms");
  int64_t RC = y.dim(0) * y.dim(1), N = y.dim(3);
  if (RC == 0) return;
  DCF_CUDA_FLOAT_SWITCH(y.dtype(), "dynw_finalize_backward", {
    dynw_backward_kernel<T><<<grid_for(RC, 128), 128, 0, stream()>>>(ddw.data<T>(), dw.data<T>(), rp, dy.data<T>(),
                                                                      dz.data<T>(), RC, I, N);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void ce_row_max(const Tensor& logits, Tensor& mx) {
  need_cuda(logits, "ce_row_max", "logits");
  AnyPtr mp = any_ptr(mx, "ce_row_max", "row_max");
  int64_t R = logits.dim(0), V = logits.dim(1);
  DCF_CHECK(mx.numel() == R, "ce_row_max: row_max ", mx.desc(), " for ", R, " rows");
  if (R == 0) return;
  DCF_CUDA_FLOAT_SWITCH(logits.dtype(), "ce_row_max", {
    ce_row_max_kernel<T><<<unsigned(R), 256, 0, stream()>>>(logits.data<T>(), V, mp);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void ce_row_sumexp(const Tensor& logits, const Tensor& mx, Tensor& sum) {
  need_cuda(logits, "ce_row_sumexp", "logits");
  AnyPtr mp = any_ptr(mx, "ce_row_sumexp", "row_max"), sp = any_ptr(sum, "ce_row_sumexp", "row_sum");
  int64_t R = logits.dim(0), V = logits.dim(1);
  if (R == 0) return;
  DCF_CUDA_FLOAT_SWITCH(logits.dtype(), "ce_row_sumexp", {
    ce_row_sumexp_kernel<T><<<unsigned(R), 256, 0, stream()>>>(logits.data<T>(), V, mp, sp);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t off, Tensor& tgt) {
  need_cuda(logits, "ce_target_logit", "logits");
  need_dtype(targets, DType::i32, "ce_target_logit", "targets");
  AnyPtr tp = any_ptr(tgt, "ce_target_logit", "tgt");
  int64_t R = logits.dim(0), V = logits.dim(1);
  if (R == 0) return;
  DCF_CUDA_FLOAT_SWITCH(logits.dtype(), "ce_target_logit", {
    ce_target_logit_kernel<T><<<grid_for(R), 256, 0, stream()>>>(logits.data<T>(), R, V, targets.data<int32_t>(), off,
                                                                  tp);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void ce_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t off, double scale,
                 Tensor& dlogits) {
  DCF_NVTX_RANGE("ce_backward");
  same_dtype(logits, dlogits, "ce_backward", "logits", "dlogits");
  need_dtype(targets, DType::i32, "ce_backward", "targets");
  AnyPtr lp = any_ptr(lse, "ce_backward", "lse");
  int64_t R = logits.dim(0), V = logits.dim(1);
  if (R * V == 0) return;
  DCF_CUDA_FLOAT_SWITCH(logits.dtype(), "ce_backward", {
    ce_backward_kernel<T><<<grid_for(R * V), 256, 0, stream()>>>(logits.data<T>(), R, V, targets.data<int32_t>(), lp,
                                                                  off, scale, dlogits.data<T>());
    DCF_CUDA_LAUNCH_CHECK();
  });
}

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWParams& hp, Tensor* copy) {
  DCF_NVTX_RANGE("adamw_update");
  need_cuda(p, "adamw_update", "param");
  AnyPtr gp = any_ptr(g, "adamw_update", "grad"), mp = any_ptr(m, "adamw_update", "m"),
         vp = any_ptr(v, "adamw_update", "v");
  AnyPtr out = copy ? any_ptr(*copy, "adamw_update", "param copy") : AnyPtr{};
  int64_t n = p.numel();
  if (n == 0) return;
  double bc1 = 1.0 - std::pow(hp.beta1, double(hp.step)), bc2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  DCF_CUDA_FLOAT_SWITCH(p.dtype(), "adamw_update", {
    adamw_kernel<T><<<grid_for(n), 256, 0, stream()>>>(p.data<T>(), gp, mp, vp, out, n, hp.lr, hp.beta1, hp.beta2,
                                                        hp.eps, hp.weight_decay, bc1, bc2, hp.grad_scale);
    DCF_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace dcf::cuda
