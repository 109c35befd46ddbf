// Resume, resharding and damage, through the dcformer executable (single process and mpirun):
// - exact resume: 20 steps straight against 10 steps, save, kill -9, resume, 10 steps: the same loss
//   and gradient norm at every step (bitwise) and the same final parameters and moments (bitwise), on
//   1x1x1 and dp2 x tp2 x pp2;
// - resharding: the dp2 x tp2 x pp2 checkpoint of step 10 resumed on 1x1x1, 1x4x1 (tp 4), 2x1x2 and
//   4x1x1 with ZeRO-1: every continued loss within 1e-5 (relative) of the uninterrupted run; the ZeRO-1
//   run's own checkpoint verifies and evaluates like the uninterrupted run's;
// - damage: a flipped byte, a truncated file, a missing file: `train --resume` and `ckpt verify` exit 2
//   naming the file and the tensor, and nothing in the checkpoint or the run directory changes.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "checkpoint/checkpoint.h"
#include "tests/checkpoint/ckpt_test_util.h"

using namespace dcf::test;
namespace ck = dcf::ckpt;

namespace {

// An uninterrupted 20-step run with checkpoints at 10 and 20 (async), computed once per layout.
struct Straight {
  fs::path dir;
  std::map<int64_t, nlohmann::json> rows;
};
const Straight& straight(const Layout& l) {
  static std::map<std::string, Straight> cache;
  auto it = cache.find(l.name());
  if (it != cache.end()) return it->second;
  Straight s;
  s.dir = fresh_dir("straight_" + l.name());
  auto r = run_command(train_cmd(l, s.dir, 20, 10, "--set checkpoint.async=true"));
  EXPECT_EQ(r.status, 0) << r.output;
  s.rows = rows_by_step(s.dir);
  EXPECT_EQ(s.rows.size(), 20u);
  return cache[l.name()] = s;
}

// Tensors of two checkpoints are bitwise equal: the same pieces, checksums, and values.
void expect_same_state(const fs::path& a, const fs::path& b) {
  const ck::Manifest ma = ck::read_manifest(a.string()), mb = ck::read_manifest(b.string());
  EXPECT_EQ(ma.step(), mb.step());
  std::map<std::string, uint64_t> ca, cb;
  auto key = [](const ck::TensorEntry& t) {
    std::string k = t.name() + "@";
    for (auto v : t.offset()) k += std::to_string(v) + ",";
    return k + std::to_string(t.element_begin()) + ":" + std::to_string(t.element_end());
  };
  for (const auto& t : ma.tensors()) ca[key(t)] = t.checksum();
  for (const auto& t : mb.tensors()) cb[key(t)] = t.checksum();
  EXPECT_EQ(ca.size(), cb.size());
  int differ = 0;
  for (const auto& [k, h] : ca)
    if (!cb.count(k) || cb[k] != h) ++differ;
  EXPECT_EQ(differ, 0) << "of " << ca.size() << " tensor pieces differ between " << a << " and " << b;
  for (const char* kind : {ck::kKindParam, ck::kKindAdamM, ck::kKindAdamV}) {
    auto ga = ck::read_global_tensors(a.string(), ma, kind), gb = ck::read_global_tensors(b.string(), mb, kind);
    ASSERT_EQ(ga.size(), gb.size());
    for (auto& [name, t] : ga)
      EXPECT_EQ(std::memcmp(t.values.data(), gb[name].values.data(), t.values.size() * 4), 0) << kind << " " << name;
  }
}

void exact_resume(const Layout& l) {
  const Straight& s = straight(l);
  fs::path dir = fresh_dir("resume_" + l.name());
  // 10 steps, a synchronous save, then SIGKILL on rank 0 at the start of step 11.
  auto r = run_command(train_cmd(l, dir, 20, 10, "--inject-failure 0:10:kill"));
  EXPECT_NE(r.status, 0) << "the run should have been killed\n" << r.output;
  ASSERT_EQ(ck::find_latest((dir / "ckpt").string()), (dir / "ckpt" / "step_00000010").string()) << r.output;
  EXPECT_EQ(rows_by_step(dir).size(), 10u);
  // Resume (async saves from here on) for the remaining 10 steps.
  r = run_command(train_cmd(l, dir, 20, 10, "--set checkpoint.async=true --resume auto"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  auto got = rows_by_step(dir);
  ASSERT_EQ(got.size(), 20u);
  int equal = 0;
  for (auto& [step, row] : s.rows) {
    const double a = row["loss"], b = got[step]["loss"], ga = row["grad_norm"], gb = got[step]["grad_norm"];
    EXPECT_EQ(std::memcmp(&a, &b, 8), 0) << "step " << step << ": loss " << a << " vs " << b;
    EXPECT_EQ(std::memcmp(&ga, &gb, 8), 0) << "step " << step << ": grad norm " << ga << " vs " << gb;
    equal += (a == b && ga == gb);
  }
  std::printf("%s: %d of 20 steps bitwise equal (loss at step 20: %.10f)\n", l.name().c_str(), equal,
              got[20]["loss"].get<double>());
  expect_same_state(s.dir / "ckpt" / "step_00000020", dir / "ckpt" / "step_00000020");
  fs::remove_all(dir);
}

void resharding() {
  const Straight& s = straight({2, 2, 2});
  const fs::path from = s.dir / "ckpt" / "step_00000010";
  ASSERT_TRUE(fs::exists(from / "manifest.pb"));
  // 4x1x1 runs with ZeRO-1 (the checkpoint was saved without): moments are loaded as dp-sharded ranges.
  const std::vector<Layout> targets = {
      {1, 1, 1}, {1, 4, 1}, {2, 1, 2}, {4, 1, 1, "--set parallel.micro_batches=2 --set parallel.zero1=true"}};
  fs::path zero1_run;
  for (const Layout& l : targets) {
    const bool zero1 = l.extra.find("zero1") != std::string::npos;
    fs::path dir = fresh_dir("reshard_" + l.name() + (zero1 ? "_zero1" : ""));
    auto r = run_command(train_cmd(l, dir, 20, 10, "--resume " + from.string()));
    ASSERT_EQ(r.status, 0) << r.output;
    auto got = rows_by_step(dir);
    ASSERT_EQ(got.size(), 10u);
    EXPECT_EQ(got.begin()->first, 11);
    double worst = 0;
    for (auto& [step, row] : got) {
      const double a = s.rows.at(step)["loss"], b = row["loss"];
      worst = std::max(worst, std::abs(a - b) / std::abs(a));
      EXPECT_LE(std::abs(a - b) / std::abs(a), 1e-5) << l.name() << " step " << step << ": " << a << " vs " << b;
    }
    std::printf("saved 2x2x2 (dp x tp x pp) -> resumed %s%s: worst relative loss difference %.3g over steps 11-20\n",
                l.name().c_str(), zero1 ? " ZeRO-1" : "", worst);
    if (zero1)
      zero1_run = dir;
    else
      fs::remove_all(dir);
  }
  // The ZeRO-1 run's own checkpoint (moments in dp-sharded ranges) verifies and evaluates like the
  // uninterrupted run's step-20 weights.
  const fs::path z = zero1_run / "ckpt" / "step_00000020";
  const ck::Manifest zm = ck::read_manifest(z.string());
  EXPECT_TRUE(zm.grid().zero1());
  int partial = 0;
  for (const auto& t : zm.tensors()) {
    int64_t block = 1;
    for (auto d : t.block_shape()) block *= d;
    partial += t.element_end() - t.element_begin() < block;
  }
  EXPECT_GT(partial, 0) << "expected ZeRO-1 pieces covering part of a parameter";
  auto v = run_command(std::string(DCF_BINARY) + " ckpt verify " + z.string());
  EXPECT_EQ(v.status, 0) << v.output;
  const std::string data = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  auto eval = [&](const fs::path& ckpt) {
    auto e = run_command(std::string(DCF_BINARY) + " eval --json --batches 2 --batch-size 4 --checkpoint " +
                         ckpt.string() + " --data " + data);
    EXPECT_EQ(e.status, 0) << e.output;
    auto j = nlohmann::json::parse(e.output.substr(e.output.find('{')));
    return j["loss"].get<double>();
  };
  const double lz = eval(z), ls = eval(s.dir / "ckpt" / "step_00000020");
  EXPECT_LE(std::abs(lz - ls) / ls, 1e-5) << lz << " vs " << ls;
  std::printf("eval of step 20: ZeRO-1 4x1x1 run %.8f, uninterrupted 2x2x2 run %.8f\n", lz, ls);
  fs::remove_all(zero1_run);
}

}  // namespace

// Each TEST runs in its own process under ctest, so the dp2 x tp2 x pp2 reference run is shared by
// keeping both checks in one test.
TEST(ExactResume, SingleProcess) {
  exact_resume({1, 1, 1});
  fs::remove_all(straight({1, 1, 1}).dir);
}
TEST(ExactResume, Dp2Tp2Pp2ThenResharding) {
  exact_resume({2, 2, 2});
  resharding();
  fs::remove_all(straight({2, 2, 2}).dir);
}

namespace {

void expect_refused(const fs::path& bad, const std::string& what, const std::vector<std::string>& words,
                    const Layout& l = {1, 1, 1}) {
  fs::path run = fresh_dir("damaged_run");
  const auto before = fingerprint(bad);
  auto r = run_command(train_cmd(l, run, 20, 10, "--resume " + bad.string()));
  EXPECT_EQ(r.status, 2) << what << "\n" << r.output;
  for (const auto& w : words) EXPECT_NE(r.output.find(w), std::string::npos) << what << ": no '" << w << "' in\n" << r.output;
  EXPECT_EQ(fingerprint(bad), before) << what << ": the checkpoint changed";
  EXPECT_TRUE(read_jsonl(run / "metrics.jsonl").empty()) << what << ": training started";
  EXPECT_FALSE(fs::exists(run / "ckpt")) << what << ": a checkpoint was written";
  auto v = run_command(std::string(DCF_BINARY) + " ckpt verify " + bad.string());
  EXPECT_EQ(v.status, 2) << what << "\n" << v.output;
  for (const auto& w : words) EXPECT_NE(v.output.find(w), std::string::npos) << what << ": verify said\n" << v.output;
  std::printf("%s (%s): %s", what.c_str(), l.name().c_str(), r.output.substr(r.output.find("error")).c_str());
  fs::remove_all(run);
}

}  // namespace

TEST(Damage, RefusedWithFileAndTensorNamedAndNothingOverwritten) {
  // A small checkpoint of a tp 2 run (two files).
  const fs::path src = fresh_dir("damage_src");
  auto w = run_command(train_cmd({1, 2, 1}, src, 2, 2));
  ASSERT_EQ(w.status, 0) << w.output;
  const fs::path good = src / "ckpt" / "step_00000002";
  const fs::path bad = fresh_dir("damaged") / "step_00000002";
  auto reset = [&] {
    fs::remove_all(bad);
    fs::copy(good, bad);
  };
  // Pick a tensor piece and flip one byte in the middle of its data (located through HDF5).
  const ck::Manifest m = ck::read_manifest(good.string());
  const ck::TensorEntry* victim = nullptr;
  for (const auto& t : m.tensors())
    if (t.name() == "param/layers.1.attn.wq") victim = &t;
  ASSERT_NE(victim, nullptr);
  reset();
  {
    hid_t f = H5Fopen((bad / victim->file()).c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, victim->name().c_str(), H5P_DEFAULT);
    const haddr_t at = H5Dget_offset(ds) + haddr_t(victim->bytes() / 2);
    H5Dclose(ds);
    H5Fclose(f);
    std::fstream io(bad / victim->file(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(std::streamoff(at));
    char c;
    io.get(c);
    io.seekp(std::streamoff(at));
    io.put(char(c ^ 0x04));
  }
  expect_refused(bad, "flipped byte", {victim->file(), victim->name(), "checksum mismatch"});
  expect_refused(bad, "flipped byte", {victim->file(), victim->name(), "checksum mismatch"}, {2, 1, 1});
  // Truncated file.
  reset();
  const std::string f1 = m.files(1).name();
  fs::resize_file(bad / f1, fs::file_size(bad / f1) - 1000);
  expect_refused(bad, "truncated file", {f1, "truncated", "tensor "});
  // The manifest names a file that is missing.
  reset();
  fs::remove(bad / f1);
  expect_refused(bad, "missing file", {f1, "missing", "tensor "});
  fs::remove_all(bad.parent_path());
  fs::remove_all(src);
}
