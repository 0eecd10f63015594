/* LD_PRELOAD write-failure injection for the disk-full test: once the process
 * has written TLOOP_TEST_ENOSPC_AFTER bytes to files whose path contains
 * TLOOP_TEST_ENOSPC_MATCH, every further write to such files fails with
 * ENOSPC, as on a full disk. Other files are untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long long written = 0;

static int matches(int fd) {
  const char* match = getenv("TLOOP_TEST_ENOSPC_MATCH");
  char link[64], path[PATH_MAX];
  if (match == NULL) return 0;
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof(path) - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return strstr(path, match) != NULL;
}

static int over_budget(int fd, size_t count) {
  const char* after = getenv("TLOOP_TEST_ENOSPC_AFTER");
  if (after == NULL || !matches(fd)) return 0;
  if (written + (long long)count > atoll(after)) return 1;
  written += (long long)count;
  return 0;
}

__attribute__((visibility("default"))) ssize_t write(int fd, const void* buf, size_t count) {
  static ssize_t (*real)(int, const void*, size_t) = NULL;
  if (real == NULL) real = (ssize_t(*)(int, const void*, size_t))dlsym(RTLD_NEXT, "write");
  if (over_budget(fd, count)) {
    errno = ENOSPC;
    return -1;
  }
  return real(fd, buf, count);
}
