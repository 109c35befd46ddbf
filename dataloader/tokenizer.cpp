// Byte-level BPE tokenizer: loading (tokenizer.json, encoder.json + vocab.bpe), added-token
// splitting, NFC, the GPT-2 pre-tokenizer state machine, BPE merging with a per-thread word cache.
#include "dataloader/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "dataloader/unicode.h"
#include "kernels/error.h"

namespace dcf::data {
namespace {

using json = nlohmann::json;
namespace uc = unicode;

[[noreturn]] void fail(const std::string& file, const std::string& problem) {
  throw InputError(file + ": " + problem);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open tokenizer file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's byte <-> printable character table (bytes_to_unicode in OpenAI's encoder.py).
struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_char{};
  std::unordered_map<uint32_t, uint8_t> char_to_byte;
  ByteAlphabet() {
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_char[b] = printable ? b : 256 + n++;
      char_to_byte[byte_to_char[b]] = static_cast<uint8_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

std::string bytes_to_alphabet(std::string_view bytes) {
  std::string s;
  for (unsigned char b : bytes) uc::append_utf8(s, alphabet().byte_to_char[b]);
  return s;
}

// ByteLevel decoder for one token: each character back to its byte; a token holding a character
// outside the alphabet keeps its raw UTF-8 (as the library's decoder does).
std::string alphabet_to_bytes(std::string_view token) {
  std::string out;
  std::string valid;
  if (uc::sanitize_utf8(token, &valid)) token = valid;
  for (size_t i = 0; i < token.size();) {
    uint32_t cp;
    i += uc::decode_valid(token, i, &cp);
    auto it = alphabet().char_to_byte.find(cp);
    if (it == alphabet().char_to_byte.end()) return std::string(token);
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  h *= 0x9E3779B97F4A7C15ull;
  h ^= h >> 32;
  return h | 1;  // 0 marks an empty slot
}

// (left id, right id) -> (rank, merged id), open addressing.
class MergeTable {
 public:
  void build(const std::vector<std::pair<uint64_t, uint64_t>>& entries) {
    size_t cap = 16;
    while (cap < entries.size() * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, 0);
    mask_ = cap - 1;
    for (const auto& [k, v] : entries) {
      size_t i = mix(k) & mask_;
      while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & mask_;
      keys_[i] = k;  // a later duplicate overwrites, as the library's HashMap collect does
      vals_[i] = v;
    }
  }
  // Returns rank << 32 | new_id, or kNone.
  uint64_t find(int32_t a, int32_t b) const {
    uint64_t k = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    size_t i = mix(k) & mask_;
    while (true) {
      uint64_t kk = keys_[i];
      if (kk == k) return vals_[i];
      if (kk == kEmpty) return kNone;
      i = (i + 1) & mask_;
    }
  }
  static constexpr uint64_t kNone = ~0ull;

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return k;
  }
  std::vector<uint64_t> keys_{kEmpty};
  std::vector<uint64_t> vals_{0};
  size_t mask_ = 0;
};

// Byte trie over added-token contents: leftmost-longest matching like aho-corasick's LeftmostLongest.
class TokenTrie {
 public:
  void add(std::string_view s, int32_t token_index) {
    if (s.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    int32_t n = 0;
    for (unsigned char c : s) {
      auto& kids = nodes_[n].kids;
      auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>{c, -1},
                                 [](const auto& x, const auto& y) { return x.first < y.first; });
      if (it != kids.end() && it->first == c) {
        n = it->second;
      } else {
        int32_t child = static_cast<int32_t>(nodes_.size());
        kids.insert(it, {c, child});
        nodes_.emplace_back();
        n = child;
      }
    }
    if (nodes_[n].token < 0) nodes_[n].token = token_index;  // first pattern wins on duplicates
    first_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const { return nodes_.empty(); }
  // Leftmost-longest match in s[from..): returns start, sets *len and *token; npos when none.
  size_t find(std::string_view s, size_t from, size_t* len, int32_t* token) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<unsigned char>(s[i])]) continue;
      int32_t n = 0, best = -1;
      size_t best_len = 0;
      for (size_t j = i; j < s.size(); ++j) {
        const auto& kids = nodes_[n].kids;
        unsigned char c = static_cast<unsigned char>(s[j]);
        auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>{c, -1},
                                   [](const auto& x, const auto& y) { return x.first < y.first; });
        if (it == kids.end() || it->first != c) break;
        n = it->second;
        if (nodes_[n].token >= 0) {
          best = nodes_[n].token;
          best_len = j + 1 - i;
        }
      }
      if (best >= 0) {
        *len = best_len;
        *token = best;
        return i;
      }
    }
    return std::string_view::npos;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

// Per-thread cache of word -> ids (words up to 255 bytes), cleared when full.
class WordCache {
 public:
  WordCache() { clear(); }
  void clear() {
    slots_.assign(kSlots, Slot{});
    keys_.clear();
    vals_.clear();
    count_ = 0;
  }
  const int32_t* find(std::string_view w, uint64_t h, uint32_t* n) const {
    size_t i = h & (kSlots - 1);
    while (true) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == w.size() && std::memcmp(keys_.data() + s.key_off, w.data(), w.size()) == 0) {
        *n = s.val_len;
        return vals_.data() + s.val_off;
      }
      i = (i + 1) & (kSlots - 1);
    }
  }
  void insert(std::string_view w, uint64_t h, const int32_t* ids, uint32_t n) {
    if (count_ >= kSlots / 2 || keys_.size() > kMaxKeyBytes) clear();
    size_t i = h & (kSlots - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(w.size()),
                     static_cast<uint32_t>(vals_.size()), n};
    keys_.append(w);
    vals_.insert(vals_.end(), ids, ids + n);
    ++count_;
  }
  uint64_t owner = 0;

 private:
  static constexpr size_t kSlots = 1 << 17;
  static constexpr size_t kMaxKeyBytes = 8 << 20;
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, val_off = 0, val_len = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> vals_;
  size_t count_ = 0;
};

