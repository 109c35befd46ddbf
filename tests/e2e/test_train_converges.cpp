// 300 steps of the tiny config on a fixed real-text token file (the built-in corpus, byte tokens)
// bring the loss far below the unigram entropy of that file, for DCFormer++ and for Transformer++.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/e2e/run_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kCorpus = std::string(DCF_SOURCE_DIR) + "/data/default/corpus.txt";

// Unigram entropy (nats) of the byte tokens of a file: the loss of the best model without context.
double unigram_entropy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<double> count(256, 0.0);
  double n = 0;
  for (std::istreambuf_iterator<char> it(in), end; it != end; ++it) {
    count[static_cast<unsigned char>(*it)] += 1;
    n += 1;
  }
  double h = 0;
  for (double c : count)
    if (c > 0) h -= c / n * std::log(c / n);
  return h;
}

void train_and_check(const std::string& kind) {
  ASSERT_TRUE(fs::exists(kCorpus)) << kCorpus << " is missing: run scripts/setup_default_data.sh";
  const double h = unigram_entropy(kCorpus);
  ASSERT_GT(h, 2.0);  // real text, not a degenerate file
  fs::path dir = fs::temp_directory_path() / ("dcf_conv_" + kind + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::string cmd = std::string(DCF_BINARY) + " train --config " + DCF_SOURCE_DIR +
                    "/configs/tiny_cpu.textproto --set model.kind=" + kind + " --set data.train_path=" + kCorpus +
                    " --set run.steps=300 --set run.run_dir=" + dir.string();
  auto r = dcf::test::run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  auto rows = dcf::test::read_jsonl((dir / "metrics.jsonl").string());
  ASSERT_EQ(rows.size(), 300u);
  double first = rows.front()["loss"], last = 0;
  for (size_t i = rows.size() - 20; i < rows.size(); ++i) last += rows[i]["loss"].get<double>() / 20;
  std::printf("%s: unigram entropy %.4f nats, first loss %.4f, mean of last 20 losses %.4f\n", kind.c_str(), h, first,
              last);
  EXPECT_NEAR(first, std::log(256.0), 0.1);  // starts at chance
  EXPECT_LT(last, h - 0.5) << "the model did not learn beyond unigram statistics";
  fs::remove_all(dir);
}

}  // namespace

TEST(TrainConverges, DcformerBelowUnigramEntropy) { train_and_check("DCFORMER"); }
TEST(TrainConverges, TransformerPPBelowUnigramEntropy) { train_and_check("TRANSFORMER_PP"); }
