// One rank's HDF5 file of a checkpoint (serial HDF5, HDF5's C API): a group per kind ("param",
// "adam_m", "adam_v"), one float32 dataset per piece named after its parameter, each tagged with the
// attributes global_shape, offset, block_shape, element_range and shard_dim. Readers get errors as
// exceptions naming the file and the dataset, never HDF5's own stack dump.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/piece.h"

namespace dcf::ckpt {

struct WritePiece {
  PieceLayout layout;
  const float* data = nullptr;  // layout.numel() floats
};

struct WrittenDataset {
  PieceLayout layout;
  uint64_t checksum = 0;
  int64_t bytes = 0;
  int64_t file_offset = 0;  // where the data lie in the file
};

struct ShardFileAttrs {
  int64_t step = 0;
  int rank = 0, tp_rank = 0, dp_rank = 0, pp_rank = 0;
};

// Creates `path` (it must not exist), writes the pieces, closes and fsyncs it. delay_ms > 0 sleeps
// after every dataset (a test hook that widens the window in which a crash hits a write).
std::vector<WrittenDataset> write_shard_file(const std::string& path, const ShardFileAttrs& attrs,
                                             const std::vector<WritePiece>& pieces, int delay_ms = 0);

// Read access to one shard file (opened read-only, once). Throws InputError naming the file and the
// dataset on any problem: unreadable file, missing dataset, wrong type or size, or attributes that
// disagree with the manifest's description of the piece.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  // file_offset >= 0: the data must lie there (as the manifest recorded).
  std::vector<float> read(const PieceLayout& expected, int64_t file_offset = -1);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int64_t file_ = -1;  // hid_t
};

// Last HDF5 error message of this thread (the innermost description), or "".
std::string hdf5_last_error();

// fsync of a file or directory; throws DcfError naming it.
void fsync_path(const std::string& path);

// XXH64 of a file's bytes outside the given [offset, offset + bytes) data ranges, in file order (the
// HDF5 metadata of a shard file); throws InputError if it cannot be read.
uint64_t metadata_checksum(const std::string& path, std::vector<std::pair<int64_t, int64_t>> data_ranges);

}  // namespace dcf::ckpt
