// The metrics exporter on its own (no MPI): answers only GET /metrics, binds only the configured
// address, a port in use is a one-line InputError, scrapes see consistent updates; the progress line
// and its helpers; the measured CPU peak.
#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <algorithm>
#include <atomic>
#include <regex>
#include <thread>

#include "kernels/error.h"
#include "monitoring/exporter.h"
#include "monitoring/progress.h"
#include "monitoring/system_stats.h"
#include "tests/monitoring/http_util.h"

using namespace dcf;
using dcf::test::http_get;
using dcf::test::http_request;

namespace {

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST(Exporter, AnswersOnlyGetMetrics) {
  MetricsExporter ex("127.0.0.1", 0);
  ASSERT_GT(ex.port(), 0);
  ex.update([&] {
    prometheus::BuildGauge().Name("dcformer_test_value").Help("a test gauge").Register(ex.registry()).Add({}).Set(42);
  });
  auto ok = http_get("127.0.0.1", ex.port(), "/metrics");
  EXPECT_EQ(ok.status, 200);
  EXPECT_TRUE(contains(ok.body, "dcformer_test_value 42")) << ok.body;
  EXPECT_TRUE(contains(ok.body, "# HELP dcformer_test_value a test gauge")) << ok.body;
  EXPECT_EQ(http_get("127.0.0.1", ex.port(), "/metrics?x=1").status, 200);
  for (const char* path : {"/", "/metrics/", "/metrics/x", "/metricsx", "/index.html", "/favicon.ico", "/api/v1/query",
                           "/../etc/passwd", "/METRICS"}) {
    auto r = http_get("127.0.0.1", ex.port(), path);
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_FALSE(contains(r.body, "dcformer_test_value")) << path;
  }
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"}) {
    auto r = http_request("127.0.0.1", ex.port(), method, "/metrics", std::string(method) == "POST" ? "a=b" : "");
    EXPECT_EQ(r.status, 405) << method;
    EXPECT_FALSE(contains(r.body, "dcformer_test_value")) << method;
  }
  EXPECT_EQ(http_request("127.0.0.1", ex.port(), "POST", "/other", "a=b").status, 404);
  EXPECT_EQ(ex.url(), "http://127.0.0.1:" + std::to_string(ex.port()) + "/metrics");
}

TEST(Exporter, BindsOnlyTheConfiguredAddress) {
  MetricsExporter ex("127.0.0.1", 0);
  const int port = ex.port();
  EXPECT_EQ(http_get("127.0.0.1", port, "/metrics").status, 200);
  // 127.0.0.2 is the same loopback interface: refused there means the socket is bound to 127.0.0.1 only.
  auto other = http_get("127.0.0.2", port, "/metrics");
  EXPECT_EQ(other.status, -1);
  EXPECT_EQ(other.error, ECONNREFUSED);
  auto socks = dcf::test::listening_sockets();
  const std::string suffix = ":" + std::to_string(port);
  std::vector<std::string> ours;
  for (auto& s : socks)
    if (s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0) ours.push_back(s);
  EXPECT_EQ(ours, std::vector<std::string>{"127.0.0.1" + suffix});

  MetricsExporter ex2("127.0.0.2", 0);
  EXPECT_EQ(http_get("127.0.0.2", ex2.port(), "/metrics").status, 200);
  EXPECT_EQ(http_get("127.0.0.1", ex2.port(), "/metrics").error, ECONNREFUSED);
}

TEST(Exporter, PortInUseIsOneLineInputError) {
  dcf::test::PortHolder held;
  try {
    MetricsExporter ex("127.0.0.1", held.port);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "cannot listen on 127.0.0.1:" + std::to_string(held.port))) << msg;
    EXPECT_TRUE(contains(msg, "Address already in use")) << msg;
    EXPECT_TRUE(contains(msg, "monitoring.port")) << msg;
    EXPECT_FALSE(contains(msg, "\n")) << msg;
  }
}

TEST(Exporter, RejectsBadAddresses) {
  for (const char* a : {"localhost", "127.0.0", "", "1.2.3.4.5"}) {
    try {
      MetricsExporter ex(a, 0);
      ADD_FAILURE() << a;
    } catch (const InputError& e) {
      EXPECT_TRUE(contains(e.what(), "monitoring.listen_address")) << e.what();
    }
  }
  EXPECT_THROW(MetricsExporter("127.0.0.1", 70000), InputError);
  EXPECT_EQ(listen_spec("::1", 9), "[::1]:9");
  // IPv6: served where civetweb has it, otherwise a clear error.
  try {
    MetricsExporter ex6("::1", 0);
    EXPECT_GT(ex6.port(), 0);
  } catch (const InputError& e) {
    EXPECT_TRUE(contains(e.what(), "IPv6")) << e.what();
  }
}

