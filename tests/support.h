// Helpers shared by the tests: temporary directories, files, subprocesses,
// and in-process runs of a spec.
#pragma once

#include "run.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace test {

namespace fs = std::filesystem;

/// A fresh directory under /tmp, removed when it goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text);
std::string read_file(const fs::path& path);
std::vector<std::string> read_lines(const fs::path& path);

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};
/// Runs a shell command; the exit code is 128+N when it died of signal N.
CommandResult run_command(const std::string& command);

/// The tloop CLI built with this test binary.
std::string cli();

/// Prepares and executes a run of `spec` (TOML text) written to `dir`/spec.toml;
/// the workspace defaults to `dir`/ws.
std::unique_ptr<tloop::Run> train(const TempDir& dir, const std::string& spec,
                                  const std::vector<std::string>& overrides = {});

/// A parameter's values as doubles.
std::vector<double> values(const tloop::Run& run, const std::string& name);

}  // namespace test
