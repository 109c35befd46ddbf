// Checkpoints: save (synchronous, or asynchronous from a host snapshot), atomic commit, retention,
// and loading onto any layout. Layout of a checkpoint root (docs/checkpoint_format.md):
//   step_00001000/manifest.pb        protobuf (checkpoint/manifest.proto): step, config, grid, every
//                                    tensor piece -> (file, global shape, offset, dtype, checksum), data,
//                                    RNG and schedule state
//   step_00001000/rank_00003.h5      one HDF5 file per rank that holds pieces (checkpoint/hdf5_io.h)
//   latest                           text: the directory name of the newest committed checkpoint
// A save writes into step_NNNNNNNN.tmp/, fsyncs every file, lets all ranks agree that every write
// succeeded, then rank 0 writes the manifest, renames the directory into place and only then replaces
// `latest` (write, fsync, rename): a crash at any instant leaves the previous checkpoint whole.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/hdf5_io.h"       // defines: WritePiece, ShardFileAttrs, ShardReader
#include "checkpoint/manifest.pb.h"   // defines: dcformer::ckpt::Manifest
#include "checkpoint/piece.h"         // defines: PieceLayout, piece_of, copy_overlap
#include "parallel/communicator.h"    // defines: Communicator

namespace dcf::ckpt {

using Manifest = dcformer::ckpt::Manifest;
using TensorEntry = dcformer::ckpt::TensorEntry;

inline constexpr const char* kManifestFile = "manifest.pb";
inline constexpr const char* kLatestFile = "latest";
inline constexpr const char* kMagic = "dcformer-checkpoint";
inline constexpr uint32_t kFormatVersion = 1;

std::string step_dir_name(int64_t step);  // "step_00001000"

struct CheckpointOptions {
  std::string dir;         // the checkpoint root
  bool async = false;
  int keep_last = 3;       // committed checkpoints kept (>= 1), by step
  int64_t keep_every = 0;  // also keep every step that is a multiple of this (0: none)
  int write_delay_ms = 0;  // test hook: sleep after each dataset (env DCF_TEST_CKPT_WRITE_DELAY_MS)
};

struct SaveStats {
  int64_t step = -1;
  bool async = false;
  double stall_s = 0;  // time the caller spent inside save()
  double write_s = 0;  // this rank's file write (incl. fsync), on the writer thread when async
  int64_t bytes = 0;   // this rank's tensor bytes
};

// One per rank. save/poll/wait are collective over `world`: every rank calls them at the same points.
class Checkpointer {
 public:
  Checkpointer(CheckpointOptions opt, Communicator& world, ShardFileAttrs rank_info);
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Rank 0 removes leftovers of interrupted saves and deletions (every "*.tmp" entry of the root).
  void clean_stale();
  // Saves `pieces` (this rank's share, in host memory) under header.step(). header: the manifest
  // without files and tensors. Waits for the previous save first. Async: copies the pieces to host
  // memory, starts the write on a background thread and returns; poll() or wait() commits it. Sync:
  // returns after the commit. The data must stay unchanged until save returns, unless they lie in
  // `snapshot`: host tensors made for this save, which are kept alive until written instead of copied.
  void save(const Manifest& header, const std::vector<WritePiece>& pieces, std::vector<Tensor> snapshot = {});
  // Commits the pending save if every rank has finished writing; throws DcfError if any rank failed.
  void poll();
  // Waits for the pending save (if any) and commits it.
  void wait();
  bool pending() const { return pending_ != nullptr; }
  // Async only: allocates the snapshot buffer for (at least) `floats` values in the background now
  // (first-touch page faults of gigabytes would otherwise stall the first save).
  void reserve_snapshot(size_t floats);
  const SaveStats& last_stats() const { return stats_; }
  const CheckpointOptions& options() const { return opt_; }

 private:
  struct Pending;
  void write_rank_files(Pending& p);
  bool all_ranks_done(bool local_done);
  void commit(Pending& p);
  void apply_retention(const std::string& keep_name);

  CheckpointOptions opt_;
  Communicator& world_;
  ShardFileAttrs rank_info_;
  std::unique_ptr<Pending> pending_;
  void ensure_snapshot(size_t floats);
  // Host buffer for async snapshots, reused between saves; allocated (and its pages touched) ahead of
  // the first save by reserve_snapshot on a background thread, so the first save does not pay for it.
  std::unique_ptr<float[]> snapshot_;
  size_t snapshot_floats_ = 0;
  std::thread reserve_thread_;
  SaveStats stats_;
};

// ---- reading -----------------------------------------------------------------------------------
// A step directory (holds manifest.pb) as given, or a root resolved through `latest`. InputError if
// neither.
std::string resolve_checkpoint(const std::string& path);
// The newest committed checkpoint under root: the later of `latest` and the newest step_* directory
// with a manifest (a crash between the rename and the update of `latest` leaves the newer one). "" if
// there is none.
std::string find_latest(const std::string& root);
// Parses and checks manifest.pb (InputError naming the file on any problem).
Manifest read_manifest(const std::string& step_dir);
PieceLayout layout_of(const TensorEntry& e);

struct ReadPiece {
  PieceLayout layout;
  float* data = nullptr;  // layout.numel() floats
};
// Fills every target from the checkpoint's pieces, reading only the datasets that overlap them.
// Checks each file's size, each dataset's attributes and checksum, and that every target element is
// covered; throws InputError naming the file and the tensor. Files are opened read-only.
void load_pieces(const std::string& step_dir, const Manifest& m, const std::vector<ReadPiece>& targets);

struct GlobalTensor {
  Shape shape;
  std::vector<float> values;
};
// Whole global tensors of one kind ("param", "adam_m", "adam_v"), by parameter name.
std::map<std::string, GlobalTensor> read_global_tensors(const std::string& step_dir, const Manifest& m,
                                                        const std::string& kind);

struct VerifyReport {
  int64_t files = 0, tensors = 0, bytes = 0;
};
// Reads every dataset and checks its checksum, and that the pieces of every tensor cover it exactly once.
VerifyReport verify_checkpoint(const std::string& step_dir);

}  // namespace dcf::ckpt