std::atomic<uint64_t> g_next_uid{1};

bool is_word_char(uint32_t cp) { return uc::is_word_char(cp); }  // regex \w, for single_word tokens

uint32_t last_char(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i == 0) return 0;
  uint32_t cp;
  uc::decode_valid(s, i - 1, &cp);
  return cp;
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  // Model.
  std::unordered_map<std::string, int32_t> vocab;  // token (byte alphabet) -> id
  std::array<int32_t, 256> byte_id{};
  std::array<int32_t, 256> fallback_id{};  // "<0xXX>" tokens for byte_fallback
  MergeTable merges;
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  // Normalizer and pre-tokenizer.
  bool nfc = false;
  bool add_prefix_space = false, use_regex = true;
  // Added tokens.
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_map;   // content -> id
  std::unordered_map<int32_t, size_t> added_by_id;      // id -> index into added
  TokenTrie raw_trie, norm_trie;
  // Ids.
  std::vector<std::string> token_of_id;  // as the library names it (added content first)
  std::vector<uint8_t> id_used;
  std::vector<std::string> bytes_of_id;
  int32_t eod = -1;
  uint64_t uid = g_next_uid.fetch_add(1);
  std::vector<std::string> warnings;

  // Each thread keeps caches for its last few tokenizers (identified by a never-reused uid).
  WordCache& cache() const {
    thread_local std::vector<std::unique_ptr<WordCache>> caches;
    thread_local uint64_t tick = 0;
    thread_local std::vector<uint64_t> last_use;
    for (size_t i = 0; i < caches.size(); ++i) {
      if (caches[i]->owner == uid) {
        last_use[i] = ++tick;
        return *caches[i];
      }
    }
    size_t slot;
    if (caches.size() < 4) {
      caches.push_back(std::make_unique<WordCache>());
      last_use.push_back(0);
      slot = caches.size() - 1;
    } else {
      slot = static_cast<size_t>(std::min_element(last_use.begin(), last_use.end()) - last_use.begin());
      caches[slot]->clear();
    }
    caches[slot]->owner = uid;
    last_use[slot] = ++tick;
    return *caches[slot];
  }

  // ---- loading ---------------------------------------------------------------------------------
  void set_vocab(std::unordered_map<std::string, int32_t> v) {
    vocab = std::move(v);
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      uc::append_utf8(ch, alphabet().byte_to_char[b]);
      auto it = vocab.find(ch);
      byte_id[b] = it == vocab.end() ? -1 : it->second;
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      auto fb = vocab.find(buf);
      fallback_id[b] = fb == vocab.end() ? -1 : fb->second;
    }
  }

  void set_merges(const std::vector<std::pair<std::string, std::string>>& pairs) {
    std::vector<std::pair<uint64_t, uint64_t>> entries;
    entries.reserve(pairs.size());
    for (size_t rank = 0; rank < pairs.size(); ++rank) {
      const auto& [a, b] = pairs[rank];
      auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
      if (ia == vocab.end()) fail(source, "merge " + std::to_string(rank) + " uses token '" + a + "' that is not in the vocabulary");
      if (ib == vocab.end()) fail(source, "merge " + std::to_string(rank) + " uses token '" + b + "' that is not in the vocabulary");
      if (iab == vocab.end()) fail(source, "merge " + std::to_string(rank) + " makes token '" + a + b + "' that is not in the vocabulary");
      uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
      uint64_t val = (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(iab->second);
      entries.emplace_back(key, val);
    }
    merges.build(entries);
  }

  // The library's AddedVocabulary::add_tokens: an added token keeps its vocabulary id when its
  // content is in the vocabulary, else it gets the next id after the vocabulary.
  void set_added_tokens(const std::vector<std::pair<AddedToken, int64_t>>& tokens) {
    const int64_t model_size = static_cast<int64_t>(vocab.size());
    for (const auto& [tok, file_id] : tokens) {
      if (tok.content.empty() || added_map.count(tok.content)) continue;
      int64_t id;
      if (auto it = vocab.find(tok.content); it != vocab.end()) {
        id = it->second;
      } else if (added_map.empty()) {
        id = model_size;
      } else {
        int64_t mx = 0;
        for (const auto& kv : added_map) mx = std::max<int64_t>(mx, kv.second);
        id = (mx >= model_size || model_size == 0) ? mx + 1 : model_size;
      }
      if (file_id >= 0 && file_id != id)
        warnings.push_back(source + ": added token '" + tok.content + "' has id " + std::to_string(file_id) +
                           " in the file but gets id " + std::to_string(id) + " (as in Hugging Face tokenizers)");
      AddedToken t = tok;
      t.id = static_cast<int32_t>(id);
      added_map[t.content] = t.id;
      added_by_id[t.id] = added.size();
      added.push_back(t);
    }
    // Special tokens first, then the others, each in file order (the library's matching order).
    std::vector<size_t> order;
    for (size_t i = 0; i < added.size(); ++i)
      if (added[i].special) order.push_back(i);
    for (size_t i = 0; i < added.size(); ++i)
      if (!added[i].special) order.push_back(i);
    for (size_t i : order) {
      const AddedToken& t = added[i];
      if (t.normalized) {
        std::string norm;
        std::string_view pattern = t.content;
        if (nfc && uc::nfc_normalize(pattern, &norm)) pattern = norm;
        norm_trie.add(pattern, static_cast<int32_t>(i));
      } else {
        raw_trie.add(t.content, static_cast<int32_t>(i));
      }
    }
  }

  void finish() {
    int64_t max_id = -1;
    for (const auto& kv : vocab) max_id = std::max<int64_t>(max_id, kv.second);
    for (const auto& t : added) max_id = std::max<int64_t>(max_id, t.id);
    if (max_id < 0) fail(source, "empty vocabulary");
    token_of_id.assign(max_id + 1, std::string());
    id_used.assign(max_id + 1, 0);
    for (const auto& [tok, id] : vocab) {
      token_of_id[id] = tok;
      id_used[id] = 1;
    }
    for (const auto& t : added) {
      token_of_id[t.id] = t.content;
      id_used[t.id] = 1;
    }
    bytes_of_id.resize(token_of_id.size());
    for (size_t i = 0; i < token_of_id.size(); ++i) bytes_of_id[i] = alphabet_to_bytes(token_of_id[i]);
    if (auto it = added_map.find("<|endoftext|>"); it != added_map.end()) {
      eod = it->second;
    } else if (auto v = vocab.find("<|endoftext|>"); v != vocab.end()) {
      eod = v->second;
    }
  }

  // ---- encoding --------------------------------------------------------------------------------
  void encode(std::string_view text, std::vector<int32_t>& out) const {
    std::string sanitized;
    if (uc::sanitize_utf8(text, &sanitized)) text = sanitized;
    WordCache& wc = cache();
    split_added(text, raw_trie, out, [&](std::string_view piece) { normalize_stage(piece, out, wc); });
  }

  template <typename Rest>
  void split_added(std::string_view s, const TokenTrie& trie, std::vector<int32_t>& out, Rest&& rest) const {
    if (s.empty()) return;
    if (trie.empty()) {
      rest(s);
      return;
    }
    size_t start_offset = 0, from = 0;
    while (true) {
      size_t len;
      int32_t ti;
      size_t start = trie.find(s, from, &len, &ti);
      if (start == std::string_view::npos) break;
      size_t stop = start + len;
      from = stop;
      const AddedToken& t = added[ti];
      if (t.single_word) {
        bool start_space = start == 0 || !is_word_char(last_char(s.substr(0, start)));
        uint32_t next = 0;
        if (stop < s.size()) uc::decode_valid(s, stop, &next);
        bool stop_space = stop == s.size() || !is_word_char(next);
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        size_t ns = start;
        while (ns > 0) {
          size_t b = ns - 1;
          while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
          uint32_t cp;
          uc::decode_valid(s, b, &cp);
          if (!uc::is_white_space(cp)) break;
          ns = b;
        }
        start = std::max(ns, start_offset);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          uint32_t cp;
          size_t l = uc::decode_valid(s, stop, &cp);
          if (!uc::is_white_space(cp)) break;
          stop += l;
        }
      }
      if (start_offset < start) rest(s.substr(start_offset, start - start_offset));
      out.push_back(t.id);
      start_offset = stop;
    }
    if (start_offset < s.size()) rest(s.substr(start_offset));
  }

  void normalize_stage(std::string_view piece, std::vector<int32_t>& out, WordCache& wc) const {
    std::string normalized;
    if (nfc && uc::nfc_normalize(piece, &normalized)) piece = normalized;
    split_added(piece, norm_trie, out, [&](std::string_view p) { pre_tokenize(p, out, wc); });
  }

  void pre_tokenize(std::string_view piece, std::vector<int32_t>& out, WordCache& wc) const {
    std::string prefixed;
    if (add_prefix_space && piece[0] != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed.push_back(' ');
      prefixed.append(piece);
      piece = prefixed;
    }
    if (!use_regex) {
      bpe(piece, out, wc);
      return;
    }
    split_gpt2(piece, [&](std::string_view w) { bpe(w, out, wc); });
  }

  // The GPT-2 regex 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  // as a left-to-right scanner (the regex's alternatives are tried in order at each match start).
  template <typename Emit>
  static void split_gpt2(std::string_view s, Emit&& emit) {
    static constexpr auto ascii = [] {
      std::array<uint8_t, 128> t{};
      for (int c = 0; c < 128; ++c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) t[c] = uc::kLetter;
        else if (c >= '0' && c <= '9') t[c] = uc::kNumber;
        else if (c == ' ' || (c >= 9 && c <= 13)) t[c] = uc::kSpace;
        else t[c] = uc::kOther;
      }
      return t;
    }();
    const size_t n = s.size();
    auto cls_at = [&](size_t i, size_t* len) -> uc::CharClass {
      unsigned char b = static_cast<unsigned char>(s[i]);
      if (b < 0x80) {
        *len = 1;
        return static_cast<uc::CharClass>(ascii[b]);
      }
      uint32_t cp;
      *len = uc::decode_valid(s, i, &cp);
      return uc::char_class(cp);
    };
    size_t i = 0;
    while (i < n) {
      if (s[i] == '\'' && i + 1 < n) {
        char c = s[i + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') {
          emit(s.substr(i, 2));
          i += 2;
          continue;
        }
        if (i + 2 < n && ((c == 'r' && s[i + 2] == 'e') || (c == 'v' && s[i + 2] == 'e') || (c == 'l' && s[i + 2] == 'l'))) {
          emit(s.substr(i, 3));
          i += 3;
          continue;
        }
      }
      size_t len0;
      uc::CharClass c0 = cls_at(i, &len0);
      size_t start = i;
      uc::CharClass run;
      size_t j;
      if (c0 == uc::kSpace) {
        if (s[i] == ' ' && i + 1 < n) {
          size_t len1;
          uc::CharClass c1 = cls_at(i + 1, &len1);
          if (c1 != uc::kSpace) {  // " ?X+" with its leading space
            run = c1;
            j = i + 1 + len1;
            goto extend;
          }
        }
        // \s+(?!\S) then \s+: a whitespace run keeps its last character for the next word unless
        // it reaches the end of the text or is a single character.
        size_t last = i;
        j = i + len0;
        while (j < n) {
          size_t l;
          if (cls_at(j, &l) != uc::kSpace) break;
          last = j;
          j += l;
        }
        if (j < n && last > start) j = last;
        emit(s.substr(start, j - start));
        i = j;
        continue;
      }
      run = c0;
      j = i + len0;
    extend:
      while (j < n) {
        size_t l;
        if (cls_at(j, &l) != run) break;
        j += l;
      }
      emit(s.substr(start, j - start));
      i = j;
    }
  }

  void bpe(std::string_view w, std::vector<int32_t>& out, WordCache& wc) const {
    if (w.empty()) return;
    const bool cacheable = w.size() < 256;
    uint64_t h = 0;
    if (cacheable) {
      h = hash_bytes(w);
      uint32_t n;
      if (const int32_t* ids = wc.find(w, h, &n)) {
        out.insert(out.end(), ids, ids + n);
        return;
      }
    }
    size_t before = out.size();
    bpe_uncached(w, out);
    if (cacheable) wc.insert(w, h, out.data() + before, static_cast<uint32_t>(out.size() - before));
  }

  void bpe_uncached(std::string_view w, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(bytes_to_alphabet(w));
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    // Initial symbols: one per byte (the library's merge_word, incl. unk and byte fallback).
    std::vector<int32_t> sym;
    sym.reserve(w.size());
    int32_t pending_unk = -1;
    for (unsigned char b : w) {
      int32_t id = byte_id[b];
      if (id >= 0) {
        if (pending_unk >= 0) {
          sym.push_back(pending_unk);
          pending_unk = -1;
        }
        sym.push_back(id);
        continue;
      }
      if (byte_fallback && fallback_id[b] >= 0) {
        sym.push_back(fallback_id[b]);
        continue;
      }
      if (unk_id >= 0) {
        if (pending_unk >= 0 && !fuse_unk) sym.push_back(pending_unk);
        pending_unk = unk_id;
      }
    }
    if (pending_unk >= 0) sym.push_back(pending_unk);
    if (sym.size() <= 1) {
      out.insert(out.end(), sym.begin(), sym.end());
      return;
    }
    if (sym.size() <= 48) {
      merge_small(sym);
    } else {
      merge_heap(sym);
    }
    out.insert(out.end(), sym.begin(), sym.end());
  }

  // Repeatedly merges the adjacent pair of lowest rank (leftmost on ties): the same result as the
  // library's heap with stale-entry checks, since every merge lengthens the strings around it.
  void merge_small(std::vector<int32_t>& sym) const {
    size_t n = sym.size();
    uint64_t pr[64];
    for (size_t i = 0; i + 1 < n; ++i) pr[i] = merges.find(sym[i], sym[i + 1]);
    while (n > 1) {
      size_t best = 0;
      uint64_t bv = pr[0];
      for (size_t i = 1; i + 1 < n; ++i) {
        // Rank sits in the high bits; equal ranks are the same pair, so strict < keeps the leftmost.
        if (pr[i] < bv) {
          bv = pr[i];
          best = i;
        }
      }
      if (bv == MergeTable::kNone) break;
      sym[best] = static_cast<int32_t>(bv & 0xFFFFFFFFu);
      for (size_t i = best + 1; i + 1 < n; ++i) sym[i] = sym[i + 1];
      for (size_t i = best + 1; i + 2 < n; ++i) pr[i] = pr[i + 1];
      --n;
      if (best > 0) pr[best - 1] = merges.find(sym[best - 1], sym[best]);
      if (best + 1 < n) pr[best] = merges.find(sym[best], sym[best + 1]);
    }
    sym.resize(n);
  }

  // The library's Word::merge_all: a min-heap of (rank, position) over a linked list of symbols.
  void merge_heap(std::vector<int32_t>& sym) const {
    const size_t n = sym.size();
    std::vector<int32_t> prev(n), next(n);
    std::vector<uint8_t> alive(n, 1);
    for (size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<int32_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    }
    struct Entry {
      uint32_t rank;
      uint32_t pos;
      int32_t new_id;
      bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> q;
    for (size_t i = 0; i + 1 < n; ++i) {
      uint64_t m = merges.find(sym[i], sym[i + 1]);
      if (m != MergeTable::kNone) q.push({static_cast<uint32_t>(m >> 32), static_cast<uint32_t>(i), static_cast<int32_t>(m & 0xFFFFFFFFu)});
    }
    while (!q.empty()) {
      Entry top = q.top();
      q.pop();
      size_t p = top.pos;
      if (!alive[p] || next[p] < 0) continue;
      size_t r = static_cast<size_t>(next[p]);
      uint64_t m = merges.find(sym[p], sym[r]);
      if (m == MergeTable::kNone || static_cast<int32_t>(m & 0xFFFFFFFFu) != top.new_id) continue;
      sym[p] = top.new_id;
      alive[r] = 0;
      next[p] = next[r];
      if (next[r] >= 0) prev[next[r]] = static_cast<int32_t>(p);
      if (prev[p] >= 0) {
        size_t l = static_cast<size_t>(prev[p]);
        uint64_t ml = merges.find(sym[l], sym[p]);
        if (ml != MergeTable::kNone) q.push({static_cast<uint32_t>(ml >> 32), static_cast<uint32_t>(l), static_cast<int32_t>(ml & 0xFFFFFFFFu)});
      }
      if (next[p] >= 0) {
        uint64_t mr = merges.find(sym[p], sym[next[p]]);
        if (mr != MergeTable::kNone) q.push({static_cast<uint32_t>(mr >> 32), static_cast<uint32_t>(p), static_cast<int32_t>(mr & 0xFFFFFFFFu)});
      }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; ++i)
      if (alive[i]) sym[k++] = sym[i];
    sym.resize(k);
  }
};

