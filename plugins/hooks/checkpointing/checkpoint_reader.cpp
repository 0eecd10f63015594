#include "checkpoint_reader.h"

#include "durable_io.h"

#include <nlohmann/json.hpp>

#include <limits>
#include <stdexcept>
#include <system_error>

namespace checkpointing {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json parse_json(const std::vector<char>& bytes) {
  try {
    return json::parse(bytes.begin(), bytes.end());
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("not JSON: ") + e.what());
  }
}

template <class T>
T unsigned_in_range(const json& v, const std::string& what) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() > std::numeric_limits<T>::max())
    throw std::runtime_error(what + " is not a number from 0 to " + std::to_string(std::numeric_limits<T>::max()));
  return static_cast<T>(v.get<uint64_t>());
}

}  // namespace

std::vector<ManifestEntry> parse_manifest(const std::vector<char>& bytes) {
  const json manifest = parse_json(bytes);
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object() ||
      manifest["files"].empty())
    throw std::runtime_error("lists no files");
  std::vector<ManifestEntry> out;
  for (const auto& [file, info] : manifest["files"].items()) {
    if (file.empty() || file == "." || file == ".." || file.find_first_of(std::string("/\0", 2)) != std::string::npos ||
        file.size() > 255)
      throw std::runtime_error("lists '" + file.substr(0, 64) + "', which is not a file name in the checkpoint");
    if (!info.is_object() || !info.contains("size") || !info.contains("crc32"))
      throw std::runtime_error("gives '" + file + "' no size and crc32");
    out.push_back({file, unsigned_in_range<uint64_t>(info["size"], "the size of '" + file + "'"),
                   unsigned_in_range<uint32_t>(info["crc32"], "the crc32 of '" + file + "'")});
  }
  return out;
}

std::string verify_checkpoint(const fs::path& dir) {
  const fs::path manifest_file = dir / "manifest.json";
  std::vector<char> bytes;
  try {
    bytes = read_file(manifest_file, kMaxManifestBytes);
  } catch (const std::exception& e) {
    std::error_code ec;
    if (!fs::exists(manifest_file, ec)) return manifest_file.string() + ": missing or unreadable";
    return e.what();  // names the file: not a regular file, too large, unreadable
  }
  std::vector<ManifestEntry> files;
  try {
    files = parse_manifest(bytes);
  } catch (const std::exception& e) {
    return manifest_file.string() + ": " + e.what();
  }
  for (const ManifestEntry& entry : files) {
    const fs::path path = dir / entry.file;
    std::error_code ec;
    const fs::file_status status = fs::symlink_status(path, ec);
    if (!fs::exists(status)) return path.string() + ": missing";
    if (!fs::is_regular_file(status)) return path.string() + ": not a regular file";
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return path.string() + ": cannot be read: " + ec.message();
    if (size != entry.size)
      return path.string() + ": size " + std::to_string(size) + " differs from the manifest's " +
             std::to_string(entry.size);
    std::vector<char> content;
    try {
      content = read_file(path, entry.size);
    } catch (const std::exception& e) {
      return e.what();
    }
    if (crc32_of(content.data(), content.size()) != entry.crc32)
      return path.string() + ": checksum mismatch (the file is damaged)";
  }
  return "";
}

std::vector<std::pair<std::string, Scalar>> parse_state_json(const std::vector<char>& bytes) {
  const json scalars = parse_json(bytes);
  if (!scalars.is_object()) throw std::runtime_error("not a JSON object");
  std::vector<std::pair<std::string, Scalar>> out;
  for (const auto& [key, v] : scalars.items()) {
    if (v.is_object() && v.size() == 1) {
      if (v.contains("int") && v["int"].is_number_integer() &&
          !(v["int"].is_number_unsigned() && v["int"].get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()})) {
        out.emplace_back(key, v["int"].get<int64_t>());
        continue;
      }
      if (v.contains("double") && v["double"].is_number()) {
        out.emplace_back(key, v["double"].get<double>());
        continue;
      }
      if (v.contains("string") && v["string"].is_string()) {
        out.emplace_back(key, v["string"].get<std::string>());
        continue;
      }
    }
    throw std::runtime_error("'" + key.substr(0, 64) + "' is not {\"int\": n}, {\"double\": x} or {\"string\": s}");
  }
  return out;
}

}  // namespace checkpointing
