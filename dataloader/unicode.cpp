// Unicode tables (generated; see gen_unicode_tables.py) turned into a two-stage lookup at first use, UTF-8
// sanitizing and NFC. See unicode.h.
#include "dataloader/unicode.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_map>
#include <vector>

namespace dcf::data::unicode {
namespace {

struct CodeRange {
  uint32_t lo, hi;
};
struct CccRange {
  uint32_t lo, hi;
  uint8_t ccc;
};
struct DecompEntry {
  uint32_t cp;
  uint32_t offset;
  uint32_t length;
};
struct ComposeEntry {
  uint32_t first, second, composite;
};

#include "dataloader/unicode_tables.inc"

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr int kBlockBits = 8;
constexpr uint32_t kBlockSize = 1u << kBlockBits;

// Two-stage table: stage1[cp >> 8] names a deduplicated 256-entry block of props bytes.
struct PropsTable {
  std::vector<uint16_t> stage1;
  std::vector<uint8_t> stage2;

  PropsTable() {
    std::vector<uint8_t> flat(kMaxCodePoint + 1, kOther);
    auto mark = [&](const auto& ranges, auto fn) {
      for (const auto& r : ranges)
        for (uint32_t cp = r.lo; cp <= r.hi; ++cp) fn(flat[cp]);
    };
    mark(kLetterRanges, [](uint8_t& v) { v = (v & ~3u) | kLetter; });
    mark(kNumberRanges, [](uint8_t& v) { v = (v & ~3u) | kNumber; });
    mark(kWhiteSpaceRanges, [](uint8_t& v) { v = (v & ~3u) | kSpace; });
    mark(kNfcSensitiveRanges, [](uint8_t& v) { v |= kNfcSensitiveBit; });
    mark(kWordRanges, [](uint8_t& v) { v |= kWordBit; });
    std::unordered_map<std::string, uint16_t> seen;
    stage1.resize((kMaxCodePoint + 1) >> kBlockBits);
    for (uint32_t b = 0; b < stage1.size(); ++b) {
      std::string block(reinterpret_cast<const char*>(flat.data()) + b * kBlockSize, kBlockSize);
      auto it = seen.find(block);
      if (it == seen.end()) {
        uint16_t idx = static_cast<uint16_t>(seen.size());
        it = seen.emplace(block, idx).first;
        stage2.insert(stage2.end(), block.begin(), block.end());
      }
      stage1[b] = it->second;
    }
  }
};

const PropsTable& props_table() {
  static const PropsTable table;
  return table;
}

uint8_t ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::upper_bound(std::begin(kCccRanges), std::end(kCccRanges), cp,
                             [](uint32_t v, const CccRange& r) { return v < r.lo; });
  if (it == std::begin(kCccRanges)) return 0;
  --it;
  return cp <= it->hi ? it->ccc : 0;
}

// Hangul syllables (Unicode chapter 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose_into(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                             [](const DecompEntry& e, uint32_t v) { return e.cp < v; });
  if (it != std::end(kDecomp) && it->cp == cp) {
    out.insert(out.end(), kDecompData + it->offset, kDecompData + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

// Primary composite of (a, b), or 0.
uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kCompose), std::end(kCompose), std::pair{a, b},
                             [](const ComposeEntry& e, const std::pair<uint32_t, uint32_t>& v) {
                               return e.first < v.first || (e.first == v.first && e.second < v.second);
                             });
  if (it != std::end(kCompose) && it->first == a && it->second == b) return it->composite;
  return 0;
}

}  // namespace

uint8_t char_props(uint32_t cp) {
  if (cp > kMaxCodePoint) return kOther;
  const PropsTable& t = props_table();
  return t.stage2[(static_cast<size_t>(t.stage1[cp >> kBlockBits]) << kBlockBits) | (cp & (kBlockSize - 1))];
}

bool is_white_space(uint32_t cp) { return char_class(cp) == kSpace; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {
// Length of the valid sequence at p[0..n) (0 if invalid); *subpart = bytes of its maximal valid prefix.
size_t utf8_sequence(const unsigned char* p, size_t n, size_t* subpart) {
  unsigned char b0 = p[0];
  if (b0 < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *subpart = 1;
    return 0;
  }
  for (size_t k = 1; k <= need; ++k) {
    unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
    if (k >= n || p[k] < lo_k || p[k] > hi_k) {
      *subpart = k;
      return 0;
    }
  }
  return need + 1;
}
}  // namespace

size_t valid_utf8_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t sub;
    size_t len = utf8_sequence(p + i, n - i, &sub);
    if (len == 0) return i;
    i += len;
  }
  return n;
}

bool sanitize_utf8(std::string_view s, std::string* out) {
  size_t i = valid_utf8_prefix(s);
  if (i == s.size()) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::string r;
  r.reserve(s.size() + 16);
  r.append(s.data(), i);
  size_t n = s.size();
  while (i < n) {
    size_t sub = 0;
    size_t len = utf8_sequence(p + i, n - i, &sub);
    if (len == 0) {
      append_utf8(r, kReplacementChar);
      i += sub;
    } else {
      r.append(s.data() + i, len);
      i += len;
    }
  }
  *out = std::move(r);
  return true;
}

bool nfc_normalize(std::string_view s, std::string* out) {
  // Quick check: every character below U+0300 (lead byte < 0xCC) is untouched by NFC.
  size_t first = s.size();
  for (size_t i = 0; i < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) >= 0xCC) {
      first = i;
      break;
    }
  }
  if (first == s.size()) return false;
  bool sensitive = false;
  for (size_t i = first; i < s.size();) {
    uint32_t cp;
    size_t len = decode_valid(s, i, &cp);
    if (char_props(cp) & kNfcSensitiveBit) {
      sensitive = true;
      break;
    }
    i += len;
  }
  if (!sensitive) return false;

  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += decode_valid(s, i, &cp);
    decompose_into(cp, cps);
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  std::vector<uint8_t> cc(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) cc[i] = ccc_of(cps[i]);
  for (size_t i = 0; i < cps.size();) {
    if (cc[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && cc[j] != 0) ++j;
    for (size_t a = i + 1; a < j; ++a) {  // insertion sort: runs are short
      for (size_t b = a; b > i && cc[b - 1] > cc[b]; --b) {
        std::swap(cc[b - 1], cc[b]);
        std::swap(cps[b - 1], cps[b]);
      }
    }
    i = j;
  }
  // Canonical composition.
  std::vector<uint32_t> res;
  std::vector<uint8_t> res_cc;
  res.reserve(cps.size());
  long starter = -1;
  for (size_t i = 0; i < cps.size(); ++i) {
    uint32_t c = cps[i];
    uint8_t k = cc[i];
    if (starter >= 0) {
      bool adjacent = static_cast<size_t>(starter) + 1 == res.size();
      uint8_t last = res_cc.back();
      bool blocked = !adjacent && (last == 0 || last >= k);
      if (!blocked) {
        uint32_t comp = compose_pair(res[starter], c);
        if (comp != 0) {
          res[starter] = comp;
          continue;
        }
      }
    }
    if (k == 0) starter = static_cast<long>(res.size());
    res.push_back(c);
    res_cc.push_back(k);
  }
  std::string r;
  r.reserve(s.size() + 8);
  for (uint32_t c : res) append_utf8(r, c);
  *out = std::move(r);
  return true;
}

}  // namespace dcf::data::unicode