namespace {

bool json_bool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  return it->get<bool>();
}

std::string json_type(const json& j) {
  auto it = j.find("type");
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : std::string();
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path d(path);
    if (fs::exists(d / "tokenizer.json")) return from_tokenizer_json((d / "tokenizer.json").string());
    if (fs::exists(d / "encoder.json") && fs::exists(d / "vocab.bpe"))
      return from_gpt2_files((d / "encoder.json").string(), (d / "vocab.bpe").string());
    fail(path, "directory holds neither tokenizer.json nor encoder.json + vocab.bpe");
  }
  return from_tokenizer_json(path);
}

Tokenizer Tokenizer::from_tokenizer_json(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->source = path;
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  try {
    if (!j.is_object()) fail(path, "not a tokenizer.json (top level is not an object)");
    auto mit = j.find("model");
    if (mit == j.end() || !mit->is_object()) fail(path, "no \"model\" object");
    const json& model = *mit;
    std::string mtype = json_type(model);
    if (!mtype.empty() && mtype != "BPE") fail(path, "model type '" + mtype + "' is not supported (only BPE)");
    if (!model.contains("vocab") || !model["vocab"].is_object()) fail(path, "model has no \"vocab\" object");
    if (!model.contains("merges") || !model["merges"].is_array()) fail(path, "model has no \"merges\" array");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
      fail(path, "BPE dropout is not supported (it makes encoding random)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(k) && !model[k].is_null() && !model[k].get<std::string>().empty())
        fail(path, std::string("model.") + k + " is not supported");
    }
    std::unordered_map<std::string, int32_t> vocab;
    vocab.reserve(model["vocab"].size() * 2);
    for (const auto& [tok, id] : model["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        fail(path, "vocab entry '" + tok + "' has no valid id");
      vocab.emplace(tok, static_cast<int32_t>(id.get<int64_t>()));
    }
    impl->set_vocab(std::move(vocab));
    std::vector<std::pair<std::string, std::string>> pairs;
    pairs.reserve(model["merges"].size());
    for (const auto& m : model["merges"]) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos) fail(path, "merge '" + s + "' is not two tokens separated by a space");
        pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        pairs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        fail(path, "merge entry " + m.dump() + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
    }
    impl->set_merges(pairs);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = impl->vocab.find(model["unk_token"].get<std::string>());
      if (it != impl->vocab.end()) impl->unk_id = it->second;
    }
    impl->fuse_unk = json_bool(model, "fuse_unk", false);
    impl->byte_fallback = json_bool(model, "byte_fallback", false);
    impl->ignore_merges = json_bool(model, "ignore_merges", false);

    // Normalizer: none or NFC (also inside a Sequence).
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      std::vector<json> ns{j["normalizer"]};
      if (json_type(ns[0]) == "Sequence") ns = j["normalizer"]["normalizers"].get<std::vector<json>>();
      for (const auto& n : ns) {
        std::string t = json_type(n);
        if (t != "NFC") fail(path, "normalizer '" + t + "' is not supported (only NFC)");
        impl->nfc = true;
      }
    }
    // Pre-tokenizer: ByteLevel (also as the only member of a Sequence).
    {
      if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null()) fail(path, "no pre_tokenizer (a ByteLevel one is needed)");
      json pt = j["pre_tokenizer"];
      if (json_type(pt) == "Sequence") {
        const auto& v = pt["pretokenizers"];
        if (!v.is_array() || v.size() != 1) fail(path, "pre_tokenizer Sequence other than one ByteLevel is not supported");
        pt = v[0];
      }
      if (json_type(pt) != "ByteLevel") fail(path, "pre_tokenizer '" + json_type(pt) + "' is not supported (only ByteLevel)");
      impl->add_prefix_space = json_bool(pt, "add_prefix_space", true);
      impl->use_regex = json_bool(pt, "use_regex", true);
    }
    if (j.contains("decoder") && !j["decoder"].is_null() && json_type(j["decoder"]) != "ByteLevel")
      fail(path, "decoder '" + json_type(j["decoder"]) + "' is not supported (only ByteLevel)");
    if (j.contains("post_processor") && !j["post_processor"].is_null() && json_type(j["post_processor"]) != "ByteLevel")
      fail(path, "post_processor '" + json_type(j["post_processor"]) + "' is not supported (only ByteLevel)");

    std::vector<std::pair<AddedToken, int64_t>> added;
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& a : j["added_tokens"]) {
        if (!a.is_object() || !a.contains("content") || !a["content"].is_string())
          fail(path, "added token " + a.dump() + " has no content");
        AddedToken t;
        t.content = a["content"].get<std::string>();
        t.special = json_bool(a, "special", false);
        t.single_word = json_bool(a, "single_word", false);
        t.lstrip = json_bool(a, "lstrip", false);
        t.rstrip = json_bool(a, "rstrip", false);
        t.normalized = json_bool(a, "normalized", !t.special);
        if (!a.contains("id") || !a["id"].is_number_integer())
          fail(path, "added token '" + t.content + "' has no integer id");
        int64_t id = a["id"].get<int64_t>();
        added.emplace_back(t, id);
      }
    }
    impl->set_added_tokens(added);
  } catch (const json::exception& e) {
    fail(path, std::string("malformed tokenizer.json: ") + e.what());
  }
  impl->finish();
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  auto impl = std::make_unique<Impl>();
  impl->source = encoder_json;
  json j;
  try {
    j = json::parse(read_file(encoder_json));
  } catch (const json::exception& e) {
    fail(encoder_json, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(encoder_json, "not a token -> id object");
  std::unordered_map<std::string, int32_t> vocab;
  for (const auto& [tok, id] : j.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      fail(encoder_json, "entry '" + tok + "' has no valid id");
    vocab.emplace(tok, static_cast<int32_t>(id.get<int64_t>()));
  }
  impl->set_vocab(std::move(vocab));
  impl->source = vocab_bpe;
  std::vector<std::pair<std::string, std::string>> pairs;
  {
    std::istringstream in(read_file(vocab_bpe));
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.rfind("#version", 0) == 0) continue;
      size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail(vocab_bpe, "line " + std::to_string(lineno) + " is not two tokens separated by one space");
      pairs.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    }
  }
  impl->set_merges(pairs);
  impl->add_prefix_space = false;
  impl->use_regex = true;
  AddedToken eot;
  eot.content = "<|endoftext|>";
  eot.special = true;
  eot.normalized = true;
  if (impl->vocab.count(eot.content)) impl->set_added_tokens({{eot, -1}});
  impl->source = encoder_json;
  impl->finish();
  return Tokenizer(std::move(impl));
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const { impl_->encode(text, out); }

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  impl_->encode(text, out);
  return out;
}

