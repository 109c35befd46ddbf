// Training data loader over Megatron .bin/.idx shards.
//
// The global sample stream is a pure function of the configuration and the sample index g:
//   1. blending: sample g goes to dataset d = argmax_d (w_d * (g + 1) - n_d) (Megatron's greedy rule,
//      n_d = samples of d so far), as its k-th sample;
//   2. epochs: k = e * N_d + j, with N_d samples per epoch of dataset d;
//   3. shuffle: j -> pi_{seed,d,e}(j), a seeded bijection of [0, N_d) (a Feistel network with cycle
//      walking: no index array in memory), or identity when shuffle is off (pre-shuffled data);
//   4. sample i of dataset d is either sequence i of its shards (pre-packed mode: EleutherAI's
//      pre-tokenized Pythia Pile, one seq_len+1-token sequence per sample) or tokens
//      [i * seq_len, i * seq_len + seq_len + 1) of the concatenation of its documents (document mode;
//      consecutive rows share one token, as in Megatron).
// Global batch t covers samples [start + t*B, start + (t+1)*B); DP rank r takes the contiguous slice
// [r*B/D, (r+1)*B/D) of it and returns it in micro-batches. Because the stream does not depend on the
// DP layout, the state (consumed samples + blend position) resumes exactly on any dp size.
// A background thread prepares micro-batches into a bounded queue.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dcf::data {

struct DatasetSpec {
  std::vector<std::string> prefixes;  // shards (.bin/.idx prefixes), read in this order
  double weight = 1.0;
};

enum class Packing {
  kPrePacked,  // one sequence of exactly seq_len + 1 tokens per sample
  kDocuments,  // documents concatenated and cut into seq_len + 1-token rows
};

struct LoaderConfig {
  std::vector<DatasetSpec> datasets;
  int64_t seq_len = 2048;
  Packing packing = Packing::kDocuments;
  bool shuffle = true;  // off for pre-shuffled data
  uint64_t seed = 1234;
  int64_t global_batch = 0;  // samples per optimizer step over all DP ranks
  int64_t micro_batch = 0;   // rows per next() on one rank
  int prefetch = 4;          // micro-batches prepared ahead (0: none, produced in next())
};

// Where the stream stands: saved in checkpoints, restored exactly (also on another dp size).
struct LoaderState {
  uint64_t consumed_samples = 0;             // global samples of completed steps
  uint64_t epoch = 0;                        // completed passes over the first dataset (informational)
  std::vector<uint64_t> dataset_samples;     // blend position: samples taken from each dataset
  uint64_t fingerprint = 0;                  // of the data configuration; checked on restore

  std::string to_string() const;             // one line, e.g. "v1 consumed=... epoch=... blend=a,b fp=..."
  static LoaderState parse(const std::string& s);  // InputError on a malformed string
  bool operator==(const LoaderState&) const = default;
};

struct Batch {
  int64_t rows = 0, seq_len = 0;
  std::vector<int32_t> ids;      // [rows, seq_len] row-major: tokens 0..seq_len-1 of each sample
  std::vector<int32_t> targets;  // [rows, seq_len]: tokens 1..seq_len (the next-token labels)
  std::vector<uint64_t> sample_ids;      // global stream index g of each row
  std::vector<uint32_t> dataset;         // blended dataset of each row
  std::vector<uint64_t> dataset_sample;  // sample index i within that dataset (after shuffling)
  uint64_t step = 0;   // global batch number since consumed_samples = 0 (assuming a fixed global batch)
  int64_t micro = 0;   // micro-batch number within this rank's slice of the step
};

class DataLoader {
 public:
  // Opens (mmaps) and validates every shard; InputError for a bad file or configuration.
  DataLoader(const LoaderConfig& config, int dp_rank, int dp_size);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();
  LoaderState state() const;
  void restore(const LoaderState& state);

  int64_t micro_batches_per_step() const;
  uint64_t samples_per_epoch(size_t dataset) const;
  uint64_t queue_depth() const;  // micro-batches ready in the prefetch queue (for monitoring)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace dcf::data
