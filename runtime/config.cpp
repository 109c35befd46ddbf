// Config loading: protobuf text format with an error collector that turns parser messages into one
// line naming the file, line and field; overrides through protobuf reflection.
#include "runtime/config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "kernels/error.h"

namespace dcf {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

dcformer::Config default_config() {
  dcformer::Config c;
  auto* m = c.mutable_model();
  m->set_kind(dcformer::ModelConfig::DCFORMER);
  m->set_n_layers(4);
  m->set_d_model(64);
  m->set_n_heads(4);
  m->set_head_dim(16);
  m->set_d_ff(176);
  m->set_vocab_size(256);
  m->set_seq_len(64);
  m->set_qk_norm(true);
  m->set_norm_eps(1e-5);
  m->set_qk_norm_eps(1e-5);
  m->set_rope_base(10000);
  m->set_dyn_rank(2);
  m->set_init_std(0.006);
  m->set_query_chunk(64);
  auto* p = c.mutable_parallel();
  p->set_tp(1);
  p->set_pp(1);
  p->set_dp(0);
  p->set_micro_batches(1);
  p->set_schedule(dcformer::ParallelConfig::ONE_F_ONE_B);
  p->set_grad_bucket_mb(25);
  auto* d = c.mutable_data();
  d->set_format(dcformer::DataConfig::BYTES);
  d->set_seed(1234);
  auto* o = c.mutable_optimizer();
  o->set_lr(3e-4);
  o->set_beta1(0.9);
  o->set_beta2(0.95);
  o->set_eps(1e-8);
  o->set_weight_decay(0.1);
  o->set_grad_clip(1.0);
  o->set_max_skipped_in_a_row(10);
  auto* s = c.mutable_schedule();
  s->set_warmup_steps(10);
  s->set_total_steps(1000);
  s->set_final_lr_fraction(0.1);
  auto* k = c.mutable_checkpoint();
  k->set_keep_last(3);
  auto* mon = c.mutable_monitoring();
  mon->set_listen_address("127.0.0.1");
  mon->set_port(0);
  mon->set_log_every(1);
  auto* r = c.mutable_run();
  r->set_run_dir("runs/default");
  r->set_steps(100);
  r->set_global_batch(8);
  r->set_seed(42);
  r->set_device(dcformer::RunConfig::CPU);
  return c;
}

namespace {

// The field a parser error points at: the last "name:" (or "name {") before the error's column.
std::string field_at(const std::string& text, int line, int column) {
  std::istringstream is(text);
  std::string l;
  for (int i = 0; i <= line && std::getline(is, l); ++i) {
  }
  std::string head = l.substr(0, std::min<size_t>(l.size(), size_t(std::max(column, 0))));
  std::string best;
  for (size_t i = 0; i < head.size();) {
    if (std::isalpha(static_cast<unsigned char>(head[i])) || head[i] == '_') {
      size_t j = i;
      while (j < head.size() && (std::isalnum(static_cast<unsigned char>(head[j])) || head[j] == '_')) ++j;
      size_t k = j;
      while (k < head.size() && head[k] == ' ') ++k;
      if (k < head.size() && (head[k] == ':' || head[k] == '{')) best = head.substr(i, j - i);
      i = j;
    } else {
      ++i;
    }
  }
  return best;
}

class OneLineErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit OneLineErrors(const std::string& text) : text_(text) {}
  std::string first;
  void AddError(int line, int column, const std::string& message) override {
    if (!first.empty()) return;
    first = "line " + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": ";
    std::string f = field_at(text_, line, column);
    if (!f.empty() && message.find('"' + f + '"') == std::string::npos) first += "field " + f + ": ";
    first += message;
  }

