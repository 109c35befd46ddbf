// Device dispatch for the op set: CPU tensors go to the templated references in cpu_kernels.h
// (float or double), CUDA tensors to the twins in cuda_ops.h.
#include <cmath>

#include "kernels/cpu_kernels.h"
#include "kernels/ops.h"
#include "kernels/profile.h"
#ifdef DCF_WITH_CUDA
#include "kernels/cuda_ops.h"
#endif

namespace dcf {
namespace {

bool on_cuda(const Tensor& t) { return t.defined() && t.device().is_cuda(); }

[[noreturn, maybe_unused]] void no_cuda(const char* op) {
  throw DcfError(std::string(op) + ": CUDA tensor given but this build has no CUDA backend");
}

void require_float(const Tensor& t, const char* op) {
  DCF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, op, ": unsupported dtype ", t.desc());
}

template <typename T>
const T* opt(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

#ifdef DCF_WITH_CUDA
#define DCF_DISPATCH_CUDA(x, op, ...) \
  if (on_cuda(x)) return cuda::op(__VA_ARGS__)
#else
#define DCF_DISPATCH_CUDA(x, op, ...) \
  if (on_cuda(x)) no_cuda(#op)
#endif

// Calls body with T = float or double according to the tensor's dtype.
#define DCF_FLOAT_SWITCH(x, op, ...)                  \
  do {                                                \
    require_float(x, op);                             \
    if ((x).dtype() == DType::f32) {                  \
      using T = float;                                \
      __VA_ARGS__;                                    \
    } else {                                          \
      using T = double;                               \
      __VA_ARGS__;                                    \
    }                                                 \
  } while (0)

void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta) {
  DCF_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "matmul wants 2-D views: ", a.desc(), b.desc(), c.desc());
  int64_t M = ta ? a.dim(1) : a.dim(0), K = ta ? a.dim(0) : a.dim(1);
  int64_t Kb = tb ? b.dim(1) : b.dim(0), N = tb ? b.dim(0) : b.dim(1);
  DCF_CHECK(K == Kb && c.dim(0) == M && c.dim(1) == N, "matmul shapes ", a.desc(), ta ? "^T" : "", " x ", b.desc(),
            tb ? "^T" : "", " -> ", c.desc());
  gemm_ex(ta, tb, M, N, K, alpha, a, 0, a.dim(1), b, 0, b.dim(1), beta, c, 0, c.dim(1));
}

void gemm_ex(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& a, int64_t a_off,
             int64_t lda, const Tensor& b, int64_t b_off, int64_t ldb, double beta, Tensor& c, int64_t c_off,
             int64_t ldc) {
  DCF_RANGE("gemm");
  DCF_CHECK(a.dtype() == b.dtype() && a.dtype() == c.dtype(), "gemm dtypes ", a.desc(), b.desc(), c.desc());
  // Bounds: the last element each operand touches must lie inside its tensor.
  auto last = [](bool t, int64_t rows, int64_t cols, int64_t ld) { return t ? (cols - 1) * ld + rows : (rows - 1) * ld + cols; };
  if (M > 0 && N > 0 && K > 0) {
    DCF_CHECK(a_off + last(ta, M, K, lda) <= a.numel(), "gemm A out of bounds ", a.desc());
    DCF_CHECK(b_off + last(tb, K, N, ldb) <= b.numel(), "gemm B out of bounds ", b.desc());
  }
  if (M > 0 && N > 0) DCF_CHECK(c_off + last(false, M, N, ldc) <= c.numel(), "gemm C out of bounds ", c.desc());
  DCF_DISPATCH_CUDA(a, gemm_ex, ta, tb, M, N, K, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc);
  DCF_FLOAT_SWITCH(a, "gemm",
                   cpu::gemm<T>(ta, tb, M, N, K, T(alpha), a.data<T>() + a_off, lda, b.data<T>() + b_off, ldb, T(beta),
                                c.data<T>() + c_off, ldc));
}

void cast(const Tensor& src, Tensor& dst) {
  DCF_RANGE("cast");
  DCF_CHECK(src.numel() == dst.numel() && src.device() == dst.device(), "cast ", src.desc(), " -> ", dst.desc());
  if (src.dtype() == dst.dtype()) {
    dst.copy_from(src);
    return;
  }
  DCF_DISPATCH_CUDA(src, cast, src, dst);
  const int64_t n = src.numel();
  if (src.dtype() == DType::f32 && dst.dtype() == DType::f64) {
    for (int64_t i = 0; i < n; ++i) dst.data<double>()[i] = src.data<float>()[i];
  } else if (src.dtype() == DType::f64 && dst.dtype() == DType::f32) {
    for (int64_t i = 0; i < n; ++i) dst.data<float>()[i] = float(src.data<double>()[i]);
  } else {
    throw DcfError(std::string("cast on the CPU: ") + dtype_name(src.dtype()) + " -> " + dtype_name(dst.dtype()) +
                   " not supported");
  }
}

void add_(Tensor& y, const Tensor& x, double alpha) {
  DCF_RANGE("add_");
  DCF_CHECK(y.numel() == x.numel() && y.dtype() == x.dtype(), "add_ ", y.desc(), " += ", x.desc());
  DCF_DISPATCH_CUDA(y, add_, y, x, alpha);
  DCF_FLOAT_SWITCH(y, "add_", {
    T* yp = y.data<T>();
    const T* xp = x.data<T>();
    for (int64_t i = 0, n = y.numel(); i < n; ++i) yp[i] += T(alpha) * xp[i];
  });
}

void scale_(Tensor& y, double s) {
  DCF_RANGE("scale_");
  DCF_DISPATCH_CUDA(y, scale_, y, s);
  DCF_FLOAT_SWITCH(y, "scale_", {
    T* yp = y.data<T>();
    for (int64_t i = 0, n = y.numel(); i < n; ++i) yp[i] *= T(s);
  });
}

double sum_squares(const Tensor& x) {
  DCF_RANGE("sum_squares");
  DCF_DISPATCH_CUDA(x, sum_squares, x);
  double acc = 0;
  DCF_FLOAT_SWITCH(x, "sum_squares", {
    const T* p = x.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) acc += double(p[i]) * double(p[i]);
  });
  return acc;
}