void Tokenizer::encode_document(std::string_view text, std::vector<int32_t>& out) const {
  impl_->encode(text, out);
  out.push_back(eod_id());
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->bytes_of_id.size() || !impl_->id_used[id]) continue;
    if (skip_special_tokens) {
      auto it = impl_->added_by_id.find(id);
      if (it != impl_->added_by_id.end() && impl_->added[it->second].special) continue;
    }
    out += impl_->bytes_of_id[id];
  }
  return out;
}

int32_t Tokenizer::eod_id() const {
  if (impl_->eod < 0) fail(impl_->source, "no end-of-document token (<|endoftext|>) in the vocabulary");
  return impl_->eod;
}

void Tokenizer::set_eod_id(int32_t id) {
  if (id < 0 || id >= vocab_size()) fail(impl_->source, "end-of-document id " + std::to_string(id) + " is outside the vocabulary");
  impl_->eod = id;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  std::string t(token);
  if (auto it = impl_->added_map.find(t); it != impl_->added_map.end()) return it->second;
  if (auto it = impl_->vocab.find(t); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->token_of_id.size() || !impl_->id_used[id]) return std::nullopt;
  return impl_->token_of_id[id];
}

void detail::gpt2_pre_tokenize(std::string_view valid_utf8, std::vector<std::string_view>& pieces) {
  Tokenizer::Impl::split_gpt2(valid_utf8, [&](std::string_view w) { pieces.push_back(w); });
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->token_of_id.size()); }
const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
const std::vector<std::string>& Tokenizer::warnings() const { return impl_->warnings; }

}  // namespace dcf::data