 private:
  const std::string& text_;
  void AddWarning(int, int, const std::string&) override {}
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream is(s);
  while (std::getline(is, cur, sep)) out.push_back(cur);
  if (!s.empty() && s.back() == sep) out.push_back("");
  return out;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

template <typename T>
T parse_number(const std::string& field, const std::string& v) {
  std::istringstream is(v);
  T out{};
  is >> out;
  if (is.fail() || !is.eof())
    throw InputError("--set " + field + "=" + v + ": '" + v + "' is not a valid " +
                     (std::is_floating_point_v<T> ? "number" : "integer"));
  return out;
}

void set_scalar(Message* msg, const FieldDescriptor* f, const std::string& path, const std::string& v) {
  const Reflection* r = msg->GetReflection();
  const bool rep = f->is_repeated();
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      auto x = parse_number<int64_t>(path, v);
      if (x < INT32_MIN || x > INT32_MAX) throw InputError("--set " + path + "=" + v + ": out of range for int32");
      rep ? r->AddInt32(msg, f, int32_t(x)) : r->SetInt32(msg, f, int32_t(x));
      break;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      auto x = parse_number<int64_t>(path, v);
      rep ? r->AddInt64(msg, f, x) : r->SetInt64(msg, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      if (!v.empty() && v[0] == '-') throw InputError("--set " + path + "=" + v + ": must not be negative");
      auto x = parse_number<uint64_t>(path, v);
      rep ? r->AddUInt32(msg, f, uint32_t(x)) : r->SetUInt32(msg, f, uint32_t(x));
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      if (!v.empty() && v[0] == '-') throw InputError("--set " + path + "=" + v + ": must not be negative");
      auto x = parse_number<uint64_t>(path, v);
      rep ? r->AddUInt64(msg, f, x) : r->SetUInt64(msg, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      auto x = parse_number<double>(path, v);
      rep ? r->AddDouble(msg, f, x) : r->SetDouble(msg, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      auto x = parse_number<double>(path, v);
      rep ? r->AddFloat(msg, f, float(x)) : r->SetFloat(msg, f, float(x));
      break;
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool x;
      if (v == "true" || v == "1")
        x = true;
      else if (v == "false" || v == "0")
        x = false;
      else
        throw InputError("--set " + path + "=" + v + ": expected true or false");
      rep ? r->AddBool(msg, f, x) : r->SetBool(msg, f, x);
      break;
    }
    case FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(msg, f, v) : r->SetString(msg, f, v);
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      auto* ev = f->enum_type()->FindValueByName(v);
      if (!ev) {
        std::string names;
        for (int i = 1; i < f->enum_type()->value_count(); ++i)
          names += (i > 1 ? ", " : "") + f->enum_type()->value(i)->name();
        throw InputError("--set " + path + "=" + v + ": unknown value; expected one of " + names);
      }
      rep ? r->AddEnum(msg, f, ev) : r->SetEnum(msg, f, ev);
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      throw InputError("--set " + path + ": is a section, not a field");
  }
}

}  // namespace

void apply_override(dcformer::Config& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos) throw InputError("--set '" + assignment + "': expected section.field=value");
  std::string path = trim(assignment.substr(0, eq)), value = trim(assignment.substr(eq + 1));
  auto parts = split(path, '.');
  if (parts.size() < 2) throw InputError("--set " + path + ": expected section.field=value");
  Message* msg = &cfg;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts[i]);
    if (!f || f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE)
      throw InputError("--set " + path + ": unknown config section '" + parts[i] + "'");
    msg = msg->GetReflection()->MutableMessage(msg, f);
  }
  const FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts.back());
  if (!f) throw InputError("--set " + path + ": unknown field '" + parts.back() + "' in section " + parts[parts.size() - 2]);
  if (f->is_repeated()) {
    msg->GetReflection()->ClearField(msg, f);
    if (!value.empty())
      for (auto& item : split(value, ',')) set_scalar(msg, f, path, trim(item));
  } else {
    set_scalar(msg, f, path, value);
  }
}

dcformer::Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  dcformer::Config cfg = default_config();
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) throw InputError("config file " + path + ": cannot be opened");
    std::stringstream ss;
    ss << in.rdbuf();
    google::protobuf::TextFormat::Parser parser;
    const std::string text = ss.str();
    OneLineErrors errors(text);
    parser.RecordErrorsTo(&errors);
    if (!parser.MergeFromString(text, &cfg))
      throw InputError("config file " + path + ": " + (errors.first.empty() ? "parse error" : errors.first));
  }
  for (auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg);
  return cfg;
}