void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out, int64_t off) {
  DCF_RANGE("embedding_forward");
  DCF_CHECK(ids.dtype() == DType::i32 && out.numel() == ids.numel() * table.dim(1), "embedding shapes");
  DCF_DISPATCH_CUDA(table, embedding_forward, table, ids, out, off);
  DCF_FLOAT_SWITCH(table, "embedding_forward",
                   cpu::embedding_forward<T>(table.data<T>(), table.dim(0), table.dim(1), ids.data<int32_t>(),
                                             ids.numel(), out.data<T>(), off));
}

void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable, int64_t off) {
  DCF_RANGE("embedding_backward");
  DCF_DISPATCH_CUDA(dtable, embedding_backward, dout, ids, dtable, off);
  DCF_FLOAT_SWITCH(dtable, "embedding_backward",
                   cpu::embedding_backward<T>(dout.data<T>(), dtable.dim(0), dtable.dim(1), ids.data<int32_t>(),
                                              ids.numel(), dtable.data<T>(), off));
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, Tensor& y, Tensor& rstd, double eps) {
  DCF_RANGE("rmsnorm_forward");
  int64_t C = x.dim(-1), R = x.numel() / C;
  DCF_CHECK(rstd.numel() == R && y.numel() == x.numel() && (!w.defined() || w.numel() == C), "rmsnorm shapes ",
            x.desc());
  DCF_DISPATCH_CUDA(x, rmsnorm_forward, x, w, y, rstd, eps);
  DCF_FLOAT_SWITCH(x, "rmsnorm_forward",
                   cpu::rmsnorm_forward<T>(x.data<T>(), opt<T>(w), y.data<T>(), rstd.data<T>(), R, C, T(eps)));
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw) {
  DCF_RANGE("rmsnorm_backward");
  int64_t C = x.dim(-1), R = x.numel() / C;
  DCF_DISPATCH_CUDA(x, rmsnorm_backward, dy, x, w, rstd, dx, dw);
  DCF_FLOAT_SWITCH(x, "rmsnorm_backward",
                   cpu::rmsnorm_backward<T>(dy.data<T>(), x.data<T>(), opt<T>(w), rstd.data<T>(), dx.data<T>(),
                                            dw ? dw->data<T>() : nullptr, R, C));
}

