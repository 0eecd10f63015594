// Reading a checkpoint's own files: the manifest, its verification against
// the files, and state.json. Every one of them may be damaged or hostile: a
// checksum proves only that a file did not change since it was written, so
// nothing read here is trusted for a size, a path or a nesting depth.
// (The tensor files are read by tloop::load_tensors, tloop/torch_save.hpp.)
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace checkpointing {

/// A manifest is a few hundred bytes; one larger than this is not ours.
constexpr uint64_t kMaxManifestBytes = uint64_t{1} << 20;

struct ManifestEntry {
  std::string file;  // a plain file name in the checkpoint's directory
  uint64_t size;
  uint32_t crc32;
};

/// The files manifest.json lists. Throws std::runtime_error saying what is
/// wrong: not JSON, no files, a name that is not a plain file name (".." or
/// a '/' would reach outside the checkpoint), a size or checksum that is not
/// an unsigned number in range.
std::vector<ManifestEntry> parse_manifest(const std::vector<char>& bytes);

/// Checks every file against the manifest; returns "" when valid, else what
/// is wrong, naming the file. A file is read only when its size on disk is
/// the manifest's: nothing larger than what the manifest declares is read.
std::string verify_checkpoint(const std::filesystem::path& dir);

/// A state.json value: state.json maps each key to {"int": n}, {"double": x}
/// or {"string": s}.
using Scalar = std::variant<int64_t, double, std::string>;

/// Throws std::runtime_error naming the key and what is wrong with it.
std::vector<std::pair<std::string, Scalar>> parse_state_json(const std::vector<char>& bytes);

}  // namespace checkpointing
