// DataLoader: document packing and pre-packed reading, seeded shuffle (a permutation per epoch),
// weighted blending, DP slicing, prefetch, and exact resume after a restore on dp 2 -> 2 and 2 -> 4.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "dataloader/indexed_dataset.h"
#include "dataloader/loader.h"
#include "kernels/error.h"
#include "tests/dataloader/test_util.h"

namespace dcf::data::testing {
namespace {

// A dataset whose token at stream position p is (base + p) % 50000, in documents of varied length.
std::vector<int32_t> write_stream_dataset(const std::string& prefix, uint64_t tokens, int32_t base, uint64_t seed) {
  IndexedDatasetWriter w(prefix, TokenDtype::kU16);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> stream;
  while (stream.size() < tokens) {
    size_t len = 1 + rng() % 40;
    std::vector<int32_t> doc;
    for (size_t i = 0; i < len && stream.size() < tokens; ++i) {
      doc.push_back(static_cast<int32_t>((base + stream.size()) % 50000));
      stream.push_back(doc.back());
    }
    w.add_document(doc);
  }
  w.finish();
  return stream;
}

void write_prepacked(const std::string& prefix, uint64_t samples, int64_t seq_len, int32_t base) {
  IndexedDatasetWriter w(prefix, TokenDtype::kI32);
  for (uint64_t i = 0; i < samples; ++i) {
    std::vector<int32_t> s(static_cast<size_t>(seq_len) + 1);
    for (size_t k = 0; k < s.size(); ++k) s[k] = base + static_cast<int32_t>(i * 1000 + k);
    w.add_document(s);
  }
  w.finish();
}

LoaderConfig config(std::vector<DatasetSpec> ds, int64_t seq_len, int64_t global_batch, int64_t micro) {
  LoaderConfig c;
  c.datasets = std::move(ds);
  c.seq_len = seq_len;
  c.global_batch = global_batch;
  c.micro_batch = micro;
  c.seed = 7;
  return c;
}

// One global step gathered over all dp ranks in rank order: per row its stream index g, its
// (dataset, sample) and its tokens.
struct Step {
  std::vector<uint64_t> g, source;
  std::vector<std::vector<int32_t>> tokens;
  bool operator==(const Step&) const = default;
};

struct Loaders {
  std::vector<std::unique_ptr<DataLoader>> ranks;
  Loaders(const LoaderConfig& c, int dp) {
    for (int r = 0; r < dp; ++r) ranks.push_back(std::make_unique<DataLoader>(c, r, dp));
  }
  Step step() {
    Step s;
    for (auto& l : ranks)
      for (int64_t m = 0; m < l->micro_batches_per_step(); ++m) {
        Batch b = l->next();
        for (int64_t r = 0; r < b.rows; ++r) {
          s.g.push_back(b.sample_ids[r]);
          s.source.push_back(b.dataset[r] * 1000000ull + b.dataset_sample[r]);
          s.tokens.emplace_back(b.ids.begin() + r * b.seq_len, b.ids.begin() + (r + 1) * b.seq_len);
        }
      }
    return s;
  }
};

TEST(Loader, DocumentPackingCutsTheStreamIntoOverlappingRows) {
  TempDir dir;
  auto s0 = write_stream_dataset(dir / "a0", 3000, 0, 1);
  auto s1 = write_stream_dataset(dir / "a1", 2000, 3000, 2);  // second shard continues the stream
  std::vector<int32_t> stream = s0;
  stream.insert(stream.end(), s1.begin(), s1.end());
  LoaderConfig c = config({{{dir / "a0", dir / "a1"}, 1.0}}, 16, 8, 4);
  c.shuffle = false;
  DataLoader l(c, 0, 1);
  EXPECT_EQ(l.samples_per_epoch(0), (5000u - 1) / 16);
  for (int step = 0; step < 50; ++step) {
    for (int m = 0; m < 2; ++m) {
      Batch b = l.next();
      ASSERT_EQ(b.rows, 4);
      for (int64_t r = 0; r < b.rows; ++r) {
        uint64_t i = b.dataset_sample[r];
        EXPECT_EQ(i, (step * 8 + m * 4 + r) % l.samples_per_epoch(0));
        for (int64_t k = 0; k < 16; ++k) {
          ASSERT_EQ(b.ids[r * 16 + k], stream[i * 16 + k]) << "sample " << i << " token " << k;
          ASSERT_EQ(b.targets[r * 16 + k], stream[i * 16 + k + 1]);
        }
      }
    }
  }
}

TEST(Loader, PrePackedSequencesAreReadInOrder) {
  TempDir dir;
  write_prepacked(dir / "p0", 10, 8, 0);
  write_prepacked(dir / "p1", 6, 8, 100000);
  LoaderConfig c = config({{{dir / "p0", dir / "p1"}, 1.0}}, 8, 4, 2);
  c.packing = Packing::kPrePacked;
  c.shuffle = false;
  DataLoader l(c, 0, 1);
  ASSERT_EQ(l.samples_per_epoch(0), 16u);
  for (uint64_t n = 0; n < 40; n += 2) {
    Batch b = l.next();
    for (int r = 0; r < 2; ++r) {
      uint64_t i = (n + r) % 16;
      int32_t base = i < 10 ? static_cast<int32_t>(i * 1000) : 100000 + static_cast<int32_t>((i - 10) * 1000);
      EXPECT_EQ(b.ids[r * 8], base);
      EXPECT_EQ(b.ids[r * 8 + 7], base + 7);
      EXPECT_EQ(b.targets[r * 8 + 7], base + 8);
    }
  }
  // A sequence of the wrong length is refused with the file and sequence named.
  write_prepacked(dir / "p2", 3, 9, 0);
  c.datasets = {{{dir / "p2"}, 1.0}};
  try {
    DataLoader bad(c, 0, 1);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("p2.idx: sequence 0 has 10 tokens"), std::string::npos) << e.what();
  }
}

TEST(Loader, ShuffleIsASeededPermutationPerEpoch) {
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 101 + 1, 0, 3);
  LoaderConfig c = config({{{dir / "a"}, 1.0}}, 16, 1, 1);
  DataLoader l(c, 0, 1);
  const uint64_t n = l.samples_per_epoch(0);
  ASSERT_EQ(n, 101u);
  std::vector<std::vector<uint64_t>> epochs(3);
  for (auto& e : epochs) {
    for (uint64_t i = 0; i < n; ++i) e.push_back(l.next().dataset_sample[0]);
    std::vector<uint64_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all);  // every sample exactly once per epoch
  }
  EXPECT_NE(epochs[0], epochs[1]);
  std::vector<uint64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epochs[0], identity);
  EXPECT_EQ(l.state().epoch, 3u);
  LoaderConfig c2 = c;
  c2.seed = 8;
  DataLoader l2(c2, 0, 1), l3(c, 0, 1);
  std::vector<uint64_t> other, same;
  for (uint64_t i = 0; i < n; ++i) other.push_back(l2.next().dataset_sample[0]), same.push_back(l3.next().dataset_sample[0]);
  EXPECT_NE(other, epochs[0]);
  EXPECT_EQ(same, epochs[0]);
}

