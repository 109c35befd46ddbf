// `preprocess`: ids equal the tokenizer's per document (+ EOD), output is byte-identical for any
// worker count, zstd and plain inputs concatenate in order, malformed lines are counted and skipped
// (or stop the run under --strict, exit status 2), and the command line prints progress and a summary.
#include <gtest/gtest.h>
#include <zstd.h>

#include <random>

#include "dataloader/indexed_dataset.h"
#include "dataloader/jsonl.h"
#include "dataloader/preprocess.h"
#include "dataloader/tokenizer.h"
#include "kernels/error.h"
#include "tests/dataloader/test_util.h"

namespace dcf::data::testing {
namespace {

std::string pile_line(const std::string& text) {
  return "{\"text\": " + dcf::scratch::json_quote(text) + ", \"meta\": {\"pile_set_name\": \"test\"}}";
}

std::vector<std::string> random_texts(size_t n, uint64_t seed) {
  static const char* words[] = {"the", "and", "of", "in", "The", "don't", "42", "  ", "\n", "caf\xC3\xA9", "!?", "\t"};
  std::mt19937_64 rng(seed);
  std::vector<std::string> t(n);
  for (auto& s : t) {
    size_t k = rng() % 60;
    for (size_t i = 0; i < k; ++i) s += std::string(words[rng() % 12]) + (rng() % 3 ? " " : "");
    if (s.empty()) s = "x";
  }
  return t;
}

std::string compress(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3));
  return out;
}

std::vector<std::vector<int32_t>> read_dataset(const std::string& prefix) {
  IndexedDataset ds(prefix);
  std::vector<std::vector<int32_t>> docs(ds.num_sequences());
  for (size_t i = 0; i < docs.size(); ++i) {
    docs[i].resize(ds.sequence_length(i));
    ds.read(i, 0, docs[i].size(), docs[i].data());
  }
  return docs;
}

class Preprocess : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_path = dir / "tok.json";
    write_tiny_tokenizer(tok_path);
    texts = random_texts(3000, 1);
    std::string a, b;
    for (size_t i = 0; i < 2000; ++i) a += pile_line(texts[i]) + "\n";
    for (size_t i = 2000; i < texts.size(); ++i) b += pile_line(texts[i]) + "\n";
    write_all(dir / "a.jsonl.zst", compress(a.substr(0, a.size() / 2)) + compress(a.substr(a.size() / 2)));
    write_all(dir / "b.jsonl", b);
  }
  PreprocessOptions options(const std::string& out, int workers) {
    PreprocessOptions o;
    o.inputs = {dir / "a.jsonl.zst", dir / "b.jsonl"};
    o.tokenizer = tok_path;
    o.output_prefix = dir / out;
    o.workers = workers;
    o.progress_interval_s = 0;
    return o;
  }
  TempDir dir;
  std::string tok_path;
  std::vector<std::string> texts;
};

TEST_F(Preprocess, IdsAreTheTokenizersWithEodPerDocument) {
  std::ostringstream log;
  PreprocessSummary s = preprocess(options("out/ds", 2), log);
  EXPECT_EQ(s.documents, texts.size());
  EXPECT_EQ(s.malformed_lines, 0u);
  EXPECT_EQ(s.dtype, "uint16");
  Tokenizer tok = Tokenizer::load(tok_path);
  auto docs = read_dataset(dir / "out/ds");
  ASSERT_EQ(docs.size(), texts.size());
  uint64_t total = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<int32_t> want;
    tok.encode_document(texts[i], want);
    ASSERT_EQ(docs[i], want) << "document " << i;
    total += want.size();
  }
  EXPECT_EQ(s.tokens, total);
}

TEST_F(Preprocess, OutputIsIdenticalForAnyWorkerCount) {
  std::ostringstream log;
  preprocess(options("w1", 1), log);
  preprocess(options("w3", 3), log);
  preprocess(options("w8", 8), log);
  EXPECT_EQ(read_all(dir / "w1.bin"), read_all(dir / "w3.bin"));
  EXPECT_EQ(read_all(dir / "w1.idx"), read_all(dir / "w3.idx"));
  EXPECT_EQ(read_all(dir / "w1.bin"), read_all(dir / "w8.bin"));
  EXPECT_EQ(read_all(dir / "w1.idx"), read_all(dir / "w8.idx"));
}

TEST_F(Preprocess, MalformedLinesAreCountedAndSkipped) {
  write_all(dir / "bad.jsonl", pile_line("good one") + "\n{\"text\": \"broken\n\n{\"meta\": 1}\n" + pile_line("") +
                                   "\n{\"text\": 3}\n" + pile_line("good two") + "\n");
  PreprocessOptions o = options("bad", 2);
  o.inputs = {dir / "bad.jsonl"};
  std::ostringstream log;
  PreprocessSummary s = preprocess(o, log);
  EXPECT_EQ(s.documents, 2u);
  EXPECT_EQ(s.malformed_lines, 4u);  // broken JSON, blank line, no text, text not a string
  EXPECT_EQ(s.empty_documents, 1u);
  EXPECT_NE(log.str().find("bad.jsonl:2: malformed JSON"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("bad.jsonl:4: no \"text\" field"), std::string::npos) << log.str();

  o.strict = true;
  o.output_prefix = dir / "strict";
  try {
    preprocess(o, log);
    ADD_FAILURE() << "no error under strict";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2: malformed JSON"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "strict.bin"));
  EXPECT_FALSE(fs::exists(dir / "strict.bin.tmp"));
}

std::string run_cli(const std::string& args, int* rc) {
  TempDir out;
  std::string log = out / "log";
  *rc = run_shell(quote(DCF_PREPROCESS_CLI) + " " + args + " 2> " + quote(log));
  return read_all(log);
}

TEST_F(Preprocess, CommandLine) {
  int rc;
  std::string log = run_cli("preprocess --input " + quote(dir / "a.jsonl.zst") + " " + quote(dir / "b.jsonl") +
                                " --tokenizer " + quote(tok_path) + " --output-prefix " + quote(dir / "cli/ds") +
                                " --workers 2 --progress-interval 0.000001",
                            &rc);
  EXPECT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("preprocess: 100.0%"), std::string::npos) << log;
  EXPECT_NE(log.find("ETA"), std::string::npos) << log;
  EXPECT_NE(log.find("3000 documents"), std::string::npos) << log;
  EXPECT_EQ(read_dataset(dir / "cli/ds").size(), 3000u);

  write_all(dir / "bad.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  log = run_cli("preprocess --strict --input " + quote(dir / "bad.jsonl") + " --tokenizer " + quote(tok_path) +
                    " --output-prefix " + quote(dir / "x"),
                &rc);
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("bad.jsonl:2: malformed JSON"), std::string::npos) << log;

  log = run_cli("preprocess --input " + quote(dir / "missing.jsonl") + " --tokenizer " + quote(tok_path) +
                    " --output-prefix " + quote(dir / "x"),
                &rc);
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("missing.jsonl: input file not found"), std::string::npos) << log;

  write_all(dir / "badtok.json", "{\"model\": {\"type\": \"WordPiece\"}}");
  log = run_cli("preprocess --input " + quote(dir / "b.jsonl") + " --tokenizer " + quote(dir / "badtok.json") +
                    " --output-prefix " + quote(dir / "x"),
                &rc);
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("badtok.json: model type 'WordPiece' is not supported"), std::string::npos) << log;
}

}  // namespace
}  // namespace dcf::data::testing
