// Finds, loads and checks plugin libraries; keeps what they provide by name.
#pragma once

#include <tloop/plugin.h>
#include <tloop/sdk.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace tloop {

/// A library that cannot be used; the message names the file.
class PluginLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Schema = std::vector<OptionSpec>;

struct LoadedPlugin {
  std::string name;
  tloop_plugin_kind kind;
  std::string version;
  std::string description;
  std::string file;  // the library it came from
  Schema schema;
  const tloop_plugin_descriptor* descriptor;  // owned by the library, which is never unloaded
  uint32_t abi_minor;                         // of the library
  tloop_hook_phase phase = TLOOP_PHASE_UPDATE;  // hooks: when they run among the others
};

const char* kind_name(tloop_plugin_kind kind);

/// The LibTorch version this host was built against ("2.11.0").
const char* host_torch_version();

/// "measure", "update", ... as `tloop describe` and the docs name phases.
const char* phase_name(tloop_hook_phase phase);

/// The order in which the host calls hooks listed with these phases: by
/// phase, and within a phase in list order. Returns list indices.
std::vector<size_t> dispatch_order(const std::vector<tloop_hook_phase>& phases);
/// A phase's place in the dispatch order: measure 0, update 1, ..., save 5.
int phase_rank(tloop_hook_phase phase);

/// Where plugins are searched, and how strictly.
struct PluginSearch {
  /// Searched in order; a missing one is skipped (the defaults, TLOOP_PLUGIN_PATH).
  std::vector<std::filesystem::path> dirs;
  /// Searched after `dirs`; named by the user ([plugins] paths, --path), so
  /// each must be a directory.
  std::vector<std::filesystem::path> named_dirs;
  /// [plugins] allow_insecure: load from directories and files that other
  /// users can write or own (with a warning) instead of refusing them.
  bool allow_insecure = false;
};

/// Why `path` cannot be a plugin directory ("no such directory", "not a
/// directory", or the system's reason: a symbolic link loop, ...), or
/// std::nullopt when it is one. `system_error` (if given) tells the last case.
std::optional<std::string> directory_problem(const std::filesystem::path& path, bool* system_error = nullptr);

/// The plugins a library's entry point returned, checked as the loader
/// checks them: the record, the ABI and LibTorch versions, each descriptor
/// and its options. `shown` names the library in errors. Throws PluginLoadError.
std::vector<LoadedPlugin> plugins_of(const tloop_library* info, const std::string& shown);

class Catalog {
 public:
  /// Loads one library and registers its plugins; throws PluginLoadError.
  void load_file(const std::filesystem::path& file);
  /// Loads every *.so of the search's directories; returns one message per
  /// library or directory that was refused.
  std::vector<std::string> scan(const PluginSearch& search);

  const LoadedPlugin* find(const std::string& name) const;
  /// Plugins in name order.
  std::vector<const LoadedPlugin*> plugins() const;
  std::vector<std::string> names(tloop_plugin_kind kind) const;

 private:
  std::map<std::string, LoadedPlugin> plugins_;
  std::vector<std::string> loaded_files_;  // canonical paths, to load each file once
  bool allow_insecure_ = false;
};

/// Default plugin directories: beside the tloop binary (`../plugins` in the
/// build tree, `../lib/tloop/plugins` when installed), then TLOOP_PLUGIN_PATH
/// (':'-separated).
std::vector<std::filesystem::path> default_plugin_dirs();

}  // namespace tloop
