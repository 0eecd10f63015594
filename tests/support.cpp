#include "support.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <tloop/torch_save.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace test {

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "tloop-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::vector<std::string> lines;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed: " + command);
  std::string output;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
  return {code, output};
}

std::string cli() { return TLOOP_CLI; }

pid_t spawn(const fs::path& spec, const fs::path& log, const std::string& env) {
  const std::string cmd =
      "exec env OMP_NUM_THREADS=1 " + env + " " + cli() + " run " + spec.string() + " >> " + log.string() + " 2>&1";
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) throw std::runtime_error("waitpid failed");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The process stays a zombie (not reaped), so the pid cannot be reused meanwhile.
bool has_exited(pid_t pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

void wait_until(const std::function<bool()>& ready, const std::string& what, pid_t pid, double deadline_seconds) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(deadline_seconds);
  try {
    for (;;) {
      if (ready()) return;
      if (pid > 0 && has_exited(pid)) {
        if (ready()) return;  // the last thing it did may be what we waited for
        throw std::runtime_error("the process exited before " + what);
      }
      if (Clock::now() > deadline)
        throw std::runtime_error("no " + what + " after " + std::to_string(deadline_seconds) + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // a poll interval, not a wait for progress
    }
  } catch (...) {  // a failed wait leaves no endless run behind
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    throw;
  }
}

int64_t last_logged_step(const fs::path& metrics) {
  std::ifstream in(metrics);
  int64_t last = 0;
  for (std::string line; std::getline(in, line);) {
    if (in.eof()) break;  // no newline yet: a line still being written
    nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_discarded() && row.contains("step")) last = std::max(last, row["step"].get<int64_t>());
  }
  return last;
}

std::unique_ptr<tloop::Run> train(const TempDir& dir, const std::string& spec,
                                  const std::vector<std::string>& overrides) {
  const fs::path file = dir / "spec.toml";
  write_file(file, spec);
  std::vector<std::string> all = {"run.workspace=\"" + (dir / "ws").string() + "\""};
  if (spec.find("workspace") != std::string::npos) all.clear();
  all.insert(all.end(), overrides.begin(), overrides.end());
  auto run = tloop::Run::prepare({file.string(), all});
  run->execute();
  return run;
}

std::map<int64_t, std::vector<double>> logged(const fs::path& metrics, const std::string& key) {
  std::map<int64_t, std::vector<double>> out;
  if (!fs::exists(metrics)) return out;
  for (const auto& line : read_lines(metrics)) {
    nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.contains(key)) continue;  // a line torn by SIGKILL
    out[row["step"].get<int64_t>()].push_back(row[key].is_number() ? row[key].get<double>() : std::nan(""));
  }
  return out;
}

int64_t latest_step(const fs::path& workspace) {
  std::ifstream in(workspace / "checkpoints" / "latest");
  std::string name;
  if (!(in >> name)) return -1;
  try {
    return std::stoll(name);
  } catch (const std::exception&) {
    return -1;
  }
}

std::vector<std::pair<std::string, at::Tensor>> read_tensors(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + file.string());
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return tloop::load_tensors(bytes);
}

std::vector<double> values(const tloop::Run& run, const std::string& name) {
  auto& r = const_cast<tloop::Run&>(run);
  for (const auto& [n, t] : r.host().parameters())
    if (n == name) {
      at::Tensor flat = t.detach().to(at::kCPU, at::kDouble).contiguous().view({-1});
      return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
    }
  throw std::runtime_error("no parameter named " + name);
}

}  // namespace test
