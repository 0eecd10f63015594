// The framing of a W&B `.wandb` file: LevelDB's log format
// (github.com/google/leveldb/blob/main/doc/log_format.md) behind a 7-byte
// W&B header. Records are split into chunks that never cross a 32 KiB block;
// each chunk has a 7-byte header (CRC-32 seeded with the chunk type, length,
// type FULL/FIRST/MIDDLE/LAST); a block tail too short for a chunk header is
// zero-filled. This is what wandb's DataStore writes and `wandb sync` reads.
#pragma once

#include <cstdint>
#include <string>

namespace wandb_offline {

class RecordLog {
 public:
  /// Creates `path` (which must not exist) and buffers the file header.
  explicit RecordLog(std::string path);
  ~RecordLog();
  RecordLog(const RecordLog&) = delete;
  RecordLog& operator=(const RecordLog&) = delete;

  /// Frames one serialized Record into the buffer.
  void append(const std::string& record);
  /// Writes the buffer (whole records only) to the file; with `sync`, fsyncs.
  void flush(bool sync = false);
  const std::string& path() const { return path_; }

  static constexpr size_t kBlockSize = 32768;
  static constexpr size_t kHeaderSize = 7;

 private:
  void chunk(const char* data, size_t size, uint8_t type);

  std::string path_;
  int fd_ = -1;
  std::string buffer_;
  uint64_t offset_ = 0;  // file offset after the buffer, for block boundaries
};

}  // namespace wandb_offline
