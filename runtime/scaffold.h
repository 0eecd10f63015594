// `tloop new hook|task NAME`: a plugin project that builds against the
// installed tloop (find_package) and tests itself with ctest.
#pragma once

#include <string>

namespace tloop {

/// Writes the project into directory `name` (which must not exist yet).
/// Throws std::invalid_argument for a bad kind or name, std::runtime_error on I/O.
/// Returns the files written, one per line.
std::string scaffold_plugin(const std::string& kind, const std::string& name);

}  // namespace tloop
