// DCMHA attention core on the CPU: the "practical first version" of dcmha.md §4.4. Query rows are
// processed in chunks; a chunk materialises only its N x chunk x (allowed keys) scores, and the
// backward recomputes everything from q, k, v and the dynamic weights (no T x S state is kept).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu_kernels.h"

namespace dcf::cpu {
namespace {

constexpr int kC = 4;  // branches: pre-q, pre-k, post-q, post-k

struct ChunkGeom {
  int64_t c0, c1;   // local query rows
  int64_t p0, p1;   // their positions
  int64_t lo, hi;   // key range [lo, hi)
  int64_t Qc() const { return c1 - c0; }
  int64_t Sc() const { return hi - lo; }
};

inline bool allowed(int64_t tpos, int64_t s, int64_t window) {
  return s <= tpos && (window == 0 || tpos - s < window);
}

ChunkGeom chunk_geom(const DcmhaShape& sh, int64_t c0) {
  ChunkGeom g;
  g.c0 = c0;
  g.c1 = std::min(sh.T, c0 + sh.chunk);
  g.p0 = sh.q_pos0 + g.c0;
  g.p1 = sh.q_pos0 + g.c1;
  g.lo = sh.window ? std::max<int64_t>(0, g.p0 - sh.window + 1) : 0;
  g.hi = std::min(sh.S, g.p1);
  return g;
}

// Compose of one cell: X[n] (stride xs) -> Y[m] (stride ys). wq/wk: [a(I x N) | b(I x N) | g(N)].
template <typename T>
inline void compose_cell(const T* X, int64_t xs, T* Y, int64_t ys, int64_t N, int64_t I, const T* wq, const T* wk,
                         T* hbuf) {
  T* hq = hbuf;
  T* hk = hbuf + I;
  for (int64_t r = 0; r < I; ++r) {
    T sq = 0, sk = 0;
    for (int64_t n = 0; n < N; ++n) {
      T x = X[n * xs];
      sq += wq[r * N + n] * x;
      sk += wk[r * N + n] * x;
    }
    hq[r] = sq;
    hk[r] = sk;
  }
  const T* gq = wq + 2 * I * N;
  const T* gk = wk + 2 * I * N;
  for (int64_t m = 0; m < N; ++m) {
    T y = X[m * xs] * (T(1) + gq[m] + gk[m]);
    for (int64_t r = 0; r < I; ++r) y += wq[(I + r) * N + m] * hq[r] + wk[(I + r) * N + m] * hk[r];
    Y[m * ys] = y;
  }
}

// Backward of one cell: given X and dY, write dX and accumulate the dynamic-weight grads dwq, dwk.
template <typename T>
inline void compose_cell_backward(const T* X, int64_t xs, const T* dY, int64_t dys, T* dX, int64_t dxs, int64_t N,
                                  int64_t I, const T* wq, const T* wk, T* dwq, T* dwk, T* hbuf) {
  T* hq = hbuf;
  T* hk = hbuf + I;
  T* eq = hbuf + 2 * I;
  T* ek = hbuf + 3 * I;
  for (int64_t r = 0; r < I; ++r) {
    T sq = 0, sk = 0, tq = 0, tk = 0;
    for (int64_t n = 0; n < N; ++n) {
      T x = X[n * xs], dy = dY[n * dys];
      sq += wq[r * N + n] * x;
      sk += wk[r * N + n] * x;
      tq += wq[(I + r) * N + n] * dy;
      tk += wk[(I + r) * N + n] * dy;
    }
    hq[r] = sq;
    hk[r] = sk;
    eq[r] = tq;
    ek[r] = tk;
  }
  const T* gq = wq + 2 * I * N;
  const T* gk = wk + 2 * I * N;
  for (int64_t n = 0; n < N; ++n) {
    T x = X[n * xs], dy = dY[n * dys];
    T dx = dy * (T(1) + gq[n] + gk[n]);
    for (int64_t r = 0; r < I; ++r) {
      dx += wq[r * N + n] * eq[r] + wk[r * N + n] * ek[r];
      dwq[r * N + n] += x * eq[r];
      dwk[r * N + n] += x * ek[r];
      dwq[(I + r) * N + n] += hq[r] * dy;
      dwk[(I + r) * N + n] += hk[r] * dy;
    }
    dwq[2 * I * N + n] += x * dy;
    dwk[2 * I * N + n] += x * dy;
    dX[n * dxs] = dx;
  }
}

// fn(tpos, s, off) for every allowed cell of a chunk: query position tpos, key s, offset off in a head's
// [Qc][Sc] block.
template <class Fn>
void for_allowed_cells(const DcmhaShape& sh, const ChunkGeom& g, Fn&& fn) {
  const int64_t Qc = g.Qc(), Sc = g.Sc();
  for (int64_t i = 0; i < Qc; ++i) {
    const int64_t tpos = g.p0 + i;
    for (int64_t j = 0; j < Sc; ++j)
      if (allowed(tpos, g.lo + j, sh.window)) fn(tpos, g.lo + j, i * Sc + j);
  }
}

// Scratch for one chunk; all score buffers are [N][Qc][Sc].
template <typename T>
struct ChunkBuffers {
  std::vector<T> A, P, P2, dP2, dP;
  void resize(size_t n) {
    A.assign(n, T(0));
    P.assign(n, T(0));
    P2.assign(n, T(0));
  }
};

// Recomputes A (logits), P (softmax of pre-composed, masked logits) and P2 (post-composed P) for one chunk.
template <typename T>
void chunk_forward(const DcmhaShape& sh, int64_t b, const ChunkGeom& g, const T* q, const T* k, const T* dw,
                   ChunkBuffers<T>& buf) {
  const int64_t N = sh.N, D = sh.D, I = sh.I, Qc = g.Qc(), Sc = g.Sc(), W = 2 * I + 1;
  const int64_t cell = Qc * Sc;
  buf.resize(size_t(N * cell));
  T* A = buf.A.data();
  T* Z = buf.P.data();  // Z is computed in place of P
  for (int64_t n = 0; n < N; ++n)
    gemm<T>(false, true, Qc, Sc, D, T(1), q + ((b * sh.T + g.c0) * N + n) * D, N * D, k + ((b * sh.S + g.lo) * N + n) * D,
            N * D, T(0), A + n * cell, Sc);
  T hbuf[64];
  const T* dwb = sh.compose ? dw + b * sh.S * kC * W * N : nullptr;
  // Y = Compose(X) on every allowed cell, with the query-side weights of branch qbr and the key-side ones
  // of branch qbr + 1 (pre: 0, 1; post: 2, 3); a copy where Compose is off.
  auto compose_cells = [&](const T* X, T* Y, int64_t qbr) {
    for_allowed_cells(sh, g, [&](int64_t tpos, int64_t s, int64_t off) {
      if (sh.compose)
        compose_cell(X + off, cell, Y + off, cell, N, I, dwb + (tpos * kC + qbr) * W * N,
                     dwb + (s * kC + qbr + 1) * W * N, hbuf);
      else
        for (int64_t n = 0; n < N; ++n) Y[n * cell + off] = X[n * cell + off];
    });
  };
  compose_cells(A, Z, 0);
  // Softmax per head and row over allowed keys; masked cells get exactly 0.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < Qc; ++i) {
      int64_t tpos = g.p0 + i;
      T* z = Z + n * cell + i * Sc;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < Sc; ++j)
        if (allowed(tpos, g.lo + j, sh.window)) mx = std::max(mx, z[j]);
      T sum = 0;
      for (int64_t j = 0; j < Sc; ++j) {
        if (allowed(tpos, g.lo + j, sh.window)) {
          z[j] = std::exp(z[j] - mx);
          sum += z[j];
        } else {
          z[j] = T(0);
        }
      }
      T inv = T(1) / sum;
      for (int64_t j = 0; j < Sc; ++j) z[j] *= inv;
    }
  compose_cells(Z, buf.P2.data(), 2);
}