void rope_forward(Tensor& x, int64_t pos0, double base, int64_t rot) {
  DCF_RANGE("rope_forward");
  DCF_CHECK(x.ndim() == 4 && rot % 2 == 0 && rot <= x.dim(3), "rope on ", x.desc(), " rot ", rot);
  DCF_DISPATCH_CUDA(x, rope_forward, x, pos0, base, rot);
  DCF_FLOAT_SWITCH(x, "rope_forward",
                   cpu::rope_apply<T>(x.data<T>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), pos0, base, rot, false));
}

void rope_backward(Tensor& dx, int64_t pos0, double base, int64_t rot) {
  DCF_RANGE("rope_backward");
  DCF_CHECK(dx.ndim() == 4 && rot % 2 == 0 && rot <= dx.dim(3), "rope on ", dx.desc(), " rot ", rot);
  DCF_DISPATCH_CUDA(dx, rope_backward, dx, pos0, base, rot);
  DCF_FLOAT_SWITCH(dx, "rope_backward",
                   cpu::rope_apply<T>(dx.data<T>(), dx.dim(0), dx.dim(1), dx.dim(2), dx.dim(3), pos0, base, rot, true));
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  DCF_RANGE("swiglu_forward");
  DCF_DISPATCH_CUDA(gate, swiglu_forward, gate, up, out);
  DCF_FLOAT_SWITCH(gate, "swiglu_forward",
                   cpu::swiglu_forward<T>(gate.data<T>(), up.data<T>(), out.data<T>(), gate.numel()));
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  DCF_RANGE("swiglu_backward");
  DCF_DISPATCH_CUDA(gate, swiglu_backward, dout, gate, up, dgate, dup);
  DCF_FLOAT_SWITCH(gate, "swiglu_backward",
                   cpu::swiglu_backward<T>(dout.data<T>(), gate.data<T>(), up.data<T>(), dgate.data<T>(),
                                           dup.data<T>(), gate.numel()));
}

void gelu_tanh_forward(const Tensor& x, Tensor& y) {
  DCF_RANGE("gelu_tanh_forward");
  DCF_DISPATCH_CUDA(x, gelu_tanh_forward, x, y);
  DCF_FLOAT_SWITCH(x, "gelu_tanh_forward", cpu::gelu_tanh_forward<T>(x.data<T>(), y.data<T>(), x.numel()));
}

void gelu_tanh_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  DCF_RANGE("gelu_tanh_backward");
  DCF_DISPATCH_CUDA(x, gelu_tanh_backward, dy, x, dx);
  DCF_FLOAT_SWITCH(x, "gelu_tanh_backward",
                   cpu::gelu_tanh_backward<T>(dy.data<T>(), x.data<T>(), dx.data<T>(), x.numel()));
}

void dynw_finalize_forward(const Tensor& y, const Tensor& z, Tensor& dw, Tensor& rms, int64_t I, double eps) {
  DCF_RANGE("dynw_finalize_forward");
  DCF_CHECK(y.ndim() == 4 && y.dim(2) == 2 * I, "dynw y ", y.desc());
  int64_t R = y.dim(0), C = y.dim(1), N = y.dim(3);
  DCF_CHECK(z.numel() == R * C * N && dw.numel() == R * C * (2 * I + 1) * N && rms.numel() == R * C * I, "dynw shapes");
  DCF_DISPATCH_CUDA(y, dynw_finalize_forward, y, z, dw, rms, I, eps);
  DCF_FLOAT_SWITCH(y, "dynw_finalize_forward",
                   cpu::dynw_finalize_forward<T>(y.data<T>(), z.data<T>(), dw.data<T>(), rms.data<T>(), R, C, I, N,
                                                 T(eps)));
}

void dynw_finalize_backward(const Tensor& ddw, const Tensor& y, const Tensor& dw, const Tensor& rms, Tensor& dy,
                            Tensor& dz, int64_t I) {
  DCF_RANGE("dynw_finalize_backward");
  int64_t R = y.dim(0), C = y.dim(1), N = y.dim(3);
  DCF_DISPATCH_CUDA(y, dynw_finalize_backward, ddw, y, dw, rms, dy, dz, I);
  DCF_FLOAT_SWITCH(y, "dynw_finalize_backward",
                   cpu::dynw_finalize_backward<T>(ddw.data<T>(), y.data<T>(), dw.data<T>(), rms.data<T>(),
                                                  dy.data<T>(), dz.data<T>(), R, C, I, N));
}

