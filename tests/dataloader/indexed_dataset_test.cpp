// .bin/.idx: round trip of the writer and reader, the exact byte layout, and one clear error per
// kind of bad file (wrong magic, version, dtype, truncated .idx or .bin, offsets past the end, empty).
#include <gtest/gtest.h>

#include <cstring>

#include "dataloader/indexed_dataset.h"
#include "kernels/error.h"
#include "tests/dataloader/test_util.h"

namespace dcf::data::testing {
namespace {

std::vector<std::vector<int32_t>> sample_docs() {
  return {{1, 2, 3}, {65535, 0}, {7}, {10, 11, 12, 13, 14}};
}

std::string write_sample(const TempDir& dir, TokenDtype dtype = TokenDtype::kU16) {
  std::string prefix = dir / "sub/ds";
  IndexedDatasetWriter w(prefix, dtype);
  for (const auto& d : sample_docs()) w.add_document(d);
  w.finish();
  return prefix;
}

// Expects an InputError whose one-line message names `file` and contains `problem`.
template <typename F>
void expect_input_error(F&& f, const std::string& file, const std::string& problem) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << problem;
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(IndexedDataset, RoundTripU16AndI32) {
  for (TokenDtype dt : {TokenDtype::kU16, TokenDtype::kI32}) {
    TempDir dir;
    std::string prefix = write_sample(dir, dt);
    IndexedDataset ds(prefix);
    auto docs = sample_docs();
    ASSERT_EQ(ds.num_sequences(), docs.size());
    EXPECT_EQ(ds.num_documents(), docs.size());
    EXPECT_EQ(ds.dtype(), dt);
    EXPECT_EQ(ds.total_tokens(), 11u);
    for (size_t i = 0; i < docs.size(); ++i) {
      ASSERT_EQ(ds.sequence_length(i), static_cast<int32_t>(docs[i].size()));
      std::vector<int32_t> got(docs[i].size());
      ds.read(i, 0, got.size(), got.data());
      EXPECT_EQ(got, docs[i]);
      EXPECT_EQ(ds.document_start(i), static_cast<int64_t>(i));
    }
    std::vector<int32_t> part(2);
    ds.read(3, 2, 2, part.data());
    EXPECT_EQ(part, (std::vector<int32_t>{12, 13}));
    EXPECT_FALSE(fs::exists(prefix + ".bin.tmp"));
  }
}

TEST(IndexedDataset, ByteLayoutIsMegatrons) {
  TempDir dir;
  std::string prefix = write_sample(dir);
  std::string idx = read_all(prefix + ".idx"), bin = read_all(prefix + ".bin");
  ASSERT_EQ(idx.size(), 34u + 12 * 4 + 8 * 5);
  EXPECT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
  uint64_t version, n, d;
  std::memcpy(&version, idx.data() + 9, 8);
  std::memcpy(&n, idx.data() + 18, 8);
  std::memcpy(&d, idx.data() + 26, 8);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(static_cast<uint8_t>(idx[17]), 8);
  EXPECT_EQ(n, 4u);
  EXPECT_EQ(d, 5u);
  int32_t len3;
  int64_t off3, doc4;
  std::memcpy(&len3, idx.data() + 34 + 4 * 3, 4);
  std::memcpy(&off3, idx.data() + 34 + 16 + 8 * 3, 8);
  std::memcpy(&doc4, idx.data() + 34 + 48 + 8 * 4, 8);
  EXPECT_EQ(len3, 5);
  EXPECT_EQ(off3, 2 * 6);
  EXPECT_EQ(doc4, 4);
  EXPECT_EQ(bin.size(), 22u);
  uint16_t t;
  std::memcpy(&t, bin.data() + 6, 2);
  EXPECT_EQ(t, 65535);
}

class BadFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix = write_sample(dir);
    idx = read_all(prefix + ".idx");
    bin = read_all(prefix + ".bin");
  }
  void open_expecting(const std::string& file_suffix, const std::string& problem) {
    expect_input_error([&] { IndexedDataset ds(prefix); }, prefix + file_suffix, problem);
  }
  TempDir dir;
  std::string prefix, idx, bin;
};

TEST_F(BadFiles, WrongMagic) {
  idx[0] = 'X';
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "wrong magic");
}

TEST_F(BadFiles, WrongVersion) {
  idx[9] = 2;
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "unsupported version 2");
}

TEST_F(BadFiles, UnknownDtype) {
  idx[17] = 9;
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "unknown dtype code 9");
  idx[17] = 6;
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "floating-point");
}

TEST_F(BadFiles, TruncatedIdx) {
  write_all(prefix + ".idx", idx.substr(0, idx.size() - 5));
  open_expecting(".idx", "truncated");
  write_all(prefix + ".idx", idx.substr(0, 20));
  open_expecting(".idx", "truncated");
}

TEST_F(BadFiles, TruncatedBin) {
  write_all(prefix + ".bin", bin.substr(0, bin.size() - 2));
  open_expecting(".bin", "truncated");
}

TEST_F(BadFiles, OffsetPastEnd) {
  int64_t off = 1 << 20;
  std::memcpy(idx.data() + 34 + 16 + 8, &off, 8);
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "past the end");
}

TEST_F(BadFiles, EmptyDataset) {
  IndexedDatasetWriter w(dir / "empty", TokenDtype::kU16);
  w.finish();
  expect_input_error([&] { IndexedDataset ds(dir / "empty"); }, dir / "empty.idx", "empty dataset");
  write_all(prefix + ".idx", "");
  open_expecting(".idx", "empty file");
}

TEST_F(BadFiles, MissingBin) {
  fs::remove(prefix + ".bin");
  open_expecting(".bin", "cannot open");
}

TEST_F(BadFiles, BadDocumentIndex) {
  int64_t v = 7;
  std::memcpy(idx.data() + 34 + 48 + 8 * 2, &v, 8);
  write_all(prefix + ".idx", idx);
  open_expecting(".idx", "document index entry 2");
}

}  // namespace
}  // namespace dcf::data::testing
