// Elementwise CPU kernels: embedding, RMSNorm, RoPE, SwiGLU, GELU, dynamic-weight finishing,
// cross-entropy pieces and AdamW.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu_kernels.h"

namespace dcf::cpu {

template <typename T>
void embedding_forward(const T* table, int64_t V, int64_t E, const int32_t* ids, int64_t R, T* out, int64_t off) {
  for (int64_t r = 0; r < R; ++r) {
    int64_t id = ids[r] - off;
    T* o = out + r * E;
    if (id >= 0 && id < V) {
      const T* row = table + id * E;
      for (int64_t e = 0; e < E; ++e) o[e] = row[e];
    } else {
      for (int64_t e = 0; e < E; ++e) o[e] = T(0);
    }
  }
}

template <typename T>
void embedding_backward(const T* dout, int64_t V, int64_t E, const int32_t* ids, int64_t R, T* dtable, int64_t off) {
  for (int64_t r = 0; r < R; ++r) {
    int64_t id = ids[r] - off;
    if (id < 0 || id >= V) continue;
    T* row = dtable + id * E;
    const T* d = dout + r * E;
    for (int64_t e = 0; e < E; ++e) row[e] += d[e];
  }
}

template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int64_t R, int64_t C, T eps) {
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = x + r * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
    T rs = T(1.0 / std::sqrt(ss / C + double(eps)));
    rstd[r] = rs;
    T* yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * rs * (w ? w[c] : T(1));
  }
}

template <typename T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = x + r * C;
    const T* dyr = dy + r * C;
    T rs = rstd[r];
    // y = xhat * w, xhat = x * rs;  dxhat = dy * w;  dx = rs * (dxhat - xhat * mean(dxhat * xhat))
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      T dxh = dyr[c] * (w ? w[c] : T(1));
      dot += double(dxh) * (xr[c] * rs);
      if (dw) dw[c] += dyr[c] * xr[c] * rs;
    }
    T mean = T(dot / C);
    T* dxr = dx + r * C;
    for (int64_t c = 0; c < C; ++c) {
      T dxh = dyr[c] * (w ? w[c] : T(1));
      dxr[c] = rs * (dxh - xr[c] * rs * mean);
    }
  }
}

template <typename T>
void rope_apply(T* x, int64_t B, int64_t Tn, int64_t H, int64_t D, int64_t pos0, double base, int64_t rot,
                bool inverse) {
  int64_t half = rot / 2;
  for (int64_t t = 0; t < Tn; ++t) {
    double pos = double(pos0 + t);
    for (int64_t j = 0; j < half; ++j) {
      double ang = pos * std::pow(base, -2.0 * double(j) / double(rot));
      T c = T(std::cos(ang)), s = T(std::sin(ang));
      if (inverse) s = -s;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h) {
          T* p = x + ((b * Tn + t) * H + h) * D;
          T x1 = p[j], x2 = p[j + half];
          p[j] = x1 * c - x2 * s;
          p[j + half] = x2 * c + x1 * s;
        }
    }
  }
}

template <typename T>
static inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
void swiglu_forward(const T* g, const T* u, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] * sigmoid(g[i]) * u[i];
}

template <typename T>
void swiglu_backward(const T* dout, const T* g, const T* u, T* dg, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T s = sigmoid(g[i]);
    T silu = g[i] * s;
    du[i] = dout[i] * silu;
    dg[i] = dout[i] * u[i] * (s * (T(1) + g[i] * (T(1) - s)));
  }
}

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)

template <typename T>
void gelu_tanh_forward(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    T inner = T(kGeluC) * (v + T(0.044715) * v * v * v);
    y[i] = T(0.5) * v * (T(1) + std::tanh(inner));
  }
}

template <typename T>
void gelu_tanh_backward(const T* dy, const T* x, T* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i];
    T inner = T(kGeluC) * (v + T(0.044715) * v * v * v);
    T th = std::tanh(inner);
    T dinner = T(kGeluC) * (T(1) + T(3 * 0.044715) * v * v);
    dx[i] = dy[i] * (T(0.5) * (T(1) + th) + T(0.5) * v * (T(1) - th * th) * dinner);
  }
}

// dw row layout per (token, branch): [a (I x N) | b (I x N) | g (N)]; y: [reads (I x N) | writes (I x N)].
template <typename T>
void dynw_finalize_forward(const T* y, const T* z, T* dw, T* rms, int64_t R, int64_t C, int64_t I, int64_t N, T eps) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const T* yc = y + (r * C + c) * 2 * I * N;
      const T* zc = z + (r * C + c) * N;
      T* o = dw + (r * C + c) * (2 * I + 1) * N;
      for (int64_t i = 0; i < I; ++i) {
        double ss = 0;
        for (int64_t n = 0; n < N; ++n) ss += double(yc[i * N + n]) * yc[i * N + n];
        T rr = T(std::sqrt(ss / N + double(eps)));
        rms[(r * C + c) * I + i] = rr;
        for (int64_t n = 0; n < N; ++n) o[i * N + n] = yc[i * N + n] / rr;
      }
      for (int64_t n = 0; n < I * N; ++n) o[I * N + n] = yc[I * N + n];
      for (int64_t n = 0; n < N; ++n) o[2 * I * N + n] = std::tanh(zc[n]);
    }
}

