// Export to the official DCFormer PyTorch layout. Tensors are produced one at a time from the
// checkpoint's pieces (never the whole model in memory) and streamed into model.safetensors:
//   8 bytes: N, u64 little-endian; N bytes: JSON header {name: {dtype, shape, data_offsets}} padded
//   with spaces to a multiple of 8; then the data, tensors back to back in header (sorted) order.
#include "checkpoint/export_hf.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hdf5_io.h"
#include "kernels/error.h"

namespace fs = std::filesystem;

namespace dcf::ckpt {

namespace {

constexpr int64_t kC = ModelSpec::kBranches;

// Window pattern -> (window_type, window_size) of DCFormerConfig.
std::pair<std::string, int64_t> window_config(const ModelSpec& s) {
  const auto& w = s.window_pattern;
  bool all_global = true;
  for (int64_t x : w) all_global = all_global && x == 0;
  if (all_global) return {"", 0};
  const int64_t W = w[0];
  auto is = [&](std::vector<int64_t> p) {
    for (auto& x : p) x = x ? W : 0;
    return w == p;
  };
  if (W > 0 && is({1, 0})) return {"LG", W};
  if (W > 0 && is({1, 0, 1, 1})) return {"LGLL", W};
  if (W > 0 && is({1, 0, 1, 1, 1, 1, 1, 1})) return {"LGL6", W};
  std::string p;
  for (int64_t x : w) {
    if (!p.empty()) p += ',';
    p += std::to_string(x);
  }
  throw InputError("export-hf: window pattern [" + p +
                   "] has no DCFormerConfig equivalent (all global, LG, LGLL or LGL6 with one window size)");
}

void check_exportable(const ModelSpec& s) {
  if (s.n_heads * s.head_dim != s.d_model)
    throw InputError("export-hf: n_heads * head_dim (" + std::to_string(s.n_heads * s.head_dim) + ") != d_model (" +
                     std::to_string(s.d_model) + "); the official code derives head_dim = dim / n_head");
  if (s.compose && s.dyn_rank != 2)
    throw InputError("export-hf: dyn_rank " + std::to_string(s.dyn_rank) + "; the official code fixes I = 2");
  window_config(s);
}

// Row-major transpose of a [rows, cols] matrix.
std::vector<float> transpose(const std::vector<float>& a, int64_t rows, int64_t cols) {
  std::vector<float> t(a.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = a[size_t(r * cols + c)];
  return t;
}

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

struct Producer {
  ExportedTensor t;
  std::function<std::vector<float>()> make;
};

// Every exported tensor with the function that computes it from checkpoint parameters `get`.
std::vector<Producer> producers(const ModelSpec& s, const std::function<std::vector<float>(const std::string&)>& get) {
  check_exportable(s);
  const int64_t E = s.d_model, N = s.n_heads, D = s.head_dim, F = s.d_ff, V = s.vocab, I = s.dyn_rank;
  const int64_t K = s.dyn_hidden();
  std::vector<Producer> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, std::function<std::vector<float>()> f) {
    out.push_back({{std::move(name), std::move(shape)}, std::move(f)});
  };
  add("tok_embeddings.weight", {V, E}, [=] { return get("embed"); });
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".", a = p + "attention.";
    add(p + "attention_norm.weight", {E}, [=] { return get(p + "attn_norm"); });
    add(p + "ffn_norm.weight", {E}, [=] { return get(p + "mlp_norm"); });
    // wqkv: nn.Linear(E, 3*N*D): rows q (head-major n*D+d), then k, then v.
    add(a + "wqkv.weight", {3 * N * D, E}, [=] {
      std::vector<float> out;
      for (const char* w : {"attn.wq", "attn.wk", "attn.wv"}) {
        auto t = transpose(get(p + w), E, N * D);
        out.insert(out.end(), t.begin(), t.end());
      }
      return out;
    });
    add(a + "wo.weight", {E, N * D}, [=] { return transpose(get(p + "attn.wo"), N * D, E); });
    if (s.qk_norm) {
      add(a + "q_norm.scale", {D}, [=] { return get(p + "attn.q_norm"); });
      add(a + "k_norm.scale", {D}, [=] { return get(p + "attn.k_norm"); });
    }
    // DynamicWeightProjection (G = 1): the same memory order as ours, with the group axis added.
    // Transformer++ checkpoints have none: zeros make every Compose the identity in the official code.
    auto dyn = [=](const char* ours, int64_t n) {
      return s.compose ? get(p + ours) : std::vector<float>(size_t(n), 0.0f);
    };
    const std::string dp = a + "dyn_w_proj.";
    add(dp + "dw1", {E, 1, kC, K}, [=] { return dyn("attn.dyn.w1", E * kC * K); });
    add(dp + "qkw", {1, kC, K, 2 * I, N}, [=] { return dyn("attn.dyn.w2", kC * K * 2 * I * N); });
    add(dp + "dd", {E, 1, kC * N}, [=] { return dyn("attn.dyn.wg", E * kC * N); });
    // merge_weights() registers these fused copies as parameters: dw_m = [dw1 | dd] per row, qkw_m = qkw.
    add(dp + "dw_m", {E, kC * K + kC * N}, [=] {
      auto w1 = dyn("attn.dyn.w1", E * kC * K), wg = dyn("attn.dyn.wg", E * kC * N);
      std::vector<float> m;
      m.reserve(size_t(E * (kC * K + kC * N)));
      for (int64_t e = 0; e < E; ++e) {
        m.insert(m.end(), w1.begin() + e * kC * K, w1.begin() + (e + 1) * kC * K);
        m.insert(m.end(), wg.begin() + e * kC * N, wg.begin() + (e + 1) * kC * N);
      }
      return m;
    });
    add(dp + "qkw_m", {kC, K, 2 * I * N}, [=] { return dyn("attn.dyn.w2", kC * K * 2 * I * N); });
    // CrossHeadProjection.w: a persistent identity buffer (static_proj off).
    for (const char* which : {"pre_proj.w", "post_proj.w"})
      add(dp + which, {1, N, N}, [=] {
        std::vector<float> eye(size_t(N * N), 0.0f);
        for (int64_t i = 0; i < N; ++i) eye[size_t(i * N + i)] = 1.0f;
        return eye;
      });
    add(p + "feed_forward.w1.weight", {F, E}, [=] { return transpose(get(p + "mlp.w_gate"), E, F); });
    add(p + "feed_forward.w3.weight", {F, E}, [=] { return transpose(get(p + "mlp.w_up"), E, F); });
    add(p + "feed_forward.w2.weight", {E, F}, [=] { return transpose(get(p + "mlp.w_down"), F, E); });
  }
  add("norm.weight", {E}, [=] { return get("final_norm"); });
  add("output.weight", {V, E}, [=] { return transpose(get("head"), E, V); });
  return out;
}

class FdWriter {
 public:
  explicit FdWriter(const fs::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw InputError("export-hf: cannot create " + path.string() + ": " + std::strerror(errno));
  }
  ~FdWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw DcfError("export-hf: cannot write " + path_.string() + ": " + std::strerror(errno));
      p += w;
      n -= size_t(w);
    }
  }
  void close_synced() {
    if (::fsync(fd_) != 0 || ::close(fd_) != 0)
      throw DcfError("export-hf: cannot fsync " + path_.string() + ": " + std::strerror(errno));
    fd_ = -1;
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

}  // namespace