TEST(Loader, BlendingFollowsTheWeights) {
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 50 + 1, 0, 4);
  write_stream_dataset(dir / "b", 16 * 7 + 1, 20000, 5);
  LoaderConfig c = config({{{dir / "a"}, 3.0}, {{dir / "b"}, 1.0}}, 16, 4, 2);
  DataLoader l(c, 0, 1);
  uint64_t counts[2] = {0, 0};
  for (int i = 0; i < 200; ++i) {
    Batch b = l.next();
    for (int64_t r = 0; r < b.rows; ++r) {
      ++counts[b.dataset[r]];
      EXPECT_EQ(b.dataset[r] == 0 ? b.ids[r * 16] < 20000 : b.ids[r * 16] >= 20000, true);
    }
    double g = static_cast<double>(counts[0] + counts[1]);
    EXPECT_LE(std::abs(static_cast<double>(counts[0]) - 0.75 * g), 1.0);
  }
  LoaderState s = l.state();
  EXPECT_EQ(s.consumed_samples, 400u);
  EXPECT_EQ(s.dataset_samples, (std::vector<uint64_t>{300, 100}));
  EXPECT_EQ(s.epoch, 300u / 50);
}

TEST(Loader, DpRanksSliceEveryGlobalBatch) {
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 300 + 1, 0, 6);
  write_stream_dataset(dir / "b", 16 * 100 + 1, 20000, 7);
  LoaderConfig c = config({{{dir / "a"}, 2.0}, {{dir / "b"}, 1.0}}, 16, 8, 2);
  Loaders one(c, 1), two(c, 2), four(c, 4);
  for (int step = 0; step < 30; ++step) {
    Step a = one.step(), b = two.step(), d = four.step();
    std::vector<uint64_t> want(8);
    std::iota(want.begin(), want.end(), static_cast<uint64_t>(step) * 8);
    EXPECT_EQ(a.g, want);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, d);
  }
}

