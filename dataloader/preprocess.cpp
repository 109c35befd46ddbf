// Parallel, order-preserving jsonl[.zst] -> .bin/.idx tokenization. See preprocess.h.
#include "dataloader/preprocess.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <thread>

#include "dataloader/indexed_dataset.h"
#include "dataloader/jsonl.h"
#include "dataloader/tokenizer.h"
#include "kernels/error.h"

namespace dcf::data {
namespace {

constexpr size_t kChunkBytes = 1 << 20;  // lines per work item: about 1 MB of jsonl
constexpr int kMaxReported = 5;          // malformed lines printed one by one

struct Chunk {
  uint64_t seq = 0;
  size_t file = 0;
  uint64_t first_line = 0;  // 1-based line number of lines[0]
  std::string data;         // the lines, '\n'-separated
  std::vector<uint32_t> ends;
};

struct Malformed {
  size_t file;
  uint64_t line;
  std::string reason;
};

struct Result {
  uint64_t seq = 0;
  std::vector<int32_t> tokens;
  std::vector<uint32_t> doc_lengths;
  std::vector<Malformed> malformed;
  uint64_t empty = 0;
  uint64_t text_bytes = 0;
};

// A bounded multi-producer multi-consumer queue with close().
template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t cap) : cap_(cap) {}
  bool push(T v) {
    std::unique_lock lk(m_);
    not_full_.wait(lk, [&] { return q_.size() < cap_ || closed_; });
    if (closed_) return false;
    q_.push_back(std::move(v));
    not_empty_.notify_one();
    return true;
  }
  std::optional<T> pop() {
    std::unique_lock lk(m_);
    not_empty_.wait(lk, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    T v = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return v;
  }
  void close() {
    std::lock_guard lk(m_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  size_t cap_;
  std::deque<T> q_;
  bool closed_ = false;
  std::mutex m_;
  std::condition_variable not_empty_, not_full_;
};

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
  return buf;
}

std::string hms(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

}  // namespace

PreprocessSummary preprocess(const PreprocessOptions& opt, std::ostream& log) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (opt.inputs.empty()) throw InputError("preprocess: no --input files");
  if (opt.output_prefix.empty()) throw InputError("preprocess: no --output-prefix");
  uint64_t total_input = 0;
  for (const auto& in : opt.inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(in, ec)) throw InputError(in + ": input file not found");
    total_input += std::filesystem::file_size(in, ec);
  }
  const Tokenizer tok = Tokenizer::load(opt.tokenizer);
  for (const auto& w : tok.warnings()) log << "preprocess: warning: " << w << "\n";
  const int32_t eod = opt.append_eod ? tok.eod_id() : -1;
  const TokenDtype dtype = dtype_for_vocab(tok.vocab_size());
  const int workers = opt.workers > 0 ? opt.workers : std::max(1u, std::thread::hardware_concurrency());

  BoundedQueue<Chunk> work(static_cast<size_t>(2 * workers));
  std::mutex results_m;
  std::condition_variable results_cv;
  std::map<uint64_t, Result> results;
  const size_t max_in_flight = static_cast<size_t>(4 * workers + 4);
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_m;
  auto set_error = [&](std::exception_ptr e) {
    std::lock_guard lk(error_m);
    if (!error) error = e;
    failed = true;
    work.close();
    results_cv.notify_all();
  };

  std::atomic<uint64_t> bytes_read{0}, lines_read{0};
  std::atomic<bool> reading_done{false};
  std::atomic<uint64_t> chunks_submitted{0};
  std::atomic<uint64_t> written{0};  // chunks appended by the writer

  // Reader: streams every input in order, cuts chunks, waits while too many are in flight.
  std::thread reader([&] {
    try {
      uint64_t seq = 0, done_before = 0;
      for (size_t fi = 0; fi < opt.inputs.size() && !failed; ++fi) {
        LineReader lr(opt.inputs[fi]);
        Chunk c;
        auto submit = [&] {
          if (c.ends.empty()) return;
          c.seq = seq++;
          {  // bound the memory held by chunks between the reader and the writer
            std::unique_lock lk(results_m);
            results_cv.wait(lk, [&] { return failed || seq - written.load() <= max_in_flight; });
          }
          chunks_submitted = seq;
          if (!work.push(std::move(c))) return;
          c = Chunk{};
        };
        std::string_view line;
        while (!failed && lr.next(&line)) {
          if (c.ends.empty()) {
            c.file = fi;
            c.first_line = lr.line_number();
          }
          c.data.append(line);
          c.ends.push_back(static_cast<uint32_t>(c.data.size()));
          lines_read.fetch_add(1, std::memory_order_relaxed);
          bytes_read.store(done_before + lr.file_bytes_read(), std::memory_order_relaxed);
          if (c.data.size() >= kChunkBytes) submit();
        }
        submit();
        done_before += lr.file_size();
        bytes_read = done_before;
      }
    } catch (...) {
      set_error(std::current_exception());
    }
    reading_done = true;
    work.close();
    results_cv.notify_all();
  });

