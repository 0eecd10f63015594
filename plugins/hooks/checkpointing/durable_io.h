// Durable file I/O for checkpoints: whole files written with write(2) and
// fsync'd, directories fsync'd after renames, and a CRC-32 to verify them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace checkpointing {

/// Writes `data` to `path` (created or truncated) and fsyncs it. Throws
/// std::runtime_error naming the file and the OS error (ENOSPC, EIO, ...).
void write_file_durably(const std::filesystem::path& path, const char* data, size_t size);
/// A file written front to back, its size and CRC-32 kept as it goes; finish()
/// fsyncs and closes it. Errors throw std::runtime_error naming the file.
class DurableFile {
 public:
  explicit DurableFile(const std::filesystem::path& path);
  ~DurableFile();
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;
  void append(const char* data, size_t size);
  void finish();
  uint64_t size() const { return size_; }
  uint32_t crc32() const { return crc_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
};

/// fsync on a directory, so that renames and new entries in it are durable.
void fsync_directory(const std::filesystem::path& dir);
/// The whole of a regular file of at most `limit` bytes. Throws
/// std::runtime_error naming the file when it cannot be read, is not a
/// regular file, or is larger (nothing is read then).
std::vector<char> read_file(const std::filesystem::path& path, uint64_t limit);
/// CRC-32 (zlib's polynomial). Not cryptographic: it detects corruption,
/// which is what a checkpoint manifest needs.
uint32_t crc32_of(const char* data, size_t size);

}  // namespace checkpointing
