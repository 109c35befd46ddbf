// Helpers for tests that run the dcformer executable: run a shell command, capture its output and exit
// status, read metrics.jsonl.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dcf::test {

struct RunResult {
  int status = -1;  // exit status, or 128 + signal
  std::string output;
};

inline RunResult run_command(const std::string& cmd) {
  RunResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// The JSON object a command printed last: its last line that starts with '{' (null when there is none).
inline nlohmann::json last_json_line(const std::string& output) {
  const size_t at = output.rfind("\n{");
  const std::string line = at == std::string::npos ? output : output.substr(at + 1);
  return line.rfind('{', 0) == 0 ? nlohmann::json::parse(line) : nlohmann::json();
}

inline std::string mpirun() {
  return std::string(DCF_MPIRUN_CMD);
}

}  // namespace dcf::test
