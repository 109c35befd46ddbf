// DataLoader: sample sources over mmapped shards, blending, seeded permutation, DP slicing and a
// prefetch thread. See loader.h for the definition of the sample stream.
#include "dataloader/loader.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <sstream>
#include <thread>

#include "dataloader/indexed_dataset.h"
#include "kernels/error.h"

namespace dcf::data {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t hash_combine(uint64_t h, uint64_t v) { return splitmix64(h ^ splitmix64(v)); }
uint64_t hash_string(uint64_t h, const std::string& s) {
  for (unsigned char c : s) h = hash_combine(h, c);
  return hash_combine(h, s.size());
}

// A seeded bijection of [0, n): a balanced Feistel network on the smallest even-bit power of two
// >= n, applied repeatedly until the value falls inside [0, n) (cycle walking; < 4 rounds on average).
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t key) : n_(n) {
    int bits = 2;
    while (bits < 64 && (1ull << bits) < n) ++bits;
    if (bits % 2) ++bits;
    half_ = bits / 2;
    mask_ = (1ull << half_) - 1;
    for (int r = 0; r < kRounds; ++r) keys_[r] = splitmix64(key + 0x632BE59BD9B4E019ull * (r + 1));
  }
  uint64_t operator()(uint64_t x) const {
    do x = encrypt(x); while (x >= n_);
    return x;
  }

 private:
  static constexpr int kRounds = 6;
  uint64_t encrypt(uint64_t x) const {
    uint64_t l = x >> half_, r = x & mask_;
    for (int i = 0; i < kRounds; ++i) {
      uint64_t nl = r;
      r = (l ^ splitmix64(r ^ keys_[i])) & mask_;
      l = nl;
    }
    return (l << half_) | r;
  }
  uint64_t n_;
  int half_ = 1;
  uint64_t mask_ = 1;
  uint64_t keys_[kRounds]{};
};

// The samples of one dataset (all its shards).
class SampleSource {
 public:
  SampleSource(const DatasetSpec& spec, const LoaderConfig& cfg) : seq_len_(cfg.seq_len), packing_(cfg.packing) {
    if (spec.prefixes.empty()) throw InputError("data: a dataset has no shards");
    for (const auto& p : spec.prefixes) shards_.emplace_back(p);
    uint64_t seqs = 0, tokens = 0;
    for (const auto& s : shards_) {
      shard_first_seq_.push_back(seqs);
      shard_first_token_.push_back(tokens);
      seqs += s.num_sequences();
      tokens += s.total_tokens();
    }
    shard_first_seq_.push_back(seqs);
    shard_first_token_.push_back(tokens);
    const uint64_t row = static_cast<uint64_t>(seq_len_) + 1;
    if (packing_ == Packing::kPrePacked) {
      for (const auto& s : shards_)
        for (uint64_t i = 0; i < s.num_sequences(); ++i)
          if (static_cast<uint64_t>(s.sequence_length(i)) != row)
            throw InputError(s.prefix() + ".idx: sequence " + std::to_string(i) + " has " +
                             std::to_string(s.sequence_length(i)) + " tokens; pre-packed samples need seq_len + 1 = " +
                             std::to_string(row));
      num_samples_ = seqs;
    } else {
      if (tokens < row)
        throw InputError(spec.prefixes.front() + ": dataset has " + std::to_string(tokens) +
                         " tokens, fewer than one sample of seq_len + 1 = " + std::to_string(row));
      num_samples_ = (tokens - 1) / static_cast<uint64_t>(seq_len_);
      // Token offsets every kBlock sequences per shard: a position is found by binary search + a
      // short scan of lengths (memory: 8 bytes per kBlock sequences).
      for (const auto& s : shards_) {
        std::vector<uint64_t> blocks;
        uint64_t acc = 0;
        for (uint64_t i = 0; i < s.num_sequences(); ++i) {
          if (i % kBlock == 0) blocks.push_back(acc);
          acc += static_cast<uint64_t>(s.sequence_length(i));
        }
        block_tokens_.push_back(std::move(blocks));
      }
    }
  }

  uint64_t num_samples() const { return num_samples_; }
  uint64_t num_sequences() const { return shard_first_seq_.back(); }

