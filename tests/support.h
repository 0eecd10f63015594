// Helpers shared by the tests: temporary directories, files, subprocesses,
// and in-process runs of a spec.
#pragma once

#include "run.h"

#include <ATen/core/Tensor.h>

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
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

/// Starts `tloop run spec` in the background (stdout and stderr appended to
/// `log`, `env` as `NAME=value ...` in front); returns its pid. One intra-op
/// thread: runs side by side under ctest -j do not fight over cores.
pid_t spawn(const fs::path& spec, const fs::path& log, const std::string& env = "");

/// Waits for a spawned process; its exit code, or 128+N when signal N killed it.
int wait_exit(pid_t pid);

/// How long a test waits for progress it expects before it fails. Generous:
/// a slow or loaded machine must pass; only a hang should ever reach it.
constexpr double kProgressDeadlineSeconds = 300;

/// Polls `ready` until it holds. Throws, naming `what`, when the deadline
/// passes or when `pid` (if given) exits first: a test waits for observed
/// progress, never for a fixed time.
void wait_until(const std::function<bool()>& ready, const std::string& what, pid_t pid = -1,
                double deadline_seconds = kProgressDeadlineSeconds);

/// True once a spawned `pid` has exited; not reaped, so wait_exit still gets its status.
bool has_exited(pid_t pid);

/// The highest step of the complete lines of a metrics.jsonl (0 when none):
/// what a running job has observably done.
int64_t last_logged_step(const fs::path& metrics);

/// step -> every value of `key` in a metrics.jsonl, in file order (a resumed
/// run logs some steps twice; a line torn by SIGKILL is skipped; a non-finite
/// value, written as null, reads as NaN).
std::map<int64_t, std::vector<double>> logged(const fs::path& metrics, const std::string& key);

/// The step checkpoints/latest names in a workspace, or -1 while there is none.
int64_t latest_step(const fs::path& workspace);

/// The named tensors of a .pt file written by tloop (model.pt, state.pt, ...).
std::vector<std::pair<std::string, at::Tensor>> read_tensors(const fs::path& file);

/// Prepares and executes a run of `spec` (TOML text) written to `dir`/spec.toml;
/// the workspace defaults to `dir`/ws.
std::unique_ptr<tloop::Run> train(const TempDir& dir, const std::string& spec,
                                  const std::vector<std::string>& overrides = {});

/// A parameter's values as doubles.
std::vector<double> values(const tloop::Run& run, const std::string& name);

}  // namespace test
