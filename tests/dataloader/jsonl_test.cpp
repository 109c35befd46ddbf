// jsonl streaming (plain, zstd multi-frame, zstd with a 2 GiB window as the Pile's --long=31 shards,
// truncated zstd) and the strict one-field JSON scanner.
#include <gtest/gtest.h>
#include <zstd.h>

#include "dataloader/jsonl.h"
#include "kernels/error.h"
#include "tests/dataloader/test_util.h"

namespace dcf::data::testing {
namespace {

std::string zstd_frame(const std::string& data, int window_log = 0) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3);
  if (window_log > 0) {
    ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log);
    ZSTD_CCtx_setParameter(c, ZSTD_c_enableLongDistanceMatching, 1);
  }
  std::string out(ZSTD_compressBound(data.size()) + 64, '\0');
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  ZSTD_outBuffer o{out.data(), out.size(), 0};
  // Streaming (ZSTD_e_continue first) leaves the size unknown: the frame header declares the full window.
  size_t r = ZSTD_compressStream2(c, &o, &in, ZSTD_e_continue);
  EXPECT_FALSE(ZSTD_isError(r));
  EXPECT_EQ(in.pos, in.size);
  do r = ZSTD_compressStream2(c, &o, &in, ZSTD_e_end); while (r != 0 && !ZSTD_isError(r));
  EXPECT_FALSE(ZSTD_isError(r));
  ZSTD_freeCCtx(c);
  out.resize(o.pos);
  return out;
}

std::vector<std::string> read_lines(const std::string& path) {
  LineReader r(path);
  std::vector<std::string> lines;
  std::string_view l;
  while (r.next(&l)) lines.emplace_back(l);
  return lines;
}

TEST(LineReader, PlainFileWithCrLfAndNoFinalNewline) {
  TempDir dir;
  write_all(dir / "a.jsonl", "one\r\ntwo\n\nthree");
  EXPECT_EQ(read_lines(dir / "a.jsonl"), (std::vector<std::string>{"one", "two", "", "three"}));
}

TEST(LineReader, ZstdMultiFrameAndLongLines) {
  TempDir dir;
  std::string long_line(3 << 20, 'x');
  std::string a = "first\nsecond\n" + long_line + "\n", b = "third\nfourth\n";
  write_all(dir / "a.jsonl.zst", zstd_frame(a) + zstd_frame(b));
  auto lines = read_lines(dir / "a.jsonl.zst");
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[2], long_line);
  EXPECT_EQ(lines[4], "fourth");
}

TEST(LineReader, ZstdWindowLog31) {
  TempDir dir;
  std::string data;
  for (int i = 0; i < 20000; ++i) data += "{\"text\": \"line " + std::to_string(i) + "\"}\n";
  std::string frame = zstd_frame(data, 31);
  // The frame needs a 2 GiB window: a default decoder refuses it.
  std::string out(data.size(), '\0');
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ZSTD_inBuffer in{frame.data(), frame.size(), 0};
  ZSTD_outBuffer o{out.data(), out.size(), 0};
  EXPECT_TRUE(ZSTD_isError(ZSTD_decompressStream(d, &o, &in)));
  ZSTD_freeDCtx(d);
  write_all(dir / "long.jsonl.zst", frame);
  auto lines = read_lines(dir / "long.jsonl.zst");
  ASSERT_EQ(lines.size(), 20000u);
  EXPECT_EQ(lines[19999], "{\"text\": \"line 19999\"}");
}

TEST(LineReader, TruncatedZstdIsAnError) {
  TempDir dir;
  std::string data;
  for (int i = 0; i < 5000; ++i) data += "line " + std::to_string(i) + "\n";
  std::string frame = zstd_frame(data);
  write_all(dir / "t.jsonl.zst", frame.substr(0, frame.size() / 2));
  try {
    read_lines(dir / "t.jsonl.zst");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("t.jsonl.zst: truncated zstd"), std::string::npos) << e.what();
  }
  write_all(dir / "c.jsonl.zst", frame.substr(0, 8) + std::string(100, '\x55'));
  EXPECT_THROW(read_lines(dir / "c.jsonl.zst"), InputError);
}

JsonFieldStatus field(std::string_view line, std::string* out) {
  std::string err;
  return json_string_field(line, "text", out, &err);
}

TEST(JsonField, ExtractsTextWithEscapes) {
  std::string t;
  ASSERT_EQ(field(R"({"text": "a\"b\\c\/\n\t\u00e9\ud83d\ude00", "meta": {"pile_set_name": "x", "a": [1, 2.5e3, -0, true, null]}})", &t),
            JsonFieldStatus::kOk);
  EXPECT_EQ(t, "a\"b\\c/\n\t\xC3\xA9\xF0\x9F\x98\x80");
  ASSERT_EQ(field(R"(  {"meta": {"text": "nested"}, "text": "top"}  )", &t), JsonFieldStatus::kOk);
  EXPECT_EQ(t, "top");
  ASSERT_EQ(field(R"({"text": "lone \ud800 surrogate"})", &t), JsonFieldStatus::kOk);
  EXPECT_EQ(t, "lone \xEF\xBF\xBD surrogate");
  ASSERT_EQ(field("{\"text\": \"raw \xFF byte\"}", &t), JsonFieldStatus::kOk);
  EXPECT_EQ(t, "raw \xFF byte");
  ASSERT_EQ(field(R"({"text": ""})", &t), JsonFieldStatus::kOk);
  EXPECT_EQ(t, "");
}

TEST(JsonField, RejectsMalformedLines) {
  std::string t;
  for (const char* bad : {"", "{", "{\"text\": \"unterminated}", "{\"text\": \"a\"", "[\"text\"]",
                          "{\"text\": \"a\"} trailing", "{\"text\": \"a\",}", "{text: \"a\"}", "{\"text\": \"\\x\"}",
                          "{\"text\": \"tab\there\"}", "{\"a\": 01, \"text\": \"x\"}", "{\"a\": tru, \"text\": \"x\"}"})
    EXPECT_EQ(field(bad, &t), JsonFieldStatus::kMalformed) << bad;
  EXPECT_EQ(field(R"({"meta": {}})", &t), JsonFieldStatus::kMissing);
  EXPECT_EQ(field(R"({"text": 5})", &t), JsonFieldStatus::kNotString);
  EXPECT_EQ(field(R"({"text": null})", &t), JsonFieldStatus::kNotString);
}

}  // namespace
}  // namespace dcf::data::testing