  // Writes the seq_len + 1 tokens of sample i to out.
  void read_sample(uint64_t i, int32_t* out) const {
    const uint64_t row = static_cast<uint64_t>(seq_len_) + 1;
    if (packing_ == Packing::kPrePacked) {
      size_t sh = static_cast<size_t>(std::upper_bound(shard_first_seq_.begin(), shard_first_seq_.end(), i) -
                                      shard_first_seq_.begin() - 1);
      shards_[sh].read(i - shard_first_seq_[sh], 0, row, out);
      return;
    }
    uint64_t pos = i * static_cast<uint64_t>(seq_len_);
    uint64_t need = row;
    size_t sh = static_cast<size_t>(std::upper_bound(shard_first_token_.begin(), shard_first_token_.end(), pos) -
                                    shard_first_token_.begin() - 1);
    uint64_t local = pos - shard_first_token_[sh];
    const auto& blocks = block_tokens_[sh];
    size_t b = static_cast<size_t>(std::upper_bound(blocks.begin(), blocks.end(), local) - blocks.begin() - 1);
    uint64_t seq = b * kBlock, seq_start = blocks[b];
    while (true) {
      const IndexedDataset& s = shards_[sh];
      while (seq < s.num_sequences()) {
        uint64_t len = static_cast<uint64_t>(s.sequence_length(seq));
        if (local < seq_start + len) {
          uint64_t off = local - seq_start, take = std::min(len - off, need);
          s.read(seq, off, take, out);
          out += take;
          need -= take;
          local += take;
          if (need == 0) return;
        }
        seq_start += len;
        ++seq;
      }
      ++sh;  // continue in the next shard
      seq = 0;
      seq_start = 0;
      local = 0;
    }
  }

 private:
  static constexpr uint64_t kBlock = 64;
  int64_t seq_len_;
  Packing packing_;
  std::vector<IndexedDataset> shards_;
  std::vector<uint64_t> shard_first_seq_, shard_first_token_;
  std::vector<std::vector<uint64_t>> block_tokens_;
  uint64_t num_samples_ = 0;
};

struct Item {
  Batch batch;
  bool last_of_step = false;
  LoaderState state_after;  // valid when last_of_step
};

}  // namespace

struct DataLoader::Impl {
  LoaderConfig cfg;
  int rank, size;
  std::vector<std::unique_ptr<SampleSource>> sources;
  std::vector<double> weights;  // normalized
  uint64_t fingerprint = 0;

  // Producer position (start of the next global batch to produce).
  LoaderState produce_pos;
  // Consumer position: state at the last step boundary delivered by next().
  LoaderState consumed;

  // Prefetch.
  std::thread worker;
  std::mutex m;
  std::condition_variable cv;
  std::deque<Item> queue;
  bool stop = false;
  std::exception_ptr error;
  std::deque<Item> pending;  // items of the current global batch when prefetch is off

  ~Impl() { stop_worker(); }

  uint64_t blend_pick(uint64_t g, const std::vector<uint64_t>& counts) const {
    if (weights.size() == 1) return 0;
    size_t best = 0;
    double best_v = -1e300;
    for (size_t d = 0; d < weights.size(); ++d) {
      double v = weights[d] * static_cast<double>(g + 1) - static_cast<double>(counts[d]);
      if (v > best_v) {
        best_v = v;
        best = d;
      }
    }
    return best;
  }

  uint64_t dataset_sample(size_t d, uint64_t k) const {
    uint64_t n = sources[d]->num_samples();
    uint64_t e = k / n, j = k % n;
    if (!cfg.shuffle) return j;
    return Permutation(n, hash_combine(hash_combine(cfg.seed, d), e))(j);
  }

  uint64_t epoch_of(const LoaderState& s) const {
    return s.dataset_samples.empty() ? 0 : s.dataset_samples[0] / sources[0]->num_samples();
  }

