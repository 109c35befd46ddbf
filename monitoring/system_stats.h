// Process numbers the monitor reads for itself: host memory of this process, and a measured CPU peak.
#pragma once
#include <cstdint>

namespace dcf {

struct HostMemory {
  double resident_bytes = 0;       // VmRSS
  double peak_resident_bytes = 0;  // VmHWM
};
HostMemory read_host_memory();  // from /proc/self/status (zeros where unavailable)

// FLOP/s of this process's CPU GEMM (fp32, n x n x n, with the GEMM thread count currently set): the best
// of repeated runs over about `seconds`. This is the MFU denominator of a CPU rank when none is configured.
double measure_cpu_gemm_flops(int64_t n = 384, double seconds = 0.3);

}  // namespace dcf