// Runs k steps, saves, restores into a fresh loader set on `dp_after` ranks, runs n more steps, and
// compares with an uninterrupted run on 2 ranks.
void check_resume(int dp_after, int prefetch) {
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 37 + 1, 0, 8);  // small: epochs wrap during the test
  write_stream_dataset(dir / "b", 16 * 23 + 1, 20000, 9);
  LoaderConfig c = config({{{dir / "a"}, 2.0}, {{dir / "b"}, 1.0}}, 16, 8, 2);
  c.prefetch = prefetch;
  const int k = 13, n = 20;
  Loaders full(c, 2);
  std::vector<Step> expected;
  for (int s = 0; s < k + n; ++s) expected.push_back(full.step());

  Loaders first(c, 2);
  for (int s = 0; s < k; ++s) EXPECT_EQ(first.step(), expected[s]);
  LoaderState st = first.ranks[0]->state();
  EXPECT_EQ(st, first.ranks[1]->state());
  EXPECT_EQ(st.consumed_samples, static_cast<uint64_t>(k * 8));
  LoaderState parsed = LoaderState::parse(st.to_string());  // as a checkpoint stores it
  EXPECT_EQ(parsed, st);

  Loaders resumed(c, dp_after);
  for (auto& l : resumed.ranks) l->restore(parsed);
  for (int s = k; s < k + n; ++s) EXPECT_EQ(resumed.step(), expected[s]) << "step " << s;
}

TEST(LoaderResume, SameStreamAfterRestoreDp2To2) { check_resume(2, 4); }
TEST(LoaderResume, SameStreamAfterRestoreDp2To4) { check_resume(4, 4); }
TEST(LoaderResume, SameStreamWithoutPrefetch) { check_resume(4, 0); }

TEST(LoaderResume, RestoreWithoutBlendPositionReplaysIt) {
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 37 + 1, 0, 8);
  write_stream_dataset(dir / "b", 16 * 23 + 1, 20000, 9);
  LoaderConfig c = config({{{dir / "a"}, 2.0}, {{dir / "b"}, 1.0}}, 16, 8, 2);
  DataLoader a(c, 0, 1), b(c, 0, 1);
  for (int i = 0; i < 40; ++i) a.next();
  LoaderState s = a.state();
  s.dataset_samples.clear();
  b.restore(s);
  EXPECT_EQ(b.state(), a.state());
  EXPECT_EQ(b.next().sample_ids, a.next().sample_ids);
}

TEST(LoaderState, ParseErrorsAndForeignState) {
  EXPECT_THROW(LoaderState::parse("garbage"), InputError);
  EXPECT_THROW(LoaderState::parse("v1 consumed=x"), InputError);
  EXPECT_THROW(LoaderState::parse("v1 epoch=3"), InputError);
  TempDir dir;
  write_stream_dataset(dir / "a", 16 * 37 + 1, 0, 8);
  LoaderConfig c = config({{{dir / "a"}, 1.0}}, 16, 8, 2);
  DataLoader l(c, 0, 1);
  LoaderState s = l.state();
  s.fingerprint ^= 1;
  EXPECT_THROW(l.restore(s), InputError);
  s = l.state();
  s.consumed_samples = 5;
  EXPECT_THROW(l.restore(s), InputError);  // blend position does not add up
}

TEST(Loader, ConfigurationAndFileErrors) {
  TempDir dir;
  write_stream_dataset(dir / "a", 100, 0, 8);
  EXPECT_THROW(DataLoader(config({{{dir / "a"}, 1.0}}, 16, 6, 4), 0, 1), InputError);   // 6 % 4
  EXPECT_THROW(DataLoader(config({{{dir / "a"}, 1.0}}, 16, 8, 2), 0, 3), InputError);   // 8 % (3*2)
  EXPECT_THROW(DataLoader(config({{{dir / "a"}, 1.0}}, 200, 8, 2), 0, 1), InputError);  // fewer tokens than a row
  EXPECT_THROW(DataLoader(config({{{dir / "a"}, -1.0}}, 16, 8, 2), 0, 1), InputError);
  try {
    DataLoader l(config({{{dir / "missing"}, 1.0}}, 16, 8, 2), 0, 1);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.idx: cannot open"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dcf::data::testing
