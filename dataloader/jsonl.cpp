// jsonl[.zst] line streaming and the one-field JSON scanner.
#include "dataloader/jsonl.h"

#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>

#include "dataloader/unicode.h"
#include "kernels/error.h"

namespace dcf::data {
namespace {

[[noreturn]] void fail(const std::string& file, const std::string& problem) {
  throw InputError(file + ": " + problem);
}

constexpr unsigned char kZstdMagic[4] = {0x28, 0xB5, 0x2F, 0xFD};

}  // namespace

LineReader::LineReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(f_), &st) == 0) file_size_ = static_cast<uint64_t>(st.st_size);
  in_.resize(ZSTD_DStreamInSize() > (1 << 20) ? ZSTD_DStreamInSize() : (1 << 20));
  in_len_ = std::fread(in_.data(), 1, in_.size(), f_);
  file_read_ = in_len_;
  if (in_len_ >= 4 && std::memcmp(in_.data(), kZstdMagic, 4) == 0) {
    ZSTD_DCtx* d = ZSTD_createDCtx();
    if (!d) fail(path, "cannot create a zstd decoder");
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 31);
    zstd_ = d;
  }
}

LineReader::~LineReader() {
  if (zstd_) ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(zstd_));
  if (f_) std::fclose(f_);
}

bool LineReader::fill() {
  if (eof_) return false;
  // Drop what has been consumed so the buffer does not grow without bound.
  if (pos_ > 0) {
    std::memmove(buf_.data(), buf_.data() + pos_, len_ - pos_);
    len_ -= pos_;
    pos_ = 0;
  }
  auto reserve = [&](size_t extra) {  // grows the buffer without zero-filling it on every call
    if (buf_.size() < len_ + extra) buf_.resize(std::max(buf_.size() * 2, len_ + extra));
  };
  auto refill_input = [&] {
    in_pos_ = 0;
    in_len_ = std::fread(in_.data(), 1, in_.size(), f_);
    if (in_len_ == 0 && std::ferror(f_)) fail(path_, std::string("read failed: ") + std::strerror(errno));
    file_read_ += in_len_;
  };
  if (!zstd_) {
    if (in_pos_ >= in_len_) refill_input();
    if (in_len_ == 0) {
      eof_ = true;
      return false;
    }
    reserve(in_len_ - in_pos_);
    std::memcpy(buf_.data() + len_, in_.data() + in_pos_, in_len_ - in_pos_);
    len_ += in_len_ - in_pos_;
    in_pos_ = in_len_;
    return true;
  }
  auto* d = static_cast<ZSTD_DCtx*>(zstd_);
  const size_t out_chunk = ZSTD_DStreamOutSize();
  size_t produced = 0;
  while (produced == 0) {
    // A call that filled its whole output may hold more to flush: call again before reading on.
    if (in_pos_ >= in_len_ && !output_full_) {
      refill_input();
      if (in_len_ == 0) {
        eof_ = true;
        if (last_ret_ != 0) fail(path_, "truncated zstd stream (the last frame is incomplete)");
        return false;
      }
    }
    reserve(out_chunk);
    ZSTD_inBuffer in{in_.data(), in_len_, in_pos_};
    ZSTD_outBuffer out{buf_.data() + len_, out_chunk, 0};
    size_t ret = ZSTD_decompressStream(d, &out, &in);
    if (ZSTD_isError(ret)) fail(path_, std::string("zstd error: ") + ZSTD_getErrorName(ret));
    last_ret_ = ret;
    in_pos_ = in.pos;
    output_full_ = out.pos == out.size;
    len_ += out.pos;
    produced = out.pos;
  }
  return true;
}

bool LineReader::next(std::string_view* line) {
  size_t scan = pos_;
  while (true) {
    const char* nl = static_cast<const char*>(std::memchr(buf_.data() + scan, '\n', len_ - scan));
    if (nl) {
      size_t end = static_cast<size_t>(nl - buf_.data());
      size_t len = end - pos_;
      if (len > 0 && buf_[end - 1] == '\r') --len;
      *line = std::string_view(buf_.data() + pos_, len);
      pos_ = end + 1;
      ++line_no_;
      return true;
    }
    size_t scanned = len_ - pos_;
    if (!fill()) {
      if (pos_ < len_) {
        size_t len = len_ - pos_;
        if (buf_[len_ - 1] == '\r') --len;
        *line = std::string_view(buf_.data() + pos_, len);
        pos_ = len_;
        ++line_no_;
        return true;
      }
      return false;
    }
    scan = pos_ + scanned;  // fill() moved the unread part to the front
  }
}

// ---- JSON ----------------------------------------------------------------------------------------

namespace {

class JsonScanner {
 public:
  explicit JsonScanner(std::string_view s) : s_(s) {}

