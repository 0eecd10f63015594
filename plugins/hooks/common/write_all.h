// Writing an append-only log's buffer, shared by the event-file writers.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace hooks {

/// Writes `buffer` to `fd` and empties it. On an error (a full disk), the
/// bytes already written leave the buffer before the throw, so a later call
/// resumes where this one stopped instead of writing them twice.
inline void write_all(int fd, std::string& buffer, const std::string& path) {
  size_t done = 0;
  while (done < buffer.size()) {
    const ssize_t n = ::write(fd, buffer.data() + done, buffer.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      buffer.erase(0, done);
      throw std::runtime_error(path + ": write failed: " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  buffer.clear();
}

}  // namespace hooks
