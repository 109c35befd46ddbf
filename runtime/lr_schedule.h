// Learning rate: linear warm-up to the peak over warmup_steps, cosine decay to
// peak * final_fraction at total_steps, 0 afterwards (dcmha.md §2.4).
#pragma once
#include <cmath>
#include <cstdint>

namespace dcf {

struct LrSchedule {
  double peak = 3e-4, final_fraction = 0.1;
  int64_t warmup = 0, total = 1;

  // step: 0-based index of the optimizer update.
  double at(int64_t step) const {
    if (step < warmup) return peak * double(step + 1) / double(warmup);
    if (step >= total) return 0.0;
    double p = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
    double floor = peak * final_fraction;
    return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * p));
  }
};

}  // namespace dcf
