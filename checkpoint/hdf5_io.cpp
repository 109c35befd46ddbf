// HDF5 shard files through the C API. HDF5's automatic error printing is switched off (per thread:
// the library is built thread-safe, where error stacks are thread-local) and the innermost error
// description becomes part of our exception message instead.
#include "checkpoint/hdf5_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "checkpoint/checksum.h"
#include "kernels/error.h"

namespace dcf::ckpt {

namespace {

void quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t walk_cb(unsigned n, const H5E_error2_t* e, void* out) {
  if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
  return 0;
}

// Closes an HDF5 handle with the right function when it leaves scope.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle(hid_t id, Closer c) : id_(id), close_(c) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_;
  Closer close_;
};

[[noreturn]] void fail(const std::string& what) {
  std::string e = hdf5_last_error();
  throw DcfError(what + (e.empty() ? "" : " (HDF5: " + e + ")"));
}

void write_i64s(hid_t obj, const char* name, const std::vector<int64_t>& v) {
  hsize_t n = v.size();
  Handle sp(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle a(H5Acreate2(obj, name, H5T_STD_I64LE, sp.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.ok() || H5Awrite(a.get(), H5T_NATIVE_INT64, v.data()) < 0) fail(std::string("attribute ") + name);
}

void write_str(hid_t obj, const char* name, const std::string& s) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), std::max<size_t>(1, s.size()));
  Handle sp(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(obj, name, t.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.ok() || H5Awrite(a.get(), t.get(), s.c_str()) < 0) fail(std::string("attribute ") + name);
}

bool read_i64s(hid_t obj, const char* name, std::vector<int64_t>& out) {
  if (H5Aexists(obj, name) <= 0) return false;
  Handle a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!a.ok()) return false;
  Handle sp(H5Aget_space(a.get()), H5Sclose);
  hssize_t n = H5Sget_simple_extent_npoints(sp.get());
  if (n < 0) return false;
  out.assign(size_t(n), 0);
  return H5Aread(a.get(), H5T_NATIVE_INT64, out.data()) >= 0;
}

}  // namespace

std::string hdf5_last_error() {
  std::string out;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &out);
  H5Eclear2(H5E_DEFAULT);
  return out;
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw DcfError("fsync " + path + ": cannot open: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw DcfError("fsync " + path + ": " + std::strerror(err));
}

uint64_t metadata_checksum(const std::string& path, std::vector<std::pair<int64_t, int64_t>> data_ranges) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError("file " + path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  std::sort(data_ranges.begin(), data_ranges.end());
  Xxh64 h;
  std::vector<unsigned char> buf(size_t(1) << 20);
  auto hash_span = [&](int64_t a, int64_t b) {
    while (a < b) {
      ssize_t n = ::pread(fd, buf.data(), size_t(std::min<int64_t>(b - a, int64_t(buf.size()))), off_t(a));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        throw InputError("file " + path + ": cannot read at byte " + std::to_string(a));
      }
      h.update(buf.data(), size_t(n));
      a += n;
    }
  };
  int64_t at = 0;
  for (auto [off, len] : data_ranges) {
    if (off > at) hash_span(at, std::min<int64_t>(off, int64_t(st.st_size)));
    at = std::max(at, off + len);
  }
  if (at < int64_t(st.st_size)) hash_span(at, int64_t(st.st_size));
  ::close(fd);
  return h.digest();
}

