#include "durable_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace checkpointing {

namespace {
std::runtime_error os_error(const std::string& what, const std::filesystem::path& path, int err) {
  return std::runtime_error(path.string() + ": " + what + ": " + std::strerror(err));
}
}  // namespace

DurableFile::DurableFile(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw os_error("cannot create", path, errno);
}

DurableFile::~DurableFile() {
  if (fd_ >= 0) ::close(fd_);
}

void DurableFile::append(const char* data, size_t size) {
  crc_ = static_cast<uint32_t>(::crc32_z(crc_, reinterpret_cast<const Bytef*>(data), size));
  size_ += size;
  while (size > 0) {
    const ssize_t n = ::write(fd_, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw os_error("write failed", path_, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

void DurableFile::finish() {
  if (::fsync(fd_) != 0) throw os_error("fsync failed", path_, errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw os_error("close failed", path_, errno);
}

void write_file_durably(const std::filesystem::path& path, const char* data, size_t size) {
  DurableFile file(path);
  file.append(data, size);
  file.finish();
}

void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw os_error("cannot open directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw os_error("fsync failed", dir, err);
}

std::vector<char> read_file(const std::filesystem::path& path, uint64_t limit) {
  // One descriptor for the check and the read: the file checked is the file read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw os_error("cannot open", path, errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw os_error("cannot read", path, errno);
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(path.string() + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limit)
    throw std::runtime_error(path.string() + ": " + std::to_string(st.st_size) + " bytes, more than the " +
                             std::to_string(limit) + " expected");
  std::vector<char> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw os_error("cannot read", path, errno);
    if (n == 0) throw std::runtime_error(path.string() + ": shorter than its size (changed while read)");
    done += static_cast<size_t>(n);
  }
  return bytes;
}

uint32_t crc32_of(const char* data, size_t size) {
  return static_cast<uint32_t>(::crc32_z(0, reinterpret_cast<const Bytef*>(data), size));
}

}  // namespace checkpointing
