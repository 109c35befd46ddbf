// Plain causal / sliding-window attention through cuDNN's fused flash attention (see
// attention_cudnn.h). The operation graphs mirror, op for op, what cudnn-frontend's composite SDPA
// node emits for cuDNN 9.19 (scaled_dot_product_flash_attention.h: bmm1 -> attn_scale ->
// diagonal-band masks -> softmax with Stats -> bmm2, and the dQ-accumulator backward), written with
// the backend descriptor API since no cudnn-frontend header is installed. The runtime fusion engine
// pattern-matches that graph, so its shape matters more than its economy: e.g. the scale multiply
// by 1.0 stays (q arrives already scaled), and the backward keeps the frontend's op order.
#include <cudnn.h>
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_cudnn.h"
#include "kernels/cuda_common.cuh"

namespace dcf::cuda {
namespace {

// ---- the cuDNN entry points, resolved at first use ---------------------------------------------
#define DCF_CUDNN_FN(fn) decltype(&::fn) fn = nullptr
struct CudnnApi {
  void* lib = nullptr;
  std::string error;  // why the library is unusable (empty when usable)
  DCF_CUDNN_FN(cudnnGetVersion);
  DCF_CUDNN_FN(cudnnGetErrorString);
  DCF_CUDNN_FN(cudnnGetLastErrorString);
  DCF_CUDNN_FN(cudnnCreate);
  DCF_CUDNN_FN(cudnnSetStream);
  DCF_CUDNN_FN(cudnnBackendCreateDescriptor);
  DCF_CUDNN_FN(cudnnBackendDestroyDescriptor);
  DCF_CUDNN_FN(cudnnBackendSetAttribute);
  DCF_CUDNN_FN(cudnnBackendGetAttribute);
  DCF_CUDNN_FN(cudnnBackendFinalize);
  DCF_CUDNN_FN(cudnnBackendExecute);
  size_t version = 0;
};
#undef DCF_CUDNN_FN

template <typename F>
bool resolve(CudnnApi& a, F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(a.lib, name));
  if (!f) a.error = std::string("symbol ") + name + " not found in libcudnn";
  return f != nullptr;
}

CudnnApi* load_api() {
  auto* a = new CudnnApi;  // never destroyed (handles outlive static destruction)
  std::string tried;
  std::vector<std::string> names = {"libcudnn.so." + std::to_string(CUDNN_MAJOR), "libcudnn.so"};
#ifdef DCF_CUDNN_LIBRARY
  names.push_back(DCF_CUDNN_LIBRARY);  // the library CMake found at configure time
#endif
  for (const std::string& n : names) {
    a->lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (a->lib) break;
    const char* e = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(e ? e : n.c_str());
  }
  if (!a->lib) {
    a->error = "cannot load libcudnn (" + tried + ")";
    return a;
  }
  bool ok = resolve(*a, a->cudnnGetVersion, "cudnnGetVersion") &&
            resolve(*a, a->cudnnGetErrorString, "cudnnGetErrorString") &&
            resolve(*a, a->cudnnGetLastErrorString, "cudnnGetLastErrorString") &&
            resolve(*a, a->cudnnCreate, "cudnnCreate") && resolve(*a, a->cudnnSetStream, "cudnnSetStream") &&
            resolve(*a, a->cudnnBackendCreateDescriptor, "cudnnBackendCreateDescriptor") &&
            resolve(*a, a->cudnnBackendDestroyDescriptor, "cudnnBackendDestroyDescriptor") &&
            resolve(*a, a->cudnnBackendSetAttribute, "cudnnBackendSetAttribute") &&
            resolve(*a, a->cudnnBackendGetAttribute, "cudnnBackendGetAttribute") &&
            resolve(*a, a->cudnnBackendFinalize, "cudnnBackendFinalize") &&
            resolve(*a, a->cudnnBackendExecute, "cudnnBackendExecute");
  if (!ok) return a;
  a->version = a->cudnnGetVersion();
  // The graph below is the one cudnn-frontend emits for 9.x; 8.x fusion engines want other shapes.
  if (a->version < 90000) a->error = "cuDNN " + std::to_string(a->version) + " is older than 9.0";
  return a;
}

const CudnnApi& api() {
  static CudnnApi* a = load_api();
  return *a;
}

bool verbose() {
  const char* e = std::getenv("DCF_CUDNN_VERBOSE");
  return e && e[0] == '1';
}

// A cuDNN call failed while building a plan: the graph is unsupported (or malformed).
struct BuildError {
  std::string what;
};

std::string status_text(cudnnStatus_t st) {
  const CudnnApi& a = api();
  char last[512] = {0};
  a.cudnnGetLastErrorString(last, sizeof last);
  std::string s = a.cudnnGetErrorString(st);
  if (last[0]) s += std::string(" [") + last + "]";
  return s;
}

#define DCF_CUDNN_BUILD(expr)                                                                          \
  do {                                                                                                 \
    cudnnStatus_t dcf_st_ = (expr);                                                                    \
    if (dcf_st_ != CUDNN_STATUS_SUCCESS) throw BuildError{std::string(#expr) + ": " + status_text(dcf_st_)}; \
  } while (0)

#define DCF_CUDNN_RUN(expr)                                                                                    \
  do {                                                                                                         \
    cudnnStatus_t dcf_st_ = (expr);                                                                            \
    if (dcf_st_ != CUDNN_STATUS_SUCCESS)                                                                       \
      throw DcfError(dcf::detail::concat(__FILE__, ":", __LINE__, ": cuDNN error in ", #expr, ": ", status_text(dcf_st_))); \
  } while (0)

// ---- per-device handle ---------------------------------------------------------------------------
struct Context {
  std::mutex mu;
  std::map<int, cudnnHandle_t> handles;
};
Context& ctx() {
  static Context* c = new Context;
  return *c;
}

cudnnHandle_t handle_for(int dev) {  // ctx().mu held
  auto it = ctx().handles.find(dev);
  if (it != ctx().handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  DCF_CUDNN_RUN(api().cudnnCreate(&h));
  ctx().handles[dev] = h;
  return h;
}

std::atomic<int64_t> g_forward{0}, g_backward{0}, g_built{0}, g_failed{0};

// ---- graph construction ---------------------------------------------------------------------------

// Fixed unique ids of the non-virtual tensors; virtual and by-value ones get ids from 100 up.
enum Uid : int64_t {
  kQ = 1, kK = 2, kV = 3, kO = 4, kStats = 5, kdO = 6, kdQ = 7, kdK = 8, kdV = 9, kSoftmaxSum = 10, kdQAcc = 11
};

using Dims = std::array<int64_t, 4>;
struct Layout {
  Dims dim, stride;
};
struct TensorDesc {
  cudnnBackendDescriptor_t desc = nullptr;
  int64_t uid = 0;
  Layout layout;
};

// A built plan and what executing it needs.
struct Plan {
  bool ok = false;
  std::string error;
  std::vector<cudnnBackendDescriptor_t> descs;  // kept alive for the plan's lifetime (i.e. forever)
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  std::vector<int64_t> scalar_uids;
  std::vector<float> scalar_values;  // by-value scalars: the variant pack points at these
  std::vector<int64_t> tensor_uids;  // the non-virtual device tensors the variant pack needs
  int engine_index = -1, engines = 0;
  double build_ms = 0;
};

class Builder {
 public:
  explicit Builder(Plan& p) : p_(p) {}

  cudnnBackendDescriptor_t create(cudnnBackendDescriptorType_t t) {
    cudnnBackendDescriptor_t d = nullptr;
    DCF_CUDNN_BUILD(api().cudnnBackendCreateDescriptor(t, &d));
    p_.descs.push_back(d);
    return d;
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t n,
           const void* v) {
    DCF_CUDNN_BUILD(api().cudnnBackendSetAttribute(d, a, t, n, v));
  }
  void finalize(cudnnBackendDescriptor_t d) { DCF_CUDNN_BUILD(api().cudnnBackendFinalize(d)); }

  TensorDesc tensor(int64_t uid, const Layout& l, cudnnDataType_t dt, bool is_virtual, bool by_value = false) {
    TensorDesc t;
    t.uid = uid;
    t.layout = l;
    t.desc = create(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t align = 16;
    set(t.desc, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(t.desc, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, l.dim.data());
    set(t.desc, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, l.stride.data());
    set(t.desc, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t.desc, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(t.desc, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) set(t.desc, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    finalize(t.desc);
    if (!is_virtual && !by_value) p_.tensor_uids.push_back(uid);
    return t;
  }
  TensorDesc io(int64_t uid, const Layout& l, cudnnDataType_t dt) { return tensor(uid, l, dt, false); }
  TensorDesc virt(const Layout& l, cudnnDataType_t dt = CUDNN_DATA_FLOAT) { return tensor(next_uid_++, l, dt, true); }
  TensorDesc scalar(float value) {
    const Layout one{{1, 1, 1, 1}, {1, 1, 1, 1}};
    TensorDesc t = tensor(next_uid_++, one, CUDNN_DATA_FLOAT, false, true);
    p_.scalar_uids.push_back(t.uid);
    p_.scalar_values.push_back(value);
    return t;
  }

  // y = mode(x[, b][, t]) with math precision prec.
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, const TensorDesc& x, const TensorDesc* b,
                 const TensorDesc* t, const TensorDesc& y, int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    finalize(pw);
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.desc);
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->desc);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.desc);
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t->desc);
    finalize(op);
    ops_.push_back(op);
  }
  // Float-precision binary op into a new virtual tensor shaped like x (or like `like`).
  TensorDesc binary(cudnnPointwiseMode_t mode, const TensorDesc& x, const TensorDesc& b, const Layout* like = nullptr) {
    TensorDesc y = virt(like ? *like : x.layout);
    pointwise(mode, CUDNN_DATA_FLOAT, x, &b, nullptr, y);
    return y;
  }
  TensorDesc unary(cudnnPointwiseMode_t mode, const TensorDesc& x) {
    TensorDesc y = virt(x.layout);
    pointwise(mode, CUDNN_DATA_FLOAT, x, nullptr, nullptr, y);
    return y;
  }
  void reduction(cudnnReduceTensorOp_t rop, const TensorDesc& x, const TensorDesc& y) {
    cudnnBackendDescriptor_t r = create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &rop);
    set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    finalize(r);
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.desc);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.desc);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r);
    finalize(op);
    ops_.push_back(op);
  }
  void matmul(const TensorDesc& a, const TensorDesc& b, const TensorDesc& c) {
    cudnnBackendDescriptor_t m = create(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    finalize(m);
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a.desc);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b.desc);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c.desc);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m);
    finalize(op);
    ops_.push_back(op);
  }
  void reshape(const TensorDesc& x, const TensorDesc& y) {
    cudnnBackendDescriptor_t op = create(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.desc);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.desc);
    finalize(op);
    ops_.push_back(op);
  }

  // The composite diagonal-band masks (cudnn-frontend diagonal_band_mask.h, TOP_LEFT alignment):
  // causal keeps row >= col; a left bound W keeps col + W > row. Masked scores become -inf.
  TensorDesc causal_mask(const TensorDesc& s) {
    const auto [row, col] = row_col(s);
    TensorDesc keep = virt(s.layout, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, &col, nullptr, keep);
    return kept_or_ninf(s, keep);
  }
  TensorDesc left_bound_mask(const TensorDesc& s, int64_t window) {
    const auto [row, col] = row_col(s);
    TensorDesc w = scalar(float(window));
    TensorDesc colw = virt(s.layout, CUDNN_DATA_FLOAT);
    pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, col, &w, nullptr, colw);
    TensorDesc keep = virt(s.layout, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_GT, CUDNN_DATA_BOOLEAN, colw, &row, nullptr, keep);
    return kept_or_ninf(s, keep);
  }
  // The row (dimension 2) and column (dimension 3) indices of s's elements.
  std::pair<TensorDesc, TensorDesc> row_col(const TensorDesc& s) {
    TensorDesc row = virt(s.layout, CUDNN_DATA_INT32), col = virt(s.layout, CUDNN_DATA_INT32);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, nullptr, row, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, nullptr, nullptr, col, 3);
    return {row, col};
  }
  // s where keep holds, -inf elsewhere.
  TensorDesc kept_or_ninf(const TensorDesc& s, const TensorDesc& keep) {
    TensorDesc ninf = scalar(-std::numeric_limits<float>::infinity());
    TensorDesc y = virt(s.layout);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, &ninf, &keep, y);
    return y;
  }
  TensorDesc masks(const TensorDesc& s, int64_t window) {
    TensorDesc y = causal_mask(s);
    return window > 0 ? left_bound_mask(y, window) : y;
  }

  // The operation graph alone, without a handle (a device-free check of the graph's construction).
  void graph_only() {
    cudnnBackendDescriptor_t graph = create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data());
    finalize(graph);
  }
  // Operation graph, heuristics (mode A, then FALLBACK), the first engine config that finalizes.
  void make_plan(cudnnHandle_t h) {
    cudnnBackendDescriptor_t graph = create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    // The handle attributes are marked deprecated in 9.x headers but are still honoured; set them
    // by number so that the graph finds its device the same way on every 9.x.
    set(graph, static_cast<cudnnBackendAttributeName_t>(800) /* OPERATIONGRAPH_HANDLE */, CUDNN_TYPE_HANDLE, 1, &h);
    set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data());
    finalize(graph);
    std::string errors;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      cudnnBackendDescriptor_t heur = create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
      set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
      cudnnStatus_t st = api().cudnnBackendFinalize(heur);
      if (st != CUDNN_STATUS_SUCCESS) {
        errors += " heuristics mode " + std::to_string(int(mode)) + ": " + status_text(st) + ";";
        continue;
      }
      int64_t n = 0;
      DCF_CUDNN_BUILD(api().cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr));
      if (n <= 0) {
        errors += " heuristics mode " + std::to_string(int(mode)) + ": no engine;";
        continue;
      }
      std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(n));
      for (auto& c : cfgs) c = create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      int64_t got = 0;
      DCF_CUDNN_BUILD(api().cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfgs.data()));
      for (int64_t i = 0; i < got; ++i) {
        cudnnBackendDescriptor_t plan = create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        set(plan, static_cast<cudnnBackendAttributeName_t>(400) /* EXECUTION_PLAN_HANDLE */, CUDNN_TYPE_HANDLE, 1,
            &h);
        set(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[size_t(i)]);
        st = api().cudnnBackendFinalize(plan);
        if (st != CUDNN_STATUS_SUCCESS) {
          if (errors.size() < 2000) errors += " engine config " + std::to_string(i) + ": " + status_text(st) + ";";
          continue;
        }
        int64_t ws = 0, cnt = 0;
        DCF_CUDNN_BUILD(api().cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                       CUDNN_TYPE_INT64, 1, &cnt, &ws));
        p_.plan = plan;
        p_.workspace = ws;
        p_.engine_index = int(i);
        p_.engines = int(got);
        return;
      }
    }
    throw BuildError{"no engine finalizes the graph:" + errors};
  }

 private:
  Plan& p_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_ = 100;
};