void validate_config(const dcformer::Config& c, int world) {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw InputError(msg);
  };
  const auto& m = c.model();
  need(m.kind() != dcformer::ModelConfig::KIND_UNSPECIFIED, "model.kind: must be DCFORMER or TRANSFORMER_PP");
  need(m.n_layers() > 0, "model.n_layers: must be positive (got " + std::to_string(m.n_layers()) + ")");
  need(m.d_model() > 0, "model.d_model: must be positive");
  need(m.n_heads() > 0, "model.n_heads: must be positive");
  need(m.head_dim() > 0 && m.head_dim() % 2 == 0, "model.head_dim: must be positive and even (RoPE pairs)");
  need(m.d_ff() > 0, "model.d_ff: must be positive");
  need(m.vocab_size() > 1, "model.vocab_size: must be at least 2");
  need(m.seq_len() > 0, "model.seq_len: must be positive");
  for (int w : m.window_pattern()) need(w >= 0, "model.window_pattern: windows must be >= 0 (0 = global)");
  need(m.norm_eps() > 0, "model.norm_eps: must be positive");
  need(m.qk_norm_eps() > 0, "model.qk_norm_eps: must be positive");
  need(m.rope_base() > 1, "model.rope_base: must be > 1");
  need(m.dyn_rank() >= 1 && m.dyn_rank() <= 16, "model.dyn_rank: must be in 1..16");
  need(m.init_std() > 0, "model.init_std: must be positive");
  need(m.query_chunk() > 0, "model.query_chunk: must be positive");
  const auto& p = c.parallel();
  need(p.tp() >= 1, "parallel.tp: must be >= 1");
  need(p.pp() >= 1, "parallel.pp: must be >= 1");
  need(p.dp() >= 0, "parallel.dp: must be >= 0 (0 = from the world size)");
  need(p.micro_batches() >= 1, "parallel.micro_batches: must be >= 1");
  // (Buckets of at most a few bytes would all-reduce the gradients one float at a time.)
  need(p.grad_bucket_mb() >= 1, "parallel.grad_bucket_mb: must be >= 1 (MiB per all-reduce bucket)");
  need(m.n_heads() % p.tp() == 0, "parallel.tp: model.n_heads (" + std::to_string(m.n_heads()) +
                                      ") is not divisible by tp (" + std::to_string(p.tp()) + ")");
  need(m.d_ff() % p.tp() == 0, "parallel.tp: model.d_ff is not divisible by tp");
  need(m.vocab_size() % p.tp() == 0, "parallel.tp: model.vocab_size is not divisible by tp (vocab-parallel head)");
  need(m.n_layers() >= p.pp(), "parallel.pp: model.n_layers (" + std::to_string(m.n_layers()) +
                                   ") is smaller than pp (" + std::to_string(p.pp()) + ")");
  if (p.pp() > 1)
    need(p.micro_batches() >= p.pp(), "parallel.micro_batches: " + std::to_string(p.micro_batches()) +
                                          " micro-batches is fewer than pp (" + std::to_string(p.pp()) + ")");
  if (p.stage_layers_size() > 0) {
    need(p.stage_layers_size() == p.pp(), "parallel.stage_layers: has " + std::to_string(p.stage_layers_size()) +
                                              " entries but pp is " + std::to_string(p.pp()));
    int sum = 0;
    for (int n : p.stage_layers()) {
      need(n >= 1, "parallel.stage_layers: every stage needs at least one layer");
      sum += n;
    }
    need(sum == m.n_layers(), "parallel.stage_layers: sums to " + std::to_string(sum) + ", model.n_layers is " +
                                  std::to_string(m.n_layers()));
  }
  need(c.data().format() != dcformer::DataConfig::FORMAT_UNSPECIFIED, "data.format: must be set");
  need(c.data().prefetch() >= 0, "data.prefetch: must be >= 0 (0: the default, 4 micro-batches ahead)");
  const auto& o = c.optimizer();
  need(o.lr() > 0 && std::isfinite(o.lr()), "optimizer.lr: must be positive");
  need(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1: must be in [0, 1)");
  need(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2: must be in [0, 1)");
  need(o.eps() > 0, "optimizer.eps: must be positive");
  need(o.weight_decay() >= 0, "optimizer.weight_decay: must be >= 0");
  need(o.grad_clip() >= 0, "optimizer.grad_clip: must be >= 0 (0 = off)");
  need(o.max_skipped_in_a_row() >= 1, "optimizer.max_skipped_in_a_row: must be >= 1");
  const auto& s = c.schedule();
  need(s.warmup_steps() >= 0, "schedule.warmup_steps: must be >= 0");
  need(s.total_steps() > s.warmup_steps(), "schedule.total_steps: must be larger than schedule.warmup_steps");
  need(s.final_lr_fraction() >= 0 && s.final_lr_fraction() <= 1, "schedule.final_lr_fraction: must be in [0, 1]");
  const auto& r = c.run();
  need(r.steps() >= 0, "run.steps: must be >= 0");
  need(r.global_batch() >= 1, "run.global_batch: must be >= 1");
  need(!r.run_dir().empty(), "run.run_dir: must be set");
  need(r.device() != dcformer::RunConfig::DEVICE_UNSPECIFIED, "run.device: must be CPU or CUDA");
  need(!(r.device() == dcformer::RunConfig::CPU && r.precision() == dcformer::RunConfig::BF16),
       "run.precision: BF16 needs run.device CUDA (the CPU path computes in fp32)");
  need(c.checkpoint().every_steps() >= 0, "checkpoint.every_steps: must be >= 0");
  need(c.checkpoint().keep_last() >= 1, "checkpoint.keep_last: must be >= 1");
  need(c.monitoring().port() >= 0 && c.monitoring().port() <= 65535, "monitoring.port: must be in 0..65535");
  need(c.monitoring().log_every() >= 1, "monitoring.log_every: must be >= 1");
  need(c.monitoring().profile_every() >= 0, "monitoring.profile_every: must be >= 0 (0: never)");
  if (world > 0) {
    int tp = p.tp(), pp = p.pp();
    need(world % (tp * pp) == 0, "parallel: world size " + std::to_string(world) + " is not divisible by tp*pp = " +
                                     std::to_string(tp * pp));
    int dp = p.dp() ? p.dp() : world / (tp * pp);
    need(dp * tp * pp == world, "parallel.dp: dp*tp*pp = " + std::to_string(dp * tp * pp) + " but the world has " +
                                    std::to_string(world) + " ranks");
    need(r.global_batch() % (dp * p.micro_batches()) == 0,
         "run.global_batch: " + std::to_string(r.global_batch()) + " is not divisible by dp*micro_batches = " +
             std::to_string(dp * p.micro_batches()));
  }
}

ModelSpec model_spec_from_config(const dcformer::Config& c) {
  const auto& m = c.model();
  ModelSpec s;
  s.compose = m.kind() == dcformer::ModelConfig::DCFORMER;
  s.n_layers = m.n_layers();
  s.d_model = m.d_model();
  s.n_heads = m.n_heads();
  s.head_dim = m.head_dim();
  s.d_ff = m.d_ff();
  s.vocab = m.vocab_size();
  s.seq_len = m.seq_len();
  s.window_pattern.assign(m.window_pattern().begin(), m.window_pattern().end());
  s.qk_norm = m.qk_norm();
  s.norm_eps = m.norm_eps();
  s.qk_norm_eps = m.qk_norm_eps();
  s.rope_base = m.rope_base();
  s.dyn_rank = m.dyn_rank();
  s.init_std = m.init_std();
  s.query_chunk = m.query_chunk();
  return s;
}

std::string config_to_text(const dcformer::Config& c) {
  std::string out;
  google::protobuf::TextFormat::PrintToString(c, &out);
  return out;
}

}  // namespace dcf
