// Save protocol (per rank, then rank 0), retention and the reading side of checkpoints.
#include "checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "checkpoint/checksum.h"
#include "kernels/error.h"

namespace fs = std::filesystem;

namespace dcf::ckpt {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string rank_file_stem(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05d", rank);
  return buf;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Writes bytes to path through a temporary name, fsyncs, renames: readers see all or nothing.
void write_file_atomic(const fs::path& path, const std::string& bytes) {
  fs::path tmp = path;
  tmp += ".part";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw DcfError("cannot create " + tmp.string() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw DcfError("cannot write " + tmp.string() + ": " + std::strerror(err));
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw DcfError("cannot fsync " + tmp.string() + ": " + std::strerror(errno));
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw DcfError("cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot read " + path.string());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t a = 0;
  while (a < s.size() && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  return s.substr(a);
}

// step number of a directory name "step_NNNNNNNN", or -1.
int64_t parse_step_dir(const std::string& name) {
  if (name.size() < 6 || name.compare(0, 5, "step_") != 0) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

void fill_entry(TensorEntry* e, const PieceLayout& l) {
  e->set_name(l.name());
  e->set_kind(l.kind);
  e->set_param(l.param);
  for (int64_t v : l.global_shape) e->add_global_shape(v);
  e->set_shard_dim(l.shard_dim);
  for (int64_t v : l.offset) e->add_offset(v);
  for (int64_t v : l.block_shape) e->add_block_shape(v);
  e->set_element_begin(l.element_begin);
  e->set_element_end(l.element_end);
  e->set_dtype("f32");
}

}  // namespace

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

// ---- Checkpointer ------------------------------------------------------------------------------

struct Checkpointer::Pending {
  Manifest header;
  fs::path tmp_dir, final_dir;
  std::vector<WritePiece> pieces;
  std::vector<Tensor> snapshot;  // the caller's host copies the pieces point into
  std::thread thread;
  std::atomic<bool> done{false};
  std::string error;  // written before done is set
  double write_s = 0;
};

Checkpointer::Checkpointer(CheckpointOptions opt, Communicator& world, ShardFileAttrs rank_info)
    : opt_(std::move(opt)), world_(world), rank_info_(rank_info) {
  DCF_CHECK(!opt_.dir.empty(), "checkpoint directory not set");
  if (opt_.keep_last < 1) opt_.keep_last = 1;
  if (const char* d = std::getenv("DCF_TEST_CKPT_WRITE_DELAY_MS")) opt_.write_delay_ms = std::atoi(d);
}

Checkpointer::~Checkpointer() {
  // Not committed: an interrupted save leaves only a *.tmp directory, removed at the next start.
  if (pending_ && pending_->thread.joinable()) pending_->thread.join();
  if (reserve_thread_.joinable()) reserve_thread_.join();
}

void Checkpointer::reserve_snapshot(size_t floats) {
  if (!opt_.async || reserve_thread_.joinable() || snapshot_floats_ >= floats) return;
  snapshot_.reset(new float[floats]);  // not value-initialised: the pages are touched below
  snapshot_floats_ = floats;
  float* p = snapshot_.get();
  reserve_thread_ = std::thread([p, floats] { std::memset(p, 0, floats * sizeof(float)); });
}

void Checkpointer::ensure_snapshot(size_t floats) {
  if (reserve_thread_.joinable()) reserve_thread_.join();
  if (snapshot_floats_ >= floats) return;
  snapshot_.reset(new float[floats]);
  snapshot_floats_ = floats;
}

void Checkpointer::clean_stale() {
  if (world_.rank() == 0) {
    std::error_code ec;
    fs::create_directories(opt_.dir, ec);
    if (ec) throw InputError("checkpoint.dir " + opt_.dir + ": cannot create: " + ec.message());
    std::vector<fs::path> stale;
    for (const auto& ent : fs::directory_iterator(opt_.dir)) {
      const std::string name = ent.path().filename().string();
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) stale.push_back(ent.path());
    }
    for (const auto& path : stale) {
      fs::remove_all(path, ec);
      if (ec) throw DcfError("cannot remove stale " + path.string() + ": " + ec.message());
      std::fprintf(stderr, "dcformer: checkpoint: removed stale %s\n", path.c_str());
    }
  }
  world_.barrier();
}

void Checkpointer::save(const Manifest& header, const std::vector<WritePiece>& pieces, std::vector<Tensor> snapshot) {
  auto t0 = Clock::now();
  wait();
  auto p = std::make_unique<Pending>();
  p->header = header;
  const std::string name = step_dir_name(header.step());
  p->final_dir = fs::path(opt_.dir) / name;
  p->tmp_dir = fs::path(opt_.dir) / (name + ".tmp");
  std::error_code ec;
  fs::create_directories(p->tmp_dir, ec);  // every rank; racing creators are fine
  if (!fs::is_directory(p->tmp_dir))
    throw DcfError("checkpoint: cannot create " + p->tmp_dir.string() + (ec ? ": " + ec.message() : ""));
  stats_ = SaveStats{};
  stats_.step = header.step();
  stats_.async = opt_.async;
  for (const auto& w : pieces) stats_.bytes += w.layout.numel() * int64_t(sizeof(float));
  if (opt_.async && snapshot.empty()) {
    // Snapshot to host memory; training may change the live tensors as soon as we return.
    size_t total = 0;
    for (const auto& w : pieces) total += size_t(w.layout.numel());
    ensure_snapshot(total);
    size_t at = 0;
    for (const auto& w : pieces) {
      std::memcpy(snapshot_.get() + at, w.data, size_t(w.layout.numel()) * sizeof(float));
      p->pieces.push_back({w.layout, snapshot_.get() + at});
      at += size_t(w.layout.numel());
    }
  } else {
    p->pieces = pieces;
    p->snapshot = std::move(snapshot);
  }
  pending_ = std::move(p);
  if (opt_.async) {
    Pending* raw = pending_.get();
    pending_->thread = std::thread([this, raw] { write_rank_files(*raw); });
    stats_.stall_s = seconds_since(t0);
    return;
  }
  write_rank_files(*pending_);
  wait();
  stats_.stall_s = seconds_since(t0);
}

void Checkpointer::write_rank_files(Pending& p) {
  auto t0 = Clock::now();
  try {
    const std::string stem = rank_file_stem(world_.rank());
    Manifest frag;
    bool any = false;
    for (const auto& w : p.pieces) any = any || w.layout.numel() > 0;
    if (any) {
      const fs::path h5 = p.tmp_dir / (stem + ".h5");
      ShardFileAttrs attrs = rank_info_;
      attrs.step = p.header.step();
      auto written = write_shard_file(h5.string(), attrs, p.pieces, opt_.write_delay_ms);
      auto* f = frag.add_files();
      f->set_name(stem + ".h5");
      f->set_rank(rank_info_.rank);
      f->set_bytes(int64_t(fs::file_size(h5)));
      std::vector<std::pair<int64_t, int64_t>> ranges;
      for (const auto& w : written) ranges.push_back({w.file_offset, w.bytes});
      f->set_metadata_checksum(metadata_checksum(h5.string(), ranges));
      f->set_tp_rank(rank_info_.tp_rank);
      f->set_dp_rank(rank_info_.dp_rank);
      f->set_pp_rank(rank_info_.pp_rank);
      for (const auto& w : written) {
        TensorEntry* e = frag.add_tensors();
        fill_entry(e, w.layout);
        e->set_file(stem + ".h5");
        e->set_checksum(w.checksum);
        e->set_bytes(w.bytes);
        e->set_file_offset(w.file_offset);
        e->set_writer_rank(rank_info_.rank);
      }
    }
    // This rank's part of the manifest; rank 0 merges the parts at commit.
    write_file_atomic(p.tmp_dir / (stem + ".pb"), frag.SerializeAsString());
  } catch (const std::exception& e) {
    p.error = e.what();
  }
  p.write_s = seconds_since(t0);
  p.done.store(true, std::memory_order_release);
}

bool Checkpointer::all_ranks_done(bool local_done) {
  Pending& p = *pending_;
  const bool failed = local_done && !p.error.empty();
  Tensor t = Tensor::zeros({2}, DType::f64);
  t.data<double>()[0] = local_done ? 1.0 : 0.0;
  t.data<double>()[1] = failed ? 1.0 : 0.0;
  world_.all_reduce(t, ReduceOp::sum);
  const int n_done = int(t.data<double>()[0] + 0.5), n_failed = int(t.data<double>()[1] + 0.5);
  if (n_failed > 0) {
    if (p.thread.joinable()) p.thread.join();
    std::string msg = "checkpoint " + p.tmp_dir.string() + ": writing failed on " + std::to_string(n_failed) +
                      " rank(s)" + (failed ? ": " + p.error : std::string());
    pending_.reset();
    throw DcfError(msg);
  }
  return n_done == world_.size();
}

void Checkpointer::poll() {
  if (!pending_) return;
  if (!all_ranks_done(pending_->done.load(std::memory_order_acquire))) return;
  if (pending_->thread.joinable()) pending_->thread.join();
  commit(*pending_);
}

void Checkpointer::wait() {
  if (!pending_) return;
  if (pending_->thread.joinable()) pending_->thread.join();
  DCF_CHECK(all_ranks_done(true), "checkpoint agreement");
  commit(*pending_);
}

void Checkpointer::commit(Pending& p) {
  stats_.write_s = p.write_s;
  std::unique_ptr<Pending> done = std::move(pending_);
  if (world_.rank() != 0) return;
  // Merge the ranks' parts into manifest.pb.
  Manifest m = p.header;
  m.set_magic(kMagic);
  m.set_format_version(kFormatVersion);
  m.set_created_utc(utc_now());
  m.set_checksum_algorithm("xxh64");
  int64_t bytes = 0;
  for (int r = 0; r < world_.size(); ++r) {
    const fs::path part = p.tmp_dir / (rank_file_stem(r) + ".pb");
    Manifest frag;
    if (!frag.ParseFromString(read_file(part))) throw DcfError("checkpoint: cannot parse " + part.string());
    for (const auto& f : frag.files()) *m.add_files() = f;
    for (const auto& t : frag.tensors()) {
      *m.add_tensors() = t;
      bytes += t.bytes();
    }
  }
  write_file_atomic(p.tmp_dir / kManifestFile, m.SerializeAsString());
  for (int r = 0; r < world_.size(); ++r) fs::remove(p.tmp_dir / (rank_file_stem(r) + ".pb"));
  fsync_path(p.tmp_dir.string());
  // A checkpoint of the same step from an abandoned run is moved aside (and removed) first.
  std::error_code ec;
  if (fs::exists(p.final_dir)) {
    fs::path aside = p.final_dir;
    aside += ".replaced.tmp";
    fs::remove_all(aside, ec);
    fs::rename(p.final_dir, aside, ec);
    if (ec) throw DcfError("checkpoint: cannot move aside " + p.final_dir.string() + ": " + ec.message());
  }
  fs::rename(p.tmp_dir, p.final_dir, ec);
  if (ec) throw DcfError("checkpoint: cannot rename " + p.tmp_dir.string() + ": " + ec.message());
  fsync_path(opt_.dir);
  // Only now does `latest` move.
  write_file_atomic(fs::path(opt_.dir) / kLatestFile, p.final_dir.filename().string() + "\n");
  fsync_path(opt_.dir);
  std::fprintf(stderr, "dcformer: checkpoint %s committed (%.1f MB, %s; rank 0 wrote in %.3f s)\n",
               p.final_dir.c_str(), double(bytes) / 1e6, opt_.async ? "async" : "sync", p.write_s);
  apply_retention(p.final_dir.filename().string());
  fs::remove_all(p.final_dir.string() + ".replaced.tmp", ec);
}

void Checkpointer::apply_retention(const std::string& keep_name) {
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& ent : fs::directory_iterator(opt_.dir)) {
    int64_t s = parse_step_dir(ent.path().filename().string());
    if (s >= 0 && ent.is_directory()) steps.push_back({s, ent.path()});
  }
  std::sort(steps.begin(), steps.end());
  const size_t n = steps.size();
  for (size_t i = 0; i < n; ++i) {
    const auto& [s, path] = steps[i];
    bool keep = i + size_t(opt_.keep_last) >= n || path.filename() == keep_name ||
                (opt_.keep_every > 0 && s % opt_.keep_every == 0);
    if (keep) continue;
    // Rename first: a crash during the removal leaves a *.tmp, never a partial step directory.
    fs::path gone = path;
    gone += ".deleting.tmp";
    std::error_code ec;
    fs::rename(path, gone, ec);
    if (!ec) fs::remove_all(gone, ec);
  }
}

// ---- reading -----------------------------------------------------------------------------------

std::string resolve_checkpoint(const std::string& path) {
  fs::path p(path);
  if (fs::exists(p / kManifestFile)) return p.string();
  if (fs::exists(p / kLatestFile)) {
    std::string name = trim(read_file(p / kLatestFile));
    fs::path d = p / name;
    if (!fs::exists(d / kManifestFile))
      throw InputError("checkpoint " + path + ": `latest` names " + name + ", which has no " + kManifestFile);
    return d.string();
  }
  if (!fs::exists(p)) throw InputError("checkpoint " + path + ": no such directory");
  throw InputError("checkpoint " + path + ": neither a checkpoint (no " + std::string(kManifestFile) +
                   ") nor a checkpoint root (no `latest`)");
}

std::string find_latest(const std::string& root) {
  fs::path r(root);
  std::error_code ec;
  if (!fs::is_directory(r, ec)) return "";
  int64_t best = -1;
  fs::path best_path;
  if (fs::exists(r / kLatestFile)) {
    std::string name = trim(read_file(r / kLatestFile));
    int64_t s = parse_step_dir(name);
    if (s >= 0 && fs::exists(r / name / kManifestFile)) best = s, best_path = r / name;
  }
  for (const auto& ent : fs::directory_iterator(r, ec)) {
    int64_t s = parse_step_dir(ent.path().filename().string());
    if (s > best && fs::exists(ent.path() / kManifestFile)) best = s, best_path = ent.path();
  }
  return best < 0 ? "" : best_path.string();
}

Manifest read_manifest(const std::string& step_dir) {
  const fs::path path = fs::path(step_dir) / kManifestFile;
  if (!fs::exists(path)) throw InputError("checkpoint " + step_dir + ": " + kManifestFile + " is missing");
  Manifest m;
  if (!m.ParseFromString(read_file(path))) throw InputError("checkpoint " + path.string() + ": not a valid manifest");
  if (m.magic() != kMagic) throw InputError("checkpoint " + path.string() + ": not a dcformer checkpoint manifest");
  if (m.format_version() != kFormatVersion)
    throw InputError("checkpoint " + path.string() + ": format version " + std::to_string(m.format_version()) +
                     " (this build reads " + std::to_string(kFormatVersion) + ")");
  std::set<std::string> files;
  for (const auto& f : m.files()) files.insert(f.name());
  for (const auto& t : m.tensors())
    if (!files.count(t.file()))
      throw InputError("checkpoint " + path.string() + ": tensor " + t.name() + " names file " + t.file() +
                       ", which the manifest does not list");
  return m;
}

PieceLayout layout_of(const TensorEntry& e) {
  PieceLayout l;
  l.kind = e.kind();
  l.param = e.param();
  l.global_shape.assign(e.global_shape().begin(), e.global_shape().end());
  l.shard_dim = e.shard_dim();
  l.offset.assign(e.offset().begin(), e.offset().end());
  l.block_shape.assign(e.block_shape().begin(), e.block_shape().end());
  l.element_begin = e.element_begin();
  l.element_end = e.element_end();
  return l;
}

namespace {

// Opens each file once, after checking that it exists and that its size and the checksum of its bytes
// outside the tensor data (HDF5's metadata) are what the manifest recorded; each tensor read is then
// checked against its own checksum. Together they cover every byte without reading unneeded data.
class FileSet {
 public:
  FileSet(const std::string& dir, const Manifest& m) : dir_(dir) {
    for (const auto& f : m.files()) files_[f.name()] = &f;
    for (const auto& t : m.tensors()) by_file_[t.file()].push_back(&t);
  }
  ShardReader& get(const TensorEntry& e) {
    auto it = readers_.find(e.file());
    if (it != readers_.end()) return *it->second;
    const fs::path path = fs::path(dir_) / e.file();
    const auto& f = *files_.at(e.file());
    std::error_code ec;
    auto size = fs::file_size(path, ec);
    if (ec)
      throw InputError("checkpoint " + dir_ + ": file " + e.file() + " (holding tensor " + e.name() +
                       ") named by the manifest is missing");
    if (int64_t(size) != f.bytes())
      throw InputError("checkpoint " + dir_ + ": file " + e.file() + " (holding tensor " + e.name() + ") is " +
                       std::to_string(size) + " bytes, the manifest says " + std::to_string(f.bytes()) +
                       " (truncated or damaged)");
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const TensorEntry* t : by_file_[e.file()]) ranges.push_back({t->file_offset(), t->bytes()});
    if (metadata_checksum(path.string(), ranges) != f.metadata_checksum())
      throw InputError("checkpoint " + dir_ + ": file " + e.file() + " (holding tensor " + e.name() +
                       "): checksum mismatch outside the tensor data (damaged HDF5 metadata)");
    return *open(e);
  }
  std::vector<float> read(const TensorEntry& e) { return read_checked(get(e), e); }

 private:
  ShardReader* open(const TensorEntry& e) {
    try {
      auto r = std::make_unique<ShardReader>((fs::path(dir_) / e.file()).string());
      return readers_.emplace(e.file(), std::move(r)).first->second.get();
    } catch (const InputError& err) {
      throw InputError("checkpoint " + dir_ + ": tensor " + e.name() + ": " + err.what());
    }
  }
  std::vector<float> read_checked(ShardReader& r, const TensorEntry& e) {
    std::vector<float> v = r.read(layout_of(e), e.file_offset());
    uint64_t h = xxh64(v.data(), v.size() * sizeof(float));
    if (h != e.checksum()) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " (manifest %016llx, data %016llx)", (unsigned long long)e.checksum(),
                    (unsigned long long)h);
      throw InputError("checkpoint " + dir_ + ": file " + e.file() + ", tensor " + e.name() + ": checksum mismatch" +
                       buf);
    }
    return v;
  }