std::vector<ExportedTensor> hf_tensor_names(const ModelSpec& spec) {
  std::vector<ExportedTensor> out;
  for (auto& p : producers(spec, [](const std::string&) { return std::vector<float>(); })) out.push_back(p.t);
  return out;
}

ExportReport export_hf(const std::string& step_dir, const ModelSpec& spec, const std::string& out_dir,
                       const ExportOptions& opt) {
  if (opt.dtype != "f32" && opt.dtype != "bf16") throw InputError("export-hf: --dtype must be f32 or bf16");
  const Manifest m = read_manifest(step_dir);
  // One parameter at a time, assembled from whatever layout wrote it.
  std::map<std::string, const TensorEntry*> params;
  for (const auto& t : m.tensors())
    if (t.kind() == kKindParam) params.emplace(t.param(), &t);
  auto get = [&](const std::string& name) {
    auto it = params.find(name);
    if (it == params.end()) throw InputError("export-hf: checkpoint " + step_dir + " has no parameter " + name);
    Shape gs(it->second->global_shape().begin(), it->second->global_shape().end());
    std::vector<float> v(size_t(shape_numel(gs)));
    ReadPiece r;
    r.layout.kind = kKindParam;
    r.layout.param = name;
    r.layout.global_shape = gs;
    r.layout.offset.assign(gs.size(), 0);
    r.layout.block_shape = gs;
    r.layout.element_end = int64_t(v.size());
    r.data = v.data();
    load_pieces(step_dir, m, {r});
    return v;
  };
  std::vector<Producer> prods = producers(spec, get);
  std::sort(prods.begin(), prods.end(), [](const Producer& a, const Producer& b) { return a.t.name < b.t.name; });

  const size_t esize = opt.dtype == "bf16" ? 2 : 4;
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"},
                            {"source", "dcformer checkpoint " + fs::path(step_dir).filename().string()},
                            {"step", std::to_string(m.step())}};
  uint64_t offset = 0;
  ExportReport rep;
  for (const auto& p : prods) {
    const uint64_t n = uint64_t(shape_numel(p.t.shape)) * esize;
    header[p.t.name] = {{"dtype", opt.dtype == "bf16" ? "BF16" : "F32"},
                        {"shape", p.t.shape},
                        {"data_offsets", {offset, offset + n}}};
    offset += n;
    rep.tensors.push_back(p.t);
  }
  std::string hs = header.dump();
  while (hs.size() % 8 != 0) hs.push_back(' ');

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (!fs::is_directory(out_dir)) throw InputError("export-hf: cannot create " + out_dir);
  const fs::path st = fs::path(out_dir) / "model.safetensors", st_tmp = fs::path(out_dir) / "model.safetensors.part";
  {
    FdWriter w(st_tmp);
    uint64_t hlen = hs.size();
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(hlen >> (8 * i));
    w.write(le, 8);
    w.write(hs.data(), hs.size());
    for (const auto& p : prods) {
      std::vector<float> v = p.make();
      DCF_CHECK(int64_t(v.size()) == shape_numel(p.t.shape), "export ", p.t.name, ": ", v.size(), " values");
      if (esize == 4) {
        w.write(v.data(), v.size() * 4);
      } else {
        std::vector<uint16_t> b(v.size());
        for (size_t i = 0; i < v.size(); ++i) b[i] = to_bf16(v[i]);
        w.write(b.data(), b.size() * 2);
      }
    }
    w.close_synced();
  }
  fs::rename(st_tmp, st);
  rep.bytes = int64_t(fs::file_size(st));

  // config.json for DCFormerConfig (pytorch/dcformer/configuration_dcformer.py).
  auto [wtype, wsize] = window_config(spec);
  nlohmann::json cfg = {
      {"architectures", {"DCFormer"}},
      {"auto_map",
       {{"AutoConfig", "configuration_dcformer.DCFormerConfig"}, {"AutoModelForCausalLM", "modeling_dcformer.DCFormer"}}},
      {"model_type", "dcformer"},
      {"block_size", spec.seq_len},
      {"vocab_size", spec.vocab},
      {"n_layer", spec.n_layers},
      {"n_head", spec.n_heads},
      {"n_local_heads", spec.n_heads},
      {"dim", spec.d_model},
      {"head_dim", spec.head_dim},
      {"intermediate_size", spec.d_ff},
      {"rope_base", spec.rope_base},
      {"norm_eps", spec.norm_eps},
      {"use_qk_norm", spec.qk_norm},
      {"use_dcmha", spec.compose},
      {"query_wise", false},
      {"window_size", wsize > 0 ? nlohmann::json(wsize) : nlohmann::json(nullptr)},
      {"window_type", wtype.empty() ? nlohmann::json(nullptr) : nlohmann::json(wtype)},
      {"q_chunk_size", 128},
      {"is_training", false},
      {"use_gradient_checkpointing", false},
      {"tie_word_embeddings", false},
      {"mgate", false},
      {"torch_dtype", opt.dtype == "bf16" ? "bfloat16" : "float32"},
      // Not read by DCFormerConfig; what the official code does differently (docs/hf_export.md).
      {"dcformer_export",
       {{"source_checkpoint", fs::path(step_dir).filename().string()},
        {"step", m.step()},
        {"qk_norm_eps", spec.qk_norm_eps},
        {"dyn_gelu", "tanh"},
        {"local_window_keys", wsize},
        {"note", "trained with tanh-GELU in the dynamic-weight MLP, qk-norm eps qk_norm_eps, local windows of "
                 "window_size keys including the query; see docs/hf_export.md"}}}};
  const fs::path cj = fs::path(out_dir) / "config.json", cj_tmp = fs::path(out_dir) / "config.json.part";
  {
    FdWriter w(cj_tmp);
    std::string s = cfg.dump(2) + "\n";
    w.write(s.data(), s.size());
    w.close_synced();
  }
  fs::rename(cj_tmp, cj);
  fsync_path(out_dir);
  return rep;
}

}  // namespace dcf::ckpt
