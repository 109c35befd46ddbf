// Training from Megatron .bin/.idx data written by `dcformer preprocess` (the built-in corpus: State of
// the Union speeches in GPT-2 BPE): the loss starts at chance for the 50,304-row vocabulary and falls.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "tests/e2e/run_util.h"

namespace fs = std::filesystem;

TEST(TrainMegatronData, DefaultCorpusTrains) {
  const std::string prefix = std::string(DCF_SOURCE_DIR) + "/data/sotu/sotu_gpt2";
  ASSERT_TRUE(fs::exists(prefix + ".bin")) << prefix << ".bin is missing: run scripts/make_default_corpus.sh";
  fs::path dir = fs::temp_directory_path() / ("dcf_megatron_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::string cmd = std::string(DCF_BINARY) + " train --config " + DCF_SOURCE_DIR +
                    "/configs/tiny_sotu.textproto --set data.prefixes=" + prefix +
                    " --set run.steps=30 --set schedule.warmup_steps=5 --set checkpoint.every_steps=0"
                    " --set checkpoint.dir=" + (dir / "ck").string() + " --set run.run_dir=" + dir.string();
  auto r = dcf::test::run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  auto rows = dcf::test::read_jsonl((dir / "metrics.jsonl").string());
  ASSERT_EQ(rows.size(), 30u);
  double first = rows.front()["loss"], last = rows.back()["loss"];
  std::printf("GPT-2 BPE SOTU: first loss %.3f (ln 50304 = %.3f), after 30 steps %.3f\n", first, std::log(50304.0),
              last);
  EXPECT_NEAR(first, std::log(50304.0), 0.2);
  EXPECT_LT(last, first - 2.0);
  fs::remove_all(dir);
}