// Layouts for q/o-like [B,T,N,D] storage seen as [B,N,T,D], and the score tensors.
struct Geometry {
  int64_t B, N, T, S, D;
  Layout bshd(int64_t L) const { return {{B, N, L, D}, {L * N * D, D, N * D, 1}}; }
  // K (or V) seen transposed: [B, N, D, S].
  Layout transposed(int64_t L) const { return {{B, N, D, L}, {L * N * D, D, 1, N * D}}; }
  Layout scores() const { return {{B, N, T, S}, {N * T * S, T * S, S, 1}}; }
  Layout scores_t() const { return {{B, N, S, T}, {N * T * S, T * S, 1, S}}; }
  Layout rows() const { return {{B, N, T, 1}, {N * T, T, 1, 1}}; }
  Layout packed_bhsd(int64_t L) const { return {{B, N, L, D}, {N * L * D, L * D, D, 1}}; }
};

void build_forward(Builder& g, const Geometry& G, int64_t window) {
  TensorDesc q = g.io(kQ, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc kt = g.io(kK, G.transposed(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc v = g.io(kV, G.bshd(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc o = g.io(kO, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc stats = g.io(kStats, G.rows(), CUDNN_DATA_FLOAT);
  // bmm1, attention scale (q is pre-scaled: 1.0), masks
  TensorDesc s = g.virt(G.scores());
  g.matmul(q, kt, s);
  TensorDesc scale = g.scalar(1.0f);
  TensorDesc s1 = g.binary(CUDNN_POINTWISE_MUL, s, scale);
  TensorDesc sm = g.masks(s1, window);
  // softmax with Stats = max + log(sum exp)
  TensorDesc mx = g.virt(G.rows());
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, sm, mx);
  TensorDesc sub = g.binary(CUDNN_POINTWISE_SUB, sm, mx);
  TensorDesc ex = g.unary(CUDNN_POINTWISE_EXP, sub);
  TensorDesc sum = g.virt(G.rows());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
  TensorDesc lg = g.unary(CUDNN_POINTWISE_LOG, sum);
  g.pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, mx, &lg, nullptr, stats);
  TensorDesc p = g.virt(G.scores(), CUDNN_DATA_BFLOAT16);
  g.pointwise(CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, ex, &sum, nullptr, p);
  // bmm2
  g.matmul(p, v, o);
}

void build_backward(Builder& g, const Geometry& G, int64_t window) {
  TensorDesc q = g.io(kQ, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc kt = g.io(kK, G.transposed(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc vt = g.io(kV, G.transposed(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc o = g.io(kO, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc dout = g.io(kdO, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc stats = g.io(kStats, G.rows(), CUDNN_DATA_FLOAT);
  TensorDesc dq = g.io(kdQ, G.bshd(G.T), CUDNN_DATA_BFLOAT16);
  TensorDesc dk = g.io(kdK, G.bshd(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc dv = g.io(kdV, G.bshd(G.S), CUDNN_DATA_BFLOAT16);
  TensorDesc one = g.scalar(1.0f);
  TensorDesc scale = g.scalar(1.0f);
  // softmax_sum = rowsum(dO * O) (a workspace tensor of ours)
  const Layout odd{{G.B, G.N, G.T, G.D}, {G.N * G.T * G.D, G.T * G.D, G.N * G.D, 1}};  // as the frontend
  TensorDesc doo = g.binary(CUDNN_POINTWISE_MUL, dout, o, &odd);
  TensorDesc rs = g.virt(G.rows());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, doo, rs);
  TensorDesc softmax_sum = g.io(kSoftmaxSum, G.rows(), CUDNN_DATA_FLOAT);
  g.pointwise(CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, rs, &one, nullptr, softmax_sum);
  // P = exp(Q K^T * scale - Stats), masked
  TensorDesc s = g.virt(G.scores());
  g.matmul(q, kt, s);
  TensorDesc s1 = g.binary(CUDNN_POINTWISE_MUL, s, scale);
  TensorDesc s2 = g.binary(CUDNN_POINTWISE_SUB, s1, stats);
  TensorDesc sm = g.masks(s2, window);
  TensorDesc p = g.unary(CUDNN_POINTWISE_EXP, sm);
  // dV = P^T dO
  TensorDesc pt = g.virt(G.scores_t(), CUDNN_DATA_BFLOAT16);
  g.reshape(p, pt);
  g.matmul(pt, dout, dv);
  // dS = P * (dO V^T - softmax_sum) * scale
  TensorDesc dp = g.virt(G.scores());
  g.matmul(dout, vt, dp);
  TensorDesc d1 = g.binary(CUDNN_POINTWISE_SUB, dp, softmax_sum);
  TensorDesc d2 = g.binary(CUDNN_POINTWISE_MUL, d1, p);
  TensorDesc ds = g.binary(CUDNN_POINTWISE_MUL, d2, scale);
  // dK = dS^T Q
  TensorDesc dst = g.virt(G.scores_t(), CUDNN_DATA_BFLOAT16);
  g.reshape(ds, dst);
  g.matmul(dst, q, dk);
  // dQ = dS K through the fp32 accumulator (a workspace tensor of ours), then to bf16
  TensorDesc kr = g.virt(G.bshd(G.S));
  g.reshape(kt, kr);
  TensorDesc dq_acc = g.io(kdQAcc, G.packed_bhsd(G.T), CUDNN_DATA_FLOAT);
  g.matmul(ds, kr, dq_acc);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, dq_acc, nullptr, nullptr, dq);
}

using Key = std::array<int64_t, 8>;  // kind, device, B, N, T, S, D, window

int64_t effective_window(const DcmhaShape& s) { return (s.window > 0 && s.window < s.S) ? s.window : 0; }

// The cached plan for a key (built on first use). nullptr when it cannot be built.
const Plan* get_plan(int kind, const DcmhaShape& s, int dev, cudnnHandle_t h) {  // ctx().mu held
  static std::map<Key, std::unique_ptr<Plan>>* plans = new std::map<Key, std::unique_ptr<Plan>>;
  const int64_t window = effective_window(s);
  Key key{kind, dev, s.B, s.N, s.T, s.S, s.D, window};
  auto it = plans->find(key);
  if (it != plans->end()) return it->second->ok ? it->second.get() : nullptr;
  auto p = std::make_unique<Plan>();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Builder g(*p);
    Geometry G{s.B, s.N, s.T, s.S, s.D};
    if (kind == 0)
      build_forward(g, G, window);
    else
      build_backward(g, G, window);
    g.make_plan(h);
    p->ok = true;
  } catch (const BuildError& e) {
    p->error = e.what;
  }
  p->build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const char* name = kind == 0 ? "forward" : "backward";
  if (p->ok) {
    ++g_built;
    if (verbose())
      std::fprintf(stderr,
                   "[dcf] cuDNN attention %s plan B=%lld N=%lld T=%lld D=%lld W=%lld: engine config %d of %d, "
                   "workspace %lld bytes, built in %.0f ms\n",
                   name, (long long)s.B, (long long)s.N, (long long)s.T, (long long)s.D, (long long)window,
                   p->engine_index, p->engines, (long long)p->workspace, p->build_ms);
  } else {
    ++g_failed;
    std::fprintf(stderr,
                 "[dcf] cuDNN attention %s B=%lld N=%lld T=%lld D=%lld W=%lld not available (%s); using the v1 "
                 "path for this shape\n",
                 name, (long long)s.B, (long long)s.N, (long long)s.T, (long long)s.D, (long long)window,
                 p->error.c_str());
  }
  const Plan* r = p->ok ? p.get() : nullptr;
  (*plans)[key] = std::move(p);
  return r;
}

// Runs a plan on the current stream with the given device pointers (uid -> pointer).
void execute(const Plan& p, cudnnHandle_t h, const std::map<int64_t, void*>& ptrs, Device dev) {
  std::vector<int64_t> uids;
  std::vector<void*> data;
  for (int64_t u : p.tensor_uids) {
    auto it = ptrs.find(u);
    DCF_CHECK(it != ptrs.end() && it->second, "cuDNN attention: no pointer for tensor uid ", u);
    uids.push_back(u);
    data.push_back(it->second);
  }
  for (size_t i = 0; i < p.scalar_uids.size(); ++i) {
    uids.push_back(p.scalar_uids[i]);
    data.push_back(const_cast<float*>(&p.scalar_values[i]));
  }
  Tensor ws;
  void* ws_ptr = nullptr;
  if (p.workspace > 0) {
    ws = Tensor::empty({(p.workspace + 15) / 16 * 4}, DType::f32, dev);
    ws_ptr = ws.raw();
  }
  const CudnnApi& a = api();
  cudnnBackendDescriptor_t vp = nullptr;
  DCF_CUDNN_RUN(a.cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
  struct Destroy {
    cudnnBackendDescriptor_t d;
    ~Destroy() { api().cudnnBackendDestroyDescriptor(d); }
  } destroy{vp};
  DCF_CUDNN_RUN(a.cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                           int64_t(uids.size()), uids.data()));
  DCF_CUDNN_RUN(a.cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                           int64_t(data.size()), data.data()));
  DCF_CUDNN_RUN(a.cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr));
  DCF_CUDNN_RUN(a.cudnnBackendFinalize(vp));
  DCF_CUDNN_RUN(a.cudnnSetStream(h, current_stream()));
  DCF_CUDNN_RUN(a.cudnnBackendExecute(h, p.plan, vp));
  // ws goes back to the caching allocator here; its reuse is ordered on the same stream.
}

bool aligned16(const Tensor& t) { return (reinterpret_cast<uintptr_t>(t.raw()) & 15u) == 0; }

// dq += a, dk += b, dv += c (bf16, fp32 adds), 8 elements per thread where the sizes allow.
__global__ void accumulate3_kernel(bf16* __restrict__ y0, const bf16* __restrict__ x0, int64_t n0,
                                   bf16* __restrict__ y1, const bf16* __restrict__ x1, int64_t n1,
                                   bf16* __restrict__ y2, const bf16* __restrict__ x2, int64_t n2) {
  bf16* y = blockIdx.y == 0 ? y0 : blockIdx.y == 1 ? y1 : y2;
  const bf16* x = blockIdx.y == 0 ? x0 : blockIdx.y == 1 ? x1 : x2;
  const int64_t n = blockIdx.y == 0 ? n0 : blockIdx.y == 1 ? n1 : n2;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t nv = n / 8;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += stride) {
    uint4 a = reinterpret_cast<const uint4*>(y)[i], b = reinterpret_cast<const uint4*>(x)[i];
    __nv_bfloat162* pa = reinterpret_cast<__nv_bfloat162*>(&a);
    const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float2 fa = __bfloat1622float2(pa[j]), fb = __bfloat1622float2(pb[j]);
      pa[j] = __floats2bfloat162_rn(fa.x + fb.x, fa.y + fb.y);
    }
    reinterpret_cast<uint4*>(y)[i] = a;
  }
  for (int64_t i = nv * 8 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(x[i]));
}

}  // namespace

// ---- public entry points --------------------------------------------------------------------------

bool cudnn_attention_enabled() {
  const char* e = std::getenv("DCF_ATTN_IMPL");
  if (!e || !e[0]) return true;
  return std::strcmp(e, "v1") != 0;
}

int64_t cudnn_version(std::string* why) {
  const CudnnApi& a = api();
  if (!a.error.empty()) {
    if (why) *why = a.error;
    return 0;
  }
  return int64_t(a.version);
}

bool cudnn_attention_supported(const DcmhaShape& s, DType dt, std::string* why) {
  auto no = [&](const std::string& r) {
    if (why) *why = r;
    return false;
  };
  if (s.compose) return no("compose = true (DCMHA, not plain attention)");
  if (dt != DType::bf16) return no(std::string("dtype ") + dtype_name(dt) + " (cuDNN path is bf16 only)");
  if (s.q_pos0 != 0 || s.T != s.S) return no("query rows are not the whole sequence (q_pos0 != 0 or T != S)");
  if (s.D % 8 != 0 || s.D > 256) return no("head dim D=" + std::to_string(s.D) + " (needs D % 8 == 0, D <= 256)");
  if (s.B <= 0 || s.T <= 0 || s.N <= 0 || s.window < 0) return no("empty or invalid shape");
  std::string lib;
  if (cudnn_version(&lib) == 0) return no(lib);
  return true;
}

bool cudnn_attention_supported(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                               std::string* why) {
  if (!q.defined() || !q.device().is_cuda()) {
    if (why) *why = "q is not a CUDA tensor";
    return false;
  }
  if (!cudnn_attention_supported(s, q.dtype(), why)) return false;
  const int64_t nq = s.B * s.T * s.N * s.D, nk = s.B * s.S * s.N * s.D;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&k, &v})
    if (!t->defined() || t->dtype() != q.dtype() || !(t->device() == q.device()) || t->numel() != nk) {
      if (why) *why = "k or v does not match q";
      return false;
    }
  if (q.numel() != nq) {
    if (why) *why = "q has " + std::to_string(q.numel()) + " elements for the shape's " + std::to_string(nq);
    return false;
  }
  if (!aligned16(q) || !aligned16(k) || !aligned16(v)) {
    if (why) *why = "q, k or v is not 16-byte aligned";
    return false;
  }
  return true;
}

bool cudnn_attention_forward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& o,
                             Tensor* stats) {
  if (!cudnn_attention_supported(s, q, k, v)) return false;
  DCF_CHECK(o.defined() && o.dtype() == q.dtype() && o.numel() == q.numel() && o.device() == q.device(),
            "cudnn_attention_forward: o ", o.defined() ? o.desc() : "undefined", " for q ", q.desc());
  if (!aligned16(o)) return false;
  Tensor st_tmp;
  Tensor* st = stats;
  if (st) {
    DCF_CHECK(st->defined() && st->dtype() == DType::f32 && st->numel() == s.B * s.N * s.T &&
                  st->device() == q.device(),
              "cudnn_attention_forward: stats must be f32 [B, N, T] on q's device, got ",
              st->defined() ? st->desc() : "undefined");
  } else {
    st_tmp = Tensor::empty({s.B, s.N, s.T}, DType::f32, q.device());
    st = &st_tmp;
  }
  DCF_NVTX_RANGE("cudnn_attention_forward");
  std::lock_guard<std::mutex> lock(ctx().mu);
  const int dev = q.device().index;
  cudnnHandle_t h = handle_for(dev);
  const Plan* p = get_plan(0, s, dev, h);
  if (!p) return false;
  execute(*p, h, {{kQ, q.raw()}, {kK, k.raw()}, {kV, v.raw()}, {kO, o.raw()}, {kStats, st->raw()}}, q.device());
  ++g_forward;
  return true;
}

bool cudnn_attention_backward(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                              const Tensor& stats, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv) {
  if (!cudnn_attention_supported(s, q, k, v)) return false;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&o, &dout, &dq})
    DCF_CHECK(t->defined() && t->dtype() == q.dtype() && t->numel() == q.numel() && t->device() == q.device(),
              "cudnn_attention_backward: ", t->defined() ? t->desc() : "undefined", " for q ", q.desc());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dk, &dv})
    DCF_CHECK(t->defined() && t->dtype() == q.dtype() && t->numel() == k.numel() && t->device() == q.device(),
              "cudnn_attention_backward: ", t->defined() ? t->desc() : "undefined", " for k ", k.desc());
  DCF_CHECK(stats.defined() && stats.dtype() == DType::f32 && stats.numel() == s.B * s.N * s.T,
            "cudnn_attention_backward: stats must be f32 [B, N, T]");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&o, &dout, &dq, &dk, &dv, &stats})
    if (!aligned16(*t)) return false;
  DCF_NVTX_RANGE("cudnn_attention_backward");
  std::lock_guard<std::mutex> lock(ctx().mu);
  const int dev = q.device().index;
  cudnnHandle_t h = handle_for(dev);
  const Plan* p = get_plan(1, s, dev, h);
  if (!p) return false;
  // Our two workspace tensors: softmax_sum [B,N,T] and the fp32 dQ accumulator [B,N,T,D]. cuDNN >= 9.6
  // initialises the accumulator itself (cudnn-frontend stopped clearing it then; measured on 9.19:
  // the same dq without our memset, which cost 8-16 us at the benchmark shapes), so we clear it only for
  // older versions; DCF_CUDNN_DQ_MEMSET=1 / 0 forces it on / off.
  Tensor softmax_sum = Tensor::empty({s.B, s.N, s.T}, DType::f32, q.device());
  Tensor dq_acc = Tensor::empty({s.B, s.N, s.T, s.D}, DType::f32, q.device());
  const char* m = std::getenv("DCF_CUDNN_DQ_MEMSET");
  const bool memset_acc = (m && m[0]) ? m[0] == '1' : api().version < 90600;
  if (memset_acc) DCF_CUDA_CHECK(cudaMemsetAsync(dq_acc.raw(), 0, dq_acc.nbytes(), current_stream()));
  execute(*p, h,
          {{kQ, q.raw()},
           {kK, k.raw()},
           {kV, v.raw()},
           {kO, o.raw()},
           {kdO, dout.raw()},
           {kStats, stats.raw()},
           {kdQ, dq.raw()},
           {kdK, dk.raw()},
           {kdV, dv.raw()},
           {kSoftmaxSum, softmax_sum.raw()},
           {kdQAcc, dq_acc.raw()}},
          q.device());
  ++g_backward;
  return true;
}