void check_shape(const DcmhaShape& sh) {
  DCF_CHECK(sh.B > 0 && sh.T > 0 && sh.S > 0 && sh.N > 0 && sh.D > 0 && sh.chunk > 0, "dcmha shape");
  DCF_CHECK(sh.I >= 1 && sh.I <= 16, "dcmha rank I=", sh.I);
  DCF_CHECK(sh.q_pos0 >= 0 && sh.q_pos0 + sh.T <= sh.S, "dcmha query rows outside the sequence");
}

}  // namespace

template <typename T>
void dcmha_forward(const DcmhaShape& sh, const T* q, const T* k, const T* v, const T* dw, T* o) {
  check_shape(sh);
  const int64_t N = sh.N, D = sh.D;
  ChunkBuffers<T> buf;
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t c0 = 0; c0 < sh.T; c0 += sh.chunk) {
      ChunkGeom g = chunk_geom(sh, c0);
      chunk_forward(sh, b, g, q, k, dw, buf);
      const int64_t cell = g.Qc() * g.Sc();
      for (int64_t n = 0; n < N; ++n)
        gemm<T>(false, false, g.Qc(), D, g.Sc(), T(1), buf.P2.data() + n * cell, g.Sc(),
                v + ((b * sh.S + g.lo) * N + n) * D, N * D, T(0), o + ((b * sh.T + g.c0) * N + n) * D, N * D);
    }
}

