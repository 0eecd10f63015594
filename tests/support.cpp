#include "support.h"

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>

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
