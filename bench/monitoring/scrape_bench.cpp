// Cost of being scraped: step time of the tiny CPU training job (configs/tiny_cpu.textproto; --np 4 runs
// dp 2 x pp 2 under mpirun) without and with `rate` GET /metrics per second (default 100/s) for windows
// of `seconds` (default 10 s). One job with the exporter off measures `repeats` windows; one job with
// the exporter on alternates idle and scraped windows, so each scraped window has an idle neighbour
// from the same process (a shared machine's load drifts between jobs). Per window: median and mean
// time of the steps whose metrics.jsonl timestamps lie inside it, steps/s, the job's CPU time per step
// (/proc of its processes), scrape latency and size; at the end the exporter's own time per request.
// Prints a table, a summary, and one JSON line per window on stderr. Not a test.
//
//   build-mon/bench/monitoring/dcf_scrape_bench [--np 4] [--rate 100] [--seconds 10] [--repeats 3]
//                                               [--warmup-steps 10] [--dcformer build/dcformer]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/monitoring/http_util.h"

namespace fs = std::filesystem;
using namespace dcf::test;
using Clock = std::chrono::steady_clock;

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::vector<nlohmann::json> read_rows(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

// The job's processes (found by the unique run directory in their command line) and their CPU time.
std::vector<int> job_pids(const std::string& needle) {
  std::vector<int> out;
  for (auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos && cmd.find("dcformer train") != std::string::npos &&
        cmd.find("mpirun") == std::string::npos && cmd.find("/bin/sh") == std::string::npos)
      out.push_back(std::stoi(name));
  }
  return out;
}
double cpu_seconds(const std::vector<int>& pids) {
  double total = 0;
  for (int pid : pids) {
    std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
    auto rp = st.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream is(st.substr(rp + 2));
    std::string f;
    std::vector<std::string> fields;
    while (is >> f) fields.push_back(f);
    if (fields.size() > 12) total += double(std::stoll(fields[11]) + std::stoll(fields[12])) / double(sysconf(_SC_CLK_TCK));
  }
  return total;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[size_t(std::min<double>(double(v.size() - 1), std::floor(q * double(v.size()))))];
}

struct Window {
  std::string mode;  // off (exporter off), idle (exporter on, not scraped), scraped
  int steps = 0;
  double median_s = NAN, mean_s = NAN, steps_per_s = NAN;
  double cpu_ms_per_step = NAN;  // CPU time of the job's processes in the window, per step
  int scrapes = 0, scrape_failures = 0;
  double scrape_p50_ms = NAN, scrape_p99_ms = NAN, scrape_bytes = 0;
};

struct Options {
  int np = 4, repeats = 3, warmup = 10;
  double rate = 100, seconds = 10;
  std::string dcformer = DCF_BINARY;
};

