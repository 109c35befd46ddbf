#include "monitoring/system_stats.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "kernels/ops.h"

namespace dcf {

HostMemory read_host_memory() {
  HostMemory m;
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return m;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    long long kb = 0;
    if (std::strncmp(line, "VmRSS:", 6) == 0 && std::sscanf(line + 6, "%lld", &kb) == 1)
      m.resident_bytes = double(kb) * 1024.0;
    else if (std::strncmp(line, "VmHWM:", 6) == 0 && std::sscanf(line + 6, "%lld", &kb) == 1)
      m.peak_resident_bytes = double(kb) * 1024.0;
  }
  std::fclose(f);
  return m;
}

double measure_cpu_gemm_flops(int64_t n, double seconds) {
  using Clock = std::chrono::steady_clock;
  Tensor a = Tensor::empty({n, n}), b = Tensor::empty({n, n}), c = Tensor::zeros({n, n});
  a.fill_(0.5);
  b.fill_(0.25);
  matmul(a, false, b, false, c);  // warm-up (thread pool, pages)
  const double flops = 2.0 * double(n) * double(n) * double(n);
  double best = 0;
  const auto start = Clock::now();
  int runs = 0;
  while (runs < 3 || std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    auto t0 = Clock::now();
    matmul(a, false, b, false, c);
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0) best = std::max(best, flops / s);
    if (++runs > 10000) break;
  }
  return best;
}

}  // namespace dcf
