// `dcformer ckpt info|verify|export-hf`: look into a checkpoint, check every checksum, or export its
// weights for the official DCFormer PyTorch code. DIR is a step directory or a checkpoint root (then its
// `latest`). A damaged checkpoint is exit status 2 with one line naming the file and the tensor; the
// work is in checkpoint/ (checkpoint.h, export_hf.h).
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>

#include "checkpoint/checkpoint.h"
#include "checkpoint/export_hf.h"
#include "launch/commands.h"
#include "runtime/config.h"

namespace dcf {

namespace {

struct CkptOptions {
  std::string dir, out, dtype = "f32";
  bool tensors = false, json = false;
};

template <typename List>
std::string join(const List& v) {
  std::string s;
  for (auto x : v) {
    if (!s.empty()) s += ',';
    s += std::to_string(x);
  }
  return s;
}

dcformer::Config config_of(const ckpt::Manifest& m, const std::string& dir) {
  dcformer::Config cfg;
  if (!cfg.ParseFromString(m.config())) throw InputError("checkpoint " + dir + ": the saved config does not parse");
  return cfg;
}

int run_info(const CkptOptions& o) {
  const std::string dir = ckpt::resolve_checkpoint(o.dir);
  ckpt::Manifest m = ckpt::read_manifest(dir);
  if (o.json) {
    ckpt::Manifest shown = m;
    shown.clear_config();  // binary; config_text has it
    std::string js;
    google::protobuf::util::JsonPrintOptions jo;
    jo.add_whitespace = true;
    jo.preserve_proto_field_names = true;
    jo.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(shown, &js, jo);
    std::printf("%s\n", js.c_str());
    return 0;
  }
  const dcformer::Config cfg = config_of(m, dir);
  const ModelSpec s = model_spec_from_config(cfg);
  int64_t bytes = 0;
  std::map<std::string, int64_t> by_kind, pieces_by_kind;
  std::set<std::string> params;
  for (const auto& t : m.tensors()) {
    bytes += t.bytes();
    by_kind[t.kind()] += t.bytes();
    ++pieces_by_kind[t.kind()];
    params.insert(t.param());
  }
  int64_t file_bytes = 0;
  for (const auto& f : m.files()) file_bytes += f.bytes();
  std::printf("checkpoint %s\n", dir.c_str());
  std::printf("  step %lld, written %s, format %u, checksums %s\n", (long long)m.step(), m.created_utc().c_str(),
              m.format_version(), m.checksum_algorithm().c_str());
  std::printf("  model %s: %lld layers, d_model %lld, %lld heads x %lld, d_ff %lld, vocab %lld, seq_len %lld "
              "(%lld parameters)\n",
              cfg.model().kind() == dcformer::ModelConfig::TRANSFORMER_PP ? "Transformer++" : "DCFormer++",
              (long long)s.n_layers, (long long)s.d_model, (long long)s.n_heads, (long long)s.head_dim,
              (long long)s.d_ff, (long long)s.vocab, (long long)s.seq_len, (long long)s.param_count());
  std::printf("  saved on tp %d x dp %d x pp %d (world %d), ZeRO-1 %s\n", m.grid().tp(), m.grid().dp(), m.grid().pp(),
              m.grid().world(), m.grid().zero1() ? "on" : "off");
  std::printf("  schedule: step %lld of %lld, next lr %.6g, skipped steps %lld (%d in a row)\n",
              (long long)m.schedule().step(), (long long)m.schedule().total_steps(), m.schedule().next_lr(),
              (long long)m.schedule().skipped_total(), m.schedule().skipped_in_a_row());
  std::printf("  data: %llu samples consumed, seed %llu, %s\n", (unsigned long long)m.data().consumed_samples(),
              (unsigned long long)m.data().seed(), m.data().train_path().c_str());
  std::printf("  rng: %s, init seed %llu, data seed %llu\n", m.rng().generator().c_str(),
              (unsigned long long)m.rng().init_seed(), (unsigned long long)m.rng().data_seed());
  std::printf("  %d files, %.2f MB; %zu parameters in %d pieces, %.2f MB of tensors:", m.files_size(),
              double(file_bytes) / 1e6, params.size(), m.tensors_size(), double(bytes) / 1e6);
  for (const auto& [k, b] : by_kind)
    std::printf(" %s %.2f MB (%lld pieces)", k.c_str(), double(b) / 1e6, (long long)pieces_by_kind[k]);
  std::printf("\n");
  if (o.tensors) {
    for (const auto& t : m.tensors()) {
      const std::string off = join(t.offset()), blk = join(t.block_shape());
      std::printf("  %-40s %s  offset [%s] block [%s] elements [%lld, %lld)  xxh64 %016llx\n", t.name().c_str(),
                  t.file().c_str(), off.c_str(), blk.c_str(), (long long)t.element_begin(),
                  (long long)t.element_end(), (unsigned long long)t.checksum());
    }
  }
  return 0;
}

int run_verify(const CkptOptions& o) {
  const std::string dir = ckpt::resolve_checkpoint(o.dir);
  ckpt::VerifyReport r = ckpt::verify_checkpoint(dir);
  std::printf("OK %s: %lld files, %lld tensor pieces, %.2f MB: every checksum (xxh64) matches, every tensor "
              "covered exactly once\n",
              dir.c_str(), (long long)r.files, (long long)r.tensors, double(r.bytes) / 1e6);
  return 0;
}

int run_export(const CkptOptions& o) {
  const std::string dir = ckpt::resolve_checkpoint(o.dir);
  const ckpt::Manifest m = ckpt::read_manifest(dir);
  const ModelSpec spec = model_spec_from_config(config_of(m, dir));
  ckpt::ExportOptions eo;
  eo.dtype = o.dtype;
  ckpt::ExportReport r = ckpt::export_hf(dir, spec, o.out, eo);
  std::printf("exported %s (step %lld) to %s: model.safetensors (%zu tensors, %.2f MB, %s) and config.json\n",
              dir.c_str(), (long long)m.step(), o.out.c_str(), r.tensors.size(), double(r.bytes) / 1e6,
              o.dtype.c_str());
  return 0;
}

}  // namespace

CommandRunner add_ckpt_command(CLI::App& app) {
  auto opt = std::make_shared<CkptOptions>();
  CLI::App* cmd = app.add_subcommand("ckpt", "inspect, verify or export a checkpoint");
  cmd->require_subcommand(1);
  CLI::App* info = cmd->add_subcommand("info", "step, model, layout, state and size of a checkpoint");
  info->add_option("DIR", opt->dir, "checkpoint directory, or checkpoint root (uses `latest`)")->required();
  info->add_flag("--tensors", opt->tensors, "list every tensor piece");
  info->add_flag("--json", opt->json, "print the whole manifest as JSON");
  CLI::App* verify = cmd->add_subcommand("verify", "read every tensor and check its checksum and coverage");
  verify->add_option("DIR", opt->dir, "checkpoint directory, or checkpoint root (uses `latest`)")->required();
  CLI::App* exp = cmd->add_subcommand(
      "export-hf", "write safetensors + config.json for the official DCFormer PyTorch code (docs/hf_export.md)");
  exp->add_option("DIR", opt->dir, "checkpoint directory, or checkpoint root (uses `latest`)")->required();
  exp->add_option("OUT", opt->out, "output directory")->required();
  exp->add_option("--dtype", opt->dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  return [opt, info, verify, exp]() {
    if (info->parsed()) return run_info(*opt);
    if (verify->parsed()) return run_verify(*opt);
    if (exp->parsed()) return run_export(*opt);
    return 2;
  };
}

}  // namespace dcf
