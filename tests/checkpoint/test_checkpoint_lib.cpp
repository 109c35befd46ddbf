// Library-level checkpoint tests (no dcformer process): the XXH64 checksum against published vectors,
// piece overlap arithmetic (any save layout -> any load layout, ZeRO ranges included), the HDF5 shard
// round trip, the save protocol over 4 in-process "ranks" (agreement, async, a failing rank surfacing
// on every rank, retention, stale temporaries), and damage detection naming file and tensor.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <barrier>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "checkpoint/checksum.h"
#include "checkpoint/piece.h"

namespace fs = std::filesystem;
using namespace dcf;
using namespace dcf::ckpt;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dcf_ckpt_lib_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// ---- an in-process communicator: N threads are N ranks --------------------------------------------
struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n), sums(8, 0.0) {}
  int size;
  std::barrier<> sync;
  std::mutex mu;
  std::vector<double> sums;
};

class ThreadComm : public Communicator {
 public:
  ThreadComm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int size() const override { return g_.size; }
  int rank() const override { return rank_; }
  std::string name() const override { return "threads"; }
  void all_reduce(Tensor& t, ReduceOp op) override {
    ASSERT_TRUE(op == ReduceOp::sum && t.dtype() == DType::f64 && t.numel() <= 8);
    g_.sync.arrive_and_wait();
    if (rank_ == 0) std::fill(g_.sums.begin(), g_.sums.end(), 0.0);
    g_.sync.arrive_and_wait();
    {
      std::lock_guard<std::mutex> l(g_.mu);
      for (int64_t i = 0; i < t.numel(); ++i) g_.sums[size_t(i)] += t.data<double>()[i];
    }
    g_.sync.arrive_and_wait();
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = g_.sums[size_t(i)];
    g_.sync.arrive_and_wait();
  }
  void barrier() override { g_.sync.arrive_and_wait(); }
  void all_gather(const Tensor&, Tensor&) override { FAIL(); }
  void reduce_scatter(const Tensor&, Tensor&) override { FAIL(); }
  void all_to_all(const Tensor&, Tensor&) override { FAIL(); }
  void broadcast(Tensor&, int) override { FAIL(); }
  void send(const Tensor&, int, int) override { FAIL(); }
  void recv(Tensor&, int, int) override { FAIL(); }
  void send_async(const Tensor&, int, int) override { FAIL(); }
  void wait_sends() override {}

 private:
  ThreadGroup& g_;
  int rank_;
};