std::vector<WrittenDataset> write_shard_file(const std::string& path, const ShardFileAttrs& attrs,
                                             const std::vector<WritePiece>& pieces, int delay_ms) {
  quiet();
  std::vector<WrittenDataset> out;
  {
    Handle f(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!f.ok()) fail("checkpoint file " + path + ": cannot create");
    write_str(f.get(), "format", "dcformer checkpoint shard v1");
    write_i64s(f.get(), "step", {attrs.step});
    write_i64s(f.get(), "rank", {attrs.rank, attrs.tp_rank, attrs.dp_rank, attrs.pp_rank});
    std::map<std::string, std::unique_ptr<Handle>> groups;
    for (const WritePiece& p : pieces) {
      const PieceLayout& l = p.layout;
      if (l.numel() <= 0) continue;
      DCF_CHECK(!l.global_shape.empty(), "scalar tensors are not supported: ", l.name());
      auto& g = groups[l.kind];
      if (!g) {
        g = std::make_unique<Handle>(H5Gcreate2(f.get(), l.kind.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                     H5Gclose);
        if (!g->ok()) fail("checkpoint file " + path + ": cannot create group " + l.kind);
      }
      std::vector<hsize_t> dims;
      if (l.whole_block())
        for (int64_t d : l.block_shape) dims.push_back(hsize_t(d));
      else
        dims.push_back(hsize_t(l.numel()));
      Handle sp(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
      Handle d(H5Dcreate2(g->get(), l.param.c_str(), H5T_IEEE_F32LE, sp.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
               H5Dclose);
      if (!d.ok()) fail("checkpoint file " + path + ": cannot create dataset " + l.name());
      if (H5Dwrite(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data) < 0)
        fail("checkpoint file " + path + ": cannot write dataset " + l.name());
      write_i64s(d.get(), "global_shape", l.global_shape);
      write_i64s(d.get(), "offset", l.offset);
      write_i64s(d.get(), "block_shape", l.block_shape);
      write_i64s(d.get(), "element_range", {l.element_begin, l.element_end});
      write_i64s(d.get(), "shard_dim", {l.shard_dim});
      const haddr_t at = H5Dget_offset(d.get());
      if (at == HADDR_UNDEF) fail("checkpoint file " + path + ": no contiguous storage for dataset " + l.name());
      WrittenDataset w;
      w.file_offset = int64_t(at);
      w.layout = l;
      w.bytes = l.numel() * int64_t(sizeof(float));
      w.checksum = xxh64(p.data, size_t(w.bytes));
      out.push_back(std::move(w));
      if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    }
    groups.clear();
    if (H5Fclose(f.release()) < 0) fail("checkpoint file " + path + ": cannot close");
  }
  fsync_path(path);
  return out;
}

ShardReader::ShardReader(const std::string& path) : path_(path) {
  quiet();
  if (::access(path.c_str(), F_OK) != 0) throw InputError("file " + path + " is missing");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    std::string e = hdf5_last_error();
    throw InputError("file " + path + " is not a readable HDF5 file" + (e.empty() ? "" : " (HDF5: " + e + ")"));
  }
  file_ = f;
}

ShardReader::~ShardReader() {
  if (file_ >= 0) H5Fclose(hid_t(file_));
}

std::vector<float> ShardReader::read(const PieceLayout& l, int64_t file_offset) {
  quiet();
  const std::string where = "file " + path_ + ", tensor " + l.name();
  auto bad = [&](const std::string& what) {
    std::string e = hdf5_last_error();
    return InputError(where + ": " + what + (e.empty() ? "" : " (HDF5: " + e + ")"));
  };
  if (H5Lexists(hid_t(file_), l.kind.c_str(), H5P_DEFAULT) <= 0) throw bad("dataset is missing");
  Handle d(H5Dopen2(hid_t(file_), l.name().c_str(), H5P_DEFAULT), H5Dclose);
  if (!d.ok()) throw bad("dataset is missing or unreadable");
  Handle t(H5Dget_type(d.get()), H5Tclose);
  if (H5Tget_class(t.get()) != H5T_FLOAT || H5Tget_size(t.get()) != 4) throw bad("dataset is not float32");
  Handle sp(H5Dget_space(d.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(sp.get()) != l.numel())
    throw bad("dataset holds " + std::to_string(H5Sget_simple_extent_npoints(sp.get())) + " elements, the manifest says " +
              std::to_string(l.numel()));
  std::vector<int64_t> gs, off, er;
  if (!read_i64s(d.get(), "global_shape", gs) || !read_i64s(d.get(), "offset", off) ||
      !read_i64s(d.get(), "element_range", er))
    throw bad("attributes global_shape/offset/element_range are unreadable");
  if (gs != l.global_shape || off != l.offset || er != std::vector<int64_t>{l.element_begin, l.element_end})
    throw bad("attributes disagree with the manifest (global_shape " + shape_str(gs) + ", offset " + shape_str(off) + ")");
  if (file_offset >= 0 && int64_t(H5Dget_offset(d.get())) != file_offset)
    throw bad("data at byte " + std::to_string(int64_t(H5Dget_offset(d.get()))) + ", the manifest says " +
              std::to_string(file_offset));
  std::vector<float> out(size_t(l.numel()));
  if (H5Dread(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) throw bad("cannot read data");
  return out;
}

}  // namespace dcf::ckpt
