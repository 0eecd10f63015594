// Small string helpers for the runtime.
#pragma once

#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace tloop {

/// Concatenates anything streamable. Hand-written because GCC 12 has no
/// std::format and fmt is kept out of LibTorch TUs (see log.h).
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  os.precision(6);
  (os << ... << args);
  return os.str();
}

std::vector<std::string> split(std::string_view s, char sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);

/// Edit distance, for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b);
/// The candidate closest to `word`, if it is close enough to be a likely typo.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace tloop
