// DataLoader throughput on one core: batches produced synchronously in the calling thread
// (prefetch 0), and as seen by a consumer with the background prefetch thread. Datasets are
// written to a temporary directory first (so they are read from the page cache).
//   dcf_loader_bench [million tokens = 64] [seq_len = 2048] [micro batch = 8]
// Target: > 100 x the ~150K tokens/s that a 405M model consumes on one H200 = 15M tokens/s.
#include <cstdio>
#include <random>

#include "bench/dataloader/bench_util.h"
#include "dataloader/indexed_dataset.h"
#include "dataloader/loader.h"

using namespace dcf::data;
using namespace dcf::data::bench;

namespace {

double run(const LoaderConfig& c, uint64_t min_tokens, uint64_t* tokens_out) {
  DataLoader l(c, 0, 1);
  l.next();  // start-up (thread start, first batch) is not timed
  uint64_t tokens = 0;
  uint64_t checksum = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (tokens < min_tokens) {
    Batch b = l.next();
    tokens += static_cast<uint64_t>(b.rows * b.seq_len);
    checksum += static_cast<uint64_t>(b.ids[0]) + static_cast<uint64_t>(b.targets.back());
  }
  double s = seconds_since(t0);
  if (checksum == 42) std::printf(" ");
  *tokens_out = tokens;
  return tokens / s;
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t mtokens = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64;
  const int64_t seq_len = argc > 2 ? std::atoll(argv[2]) : 2048;
  const int64_t micro = argc > 3 ? std::atoll(argv[3]) : 8;
  TempDir dir;
  std::mt19937_64 rng(1);
  {
    IndexedDatasetWriter docs(dir / "docs", TokenDtype::kU16);
    std::vector<int32_t> d;
    uint64_t total = 0;
    while (total < mtokens * 1000000) {
      d.resize(1 + rng() % 2000);
      for (auto& t : d) t = static_cast<int32_t>(rng() % 50277);
      docs.add_document(d);
      total += d.size();
    }
    docs.finish();
    IndexedDatasetWriter packed(dir / "packed", TokenDtype::kU16);
    d.resize(static_cast<size_t>(seq_len) + 1);
    for (uint64_t i = 0; i < mtokens * 1000000 / d.size(); ++i) {
      for (auto& t : d) t = static_cast<int32_t>(rng() % 50277);
      packed.add_document(d);
    }
    packed.finish();
  }
  const std::string title = "loader (seq_len " + std::to_string(seq_len) + ", micro " + std::to_string(micro) + ")";
  std::printf("%-44s %14s %10s\n", title.c_str(), "tokens/s", "x 150K/s");
  struct Case {
    const char* name;
    Packing packing;
    bool shuffle;
    int prefetch;
  } cases[] = {
      {"documents, shuffled, no prefetch (1 core)", Packing::kDocuments, true, 0},
      {"documents, shuffled, prefetch thread", Packing::kDocuments, true, 4},
      {"pre-packed, in order, no prefetch (1 core)", Packing::kPrePacked, false, 0},
      {"pre-packed, in order, prefetch thread", Packing::kPrePacked, false, 4},
  };
  for (const auto& cs : cases) {
    LoaderConfig c;
    c.datasets = {{{dir / (cs.packing == Packing::kDocuments ? "docs" : "packed")}, 1.0}};
    c.seq_len = seq_len;
    c.packing = cs.packing;
    c.shuffle = cs.shuffle;
    c.global_batch = micro * 4;
    c.micro_batch = micro;
    c.prefetch = cs.prefetch;
    uint64_t tokens;
    double tps = run(c, mtokens * 1000000 * 2, &tokens);
    std::printf("%-44s %14.0f %10.0f\n", cs.name, tps, tps / 150e3);
    std::printf("{\"bench\":\"loader\",\"case\":\"%s\",\"seq_len\":%lld,\"micro_batch\":%lld,\"tokens\":%llu,"
                "\"tokens_per_s\":%.0f,\"x_h200_405m\":%.1f}\n",
                cs.name, static_cast<long long>(seq_len), static_cast<long long>(micro),
                static_cast<unsigned long long>(tokens), tps, tps / 150e3);
  }
  return 0;
}
