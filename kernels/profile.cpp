// Time ranges (profile.h): records of (path, start, end) per window, on the host clock or CUDA events.
#include "kernels/profile.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <unordered_map>

#include "kernels/error.h"
#ifdef DCF_WITH_CUDA
#include "kernels/cuda_runtime.h"
#endif

namespace dcf::prof {

namespace detail {
std::atomic<Clock> g_mode{Clock::off};
}  // namespace detail

namespace {

struct Rec {
  int path = -1;
  double t0 = 0, t1 = 0;  // host clock, ms
#ifdef DCF_WITH_CUDA
  cudaEvent_t e0 = nullptr, e1 = nullptr;
#endif
};

struct State {
  std::mutex mu;
  std::vector<std::string> paths;  // interned
  std::vector<int> parent;         // of each interned path: the path it is nested in, or -1
  std::unordered_map<std::string, int> ids;
  std::vector<Rec> recs;
  int64_t open = 0;
#ifdef DCF_WITH_CUDA
  std::vector<cudaEvent_t> pool;  // events free for reuse
#endif
};
State& st() {
  static State* s = new State();  // never destroyed: ranges may close during static destruction
  return *s;
}

struct Open {
  int path;
  size_t rec;
};
thread_local std::vector<Open> tls_stack;

double host_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

#ifdef DCF_WITH_CUDA
cudaEvent_t take_event(State& s) {
  if (!s.pool.empty()) {
    cudaEvent_t e = s.pool.back();
    s.pool.pop_back();
    return e;
  }
  cudaEvent_t e;
  DCF_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}
#endif

}  // namespace

void enable(Clock c) {
  State& s = st();
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.open != 0 || !s.recs.empty())
    throw DcfError("profile: enable() with ranges open or uncollected (call collect() first)");
#ifndef DCF_WITH_CUDA
  if (c == Clock::device) throw DcfError("profile: device clock asked for, but this build has no CUDA backend");
#endif
  detail::g_mode.store(c);
}

Clock mode() { return detail::g_mode.load(); }

void detail::begin(const char* name) {
  State& s = st();
  const Clock m = g_mode.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lk(s.mu);
  const int up = tls_stack.empty() ? -1 : tls_stack.back().path;
  std::string path = up < 0 ? std::string(name) : s.paths[size_t(up)] + "/" + name;
  auto it = s.ids.find(path);
  int id;
  if (it == s.ids.end()) {
    id = int(s.paths.size());
    s.ids.emplace(path, id);
    s.paths.push_back(std::move(path));
    s.parent.push_back(up);
  } else {
    id = it->second;
  }
  Rec r;
  r.path = id;
#ifdef DCF_WITH_CUDA
  if (m == Clock::device) {
    r.e0 = take_event(s);
    r.e1 = take_event(s);
    DCF_CUDA_CHECK(cudaEventRecord(r.e0, cuda::current_stream()));
  }
#endif
  if (m == Clock::host) r.t0 = host_ms();
  s.recs.push_back(r);
  ++s.open;
  tls_stack.push_back({id, s.recs.size() - 1});
}

void detail::end() {
  State& s = st();
  std::lock_guard<std::mutex> lk(s.mu);
  if (tls_stack.empty()) return;  // a range closing on another thread than it opened on: not recorded
  const Open o = tls_stack.back();
  tls_stack.pop_back();
  Rec& r = s.recs[o.rec];
#ifdef DCF_WITH_CUDA
  if (r.e1) DCF_CUDA_CHECK(cudaEventRecord(r.e1, cuda::current_stream()));
#endif
  if (g_mode.load(std::memory_order_relaxed) == Clock::host) r.t1 = host_ms();
  --s.open;
}

std::vector<Entry> collect() {
  State& s = st();
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.open != 0) throw DcfError("profile: collect() with " + std::to_string(s.open) + " range(s) still open");
  std::map<int, Entry> by;
  for (Rec& r : s.recs) {
    double ms = r.t1 - r.t0;
#ifdef DCF_WITH_CUDA
    if (r.e0) {
      float f = 0;
      DCF_CUDA_CHECK(cudaEventSynchronize(r.e1));
      DCF_CUDA_CHECK(cudaEventElapsedTime(&f, r.e0, r.e1));
      ms = f;
      s.pool.push_back(r.e0);
      s.pool.push_back(r.e1);
    }
#endif
    Entry& e = by[r.path];
    e.total_ms += ms;
    ++e.count;
  }
  s.recs.clear();
  for (auto& [id, e] : by) e.self_ms = e.total_ms;
  for (const auto& [id, e] : by) {
    auto up = by.find(s.parent[size_t(id)]);
    if (up != by.end()) up->second.self_ms -= e.total_ms;
  }
  std::vector<Entry> out;
  for (auto& [id, e] : by) {
    e.path = s.paths[size_t(id)];
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.path < b.path; });
  return out;
}

}  // namespace dcf::prof