// Runs fn(rank, comm) on n threads; returns each rank's exception message ("" if none).
std::vector<std::string> run_ranks(int n, const std::function<void(int, Communicator&)>& fn) {
  ThreadGroup g(n);
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      ThreadComm c(g, r);
      try {
        fn(r, c);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
        g.sync.arrive_and_drop();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

PieceLayout block(const std::string& kind, const std::string& name, Shape global, Shape offset, Shape shape,
                  int64_t begin = 0, int64_t end = -1) {
  PieceLayout l;
  l.kind = kind;
  l.param = name;
  l.global_shape = global;
  l.offset = offset;
  l.block_shape = shape;
  l.element_begin = begin;
  l.element_end = end < 0 ? shape_numel(shape) : end;
  return l;
}

// Global value of element (row-major global index) g: distinct and exactly representable.
float value_at(int64_t g) { return float(g % 100003) * 0.5f + 1.0f; }

// The pieces of a [A, B, C] tensor split along `dim` into `parts` blocks, each block cut into `zero`
// element ranges (ZeRO-1-like), with their data.
struct Split {
  std::vector<PieceLayout> pieces;
  std::vector<std::vector<float>> data;
};
Split split(const Shape& g, int dim, int parts, int zero) {
  Split s;
  for (int p = 0; p < parts; ++p) {
    Shape shape = g, off(g.size(), 0);
    if (dim >= 0) {
      shape[size_t(dim)] = g[size_t(dim)] / parts;
      off[size_t(dim)] = p * shape[size_t(dim)];
    }
    const int64_t n = shape_numel(shape), per = (n + zero - 1) / zero;
    for (int z = 0; z < zero; ++z) {
      int64_t a = std::min(n, z * per), b = std::min(n, a + per);
      if (a >= b) continue;
      PieceLayout l = block("param", "w", g, off, shape, a, b);
      std::vector<float> d(size_t(b - a));
      // Global index of each element of the range.
      for (int64_t i = a; i < b; ++i) {
        int64_t rem = i, gi = 0, stride = 1;
        std::vector<int64_t> idx(g.size());
        for (size_t k = g.size(); k-- > 0;) {
          idx[k] = rem % shape[k] + off[k];
          rem /= shape[k];
        }
        for (size_t k = g.size(); k-- > 0;) {
          gi += idx[k] * stride;
          stride *= g[k];
        }
        d[size_t(i - a)] = value_at(gi);
      }
      s.pieces.push_back(l);
      s.data.push_back(std::move(d));
    }
  }
  return s;
}

}  // namespace

TEST(Checksum, Xxh64PublishedVectors) {
  // From the xxHash reference implementation / python-xxhash documentation.
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ULL);
  const std::string s = "Nobody inspects the spammish repetition";
  EXPECT_EQ(xxh64(s.data(), s.size()), 0xFBCEA83C8A378BF1ULL);
  // Streaming in odd-sized parts gives the one-shot hash.
  std::vector<unsigned char> buf(1000);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>(i * 7 + 3);
  Xxh64 h;
  for (size_t at = 0, step = 1; at < buf.size(); at += step, step = step * 2 % 61 + 1)
    h.update(buf.data() + at, std::min(step, buf.size() - at));
  EXPECT_EQ(h.digest(), xxh64(buf.data(), buf.size()));
}

// Every (save split, load split) pair of a 3-D tensor reassembles every element exactly once.
TEST(Pieces, AnyLayoutLoadsAnyOther) {
  const Shape g = {6, 8, 4};
  struct L {
    int dim, parts, zero;
  };
  const std::vector<L> layouts = {{-1, 1, 1}, {0, 2, 1}, {1, 4, 1}, {1, 2, 3}, {2, 2, 2}, {0, 3, 5}, {-1, 1, 7}};
  int pairs = 0;
  for (const L& save : layouts)
    for (const L& load : layouts) {
      Split src = split(g, save.dim, save.parts, save.zero), dst = split(g, load.dim, load.parts, load.zero);
      for (size_t t = 0; t < dst.pieces.size(); ++t) {
        std::vector<float> got(dst.data[t].size(), -1.0f);
        int64_t covered = 0;
        for (size_t s = 0; s < src.pieces.size(); ++s)
          covered += copy_overlap(dst.pieces[t], got.data(), src.pieces[s], src.data[s].data());
        ASSERT_EQ(covered, dst.pieces[t].numel());
        ASSERT_EQ(got, dst.data[t]) << "save split dim " << save.dim << " x" << save.parts << " zero " << save.zero
                                    << ", load split dim " << load.dim << " x" << load.parts << " zero " << load.zero;
      }
      ++pairs;
    }
  std::printf("%d layout pairs of a [6,8,4] tensor reassemble exactly\n", pairs);
}

