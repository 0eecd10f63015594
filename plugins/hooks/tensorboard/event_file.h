// A TensorBoard event file: TFRecord framing (length, masked CRC-32C of the
// length, data, masked CRC-32C of the data) around serialized Event messages.
#pragma once

#include <cstdint>
#include <string>

namespace tb {

/// CRC-32C (Castagnoli). Hand-written: Debian 12 packages no CRC-32C library.
uint32_t crc32c(const char* data, size_t size);

class EventFile {
 public:
  /// Creates <dir>/events.out.tfevents.<secs>.<host>.<pid>.<n> and writes the
  /// file_version record.
  explicit EventFile(const std::string& dir);
  ~EventFile();
  EventFile(const EventFile&) = delete;
  EventFile& operator=(const EventFile&) = delete;

  /// Appends one serialized Event to the buffer.
  void write(const std::string& event);
  /// Writes the buffer to the file (whole records only).
  void flush();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace tb
