// The only TU that includes spdlog. It is compiled without LibTorch's include
// directories (target tloop_log in CMakeLists.txt), so spdlog gets the system fmt.
#include "log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>

namespace tloop::log {
namespace {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    console->set_pattern("[%H:%M:%S] %^%l%$ %v");
    console->set_level(spdlog::level::info);
    auto l = std::make_shared<spdlog::logger>("tloop", console);
    // Sinks filter: the terminal shows --log-level, the file records debug and up.
    l->set_level(spdlog::level::debug);
    l->flush_on(spdlog::level::warn);
    return l;
  }();
  return *instance;
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    case Level::error: return spdlog::level::err;
    case Level::off: return spdlog::level::off;
  }
  return spdlog::level::info;
}

}  // namespace

std::optional<Level> parse_level(const std::string& name) {
  if (name == "debug") return Level::debug;
  if (name == "info") return Level::info;
  if (name == "warn" || name == "warning") return Level::warn;
  if (name == "error") return Level::error;
  if (name == "off") return Level::off;
  return std::nullopt;
}

void set_level(Level level) { logger().sinks().front()->set_level(to_spdlog(level)); }

void set_file_sink(const std::string& path) {
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  file->set_level(spdlog::level::debug);
  auto& sinks = logger().sinks();
  sinks.resize(1);  // the terminal stays; a previous run's file goes
  sinks.push_back(file);
}

void flush() { logger().flush(); }

void write(Level level, const std::string& message) { logger().log(to_spdlog(level), message); }

void RepeatedWarning::operator()(const std::string& message) {
  ++count_;
  if (count_ < 3) {
    warn(message);
  } else if (count_ == 3) {
    warn(message + " (3rd time; from now on only the 10th, 100th, 1000th, ... time is logged)");
  } else {
    int64_t p = 10;
    while (p < count_) p *= 10;
    if (p == count_) warn(message + " (" + std::to_string(count_) + "th time)");
  }
}

}  // namespace tloop::log