  // Workers: parse and tokenize a chunk into a Result.
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      try {
        std::string text, why;
        while (auto c = work.pop()) {
          Result r;
          r.seq = c->seq;
          r.tokens.reserve(c->data.size() / 3 + 16);
          uint32_t start = 0;
          for (size_t k = 0; k < c->ends.size(); ++k) {
            std::string_view line(c->data.data() + start, c->ends[k] - start);
            start = c->ends[k];
            if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
              r.malformed.push_back({c->file, c->first_line + k, "blank line"});
              continue;
            }
            JsonFieldStatus st = json_string_field(line, opt.json_key, &text, &why);
            if (st != JsonFieldStatus::kOk) {
              std::string reason = st == JsonFieldStatus::kMalformed ? "malformed JSON: " + why
                                   : st == JsonFieldStatus::kMissing ? "no \"" + opt.json_key + "\" field"
                                                                     : "\"" + opt.json_key + "\" is not a string";
              r.malformed.push_back({c->file, c->first_line + k, reason});
              if (opt.strict) break;
              continue;
            }
            if (text.empty()) {
              ++r.empty;
              continue;
            }
            size_t before = r.tokens.size();
            tok.encode(text, r.tokens);
            if (eod >= 0) r.tokens.push_back(eod);
            r.doc_lengths.push_back(static_cast<uint32_t>(r.tokens.size() - before));
            r.text_bytes += text.size();
          }
          {
            std::lock_guard lk(results_m);
            results.emplace(r.seq, std::move(r));
          }
          results_cv.notify_all();
        }
      } catch (...) {
        set_error(std::current_exception());
      }
    });
  }

  // Writer (this thread): appends results in order; prints progress.
  PreprocessSummary sum;
  sum.dtype = dtype_name(dtype);
  int reported = 0;
  std::optional<IndexedDatasetWriter> writer;
  const bool tty = ::isatty(2) == 1;
  auto last_progress = clock::now();
  auto progress = [&](bool final_line) {
    double el = std::chrono::duration<double>(clock::now() - t0).count();
    double in = static_cast<double>(bytes_read.load());
    double frac = total_input > 0 ? in / static_cast<double>(total_input) : 1.0;
    double eta = frac > 0 ? el * (1.0 - frac) / frac : -1;
    char buf[256];
    std::snprintf(buf, sizeof buf, "preprocess: %5.1f%% %s of %s, %.1f MB/s, %llu docs, %llu tokens, elapsed %s, ETA %s",
                  100.0 * frac, human_bytes(in).c_str(), human_bytes(static_cast<double>(total_input)).c_str(),
                  el > 0 ? in / el / 1e6 : 0.0, static_cast<unsigned long long>(sum.documents),
                  static_cast<unsigned long long>(sum.tokens), hms(el).c_str(), hms(eta).c_str());
    if (tty) log << "\r" << buf << "\x1b[K" << (final_line ? "\n" : "") << std::flush;
    else log << buf << "\n" << std::flush;
  };
  try {
    writer.emplace(opt.output_prefix, dtype);
    while (true) {
      std::optional<Result> r;
      bool done = false;
      {
        std::unique_lock lk(results_m);
        const uint64_t next = written.load();
        results_cv.wait_for(lk, std::chrono::milliseconds(200), [&] {
          return failed || results.count(next) || (reading_done && next >= chunks_submitted.load());
        });
        if (failed) break;
        auto it = results.find(next);
        if (it != results.end()) {
          r = std::move(it->second);
          results.erase(it);
        } else {
          done = reading_done && next >= chunks_submitted.load();
        }
      }
      if (done) break;
      if (r) {
        for (const auto& m : r->malformed) {
          if (opt.strict)
            throw InputError(opt.inputs[m.file] + ":" + std::to_string(m.line) + ": " + m.reason + " (--strict)");
          ++sum.malformed_lines;
          if (reported < kMaxReported) {
            ++reported;
            log << (tty ? "\r\x1b[K" : "") << "preprocess: warning: " << opt.inputs[m.file] << ":" << m.line << ": "
                << m.reason << ", line skipped\n";
          }
        }
        size_t off = 0;
        for (uint32_t len : r->doc_lengths) {
          writer->add_document(std::span<const int32_t>(r->tokens.data() + off, len));
          off += len;
        }
        sum.documents += r->doc_lengths.size();
        sum.tokens += r->tokens.size();
        sum.empty_documents += r->empty;
        sum.text_bytes += r->text_bytes;
        written.fetch_add(1);
        results_cv.notify_all();
      }
      if (opt.progress_interval_s > 0 &&
          std::chrono::duration<double>(clock::now() - last_progress).count() >= opt.progress_interval_s) {
        last_progress = clock::now();
        progress(false);
      }
    }
  } catch (...) {
    set_error(std::current_exception());
  }
  work.close();
  reader.join();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);  // the writer's destructor removes the temporary files
  if (sum.documents == 0)
    throw InputError(opt.inputs.front() + (opt.inputs.size() > 1 ? " (and the other inputs)" : "") +
                     ": no documents to write (" + std::to_string(sum.malformed_lines) + " malformed lines, " +
                     std::to_string(sum.empty_documents) + " empty texts)");
  writer->finish();
  sum.lines = lines_read;
  sum.input_bytes = total_input;
  sum.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  if (opt.progress_interval_s > 0) progress(true);
  return sum;
}

}  // namespace dcf::data