TEST(Hdf5, RoundTripWithAttributes) {
  fs::path d = fresh_dir("h5");
  std::vector<float> a(24), b(5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.25f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -float(i);
  std::vector<WritePiece> pieces = {{block("param", "x", {4, 12}, {0, 6}, {4, 6}), a.data()},
                                    {block("adam_m", "x", {4, 12}, {0, 6}, {4, 6}, 3, 8), b.data()}};
  auto written = write_shard_file((d / "r.h5").string(), ShardFileAttrs{}, pieces);
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0].checksum, xxh64(a.data(), a.size() * 4));
  ShardReader r((d / "r.h5").string());
  EXPECT_EQ(r.read(pieces[0].layout), a);
  EXPECT_EQ(r.read(pieces[1].layout), b);
  // A description that disagrees with the file's attributes is refused, naming file and tensor.
  PieceLayout wrong = pieces[0].layout;
  wrong.offset = {0, 0};
  try {
    r.read(wrong);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("r.h5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("param/x"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}

namespace {

// 4 ranks: a [8, 6] "param" split in rows over ranks, plus a replicated [5] vector written by rank 0.
struct RankState {
  std::vector<float> w, v;
};
RankState state_of(int rank, int64_t step) {
  RankState s;
  for (int i = 0; i < 12; ++i) s.w.push_back(float(step * 1000 + rank * 12 + i));
  for (int i = 0; i < 5; ++i) s.v.push_back(float(step * 1000 + 500 + i));
  return s;
}
std::vector<WritePiece> pieces_of(int rank, RankState& s) {
  std::vector<WritePiece> p = {{block("param", "w", {8, 6}, {2 * rank, 0}, {2, 6}), s.w.data()}};
  if (rank == 0) p.push_back({block("param", "v", {5}, {0}, {5}), s.v.data()});
  return p;
}
Manifest header(int64_t step) {
  Manifest h;
  h.set_step(step);
  h.mutable_schedule()->set_step(step);
  return h;
}

}  // namespace

TEST(Protocol, FourRanksAsyncCommitRetentionAndReload) {
  fs::path d = fresh_dir("proto");
  fs::create_directories(d / "step_00000099.tmp");  // a crashed save's leftovers
  CheckpointOptions o;
  o.dir = d.string();
  o.async = true;
  o.keep_last = 2;
  o.keep_every = 4;
  auto errors = run_ranks(4, [&](int rank, Communicator& c) {
    Checkpointer ck(o, c, ShardFileAttrs{0, rank, 0, rank, 0});
    ck.clean_stale();
    for (int64_t step = 1; step <= 6; ++step) {
      RankState s = state_of(rank, step);
      ck.save(header(step), pieces_of(rank, s));
      // The snapshot is taken: changing the live data must not change the checkpoint.
      std::fill(s.w.begin(), s.w.end(), -7.0f);
      std::fill(s.v.begin(), s.v.end(), -7.0f);
      ck.poll();
    }
    ck.wait();
  });
  for (auto& e : errors) EXPECT_EQ(e, "");
  EXPECT_FALSE(fs::exists(d / "step_00000099.tmp"));
  // keep_last 2 (5, 6) plus every 4th (4).
  std::vector<std::string> names;
  for (auto& ent : fs::directory_iterator(d)) names.push_back(ent.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_00000004", "step_00000005", "step_00000006"}));
  EXPECT_EQ(find_latest(d.string()), (d / "step_00000006").string());
  const std::string dir = resolve_checkpoint(d.string());
  VerifyReport rep = verify_checkpoint(dir);
  EXPECT_EQ(rep.files, 4);
  EXPECT_EQ(rep.tensors, 5);
  // Reload on "one rank": whole tensors.
  auto g = read_global_tensors(dir, read_manifest(dir), "param");
  ASSERT_EQ(g.size(), 2u);
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 12; ++i) EXPECT_EQ(g["w"].values[size_t(r * 12 + i)], float(6000 + r * 12 + i));
  EXPECT_EQ(g["v"].values[4], 6504.0f);
  fs::remove_all(d);
}

TEST(Protocol, AFailedWriteOnOneRankFailsEveryRankAndKeepsLatest) {
  fs::path d = fresh_dir("fail");
  for (bool async : {false, true}) {
    CheckpointOptions o;
    o.dir = d.string();
    o.async = async;
    auto errors = run_ranks(4, [&](int rank, Communicator& c) {
      Checkpointer ck(o, c, ShardFileAttrs{0, rank, 0, rank, 0});
      ck.clean_stale();
      RankState s = state_of(rank, 1);
      ck.save(header(1), pieces_of(rank, s));
      ck.wait();
      // Step 2: rank 2 writes a dataset HDF5 cannot create (a path through a missing group).
      auto p = pieces_of(rank, s);
      if (rank == 2) p[0].layout.param = "no/such/group";
      ck.save(header(2), p);
      ck.wait();
    });
    for (int r = 0; r < 4; ++r) {
      EXPECT_NE(errors[size_t(r)].find("checkpoint"), std::string::npos) << "rank " << r << ": " << errors[size_t(r)];
      EXPECT_NE(errors[size_t(r)].find("writing failed on 1 rank"), std::string::npos) << errors[size_t(r)];
    }
    EXPECT_NE(errors[2].find("no/such/group"), std::string::npos) << errors[2];
    EXPECT_EQ(find_latest(d.string()), (d / "step_00000001").string()) << (async ? "async" : "sync");
    EXPECT_TRUE(fs::exists(d / "step_00000002.tmp"));  // never renamed; removed by the next start
    EXPECT_NO_THROW(verify_checkpoint((d / "step_00000001").string()));
    fs::remove_all(d);
    fs::create_directories(d);
  }
  fs::remove_all(d);
}

TEST(Damage, RefusedWithFileAndTensorNamed) {
  fs::path d = fresh_dir("damage");
  CheckpointOptions o;
  o.dir = d.string();
  run_ranks(1, [&](int, Communicator& c) {
    Checkpointer ck(o, c, ShardFileAttrs{});
    std::vector<float> w(48), v(5, 2.0f);
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(i);
    ck.save(header(3), {{block("param", "w", {8, 6}, {0, 0}, {8, 6}), w.data()},
                        {block("param", "v", {5}, {0}, {5}), v.data()}});
  });
  const fs::path good = d / "step_00000003", bad = d / "bad";
  auto expect_refused = [&](const std::string& what, const std::vector<std::string>& words) {
    try {
      verify_checkpoint(bad.string());
      ADD_FAILURE() << what << ": verify accepted it";
    } catch (const InputError& e) {
      for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << what << ": " << e.what();
    }
    float out[48];
    std::vector<ReadPiece> t = {{block("param", "w", {8, 6}, {0, 0}, {8, 6}), out}};
    EXPECT_THROW(load_pieces(bad.string(), read_manifest(bad.string()), t), InputError) << what;
  };
  auto reset = [&] {
    fs::remove_all(bad);
    fs::copy(good, bad);
  };
  // A flipped byte in the data of tensor w (located through HDF5).
  reset();
  {
    hid_t f = H5Fopen((bad / "rank_00000.h5").c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "param/w", H5P_DEFAULT);
    haddr_t at = H5Dget_offset(ds);
    H5Dclose(ds);
    H5Fclose(f);
    ASSERT_NE(at, HADDR_UNDEF);
    std::fstream io(bad / "rank_00000.h5", std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(std::streamoff(at + 17));
    char c;
    io.get(c);
    io.seekp(std::streamoff(at + 17));
    io.put(char(c ^ 0x10));
  }
  expect_refused("flipped data byte", {"rank_00000.h5", "param/w", "checksum mismatch"});
  // A flipped byte in HDF5 metadata (the superblock area).
  reset();
  {
    std::fstream io(bad / "rank_00000.h5", std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(100);
    char c;
    io.get(c);
    io.seekp(100);
    io.put(char(c ^ 0x01));
  }
  expect_refused("flipped metadata byte", {"rank_00000.h5"});
  // Truncated.
  reset();
  fs::resize_file(bad / "rank_00000.h5", fs::file_size(bad / "rank_00000.h5") / 2);
  expect_refused("truncated", {"rank_00000.h5", "truncated"});
  // Missing file.
  reset();
  fs::remove(bad / "rank_00000.h5");
  expect_refused("missing file", {"rank_00000.h5", "missing", "param/"});
  fs::remove_all(d);
}