  std::string dir_;
  std::map<std::string, const dcformer::ckpt::FileEntry*> files_;
  std::map<std::string, std::vector<const TensorEntry*>> by_file_;
  std::map<std::string, std::unique_ptr<ShardReader>> readers_;
};

}  // namespace

void load_pieces(const std::string& step_dir, const Manifest& m, const std::vector<ReadPiece>& targets) {
  std::map<std::string, std::vector<const TensorEntry*>> by_name;
  for (const auto& t : m.tensors()) by_name[t.name()].push_back(&t);
  FileSet files(step_dir, m);
  for (const ReadPiece& target : targets) {
    const PieceLayout& want = target.layout;
    if (want.numel() <= 0) continue;
    auto it = by_name.find(want.name());
    if (it == by_name.end())
      throw InputError("checkpoint " + step_dir + ": has no tensor " + want.name() + " (a different model config?)");
    int64_t covered = 0;
    for (const TensorEntry* e : it->second) {
      PieceLayout have = layout_of(*e);
      if (have.global_shape != want.global_shape)
        throw InputError("checkpoint " + step_dir + ": tensor " + want.name() + " has global shape " +
                         shape_str(have.global_shape) + ", the model needs " + shape_str(want.global_shape));
      if (for_each_overlap(want, have, [](int64_t, int64_t, int64_t) {}) == 0) continue;
      std::vector<float> src = files.read(*e);
      covered += copy_overlap(want, target.data, have, src.data());
    }
    if (covered != want.numel())
      throw InputError("checkpoint " + step_dir + ": tensor " + want.name() + ": the saved pieces cover " +
                       std::to_string(covered) + " of the " + std::to_string(want.numel()) + " elements needed");
  }
}