bool cudnn_attention_backward_accumulate(const DcmhaShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv) {
  if (!cudnn_attention_supported(s, q, k, v)) return false;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dout, &dq, &dk, &dv})
    if (!aligned16(*t)) return false;
  const Device dev = q.device();
  Tensor o = Tensor::empty(q.shape(), q.dtype(), dev);
  Tensor stats = Tensor::empty({s.B, s.N, s.T}, DType::f32, dev);
  if (!cudnn_attention_forward(s, q, k, v, o, &stats)) return false;
  Tensor gq = Tensor::empty(q.shape(), q.dtype(), dev), gk = Tensor::empty(k.shape(), k.dtype(), dev),
         gv = Tensor::empty(v.shape(), v.dtype(), dev);
  if (!cudnn_attention_backward(s, q, k, v, o, stats, dout, gq, gk, gv)) return false;
  const int64_t nq = q.numel(), nk = k.numel();
  const int64_t vec = std::max(nq, nk) / 8;
  const unsigned blocks = unsigned(std::min<int64_t>(std::max<int64_t>((vec + 255) / 256, 1), 132 * 16));
  accumulate3_kernel<<<dim3(blocks, 3), 256, 0, current_stream()>>>(dq.data<bf16>(), gq.data<bf16>(), nq,
                                                                    dk.data<bf16>(), gk.data<bf16>(), nk,
                                                                    dv.data<bf16>(), gv.data<bf16>(), nk);
  DCF_CUDA_LAUNCH_CHECK();
  return true;
}

bool cudnn_attention_graph_check(const DcmhaShape& s, std::string* why) {
  std::string lib;
  if (cudnn_version(&lib) == 0) {
    if (why) *why = lib;
    return false;
  }
  for (int kind = 0; kind < 2; ++kind) {
    Plan p;
    try {
      Builder g(p);
      Geometry G{s.B, s.N, s.T, s.S, s.D};
      if (kind == 0)
        build_forward(g, G, effective_window(s));
      else
        build_backward(g, G, effective_window(s));
      g.graph_only();
    } catch (const BuildError& e) {
      if (why) *why = std::string(kind == 0 ? "forward: " : "backward: ") + e.what;
      for (auto d : p.descs) api().cudnnBackendDestroyDescriptor(d);
      return false;
    }
    for (auto d : p.descs) api().cudnnBackendDestroyDescriptor(d);
  }
  return true;
}

CudnnAttentionCounters cudnn_attention_counters() {
  CudnnAttentionCounters c;
  c.forward = g_forward.load();
  c.backward = g_backward.load();
  c.plans_built = g_built.load();
  c.plans_failed = g_failed.load();
  return c;
}

}  // namespace dcf::cuda
