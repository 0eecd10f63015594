// Checks a plugin file before dlopen: a truncated or damaged shared object
// makes the dynamic loader map pages past the end of the file, and the first
// touch of one kills the process with SIGBUS, before any message.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace tloop {

/// Why `file` is not a complete ELF shared library for this machine (what
/// dlopen could map safely), or nullopt when it is. Reads only the headers.
std::optional<std::string> elf_problem(const std::filesystem::path& file);

}  // namespace tloop
