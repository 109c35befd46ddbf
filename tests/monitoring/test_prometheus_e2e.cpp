// End to end against a real Prometheus server (Debian package `prometheus`, started here on loopback):
// a 4-rank CPU training job (dp 2 x pp 2, mpirun) exports metrics; the server scrapes it 4 times a
// second with the alert rules loaded; the test reads raw samples back through the HTTP API and matches
// loss, tokens/s and every rank's step time to metrics.jsonl at the same step (dcformer_step of the
// same scrape). On the same run: `promtool check metrics` on a scrape, every metric name used by the
// dashboard and the alert rules exists in the scrape, every dashboard query evaluates, every rule is
// healthy, the exporter answers only GET /metrics on 127.0.0.1:port, and the progress line is plain.
// A port already in use stops the job at start with one line and exit status 2.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "tests/e2e/run_util.h"
#include "tests/monitoring/exposition.h"
#include "tests/monitoring/http_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace dcf::test;

namespace {

const std::string kConfig = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
const std::string kDashboard = std::string(DCF_SOURCE_DIR) + "/monitoring/dashboards/dcformer_grafana.json";
const std::string kRules = std::string(DCF_SOURCE_DIR) + "/monitoring/dashboards/dcformer_alerts.yml";

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string train_cmd(const fs::path& run_dir, int port, int64_t steps, int np) {
  return (np > 1 ? mpirun() + " -np " + std::to_string(np) + " " : std::string()) + DCF_BINARY + " train --config " +
         kConfig + " --set data.train_path=" + kConfig + " --set run.steps=" + std::to_string(steps) +
         (np == 4 ? " --set parallel.pp=2 --set parallel.micro_batches=2" : "") +
         " --set monitoring.port=" + std::to_string(port) + " --set monitoring.log_every=1" +
         " --set monitoring.profile_every=1 --set run.run_dir=" + run_dir.string();
}

// Prometheus HTTP API: GET /api/v1/<path>?query=<q>; the parsed "data" (fails the test on an error).
json prom_api(int port, const std::string& path, const std::string& query = "") {
  std::string target = "/api/v1/" + path + (query.empty() ? "" : "?query=" + url_encode(query));
  auto r = http_get("127.0.0.1", port, target);
  if (r.status != 200) return json();
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || j.value("status", "") != "success") return json();
  return j["data"];
}

// Raw samples of a range-vector query (e.g. "dcformer_loss[10m]"): per series labels, {ms -> value}.
struct Series {
  std::map<std::string, std::string> labels;
  std::map<int64_t, double> at;
};
std::vector<Series> raw_samples(int port, const std::string& query) {
  std::vector<Series> out;
  json d = prom_api(port, "query", query);
  if (d.is_null() || d["resultType"] != "matrix") return out;
  for (auto& s : d["result"]) {
    Series se;
    for (auto& [k, v] : s["metric"].items()) se.labels[k] = v.get<std::string>();
    for (auto& v : s["values"]) se.at[std::llround(v[0].get<double>() * 1000)] = std::stod(v[1].get<std::string>());
    out.push_back(std::move(se));
  }
  return out;
}

// metrics.jsonl rows by step; a line cut short by the job's end is skipped.
std::map<int64_t, json> read_metrics(const fs::path& p) {
  std::map<int64_t, json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) out[j["step"].get<int64_t>()] = j;
  }
  return out;
}

std::set<std::string> metric_names_in(const std::string& text) {
  std::set<std::string> out;
  std::regex re("dcformer_[a-z0-9_]+");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.insert(it->str());
  return out;
}

void collect_exprs(const json& j, std::vector<std::string>& out) {
  if (j.is_object()) {
    for (auto& [k, v] : j.items()) {
      if (k == "expr" && v.is_string()) out.push_back(v.get<std::string>());
      collect_exprs(v, out);
    }
  } else if (j.is_array()) {
    for (auto& v : j) collect_exprs(v, out);
  }
}