  // Produces this rank's micro-batches of the global batch starting at produce_pos.
  std::vector<Item> produce_step() {
    const uint64_t B = static_cast<uint64_t>(cfg.global_batch);
    const uint64_t per_rank = B / static_cast<uint64_t>(size);
    const uint64_t start = produce_pos.consumed_samples;
    const uint64_t lo = start + per_rank * static_cast<uint64_t>(rank), hi = lo + per_rank;
    std::vector<uint64_t> counts = produce_pos.dataset_samples;
    std::vector<std::pair<uint32_t, uint64_t>> mine;  // (dataset, k)
    mine.reserve(per_rank);
    for (uint64_t g = start; g < start + B; ++g) {
      uint64_t d = blend_pick(g, counts);
      uint64_t k = counts[d]++;
      if (g >= lo && g < hi) mine.emplace_back(static_cast<uint32_t>(d), k);
    }
    LoaderState after;
    after.consumed_samples = start + B;
    after.dataset_samples = counts;
    after.fingerprint = fingerprint;
    after.epoch = epoch_of(after);

    const int64_t S = cfg.seq_len, M = cfg.micro_batch;
    std::vector<int32_t> row(static_cast<size_t>(S) + 1);
    std::vector<Item> items;
    const int64_t n_micro = static_cast<int64_t>(per_rank) / M;
    for (int64_t mb = 0; mb < n_micro; ++mb) {
      Item it;
      Batch& b = it.batch;
      b.rows = M;
      b.seq_len = S;
      b.step = start / B;
      b.micro = mb;
      b.ids.resize(static_cast<size_t>(M * S));
      b.targets.resize(static_cast<size_t>(M * S));
      for (int64_t r = 0; r < M; ++r) {
        uint64_t q = static_cast<uint64_t>(mb * M + r);
        auto [d, k] = mine[q];
        uint64_t i = dataset_sample(d, k);
        int32_t* ids = b.ids.data() + r * S;
        sources[d]->read_sample(i, row.data());
        std::memcpy(ids, row.data(), static_cast<size_t>(S) * 4);
        std::memcpy(b.targets.data() + r * S, row.data() + 1, static_cast<size_t>(S) * 4);
        b.sample_ids.push_back(lo + q);
        b.dataset.push_back(d);
        b.dataset_sample.push_back(i);
      }
      it.last_of_step = mb + 1 == n_micro;
      if (it.last_of_step) it.state_after = after;
      items.push_back(std::move(it));
    }
    produce_pos = after;
    return items;
  }

  void start_worker() {
    if (cfg.prefetch <= 0) return;
    stop = false;
    worker = std::thread([this] {
      try {
        while (true) {
          {
            std::unique_lock lk(m);
            cv.wait(lk, [&] { return stop || queue.size() < static_cast<size_t>(cfg.prefetch); });
            if (stop) return;
          }
          std::vector<Item> items = produce_step();
          for (auto& it : items) {
            std::unique_lock lk(m);
            cv.wait(lk, [&] { return stop || queue.size() < static_cast<size_t>(cfg.prefetch); });
            if (stop) return;
            queue.push_back(std::move(it));
            cv.notify_all();
          }
        }
      } catch (...) {
        std::lock_guard lk(m);
        error = std::current_exception();
        cv.notify_all();
      }
    });
  }

  void stop_worker() {
    {
      std::lock_guard lk(m);
      stop = true;
      cv.notify_all();
    }
    if (worker.joinable()) worker.join();
    queue.clear();
    pending.clear();
    error = nullptr;
  }

  Item pop() {
    if (cfg.prefetch <= 0) {
      if (pending.empty())
        for (auto& it : produce_step()) pending.push_back(std::move(it));
      Item it = std::move(pending.front());
      pending.pop_front();
      return it;
    }
    std::unique_lock lk(m);
    cv.wait(lk, [&] { return !queue.empty() || error; });
    if (error) std::rethrow_exception(error);
    Item it = std::move(queue.front());
    queue.pop_front();
    cv.notify_all();
    return it;
  }
};

DataLoader::DataLoader(const LoaderConfig& config, int dp_rank, int dp_size) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.cfg = config;
  s.rank = dp_rank;
  s.size = dp_size;
  const LoaderConfig& c = s.cfg;
  if (c.datasets.empty()) throw InputError("data: no datasets configured");
  if (c.seq_len <= 0) throw InputError("data: seq_len must be positive, got " + std::to_string(c.seq_len));
  if (dp_size <= 0 || dp_rank < 0 || dp_rank >= dp_size)
    throw InputError("data: dp rank " + std::to_string(dp_rank) + " outside dp size " + std::to_string(dp_size));
  if (c.micro_batch <= 0 || c.global_batch <= 0 || c.global_batch % (static_cast<int64_t>(dp_size) * c.micro_batch) != 0)
    throw InputError("data: global batch " + std::to_string(c.global_batch) + " is not a positive multiple of dp (" +
                     std::to_string(dp_size) + ") x micro batch (" + std::to_string(c.micro_batch) + ")");
  double wsum = 0;
  for (const auto& d : c.datasets) {
    if (!(d.weight > 0) || !std::isfinite(d.weight))
      throw InputError("data: dataset weight must be positive, got " + std::to_string(d.weight));
    wsum += d.weight;
  }
  uint64_t fp = hash_combine(hash_combine(hash_combine(0x5EED, static_cast<uint64_t>(c.seq_len)), c.seed),
                             static_cast<uint64_t>(c.packing) * 2 + (c.shuffle ? 1 : 0));
  for (const auto& d : c.datasets) {
    s.sources.push_back(std::make_unique<SampleSource>(d, c));
    s.weights.push_back(d.weight / wsum);
    for (const auto& p : d.prefixes) fp = hash_string(fp, p.substr(p.find_last_of('/') + 1));
    fp = hash_combine(fp, s.sources.back()->num_samples());
    fp = hash_combine(fp, static_cast<uint64_t>(std::llround(d.weight * 1e9)));
  }
  s.fingerprint = fp;
  s.produce_pos.dataset_samples.assign(c.datasets.size(), 0);
  s.produce_pos.fingerprint = fp;
  s.consumed = s.produce_pos;
  s.start_worker();
}

