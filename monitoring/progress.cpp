#include "monitoring/progress.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>

namespace dcf {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long long t = (long long)std::llround(s);
  if (t < 60)
    std::snprintf(buf, sizeof buf, "%llds", t);
  else if (t < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else if (t < 86400)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
  else
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", t / 86400, (t % 86400) / 3600);
  return buf;
}

std::string format_si(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (!std::isfinite(v))
    std::snprintf(buf, sizeof buf, "%g", v);
  else if (a >= 1e12)
    std::snprintf(buf, sizeof buf, "%.3gT", v / 1e12);
  else if (a >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3gG", v / 1e9);
  else if (a >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3gM", v / 1e6);
  else if (a >= 1e4)
    std::snprintf(buf, sizeof buf, "%.3gk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string format_progress(const ProgressInfo& p) {
  const int width = int(std::to_string(p.total).size());
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "step %*lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %s tok/s | MFU %.1f%% | %.3f s/step | ETA %s%s",
                width, (long long)p.step, (long long)p.total, p.loss, p.lr, p.grad_norm,
                format_si(p.tokens_per_s).c_str(), 100.0 * p.mfu, p.step_time_s,
                p.step >= p.total ? "0s" : format_duration(p.eta_s).c_str(), p.skipped ? " | skipped (non-finite)" : "");
  return buf;
}

void EtaEstimator::add(double s) {
  recent_.push_back(s);
  sum_ += s;
  if (recent_.size() > window_) {
    sum_ -= recent_.front();
    recent_.pop_front();
  }
}

double EtaEstimator::seconds_left(int64_t steps_left) const {
  if (recent_.empty()) return -1;
  return sum_ / double(recent_.size()) * double(std::max<int64_t>(0, steps_left));
}

bool started_by_mpi_launcher() {
  // mpirun hands its ranks a pseudo-terminal even when its own output goes to a file.
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (std::getenv(v)) return true;
  return false;
}

ProgressPrinter::ProgressPrinter(FILE* out, int mode, int every) : out_(out), mode_(mode), every_(every < 1 ? 1 : every) {
  if (!out_) mode_ = 0;
  if (mode_ < 0) mode_ = isatty(fileno(out_)) && !started_by_mpi_launcher() ? 2 : 1;
}

void ProgressPrinter::update(const ProgressInfo& p) {
  if (mode_ == 0) return;
  const bool last = p.step >= p.total;
  if (mode_ == 1) {
    if (p.step % every_ != 0 && !last) return;
    std::fprintf(out_, "%s\n", format_progress(p).c_str());
    std::fflush(out_);
    return;
  }
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (!last && now - last_print_ < 0.1) return;
  last_print_ = now;
  std::fprintf(out_, "\r%s\033[K", format_progress(p).c_str());
  std::fflush(out_);
  open_line_ = true;
}

void ProgressPrinter::finish() {
  if (open_line_) {
    std::fputc('\n', out_);
    std::fflush(out_);
    open_line_ = false;
  }
}

}  // namespace dcf