std::map<std::string, GlobalTensor> read_global_tensors(const std::string& step_dir, const Manifest& m,
                                                        const std::string& kind) {
  std::map<std::string, GlobalTensor> out;
  std::vector<ReadPiece> targets;
  for (const auto& t : m.tensors()) {
    if (t.kind() != kind || out.count(t.param())) continue;
    GlobalTensor& g = out[t.param()];
    g.shape.assign(t.global_shape().begin(), t.global_shape().end());
    g.values.assign(size_t(shape_numel(g.shape)), 0.0f);
  }
  for (auto& [name, g] : out) {
    ReadPiece r;
    r.layout.kind = kind;
    r.layout.param = name;
    r.layout.global_shape = g.shape;
    r.layout.offset.assign(g.shape.size(), 0);
    r.layout.block_shape = g.shape;
    r.layout.element_begin = 0;
    r.layout.element_end = int64_t(g.values.size());
    r.data = g.values.data();
    targets.push_back(r);
  }
  load_pieces(step_dir, m, targets);
  return out;
}

VerifyReport verify_checkpoint(const std::string& step_dir) {
  Manifest m = read_manifest(step_dir);
  FileSet files(step_dir, m);
  VerifyReport rep;
  rep.files = m.files_size();
  std::map<std::string, std::vector<const TensorEntry*>> by_name;
  for (const auto& t : m.tensors()) {
    files.read(t);  // size, attributes, checksum
    ++rep.tensors;
    rep.bytes += t.bytes();
    by_name[t.name()].push_back(&t);
  }
  // Exactly-once coverage of every tensor.
  for (const auto& [name, entries] : by_name) {
    const Shape gs(entries[0]->global_shape().begin(), entries[0]->global_shape().end());
    int64_t sum = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      PieceLayout a = layout_of(*entries[i]);
      if (a.global_shape != gs)
        throw InputError("checkpoint " + step_dir + ": tensor " + name + ": pieces disagree on the global shape");
      sum += a.numel();
      for (size_t j = i + 1; j < entries.size(); ++j)
        if (for_each_overlap(a, layout_of(*entries[j]), [](int64_t, int64_t, int64_t) {}) > 0)
          throw InputError("checkpoint " + step_dir + ": tensor " + name + ": pieces in " + entries[i]->file() +
                           " and " + entries[j]->file() + " overlap");
    }
    if (sum != shape_numel(gs))
      throw InputError("checkpoint " + step_dir + ": tensor " + name + ": pieces cover " + std::to_string(sum) +
                       " of " + std::to_string(shape_numel(gs)) + " elements");
  }
  return rep;
}

}  // namespace dcf::ckpt
