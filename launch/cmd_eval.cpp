// `dcformer eval --checkpoint DIR --data PREFIX --batches N`: mean token loss and perplexity of a
// checkpoint's weights on data, forward only. The model comes from the checkpoint's own config; its
// weights are assembled from whatever layout saved them. Under mpirun the batches are split over the
// ranks (each holds the whole model). The data are read from the start as consecutive windows of
// seq_len + 1 tokens (neighbours share one token, as in training's document mode): a Megatron
// PREFIX.bin/.idx dataset, or a raw token file in the checkpoint's data.format (or --format).
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "launch/commands.h"
#include "launch/mpi_env.h"
#include "model/dcformer.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#ifdef DCF_HAVE_DATALOADER
#include "dataloader/indexed_dataset.h"
#endif

namespace dcf {

namespace {

struct EvalOptions {
  std::string checkpoint, data, format;
  int64_t batches = 0, batch_size = 8;
  bool json = false;
};

// The first `count` tokens of the data, widened to int32.
std::vector<int32_t> read_tokens(const EvalOptions& o, const dcformer::Config& cfg, int64_t count) {
  namespace fs = std::filesystem;
  std::vector<int32_t> out;
  out.reserve(size_t(count));
  if (fs::exists(o.data + ".idx") && fs::exists(o.data + ".bin")) {
#ifdef DCF_HAVE_DATALOADER
    data::IndexedDataset ds(o.data);
    for (uint64_t i = 0; i < ds.num_sequences() && int64_t(out.size()) < count; ++i) {
      const int64_t len = std::min<int64_t>(ds.sequence_length(i), count - int64_t(out.size()));
      const size_t at = out.size();
      out.resize(at + size_t(len));
      ds.read(i, 0, uint64_t(len), out.data() + at);
    }
#else
    throw InputError("--data " + o.data + ": .bin/.idx datasets need the dataloader (not in this build)");
#endif
  } else {
    std::string fmt = o.format;
    if (fmt.empty()) {
      switch (cfg.data().format()) {
        case dcformer::DataConfig::TOKENS_U16: fmt = "u16"; break;
        case dcformer::DataConfig::TOKENS_I32: fmt = "i32"; break;
        default: fmt = "bytes"; break;
      }
    }
    const size_t width = fmt == "u16" ? 2 : fmt == "i32" ? 4 : 1;
    std::ifstream in(o.data, std::ios::binary);
    if (!in) throw InputError("--data " + o.data + ": cannot open (neither a .bin/.idx prefix nor a token file)");
    std::vector<unsigned char> buf(size_t(count) * width);
    in.read(reinterpret_cast<char*>(buf.data()), std::streamsize(buf.size()));
    const size_t got = size_t(in.gcount()) / width;
    for (size_t i = 0; i < got; ++i) {
      const unsigned char* p = buf.data() + i * width;
      int32_t v = width == 1 ? int32_t(p[0]) : width == 2 ? int32_t(uint16_t(p[0] | (p[1] << 8))) : [&] {
        int32_t x;
        std::memcpy(&x, p, 4);
        return x;
      }();
      out.push_back(v);
    }
  }
  return out;
}

// Forward passes over this rank's share of the batches; returns the sum of token losses.
double eval_loss_sum(const EvalOptions& o, const std::string& dir, const ckpt::Manifest& m,
                     const dcformer::Config& cfg, int rank, int world) {
  const ModelSpec spec = model_spec_from_config(cfg);
  // The whole model on every rank, weights assembled from the saved pieces.
  DcformerModel model(spec, ShardSpec{}, DType::f32, Device::cpu());
  std::vector<ckpt::ReadPiece> targets;
  for (auto& p : model.params())
    targets.push_back({ckpt::piece_of(p, ckpt::kKindParam), model.flat_values().data<float>() + model.param_offset(p)});
  ckpt::load_pieces(dir, m, targets);

  const int64_t T = spec.seq_len, B = o.batch_size;
  const int64_t need = o.batches * B * T + 1;
  const std::vector<int32_t> tokens = read_tokens(o, cfg, need);
  if (int64_t(tokens.size()) < need)
    throw InputError("--data " + o.data + ": " + std::to_string(tokens.size()) + " tokens; " +
                     std::to_string(o.batches) + " batches of " + std::to_string(B) + " x " + std::to_string(T) +
                     " need " + std::to_string(need));
  for (int32_t t : tokens)
    if (t < 0 || t >= spec.vocab)
      throw InputError("--data " + o.data + ": token id " + std::to_string(t) + " outside the model's vocabulary of " +
                       std::to_string(spec.vocab));
  double loss_sum = 0;
  for (int64_t b = rank; b < o.batches; b += world) {
    MicroBatch mb;
    mb.batch = B;
    mb.ids = Tensor::empty({B * T}, DType::i32);
    mb.targets = Tensor::empty({B * T}, DType::i32);
    for (int64_t r = 0; r < B; ++r) {
      const int32_t* w = tokens.data() + (b * B + r) * T;
      std::memcpy(mb.ids.data<int32_t>() + r * T, w, size_t(T) * 4);
      std::memcpy(mb.targets.data<int32_t>() + r * T, w + 1, size_t(T) * 4);
    }
    model.forward(mb, nullptr);
    loss_sum += mb.loss_sum;
  }
  return loss_sum;
}

int run_eval(const EvalOptions& o) {
  // Problems every rank sees alike are reported before MPI starts (exit 2 everywhere).
  if (o.batches < 1 || o.batch_size < 1) throw InputError("--batches and --batch-size must be >= 1");
  const std::string dir = ckpt::resolve_checkpoint(o.checkpoint);
  const ckpt::Manifest m = ckpt::read_manifest(dir);
  dcformer::Config cfg;
  if (!cfg.ParseFromString(m.config())) throw InputError("checkpoint " + dir + ": the saved config does not parse");
  int argc = 0;
  char** argv = nullptr;
  MpiSession mpi(&argc, &argv);
  if (mpi.world_size > 1 && !std::getenv("OPENBLAS_NUM_THREADS")) set_cpu_gemm_threads(1);
  // Declared outside the try: on failure report_fatal ends the job before any collective destructor.
  std::unique_ptr<ProcessGrid> grid;
  double loss = 0;
  const int64_t T = cfg.model().seq_len(), B = o.batch_size;
  const double n_tokens = double(o.batches * B * T);
  try {
    grid = std::make_unique<ProcessGrid>(MPI_COMM_WORLD, GridShape{1, mpi.world_size, 1});
    Tensor t = Tensor::zeros({1}, DType::f64);
    t.data<double>()[0] = eval_loss_sum(o, dir, m, cfg, grid->world_rank(), mpi.world_size);
    grid->world().all_reduce(t, ReduceOp::sum);
    loss = t.data<double>()[0] / n_tokens;
  } catch (const DcfError& e) {
    return report_fatal(e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return report_fatal(e.what(), kExitFailure);
  }
  if (mpi.world_rank == 0) {
    if (o.json) {
      nlohmann::json j = {{"checkpoint", dir}, {"step", m.step()},     {"batches", o.batches},
                          {"batch_size", B},   {"seq_len", T},         {"tokens", int64_t(n_tokens)},
                          {"loss", loss},      {"perplexity", std::exp(loss)}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("eval %s (step %lld) on %s: %lld batches x %lld x %lld tokens: loss %.6f, perplexity %.4f\n",
                  dir.c_str(), (long long)m.step(), o.data.c_str(), (long long)o.batches, (long long)B, (long long)T,
                  loss, std::exp(loss));
    }
    std::fflush(stdout);
  }
  grid.reset();
  return 0;
}

}  // namespace

CommandRunner add_eval_command(CLI::App& app) {
  auto opt = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "mean loss and perplexity of a checkpoint on data (no training)");
  cmd->add_option("--checkpoint", opt->checkpoint, "checkpoint directory, or checkpoint root (uses `latest`)")
      ->required();
  cmd->add_option("--data", opt->data, "PREFIX of a .bin/.idx dataset, or a raw token file")->required();
  cmd->add_option("--batches", opt->batches, "number of batches")->required();
  cmd->add_option("--batch-size", opt->batch_size, "sequences per batch")->capture_default_str();
  cmd->add_option("--format", opt->format, "raw token file format (default: the checkpoint's data.format)")
      ->check(CLI::IsMember({"bytes", "u16", "i32"}));
  cmd->add_flag("--json", opt->json, "print one JSON line");
  return [opt]() { return run_eval(*opt); };
}

}  // namespace dcf