// One job; one measurement window per entry of `modes` ("idle"/"scraped" need the exporter on).
std::vector<Window> run_job(const Options& o, bool exporter, const std::vector<std::string>& modes,
                            double* server_us_per_scrape) {
  const fs::path dir = fs::temp_directory_path() /
                       ("dcf_scrape_bench_" + std::to_string(::getpid()) + (exporter ? "_on" : "_off"));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int port = exporter ? free_port() : 0;
  const std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  std::string cmd = (o.np > 1 ? std::string(DCF_MPIRUN_CMD) + " -np " + std::to_string(o.np) + " " : std::string()) +
                    o.dcformer + " train --config " + cfg + " --set data.train_path=" + cfg +
                    " --set run.steps=1000000 --set monitoring.progress=OFF --set monitoring.peak_flops_per_device=1e11" +
                    " --set monitoring.port=" + std::to_string(port) + " --set run.run_dir=" + (dir / "run").string();
  if (o.np == 4) cmd += " --set parallel.pp=2 --set parallel.micro_batches=2";
  Child job(cmd, (dir / "job.log").string());
  const auto metrics = dir / "run" / "metrics.jsonl";
  auto t0 = Clock::now();
  while (read_rows(metrics).size() < size_t(o.warmup)) {
    if (!job.running() || std::chrono::duration<double>(Clock::now() - t0).count() > 120) {
      std::fprintf(stderr, "job failed to start:\n%s\n", read_file((dir / "job.log").string()).c_str());
      std::exit(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const auto pids = job_pids((dir / "run").string());
  struct Span {
    double w0, w1, cpu0, cpu1;
  };
  std::vector<Window> out;
  std::vector<Span> spans;
  for (const auto& mode : modes) {
    Window w;
    w.mode = mode;
    Span sp{unix_now(), 0, cpu_seconds(pids), 0};
    std::vector<double> lat_ms;
    if (mode == "scraped") {
      const auto start = Clock::now();
      for (int i = 0;; ++i) {
        auto due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / o.rate));
        if (std::chrono::duration<double>(due - start).count() >= o.seconds) break;
        std::this_thread::sleep_until(due);
        auto a = Clock::now();
        auto r = http_get("127.0.0.1", port, "/metrics");
        lat_ms.push_back(std::chrono::duration<double>(Clock::now() - a).count() * 1e3);
        ++w.scrapes;
        if (r.status != 200) ++w.scrape_failures;
        w.scrape_bytes = double(r.body.size());
      }
      std::this_thread::sleep_until(start +
                                    std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds)));
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
    }
    sp.w1 = unix_now();
    sp.cpu1 = cpu_seconds(pids);
    w.scrape_p50_ms = percentile(lat_ms, 0.5);
    w.scrape_p99_ms = percentile(lat_ms, 0.99);
    out.push_back(w);
    spans.push_back(sp);
  }
  if (exporter && server_us_per_scrape) {
    // prometheus-cpp's own request latency summary (microseconds), over every scrape of this job.
    auto r = http_get("127.0.0.1", port, "/metrics");
    double sum = NAN, count = NAN;
    std::istringstream is(r.body);
    std::string line;
    while (std::getline(is, line)) {
      if (line.rfind("exposer_request_latencies_sum ", 0) == 0) sum = std::stod(line.substr(line.find(' ') + 1));
      if (line.rfind("exposer_request_latencies_count ", 0) == 0) count = std::stod(line.substr(line.find(' ') + 1));
    }
    *server_us_per_scrape = sum / count;
  }
  job.stop();
  const auto rows = read_rows(metrics);
  for (size_t k = 0; k < out.size(); ++k) {
    std::vector<double> st;
    for (auto& r : rows) {
      const double t = r["time"].get<double>(), s = r["step_time_s"].get<double>();
      if (t - s >= spans[k].w0 && t <= spans[k].w1) st.push_back(s);  // steps wholly inside the window
    }
    Window& w = out[k];
    w.steps = int(st.size());
    w.median_s = percentile(st, 0.5);
    w.mean_s = st.empty() ? NAN : std::accumulate(st.begin(), st.end(), 0.0) / double(st.size());
    w.steps_per_s = double(st.size()) / (spans[k].w1 - spans[k].w0);
    w.cpu_ms_per_step = (spans[k].cpu1 - spans[k].cpu0) * 1e3 / std::max(1.0, double(st.size()));
  }
  fs::remove_all(dir);
  return out;
}

