// Checkpoint benchmark (not a test): save stall and write throughput of one rank holding a whole model
// (default configs/dcformer_405m.textproto: fp32 weights + both Adam moments), synchronous and
// asynchronous, against `dd ... conv=fsync` of the same size to the same directory in the same run.
//   bench_checkpoint [--config C] [--dir D] [--repeat N]
// Prints a table and one JSON line.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "checkpoint/checksum.h"
#include "model/dcformer.h"
#include "runtime/config.h"

namespace fs = std::filesystem;
using namespace dcf;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class SoloComm : public Communicator {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  std::string name() const override { return "solo"; }
  void all_reduce(Tensor&, ReduceOp) override {}
  void all_gather(const Tensor& s, Tensor& r) override { r.copy_from(s); }
  void reduce_scatter(const Tensor& s, Tensor& r) override { r.copy_from(s); }
  void all_to_all(const Tensor& s, Tensor& r) override { r.copy_from(s); }
  void broadcast(Tensor&, int) override {}
  void send(const Tensor&, int, int) override {}
  void recv(Tensor&, int, int) override {}
  void send_async(const Tensor&, int, int) override {}
  void wait_sends() override {}
  void barrier() override {}
};

}  // namespace

int main(int argc, char** argv) {
  std::string config = std::string(DCF_SOURCE_DIR) + "/configs/dcformer_405m.textproto";
  fs::path dir = fs::temp_directory_path() / "dcf_bench_checkpoint";
  int repeat = 2;
  std::string only, skip_dd;
  int reserve_wait_s = 0;  // seconds of "training" between the start and the first async save
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];  // sync | async
    if (!std::strcmp(argv[i], "--skip-dd")) skip_dd = argv[i + 1];
    if (!std::strcmp(argv[i], "--reserve-wait")) reserve_wait_s = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--config")) config = argv[i + 1];
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--repeat")) repeat = std::atoi(argv[i + 1]);
  }
  const ModelSpec spec = model_spec_from_config(load_config(config, {}));
  DcformerModel model(spec, ShardSpec{}, DType::f32, Device::cpu());
  const int64_t n = model.flat_values().numel();
  Tensor m = Tensor::empty({n}, DType::f32), v = Tensor::empty({n}, DType::f32);
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    float* p[3] = {model.flat_values().data<float>(), m.data<float>(), v.data<float>()};
    for (int k = 0; k < 3; ++k)
      for (int64_t i = 0; i < n; i += 4096) {
        const float x = nd(rng);
        for (int64_t j = i; j < std::min(n, i + 4096); ++j) p[k][j] = x + float(j - i) * 1e-7f;
      }
  }
  std::vector<ckpt::WritePiece> pieces;
  const Tensor* src[3] = {&model.flat_values(), &m, &v};
  const char* kinds[3] = {ckpt::kKindParam, ckpt::kKindAdamM, ckpt::kKindAdamV};
  for (auto& p : model.params())
    for (int k = 0; k < 3; ++k)
      pieces.push_back({ckpt::piece_of(p, kinds[k]), src[k]->data<float>() + model.param_offset(p)});
  const double bytes = double(n) * 3 * 4;
  std::printf("model %s: %lld parameters; checkpoint %.2f GB (fp32 weights + 2 moments) in %zu datasets\n",
              config.c_str(), (long long)n, bytes / 1e9, pieces.size());
  fs::remove_all(dir);
  fs::create_directories(dir);

  // The disk's own rate: dd of the same size, flushed (conv=fsync), same directory.
  nlohmann::json out = {{"bytes", bytes}, {"params", n}};
  // dd of the same size, flushed (conv=fsync), into the same directory: from /dev/zero, and (after the
  // synchronous saves) a copy of the checkpoint file itself, so that the bytes are the same.
  auto dd = [&](const std::string& input, const std::string& key) {
    const int64_t mb = int64_t(bytes / (1 << 20));
    const std::string cmd = "dd if=" + input + " of=" + (dir / "dd.bin").string() + " bs=1M count=" +
                            std::to_string(mb) + " conv=fsync 2>&1 | tail -1";
    auto t0 = Clock::now();
    FILE* p = popen(cmd.c_str(), "r");
    char line[512] = {0};
    if (p) {
      if (!std::fgets(line, sizeof line, p)) line[0] = 0;
      pclose(p);
    }
    const double s = since(t0);
    const double copied = double(fs::file_size(dir / "dd.bin"));
    fs::remove(dir / "dd.bin");
    std::printf("dd if=%s conv=fsync: %.2f s, %.3f GB/s  (dd: %s)", input.c_str(), s, copied / s / 1e9, line);
    out[key + "_s"] = s;
    out[key + "_gb_per_s"] = copied / s / 1e9;
  };
  if (skip_dd.empty()) dd("/dev/zero", "dd_zero");
  {
    std::vector<unsigned char> buf(size_t(1) << 30, 7);
    auto t0 = Clock::now();
    volatile uint64_t h = ckpt::xxh64(buf.data(), buf.size());
    (void)h;
    const double s = since(t0);
    std::printf("xxh64: %.2f GB/s on one core\n", 1.073741824 / s);
    out["xxh64_gb_per_s"] = 1.073741824 / s;
  }
  SoloComm comm;
  for (bool async : {false, true}) {
    if (!only.empty() && only != (async ? "async" : "sync")) continue;
    ckpt::CheckpointOptions o;
    o.dir = (dir / "ckpt").string();
    o.async = async;
    o.keep_last = 1;
    ckpt::Checkpointer ck(o, comm, ckpt::ShardFileAttrs{});
    ck.clean_stale();
    if (async) {  // as the trainer does at start: the snapshot buffer is allocated in the background
      ck.reserve_snapshot(size_t(n) * 3);
      std::this_thread::sleep_for(std::chrono::seconds(reserve_wait_s));
    }
    nlohmann::json runs = nlohmann::json::array();
    for (int r = 0; r < repeat; ++r) {
      ckpt::Manifest h;
      h.set_step(r + 1);
      auto t0 = Clock::now();
      ck.save(h, pieces);
      const double stall = since(t0);
      ck.wait();
      const double total = since(t0);
      const auto& st = ck.last_stats();
      std::printf("%-5s save %d: stall %.3f s, write %.2f s (%.3f GB/s incl. fsync), committed after "
                  "%.2f s\n",
                  async ? "async" : "sync", r + 1, stall, st.write_s, bytes / st.write_s / 1e9, total);
      runs.push_back({{"stall_s", stall}, {"write_s", st.write_s}, {"gb_per_s", bytes / st.write_s / 1e9},
                      {"committed_s", total}});
    }
    out[async ? "async" : "sync"] = runs;
    if (!async && skip_dd.empty()) dd((dir / "ckpt" / ckpt::step_dir_name(repeat) / "rank_00000.h5").string(), "dd_copy");
  }
  fs::remove_all(dir);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