static void check_dcmha(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw) {
  DCF_CHECK(q.numel() == s.B * s.T * s.N * s.D, "dcmha q ", q.desc());
  DCF_CHECK(k.numel() == s.B * s.S * s.N * s.D && v.numel() == k.numel(), "dcmha k/v ", k.desc(), v.desc());
  DCF_CHECK(!s.compose || dw.numel() == s.B * s.S * 4 * (2 * s.I + 1) * s.N, "dcmha dw ", dw.desc());
}

void dcmha_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw, Tensor& o) {
  DCF_RANGE("dcmha_forward");
  check_dcmha(s, q, k, v, dw);
  DCF_DISPATCH_CUDA(q, dcmha_forward, s, q, k, v, dw, o);
  DCF_FLOAT_SWITCH(q, "dcmha_forward",
                   cpu::dcmha_forward<T>(s, q.data<T>(), k.data<T>(), v.data<T>(), opt<T>(dw), o.data<T>()));
}

void dcmha_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                    const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw) {
  DCF_RANGE("dcmha_backward");
  check_dcmha(s, q, k, v, dw);
  DCF_DISPATCH_CUDA(q, dcmha_backward, s, q, k, v, dw, dout, dq, dk, dv, ddw);
  DCF_FLOAT_SWITCH(q, "dcmha_backward",
                   cpu::dcmha_backward<T>(s, q.data<T>(), k.data<T>(), v.data<T>(), opt<T>(dw), dout.data<T>(),
                                          dq.data<T>(), dk.data<T>(), dv.data<T>(),
                                          ddw.defined() ? ddw.data<T>() : nullptr));
}

void ce_row_max(const Tensor& logits, Tensor& mx) {
  DCF_RANGE("ce_row_max");
  DCF_DISPATCH_CUDA(logits, ce_row_max, logits, mx);
  DCF_FLOAT_SWITCH(logits, "ce_row_max",
                   cpu::ce_row_max<T>(logits.data<T>(), logits.dim(0), logits.dim(1), mx.data<T>()));
}

void ce_row_sumexp(const Tensor& logits, const Tensor& mx, Tensor& sum) {
  DCF_RANGE("ce_row_sumexp");
  DCF_DISPATCH_CUDA(logits, ce_row_sumexp, logits, mx, sum);
  DCF_FLOAT_SWITCH(logits, "ce_row_sumexp",
                   cpu::ce_row_sumexp<T>(logits.data<T>(), logits.dim(0), logits.dim(1), mx.data<T>(), sum.data<T>()));
}

void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t off, Tensor& tgt) {
  DCF_RANGE("ce_target_logit");
  DCF_DISPATCH_CUDA(logits, ce_target_logit, logits, targets, off, tgt);
  DCF_FLOAT_SWITCH(logits, "ce_target_logit",
                   cpu::ce_target_logit<T>(logits.data<T>(), logits.dim(0), logits.dim(1), targets.data<int32_t>(),
                                           off, tgt.data<T>()));
}

void ce_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t off, double scale,
                 Tensor& dlogits) {
  DCF_RANGE("ce_backward");
  DCF_DISPATCH_CUDA(logits, ce_backward, logits, targets, lse, off, scale, dlogits);
  DCF_FLOAT_SWITCH(logits, "ce_backward",
                   cpu::ce_backward<T>(logits.data<T>(), logits.dim(0), logits.dim(1), targets.data<int32_t>(),
                                       lse.data<T>(), off, T(scale), dlogits.data<T>()));
}

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWParams& hp, Tensor* copy) {
  DCF_RANGE("adamw_update");
  DCF_CHECK(p.numel() == g.numel() && p.numel() == m.numel() && p.numel() == v.numel(), "adamw shapes");
  DCF_CHECK(!copy || (copy->numel() == p.numel() && copy->device() == p.device()), "adamw_update: param copy ",
            copy ? copy->desc() : std::string(), " for param ", p.desc());
  DCF_DISPATCH_CUDA(p, adamw_update, p, g, m, v, hp, copy);
  DCF_FLOAT_SWITCH(p, "adamw_update",
                   cpu::adamw_update<T>(p.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(), p.numel(), hp));
  if (copy) cast(p, *copy);
}

}  // namespace dcf
