// Logging for the runtime. A facade over spdlog so that translation units
// that include LibTorch never include spdlog: the torch wheel bundles its own
// fmt headers, and one TU must not see two fmt versions (see log.cpp).
#pragma once

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

}  // namespace tloop::log
