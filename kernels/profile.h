// Named, nested time ranges: where a training step's time goes (`dcformer bench --breakdown`).
//
// A Range names a piece of work (an op, a layer's attention core, the optimizer); ranges nest, and each
// is recorded under its path of names ("step/backward/layer/attn.core.global/dcmha_backward"). Off by default, when a
// Range costs one load and a branch. On, every range is timed on the clock the work runs on:
//  - Clock::host: the host's steady clock at entry and exit (CPU ops are synchronous);
//  - Clock::device (CUDA builds): a CUDA event recorded on the current stream at entry and at exit, so a
//    range measures when the stream reached its end less when it reached its start. Where the host runs
//    ahead of the device (a training step of a large model) that is the device time of the range's work;
//    where the stream runs dry inside a range, the host's time until the next launch counts as well.
// collect() ends a window: it waits for the recorded events, sums every path's time and count, and starts
// a new window. Ranges may be opened on several threads (each keeps its own nesting); a range must close
// on the thread that opened it, in the window it opened in.
#pragma once
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dcf::prof {

enum class Clock { off, host, device };

// Starts recording on the given clock (off: stops). Throws on Clock::device without a CUDA backend, and
// when ranges are open or records of a window are left (collect() first).
void enable(Clock c);
Clock mode();

struct Entry {
  std::string path;     // names from the outermost range in, joined by '/'
  double total_ms = 0;  // summed over the window's ranges of this path (inclusive of nested ones)
  double self_ms = 0;   // total_ms less the total of the paths directly nested in it (>= 0 up to rounding)
  int64_t count = 0;    // ranges of this path in the window
};
// Ends the window: every path seen, sorted by path; clears the records.
std::vector<Entry> collect();

namespace detail {
extern std::atomic<Clock> g_mode;
void begin(const char* name);
void end();
}  // namespace detail

class Range {
 public:
  explicit Range(const char* name) : on_(detail::g_mode.load(std::memory_order_relaxed) != Clock::off) {
    if (on_) detail::begin(name);
  }
  ~Range() {
    if (on_) detail::end();
  }
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;

 private:
  bool on_;
};

// Consecutive ranges in one scope: next(name) closes the current one (if any) and opens the next; the
// last closes with end() or at the end of the scope.
class Phases {
 public:
  void next(const char* name) {
    r_.reset();
    r_.emplace(name);
  }
  void end() { r_.reset(); }

 private:
  std::optional<Range> r_;
};

}  // namespace dcf::prof

#define DCF_RANGE_CONCAT2(a, b) a##b
#define DCF_RANGE_CONCAT(a, b) DCF_RANGE_CONCAT2(a, b)
// A range from here to the end of the enclosing scope.
#define DCF_RANGE(name) ::dcf::prof::Range DCF_RANGE_CONCAT(dcf_range_, __LINE__)(name)