bool rel_eq(double a, double b, double tol = 1e-9) { return std::abs(a - b) <= tol * std::max(1e-12, std::abs(b)); }

}  // namespace

TEST(Prometheus, ScrapesTrainingJobAndMatchesMetricsJsonl) {
  const fs::path dir = fs::temp_directory_path() / ("dcf_prom_e2e_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "data");
  const int port = free_port();
  // The job runs until the test has what it needs, then is stopped (run.steps is only an upper bound).
  Child job(train_cmd(dir / "run", port, 20000, 4) + " --set monitoring.progress=PLAIN", (dir / "job.log").string());
  auto t0 = std::chrono::steady_clock::now();
  HttpResponse first;
  while (since(t0) < 90) {
    ASSERT_TRUE(job.running()) << "the job ended early:\n" << read_file((dir / "job.log").string());
    first = http_get("127.0.0.1", port, "/metrics");
    // The sampled ranges' series appear with the first step (profile_every = 1), the others at start.
    if (first.status == 200 && first.body.find("dcformer_rank_range_seconds{") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(first.status, 200) << read_file((dir / "job.log").string());

  // The Prometheus server, with the alert rules loaded.
  const int prom_port = free_port();
  {
    std::ofstream y(dir / "prometheus.yml");
    y << "global: {scrape_interval: 250ms, scrape_timeout: 250ms, evaluation_interval: 1s}\n"
      << "rule_files: ['" << kRules << "']\n"
      << "scrape_configs:\n  - job_name: dcformer\n    static_configs: [{targets: ['127.0.0.1:" << port << "']}]\n";
  }
  Child prom("exec prometheus --config.file=" + (dir / "prometheus.yml").string() + " --storage.tsdb.path=" +
                 (dir / "data").string() + " --web.listen-address=127.0.0.1:" + std::to_string(prom_port),
             (dir / "prometheus.log").string());

  // --- While Prometheus starts: the exposition, names used by the dashboard and rules, the endpoint.
  auto scrape = http_get("127.0.0.1", port, "/metrics");
  std::set<std::string> exported;  // metric names in the scrape
  ASSERT_EQ(scrape.status, 200);
  {
    std::ofstream(dir / "scrape.txt") << scrape.body;
    auto lint = run_command("promtool check metrics < " + (dir / "scrape.txt").string());
    EXPECT_EQ(lint.status, 0) << lint.output;
    auto samples = parse_exposition(scrape.body);
    for (auto& s : samples) exported.insert(s.name);
    // Per-rank series of all 4 ranks, with their grid labels (dp 2 x pp 2).
    for (int r = 0; r < 4; ++r)
      EXPECT_TRUE(find_sample(samples, "dcformer_rank_step_seconds",
                              {{"rank", std::to_string(r)}, {"dp", std::to_string(r % 2)}, {"pp", std::to_string(r / 2)}, {"tp", "0"}}))
          << "rank " << r;
  }
  EXPECT_EQ(http_get("127.0.0.1", port, "/").status, 404);
  EXPECT_EQ(http_get("127.0.0.1", port, "/api/v1/query").status, 404);
  EXPECT_EQ(http_get("127.0.0.1", port, "/metrics/extra").status, 404);
  EXPECT_EQ(http_request("127.0.0.1", port, "POST", "/metrics", "x=1").status, 405);
  EXPECT_EQ(http_get("127.0.0.2", port, "/metrics").error, ECONNREFUSED) << "bound beyond 127.0.0.1";
  {
    int listeners = 0;
    for (auto& s : listening_sockets())
      if (s.size() > 6 && s.substr(s.rfind(':') + 1) == std::to_string(port)) {
        ++listeners;
        EXPECT_EQ(s, "127.0.0.1:" + std::to_string(port));
      }
    EXPECT_EQ(listeners, 1);
  }

  // --- Wait for Prometheus to hold samples of enough distinct steps.
  bool ready = false;
  t0 = std::chrono::steady_clock::now();
  while (since(t0) < 90) {
    ASSERT_TRUE(prom.running()) << read_file((dir / "prometheus.log").string());
    ASSERT_TRUE(job.running()) << read_file((dir / "job.log").string());
    std::set<double> steps;
    for (auto& s : raw_samples(prom_port, "dcformer_step[10m]"))
      for (auto& [t, v] : s.at)
        if (v > 0) steps.insert(v);
    if (steps.size() >= 12) {
      ready = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_TRUE(ready) << "Prometheus did not collect 12 distinct steps in time\n"
                     << read_file((dir / "prometheus.log").string());
  // Every rule has been evaluated without error.
  t0 = std::chrono::steady_clock::now();
  int healthy = 0, total_rules = 0;
  while (since(t0) < 20) {
    healthy = total_rules = 0;
    json d = prom_api(prom_port, "rules");
    if (!d.is_null())
      for (auto& g : d["groups"])
        for (auto& r : g["rules"]) {
          ++total_rules;
          healthy += r.value("health", "") == "ok";
        }
    if (total_rules > 0 && healthy == total_rules) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_EQ(total_rules, 7);
  EXPECT_EQ(healthy, total_rules);
  // Every metric the rules (as the server parsed them) and the dashboard's queries use is exported.
  {
    std::set<std::string> used;
    json d = prom_api(prom_port, "rules");
    ASSERT_FALSE(d.is_null());
    for (auto& g : d["groups"])
      for (auto& r : g["rules"])
        for (auto& n : metric_names_in(r["query"].get<std::string>())) used.insert(n);
    ASSERT_GE(used.size(), 10u);
    std::vector<std::string> exprs;
    collect_exprs(json::parse(read_file(kDashboard)), exprs);
    for (auto& e : exprs)
      for (auto& n : metric_names_in(e)) used.insert(n);
    ASSERT_GE(used.size(), 25u);
    for (auto& n : used) EXPECT_TRUE(exported.count(n)) << n << " is used by the dashboard or the rules but not exported";
  }
  // Every dashboard query evaluates on the real server ($job: any, $__rate_interval: 5s).
  {
    std::vector<std::string> exprs;
    collect_exprs(json::parse(read_file(kDashboard)), exprs);
    ASSERT_GT(exprs.size(), 20u);
    int nonempty = 0;
    for (auto e : exprs) {
      e = std::regex_replace(e, std::regex("\\$job"), ".*");
      e = std::regex_replace(e, std::regex("\\$__rate_interval"), "5s");
      json d = prom_api(prom_port, "query", e);
      EXPECT_FALSE(d.is_null()) << "dashboard query fails: " << e;
      if (!d.is_null() && !d["result"].empty()) ++nonempty;
    }
    EXPECT_GE(nonempty, int(exprs.size()) - 3) << "most dashboard queries should have data";
  }

  job.stop();
  // mpirun's ranks sit in their own process groups and go down a moment after it: wait for the exporter.
  t0 = std::chrono::steady_clock::now();
  while (since(t0) < 30 && http_get("127.0.0.1", port, "/metrics").status != -1)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(http_get("127.0.0.1", port, "/metrics").status, -1) << "the job's exporter outlived the job";

  // --- Match Prometheus samples to metrics.jsonl at the same step.
  auto rows = read_metrics(dir / "run" / "metrics.jsonl");
  ASSERT_GT(rows.size(), 12u);
  // One query for all the series, so that they are read from one state of the server.
  auto all = raw_samples(
      prom_port, "{__name__=~\"dcformer_(step|loss|tokens_per_second|tokens_total|mfu_ratio|rank_step_seconds)\"}[10m]");
  auto named = [&](const std::string& name, const std::string& rank = "") {
    std::vector<Series> out;
    for (auto& s : all)
      if (s.labels["__name__"] == name && (rank.empty() || s.labels["rank"] == rank)) out.push_back(s);
    return out;
  };
  auto step_series = named("dcformer_step");
  ASSERT_EQ(step_series.size(), 1u);
  const auto& step_at = step_series[0].at;  // scrape time (ms) -> step
  auto match = [&](const std::vector<Series>& series, const std::function<double(const json&)>& want,
                   const std::string& what) {
    ASSERT_EQ(series.size(), 1u) << what;
    std::set<int64_t> matched;
    for (auto& [t, v] : series[0].at) {
      auto st = step_at.find(t);
      ASSERT_NE(st, step_at.end()) << what << ": a sample without dcformer_step in the same scrape";
      const int64_t step = std::llround(st->second);
      if (step == 0) continue;  // before the first step
      auto row = rows.find(step);
      ASSERT_NE(row, rows.end()) << what << ": step " << step << " not in metrics.jsonl";
      EXPECT_TRUE(rel_eq(v, want(row->second))) << what << " at step " << step << ": Prometheus " << v
                                                 << ", metrics.jsonl " << want(row->second);
      matched.insert(step);
    }
    EXPECT_GE(matched.size(), 10u) << what;
    std::printf("%s: %zu steps matched (%lld..%lld)\n", what.c_str(), matched.size(),
                matched.empty() ? 0LL : (long long)*matched.begin(), matched.empty() ? 0LL : (long long)*matched.rbegin());
  };
  match(named("dcformer_loss"), [](const json& r) { return r["loss"].get<double>(); }, "loss");
  match(named("dcformer_tokens_per_second"), [](const json& r) { return r["tokens_per_s"].get<double>(); }, "tokens/s");
  match(named("dcformer_tokens_total"), [](const json& r) { return r["tokens_total"].get<double>(); }, "tokens total");
  match(named("dcformer_mfu_ratio"), [](const json& r) { return r["mfu"].get<double>(); }, "MFU");
  for (int rank = 0; rank < 4; ++rank)
    match(named("dcformer_rank_step_seconds", std::to_string(rank)),
          [rank](const json& r) { return r["rank_step_time_s"][size_t(rank)].get<double>(); },
          "rank " + std::to_string(rank) + " step time");
  // The series carry the scrape job and instance.
  auto loss = named("dcformer_loss");
  ASSERT_FALSE(loss.empty());
  EXPECT_EQ(loss[0].labels["job"], "dcformer");
  EXPECT_EQ(loss[0].labels["instance"], "127.0.0.1:" + std::to_string(port));
  prom.stop();

  // The progress line: plain lines with step/total, loss, tokens/s, MFU and ETA.
  const std::string log = read_file((dir / "job.log").string());
  std::regex line_re(R"(step +[0-9]+/20000 \| loss [0-9.]+ \| lr [0-9.e+-]+ \| gnorm [0-9.]+ \| [0-9.]+k? tok/s \| MFU [0-9.]+% \| [0-9.]+ s/step \| ETA [0-9hmd]+s?)");
  EXPECT_TRUE(std::regex_search(log, line_re)) << log.substr(0, 2000);
  EXPECT_EQ(log.find('\r'), std::string::npos);
  EXPECT_NE(log.find("metrics at http://127.0.0.1:" + std::to_string(port) + "/metrics"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Prometheus, PortInUseStopsTheJobAtStart) {
  PortHolder held;
  const fs::path dir = fs::temp_directory_path() / ("dcf_prom_busy_" + std::to_string(::getpid()));
  for (int np : {1, 2}) {
    auto r = run_command(train_cmd(dir, held.port, 5, np));
    EXPECT_EQ(r.status, 2) << r.output;
    const std::string want = "dcformer: error: monitoring: cannot listen on 127.0.0.1:" + std::to_string(held.port) +
                             " (monitoring.listen_address, monitoring.port): Address already in use\n";
    EXPECT_NE(r.output.find(want), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("dcformer: error", r.output.find(want) + 1), std::string::npos) << "one line only:\n" << r.output;
    EXPECT_EQ(r.output.find("step "), std::string::npos) << "no step may run:\n" << r.output;
  }
  fs::remove_all(dir);
}