DataLoader::~DataLoader() = default;

Batch DataLoader::next() {
  Item it = impl_->pop();
  if (it.last_of_step) impl_->consumed = it.state_after;
  return std::move(it.batch);
}

LoaderState DataLoader::state() const { return impl_->consumed; }

void DataLoader::restore(const LoaderState& st) {
  Impl& s = *impl_;
  if (st.fingerprint != 0 && st.fingerprint != s.fingerprint)
    throw InputError("data: the saved loader state belongs to another data configuration (fingerprint " +
                     std::to_string(st.fingerprint) + ", this one " + std::to_string(s.fingerprint) + ")");
  LoaderState pos;
  pos.consumed_samples = st.consumed_samples;
  pos.fingerprint = s.fingerprint;
  if (st.dataset_samples.empty()) {  // replay the blend
    pos.dataset_samples.assign(s.sources.size(), 0);
    for (uint64_t g = 0; g < st.consumed_samples; ++g) ++pos.dataset_samples[s.blend_pick(g, pos.dataset_samples)];
  } else {
    if (st.dataset_samples.size() != s.sources.size())
      throw InputError("data: the saved loader state has " + std::to_string(st.dataset_samples.size()) +
                       " datasets, the configuration " + std::to_string(s.sources.size()));
    uint64_t sum = 0;
    for (uint64_t v : st.dataset_samples) sum += v;
    if (sum != st.consumed_samples)
      throw InputError("data: inconsistent loader state: blend position sums to " + std::to_string(sum) +
                       ", consumed samples " + std::to_string(st.consumed_samples));
    pos.dataset_samples = st.dataset_samples;
  }
  pos.epoch = s.epoch_of(pos);
  s.stop_worker();
  s.produce_pos = pos;
  s.consumed = pos;
  s.start_worker();
}

int64_t DataLoader::micro_batches_per_step() const {
  return impl_->cfg.global_batch / impl_->size / impl_->cfg.micro_batch;
}

uint64_t DataLoader::samples_per_epoch(size_t d) const { return impl_->sources.at(d)->num_samples(); }

uint64_t DataLoader::queue_depth() const {
  std::lock_guard lk(impl_->m);
  return impl_->queue.size();
}

std::string LoaderState::to_string() const {
  std::ostringstream os;
  os << "v1 consumed=" << consumed_samples << " epoch=" << epoch << " blend=";
  for (size_t i = 0; i < dataset_samples.size(); ++i) os << (i ? "," : "") << dataset_samples[i];
  os << " fp=" << fingerprint;
  return os.str();
}

LoaderState LoaderState::parse(const std::string& text) {
  LoaderState s;
  std::istringstream is(text);
  std::string tok;
  auto bad = [&](const std::string& why) -> InputError {
    return InputError("data: malformed loader state '" + text + "': " + why);
  };
  if (!(is >> tok) || tok != "v1") throw bad("expected version v1");
  bool have_consumed = false;
  while (is >> tok) {
    size_t eq = tok.find('=');
    if (eq == std::string::npos) throw bad("field '" + tok + "' has no '='");
    std::string k = tok.substr(0, eq), v = tok.substr(eq + 1);
    try {
      if (k == "consumed") {
        s.consumed_samples = std::stoull(v);
        have_consumed = true;
      } else if (k == "epoch") {
        s.epoch = std::stoull(v);
      } else if (k == "fp") {
        s.fingerprint = std::stoull(v);
      } else if (k == "blend") {
        std::stringstream bs(v);
        std::string x;
        while (std::getline(bs, x, ','))
          if (!x.empty()) s.dataset_samples.push_back(std::stoull(x));
      } else {
        throw bad("unknown field '" + k + "'");
      }
    } catch (const std::logic_error&) {
      throw bad("field '" + k + "' is not a number");
    }
  }
  if (!have_consumed) throw bad("no consumed= field");
  return s;
}

}  // namespace dcf::data
