// Parses the Prometheus text exposition format (what /metrics returns) into samples, for tests.
#pragma once
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace dcf::test {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

inline std::vector<Sample> parse_exposition(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        size_t q1 = eq + 2, q2 = q1;
        std::string val;
        while (q2 < line.size() && line[q2] != '"') {
          if (line[q2] == '\\' && q2 + 1 < line.size()) ++q2;
          val += line[q2++];
        }
        s.labels[key] = val;
        i = q2 + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;
    }
    std::string v = line.substr(line.find_first_not_of(' ', i));
    v = v.substr(0, v.find(' '));  // an optional timestamp follows
    s.value = v == "Nan" || v == "NaN" ? std::numeric_limits<double>::quiet_NaN()
              : v == "+Inf"            ? std::numeric_limits<double>::infinity()
              : v == "-Inf"            ? -std::numeric_limits<double>::infinity()
                                       : std::stod(v);
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the sample with this name whose labels include `labels`; nullopt if none.
inline std::optional<double> find_sample(const std::vector<Sample>& samples, const std::string& name,
                                         const std::map<std::string, std::string>& labels = {}) {
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) ok = false;
    }
    if (ok) return s.value;
  }
  return std::nullopt;
}

}  // namespace dcf::test
