// Logging for the runtime. A facade over spdlog so that translation units
// that include LibTorch never include spdlog: the torch wheel bundles its own
// fmt headers, and one TU must not see two fmt versions (see log.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace tloop::log {

enum class Level { debug, info, warn, error, off };

/// Parses "debug" | "info" | "warn" | "error" | "off".
std::optional<Level> parse_level(const std::string& name);
void set_level(Level level);
/// Also writes every message to `path` (appending), replacing the file of an
/// earlier run in this process; flushed on warnings and by flush().
void set_file_sink(const std::string& path);
void flush();

void write(Level level, const std::string& message);
inline void debug(const std::string& m) { write(Level::debug, m); }
inline void info(const std::string& m) { write(Level::info, m); }
inline void warn(const std::string& m) { write(Level::warn, m); }
inline void error(const std::string& m) { write(Level::error, m); }

/// A warning that may repeat without end (a step retried forever): written
/// the first three times, then only the 10th, 100th, 1000th, ... time, with
/// its count, so that a long run's log stays readable.
class RepeatedWarning {
 public:
  void operator()(const std::string& message);
  int64_t count() const { return count_; }

 private:
  int64_t count_ = 0;
};

}  // namespace tloop::log
