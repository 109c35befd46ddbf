// h5py readback and the Hugging Face export, checked by check_checkpoint.py under /usr/bin/python3 (Debian's
// h5py, numpy, torch): a dp2 x tp2 ZeRO-1 run's checkpoint (parameters and moments saved as dp-sharded
// pieces) is read with h5py, reassembled by global offsets and hashed; the safetensors export is parsed by
// an independent reader, matched against the official module tree's names and shapes and the checkpoint's
// values, and a forward pass in the official layout reproduces `dcformer eval`'s loss.
#include <gtest/gtest.h>

#include "tests/checkpoint/ckpt_test_util.h"

using namespace dcf::test;

TEST(Export, H5pyReadbackAndSafetensorsForTheOfficialCode) {
  const fs::path dir = fresh_dir("export");
  auto r = run_command(train_cmd({2, 2, 1, "--set parallel.zero1=true"}, dir, 4, 2));
  ASSERT_EQ(r.status, 0) << r.output;
  const fs::path step = dir / "ckpt" / "step_00000004";
  const std::string bin = DCF_BINARY;
  r = run_command(bin + " ckpt info --json " + step.string() + " > " + (dir / "manifest.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_command(bin + " ckpt export-hf " + step.string() + " " + (dir / "hf").string());
  ASSERT_EQ(r.status, 0) << r.output;
  std::printf("%s", r.output.c_str());
  const std::string data = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  r = run_command(bin + " eval --json --batches 2 --batch-size 4 --checkpoint " + step.string() + " --data " + data);
  ASSERT_EQ(r.status, 0) << r.output;
  const double loss = nlohmann::json::parse(r.output.substr(r.output.find('{')))["loss"];
  char eval_loss[64];
  std::snprintf(eval_loss, sizeof eval_loss, "%.17g", loss);
  r = run_command(std::string(DCF_PYTHON3) + " " + DCF_CKPT_TEST_DIR + "/check_checkpoint.py --manifest-json " +
                  (dir / "manifest.json").string() + " --ckpt " + step.string() + " --export " +
                  (dir / "hf").string() + " --data " + data + " --batches 2 --batch-size 4 --eval-loss " + eval_loss);
  if (r.status == 77) GTEST_SKIP() << "python3 without h5py/torch: " << r.output;
  EXPECT_EQ(r.status, 0) << r.output;
  std::printf("%s", r.output.c_str());
  fs::remove_all(dir);
}