void print_window(const Window& w, int rep) {
  std::printf("%-8s %3d %6d %11.2f %11.2f %9.2f %12.1f %8d %9.2f %9.2f %8.0f\n", w.mode.c_str(), rep, w.steps,
              w.median_s * 1e3, w.mean_s * 1e3, w.steps_per_s, w.cpu_ms_per_step, w.scrapes, w.scrape_p50_ms,
              w.scrape_p99_ms, w.scrape_bytes);
  nlohmann::json j = {{"bench", "scrape"},           {"mode", w.mode},          {"rep", rep},
                      {"steps", w.steps},            {"median_step_s", w.median_s}, {"mean_step_s", w.mean_s},
                      {"steps_per_s", w.steps_per_s}, {"cpu_ms_per_step", w.cpu_ms_per_step},
                      {"scrapes", w.scrapes},        {"scrape_failures", w.scrape_failures},
                      {"scrape_p50_ms", w.scrape_p50_ms}, {"scrape_p99_ms", w.scrape_p99_ms},
                      {"scrape_bytes", w.scrape_bytes}};
  std::fprintf(stderr, "%s\n", j.dump().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--np") o.np = std::stoi(v);
    else if (a == "--rate") o.rate = std::stod(v);
    else if (a == "--seconds") o.seconds = std::stod(v);
    else if (a == "--repeats") o.repeats = std::stoi(v);
    else if (a == "--warmup-steps") o.warmup = std::stoi(v);
    else if (a == "--dcformer") o.dcformer = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  std::printf("tiny_cpu job, %d rank(s); %g s windows; scraped = %g GET /metrics per second\n", o.np, o.seconds, o.rate);
  std::printf("%-8s %3s %6s %11s %11s %9s %12s %8s %9s %9s %8s\n", "mode", "rep", "steps", "median ms", "mean ms",
              "steps/s", "cpu ms/step", "scrapes", "p50 ms", "p99 ms", "bytes");
  // Job 1: exporter off, `repeats` windows. Job 2: exporter on, windows alternating idle / scraped.
  auto off = run_job(o, false, std::vector<std::string>(size_t(o.repeats), "off"), nullptr);
  for (size_t i = 0; i < off.size(); ++i) print_window(off[i], int(i));
  std::vector<std::string> modes;
  for (int r = 0; r < o.repeats; ++r) {
    modes.push_back("idle");
    modes.push_back("scraped");
  }
  double server_us = NAN;
  auto on = run_job(o, true, modes, &server_us);
  for (size_t i = 0; i < on.size(); ++i) print_window(on[i], int(i / 2));

  auto summary = [](const std::vector<Window>& ws, const std::string& mode, double* med, double* cpu, double* sps) {
    std::vector<double> m, c, s;
    for (auto& w : ws)
      if (w.mode == mode) {
        m.push_back(w.median_s);
        c.push_back(w.cpu_ms_per_step);
        s.push_back(w.steps_per_s);
      }
    *med = percentile(m, 0.5);
    *cpu = percentile(c, 0.5);
    *sps = percentile(s, 0.5);
  };
  double m_off, c_off, s_off, m_idle, c_idle, s_idle, m_scr, c_scr, s_scr;
  summary(off, "off", &m_off, &c_off, &s_off);
  summary(on, "idle", &m_idle, &c_idle, &s_idle);
  summary(on, "scraped", &m_scr, &c_scr, &s_scr);
  // Paired: each scraped window against the idle window just before it (same job, 10 s apart).
  std::vector<double> ratio;
  for (size_t i = 0; i + 1 < on.size(); i += 2) ratio.push_back(on[i + 1].median_s / on[i].median_s);
  std::printf("\nsummary (medians over %d windows of %g s):\n", o.repeats, o.seconds);
  std::printf("  exporter off      %8.2f ms/step  %6.2f steps/s  %7.1f CPU ms/step\n", m_off * 1e3, s_off, c_off);
  std::printf("  exporter idle     %8.2f ms/step  %6.2f steps/s  %7.1f CPU ms/step\n", m_idle * 1e3, s_idle, c_idle);
  std::printf("  %g scrapes/s    %8.2f ms/step  %6.2f steps/s  %7.1f CPU ms/step\n", o.rate, m_scr * 1e3, s_scr, c_scr);
  std::printf("  scraped / idle (paired windows): median %.3f  (min %.3f, max %.3f)\n", percentile(ratio, 0.5),
              *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()));
  std::printf("  exporter time per scrape (exposer_request_latencies): %.0f us -> %.1f%% of one core at %g/s\n",
              server_us, server_us * 1e-6 * o.rate * 100, o.rate);
  return 0;
}