template <typename T>
void dynw_finalize_backward(const T* ddw, const T* y, const T* dw, const T* rms, T* dy, T* dz, int64_t R, int64_t C,
                            int64_t I, int64_t N) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const T* d = ddw + (r * C + c) * (2 * I + 1) * N;
      const T* o = dw + (r * C + c) * (2 * I + 1) * N;
      T* dyc = dy + (r * C + c) * 2 * I * N;
      T* dzc = dz + (r * C + c) * N;
      for (int64_t i = 0; i < I; ++i) {
        T rr = rms[(r * C + c) * I + i];
        double dot = 0;
        for (int64_t n = 0; n < N; ++n) dot += double(d[i * N + n]) * o[i * N + n];
        T mean = T(dot / N);
        for (int64_t n = 0; n < N; ++n) dyc[i * N + n] = (d[i * N + n] - o[i * N + n] * mean) / rr;
      }
      for (int64_t n = 0; n < I * N; ++n) dyc[I * N + n] = d[I * N + n];
      for (int64_t n = 0; n < N; ++n) {
        T g = o[2 * I * N + n];
        dzc[n] = d[2 * I * N + n] * (T(1) - g * g);
      }
    }
  (void)y;
}

template <typename T>
void ce_row_max(const T* logits, int64_t R, int64_t V, T* mx) {
  for (int64_t r = 0; r < R; ++r) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < V; ++j) m = std::max(m, logits[r * V + j]);
    mx[r] = m;
  }
}

template <typename T>
void ce_row_sumexp(const T* logits, int64_t R, int64_t V, const T* mx, T* sum) {
  for (int64_t r = 0; r < R; ++r) {
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(double(logits[r * V + j] - mx[r]));
    sum[r] = T(s);
  }
}

template <typename T>
void ce_target_logit(const T* logits, int64_t R, int64_t V, const int32_t* tgt, int64_t off, T* out) {
  for (int64_t r = 0; r < R; ++r) {
    int64_t j = tgt[r] - off;
    out[r] = (j >= 0 && j < V) ? logits[r * V + j] : T(0);
  }
}

template <typename T>
void ce_backward(const T* logits, int64_t R, int64_t V, const int32_t* tgt, const T* lse, int64_t off, T scale,
                 T* dlogits) {
  for (int64_t r = 0; r < R; ++r) {
    int64_t jt = tgt[r] - off;
    for (int64_t j = 0; j < V; ++j) {
      T p = std::exp(logits[r * V + j] - lse[r]);
      dlogits[r * V + j] = scale * (p - (j == jt ? T(1) : T(0)));
    }
  }
}

template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWParams& hp) {
  const double bc1 = 1.0 - std::pow(hp.beta1, double(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  const T b1 = T(hp.beta1), b2 = T(hp.beta2);
  const T gs = T(hp.grad_scale);
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i] * gs;  // (exact where gs is 1)
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    T mhat = T(m[i] / bc1), vhat = T(v[i] / bc2);
    T upd = mhat / (std::sqrt(vhat) + T(hp.eps)) + T(hp.weight_decay) * p[i];
    p[i] -= T(hp.lr) * upd;
  }
}

#define DCF_INSTANTIATE(T)                                                                                     \
  template void embedding_forward<T>(const T*, int64_t, int64_t, const int32_t*, int64_t, T*, int64_t);        \
  template void embedding_backward<T>(const T*, int64_t, int64_t, const int32_t*, int64_t, T*, int64_t);       \
  template void rmsnorm_forward<T>(const T*, const T*, T*, T*, int64_t, int64_t, T);                           \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t);         \
  template void rope_apply<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, double, int64_t, bool);         \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t);                                            \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);                             \
  template void gelu_tanh_forward<T>(const T*, T*, int64_t);                                                   \
  template void gelu_tanh_backward<T>(const T*, const T*, T*, int64_t);                                        \
  template void dynw_finalize_forward<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int64_t, T);   \
  template void dynw_finalize_backward<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t,     \
                                          int64_t, int64_t);                                                   \
  template void ce_row_max<T>(const T*, int64_t, int64_t, T*);                                                 \
  template void ce_row_sumexp<T>(const T*, int64_t, int64_t, const T*, T*);                                    \
  template void ce_target_logit<T>(const T*, int64_t, int64_t, const int32_t*, int64_t, T*);                   \
  template void ce_backward<T>(const T*, int64_t, int64_t, const int32_t*, const T*, int64_t, T, T*);          \
  template void adamw_update<T>(T*, const T*, T*, T*, int64_t, const AdamWParams&);

DCF_INSTANTIATE(float)
DCF_INSTANTIATE(double)

}  // namespace dcf::cpu
