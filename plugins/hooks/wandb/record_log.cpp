#include "record_log.h"

#include "../common/write_all.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace wandb_offline {
namespace {

enum : uint8_t { kFull = 1, kFirst = 2, kMiddle = 3, kLast = 4 };

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

RecordLog::RecordLog(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path_ + ": cannot create: " + std::strerror(errno));
  buffer_ = ":W&B";
  put_le(buffer_, 0xBEE1, 2);  // magic
  put_le(buffer_, 0, 1);       // version
  offset_ = kHeaderSize;
}

RecordLog::~RecordLog() {
  try {
    flush();
  } catch (...) {
  }
  ::close(fd_);
}

void RecordLog::chunk(const char* data, size_t size, uint8_t type) {
  const char t = static_cast<char>(type);
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(&t), 1);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(size));
  put_le(buffer_, crc, 4);
  put_le(buffer_, size, 2);
  buffer_ += t;
  buffer_.append(data, size);
  offset_ += kHeaderSize + size;
}

void RecordLog::append(const std::string& record) {
  size_t space = kBlockSize - offset_ % kBlockSize;
  if (space < kHeaderSize) {
    buffer_.append(space, '\0');
    offset_ += space;
    space = kBlockSize;
  }
  const char* data = record.data();
  size_t left = record.size();
  if (left + kHeaderSize <= space) return chunk(data, left, kFull);
  size_t n = space - kHeaderSize;  // fills this block exactly
  chunk(data, n, kFirst);
  data += n;
  left -= n;
  for (; left > kBlockSize - kHeaderSize; data += n, left -= n) chunk(data, n = kBlockSize - kHeaderSize, kMiddle);
  chunk(data, left, kLast);
}

void RecordLog::flush(bool sync) {
  hooks::write_all(fd_, buffer_, path_);
  if (sync && ::fsync(fd_) != 0) throw std::runtime_error(path_ + ": fsync failed: " + std::strerror(errno));
}

}  // namespace wandb_offline
