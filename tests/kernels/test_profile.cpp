// Time ranges (kernels/profile.h) on the host clock: paths, counts, nesting, self time, windows, misuse.
// Times are checked against the steady clock read around the same code and against sleeps' lower bounds.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "kernels/error.h"
#include "kernels/profile.h"

namespace dcf {
namespace {

using namespace std::chrono_literals;

std::map<std::string, prof::Entry> by_path(const std::vector<prof::Entry>& v) {
  std::map<std::string, prof::Entry> m;
  for (const auto& e : v) m[e.path] = e;
  return m;
}

double since_ms(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

struct ProfileTest : ::testing::Test {
  void TearDown() override {
    (void)prof::collect();
    prof::enable(prof::Clock::off);
  }
};

TEST_F(ProfileTest, OffRecordsNothing) {
  prof::enable(prof::Clock::off);
  {
    DCF_RANGE("a");
    DCF_RANGE("b");
  }
  EXPECT_TRUE(prof::collect().empty());
}

TEST_F(ProfileTest, NestedRangesOnTheHostClock) {
  prof::enable(prof::Clock::host);
  const auto t0 = std::chrono::steady_clock::now();
  {
    DCF_RANGE("outer");
    std::this_thread::sleep_for(20ms);
    for (int i = 0; i < 2; ++i) {
      DCF_RANGE("inner");
      std::this_thread::sleep_for(15ms);
    }
  }
  const double wall = since_ms(t0);
  auto m = by_path(prof::collect());
  ASSERT_EQ(m.size(), 2u);
  ASSERT_TRUE(m.count("outer") && m.count("outer/inner"));
  const auto &o = m["outer"], &in = m["outer/inner"];
  EXPECT_EQ(o.count, 1);
  EXPECT_EQ(in.count, 2);
  EXPECT_GE(in.total_ms, 30.0);
  EXPECT_GE(o.total_ms, 50.0);
  EXPECT_LE(o.total_ms, wall);  // inside the clock read around it
  EXPECT_NEAR(o.self_ms, o.total_ms - in.total_ms, 1e-9);
  EXPECT_GE(o.self_ms, 20.0);
  EXPECT_NEAR(in.self_ms, in.total_ms, 1e-9);
  // The window is closed: nothing left.
  EXPECT_TRUE(prof::collect().empty());
}

TEST_F(ProfileTest, PhasesAreSiblings) {
  prof::enable(prof::Clock::host);
  {
    DCF_RANGE("layer");
    prof::Phases ph;
    ph.next("a");
    std::this_thread::sleep_for(5ms);
    ph.next("b");
    { DCF_RANGE("op"); }
    ph.next("a");
    ph.end();
    { DCF_RANGE("tail"); }
  }
  auto m = by_path(prof::collect());
  std::vector<std::string> paths;
  for (auto& [p, e] : m) paths.push_back(p);
  EXPECT_EQ(paths, (std::vector<std::string>{"layer", "layer/a", "layer/b", "layer/b/op", "layer/tail"}));
  EXPECT_EQ(m["layer/a"].count, 2);
  EXPECT_GE(m["layer/a"].total_ms, 5.0);
  EXPECT_EQ(m["layer/tail"].count, 1);
}

TEST_F(ProfileTest, ThreadsKeepTheirOwnNesting) {
  prof::enable(prof::Clock::host);
  auto work = [] {
    DCF_RANGE("t");
    for (int i = 0; i < 3; ++i) {
      DCF_RANGE("x");
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  auto m = by_path(prof::collect());
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m["t"].count, 2);
  EXPECT_EQ(m["t/x"].count, 6);
}

TEST_F(ProfileTest, MisuseIsRefused) {
  prof::enable(prof::Clock::host);
  {
    DCF_RANGE("open");
    EXPECT_THROW(prof::collect(), DcfError);
    EXPECT_THROW(prof::enable(prof::Clock::off), DcfError);
  }
  // Uncollected records: enable() refuses until they are collected.
  EXPECT_THROW(prof::enable(prof::Clock::off), DcfError);
  EXPECT_EQ(prof::collect().size(), 1u);
  EXPECT_NO_THROW(prof::enable(prof::Clock::off));
#ifndef DCF_WITH_CUDA
  EXPECT_THROW(prof::enable(prof::Clock::device), DcfError);
#endif
}

}  // namespace
}  // namespace dcf