  JsonFieldStatus run(std::string_view key, std::string* out, std::string* error) {
    bool found = false, not_string = false;
    ws();
    if (!eat('{')) return err("expected '{'", error);
    ws();
    if (!eat('}')) {
      while (true) {
        ws();
        std::string k;
        if (!string(&k)) return err("expected a string key", error);
        ws();
        if (!eat(':')) return err("expected ':'", error);
        ws();
        if (k == key) {
          if (peek() == '"') {
            out->clear();
            if (!string(out)) return err(msg_ ? msg_ : "bad string", error);
            found = true;
            not_string = false;
          } else {
            if (!value(0)) return err(msg_ ? msg_ : "bad value", error);
            not_string = true;
          }
        } else if (!value(0)) {
          return err(msg_ ? msg_ : "bad value", error);
        }
        ws();
        if (eat(',')) continue;
        if (eat('}')) break;
        return err("expected ',' or '}'", error);
      }
    }
    ws();
    if (i_ != s_.size()) return err("trailing characters after the object", error);
    if (not_string) return JsonFieldStatus::kNotString;
    return found ? JsonFieldStatus::kOk : JsonFieldStatus::kMissing;
  }

 private:
  JsonFieldStatus err(const char* what, std::string* error) {
    if (error) *error = std::string(what) + " at byte " + std::to_string(i_);
    return JsonFieldStatus::kMalformed;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool eat(char c) {
    if (peek() == c && i_ < s_.size()) {
      ++i_;
      return true;
    }
    return false;
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool literal(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  bool hex4(uint32_t* v) {
    if (i_ + 4 > s_.size()) return false;
    uint32_t r = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_ + k];
      r <<= 4;
      if (c >= '0' && c <= '9') r |= c - '0';
      else if (c >= 'a' && c <= 'f') r |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') r |= c - 'A' + 10;
      else return false;
    }
    i_ += 4;
    *v = r;
    return true;
  }
  // Parses a string at i_ (which must be '"'); decodes into *out when out != nullptr.
  bool string(std::string* out) {
    if (!eat('"')) return false;
    while (true) {
      size_t start = i_;
      while (i_ < s_.size() && s_[i_] != '"' && s_[i_] != '\\' && static_cast<unsigned char>(s_[i_]) >= 0x20) ++i_;
      if (out) out->append(s_.data() + start, i_ - start);
      if (i_ >= s_.size()) {
        msg_ = "unterminated string";
        return false;
      }
      char c = s_[i_];
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c != '\\') {
        msg_ = "control character inside a string";
        return false;
      }
      ++i_;
      char e = peek();
      ++i_;
      switch (e) {
        case '"': if (out) out->push_back('"'); break;
        case '\\': if (out) out->push_back('\\'); break;
        case '/': if (out) out->push_back('/'); break;
        case 'b': if (out) out->push_back('\b'); break;
        case 'f': if (out) out->push_back('\f'); break;
        case 'n': if (out) out->push_back('\n'); break;
        case 'r': if (out) out->push_back('\r'); break;
        case 't': if (out) out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) {
            msg_ = "bad \\u escape";
            return false;
          }
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(i_, 2) == "\\u") {
            size_t save = i_;
            i_ += 2;
            uint32_t lo;
            if (hex4(&lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              i_ = save;
              cp = unicode::kReplacementChar;
            }
          } else if (cp >= 0xD800 && cp <= 0xDFFF) {
            cp = unicode::kReplacementChar;
          }
          if (out) unicode::append_utf8(*out, cp);
          break;
        }
        default:
          msg_ = "bad escape";
          return false;
      }
    }
  }
  bool number() {
    size_t start = i_;
    eat('-');
    if (eat('0')) {
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++i_;
    } else {
      return false;
    }
    if (eat('.')) {
      if (!(peek() >= '0' && peek() <= '9')) return false;
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!(peek() >= '0' && peek() <= '9')) return false;
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    return i_ > start;
  }
  bool value(int depth) {
    if (depth > 512) {
      msg_ = "nesting too deep";
      return false;
    }
    char c = peek();
    if (c == '"') return string(nullptr);
    if (c == '{') {
      ++i_;
      ws();
      if (eat('}')) return true;
      while (true) {
        ws();
        if (!string(nullptr)) return false;
        ws();
        if (!eat(':')) return false;
        ws();
        if (!value(depth + 1)) return false;
        ws();
        if (eat(',')) continue;
        return eat('}');
      }
    }
    if (c == '[') {
      ++i_;
      ws();
      if (eat(']')) return true;
      while (true) {
        ws();
        if (!value(depth + 1)) return false;
        ws();
        if (eat(',')) continue;
        return eat(']');
      }
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    return number();
  }

  std::string_view s_;
  size_t i_ = 0;
  const char* msg_ = nullptr;
};

}  // namespace

JsonFieldStatus json_string_field(std::string_view line, std::string_view key, std::string* out, std::string* error) {
  return JsonScanner(line).run(key, out, error);
}

}  // namespace dcf::data