template <typename T>
void dcmha_backward(const DcmhaShape& sh, const T* q, const T* k, const T* v, const T* dw, const T* dout, T* dq, T* dk,
                    T* dv, T* ddw) {
  check_shape(sh);
  const int64_t N = sh.N, D = sh.D, I = sh.I, W = 2 * I + 1;
  ChunkBuffers<T> buf;
  std::vector<T> dP2, dP, dA;
  T hbuf[64];
  for (int64_t b = 0; b < sh.B; ++b) {
    const T* dwb = sh.compose ? dw + b * sh.S * kC * W * N : nullptr;
    T* ddwb = sh.compose ? ddw + b * sh.S * kC * W * N : nullptr;
    for (int64_t c0 = 0; c0 < sh.T; c0 += sh.chunk) {
      ChunkGeom g = chunk_geom(sh, c0);
      chunk_forward(sh, b, g, q, k, dw, buf);
      const int64_t Qc = g.Qc(), Sc = g.Sc(), cell = Qc * Sc;
      dP2.assign(size_t(N * cell), T(0));
      dP.assign(size_t(N * cell), T(0));
      dA.assign(size_t(N * cell), T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T* dOn = dout + ((b * sh.T + g.c0) * N + n) * D;
        const T* Vn = v + ((b * sh.S + g.lo) * N + n) * D;
        gemm<T>(false, true, Qc, Sc, D, T(1), dOn, N * D, Vn, N * D, T(0), dP2.data() + n * cell, Sc);
        gemm<T>(true, false, Sc, D, Qc, T(1), buf.P2.data() + n * cell, Sc, dOn, N * D, T(1),
                dv + ((b * sh.S + g.lo) * N + n) * D, N * D);
      }
      // dX of one Compose (input X, output gradient dY; query-side weights of branch qbr, key-side ones of
      // qbr + 1) on every allowed cell, its dynamic-weight gradients added to ddw; a copy where Compose is off.
      auto compose_cells_backward = [&](const T* X, const T* dY, T* dX, int64_t qbr) {
        for_allowed_cells(sh, g, [&](int64_t tpos, int64_t s, int64_t off) {
          if (sh.compose)
            compose_cell_backward(X + off, cell, dY + off, cell, dX + off, cell, N, I,
                                  dwb + (tpos * kC + qbr) * W * N, dwb + (s * kC + qbr + 1) * W * N,
                                  ddwb + (tpos * kC + qbr) * W * N, ddwb + (s * kC + qbr + 1) * W * N, hbuf);
          else
            for (int64_t n = 0; n < N; ++n) dX[n * cell + off] = dY[n * cell + off];
        });
      };
      // Post-Compose backward (X = P, dY = dP') -> dP and the post dynamic-weight grads.
      compose_cells_backward(buf.P.data(), dP2.data(), dP.data(), 2);
      // Softmax backward with its own per-head Delta (dcmha.md §3.2): dZ = P (dP - sum_s P dP).
      T* dZ = dP2.data();  // reuse
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < Qc; ++i) {
          const T* p = buf.P.data() + n * cell + i * Sc;
          const T* dp = dP.data() + n * cell + i * Sc;
          T delta = 0;
          for (int64_t j = 0; j < Sc; ++j) delta += p[j] * dp[j];
          T* dz = dZ + n * cell + i * Sc;
          for (int64_t j = 0; j < Sc; ++j) dz[j] = p[j] * (dp[j] - delta);
        }
      // Pre-Compose backward (X = A, dY = dZ) -> dA and the pre dynamic-weight grads.
      compose_cells_backward(buf.A.data(), dZ, dA.data(), 0);
      for (int64_t n = 0; n < N; ++n) {
        gemm<T>(false, false, Qc, D, Sc, T(1), dA.data() + n * cell, Sc, k + ((b * sh.S + g.lo) * N + n) * D, N * D,
                T(1), dq + ((b * sh.T + g.c0) * N + n) * D, N * D);
        gemm<T>(true, false, Sc, D, Qc, T(1), dA.data() + n * cell, Sc, q + ((b * sh.T + g.c0) * N + n) * D, N * D,
                T(1), dk + ((b * sh.S + g.lo) * N + n) * D, N * D);
      }
    }
  }
}

template void dcmha_forward<float>(const DcmhaShape&, const float*, const float*, const float*, const float*, float*);
template void dcmha_forward<double>(const DcmhaShape&, const double*, const double*, const double*, const double*,
                                    double*);
template void dcmha_backward<float>(const DcmhaShape&, const float*, const float*, const float*, const float*,
                                    const float*, float*, float*, float*, float*);
template void dcmha_backward<double>(const DcmhaShape&, const double*, const double*, const double*, const double*,
                                     const double*, double*, double*, double*, double*);

}  // namespace dcf::cpu