// Two gauges updated together are never seen apart by a scrape.
TEST(Exporter, ScrapesSeeWholeUpdates) {
  MetricsExporter ex("127.0.0.1", 0);
  prometheus::Gauge *a = nullptr, *b = nullptr;
  ex.update([&] {
    a = &prometheus::BuildGauge().Name("dcformer_test_a").Help("a").Register(ex.registry()).Add({});
    b = &prometheus::BuildGauge().Name("dcformer_test_b").Help("b").Register(ex.registry()).Add({});
  });
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 1; !stop; ++i)
      ex.update([&] {
        a->Set(i);
        std::this_thread::sleep_for(std::chrono::microseconds(20));  // a scrape would land here
        b->Set(i);
      });
  });
  std::regex ra("dcformer_test_a ([0-9]+)"), rb("dcformer_test_b ([0-9]+)");
  int checked = 0;
  for (int i = 0; i < 200; ++i) {
    auto r = http_get("127.0.0.1", ex.port(), "/metrics");
    std::smatch ma, mb;
    ASSERT_TRUE(std::regex_search(r.body, ma, ra) && std::regex_search(r.body, mb, rb)) << r.body;
    EXPECT_EQ(ma[1].str(), mb[1].str());
    ++checked;
  }
  stop = true;
  writer.join();
  EXPECT_EQ(checked, 200);
}

TEST(Progress, Line) {
  ProgressInfo p;
  p.step = 120;
  p.total = 300;
  p.loss = 2.34567;
  p.lr = 1.2e-3;
  p.grad_norm = 0.5;
  p.tokens_per_s = 12345;
  p.mfu = 0.0412;
  p.step_time_s = 0.052;
  p.eta_s = 9.4;
  EXPECT_EQ(format_progress(p),
            "step 120/300 | loss 2.3457 | lr 1.20e-03 | gnorm 0.500 | 12.3k tok/s | MFU 4.1% | 0.052 s/step | ETA 9s");
  p.step = 300;
  p.skipped = true;
  EXPECT_TRUE(contains(format_progress(p), "ETA 0s | skipped (non-finite)"));
  p.step = 5;
  p.eta_s = -1;
  EXPECT_TRUE(contains(format_progress(p), "step   5/300")) << format_progress(p);
  EXPECT_TRUE(contains(format_progress(p), "ETA ?"));
}

TEST(Progress, Helpers) {
  EXPECT_EQ(format_duration(9.4), "9s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(2 * 3600 + 7 * 60 + 3), "2h07m");
  EXPECT_EQ(format_duration(3 * 86400 + 4 * 3600), "3d04h");
  EXPECT_EQ(format_si(950), "950");
  EXPECT_EQ(format_si(12345), "12.3k");
  EXPECT_EQ(format_si(4.56e6), "4.56M");
  EXPECT_EQ(format_si(7.891e9), "7.89G");
  EtaEstimator eta(3);
  EXPECT_LT(eta.seconds_left(10), 0);
  for (double s : {10.0, 1.0, 1.0, 1.0}) eta.add(s);  // the window forgets the slow first step
  EXPECT_DOUBLE_EQ(eta.seconds_left(10), 10.0);
}

// What a ProgressPrinter(mode, every) writes for steps 1..total followed by finish().
std::string progress_output(int mode, int every, int total) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  {
    ProgressPrinter pp(f, mode, every);
    ProgressInfo p;
    p.total = total;
    for (int s = 1; s <= total; ++s) {
      p.step = s;
      pp.update(p);
    }
    pp.finish();
  }
  std::fclose(f);
  std::string out(buf, len);
  std::free(buf);
  return out;
}

TEST(Progress, PlainLinesEveryN) {
  const std::string out = progress_output(1, 5, 12);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 3) << out;  // steps 5, 10 and the last
  EXPECT_TRUE(contains(out, "step  5/12")) << out;
  EXPECT_TRUE(contains(out, "step 12/12")) << out;
  EXPECT_FALSE(contains(out, "\r"));
}

TEST(Progress, InPlaceIsOneLine) {
  const std::string out = progress_output(2, 5, 3);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(out.back(), '\n');
  EXPECT_TRUE(contains(out, "\rstep 3/3")) << out;
}

TEST(SystemStats, HostMemoryAndCpuPeak) {
  auto m = read_host_memory();
  EXPECT_GT(m.resident_bytes, 1e6);
  EXPECT_GE(m.peak_resident_bytes, m.resident_bytes);
  const double peak = measure_cpu_gemm_flops(128, 0.05);
  EXPECT_GT(peak, 1e8);   // any CPU of the last 20 years
  EXPECT_LT(peak, 1e14);  // no CPU core reaches 100 TFLOP/s
}
