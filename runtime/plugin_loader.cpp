#include "plugin_loader.h"

#include "elf_check.h"
#include "log.h"
#include "spec_detail.h"
#include "text.h"

#include <torch/headeronly/version.h>

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <set>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

namespace tloop {
namespace fs = std::filesystem;

const char* kind_name(tloop_plugin_kind kind) { return kind == TLOOP_KIND_TASK ? "task" : "hook"; }

const char* host_torch_version() { return TORCH_VERSION; }

const char* phase_name(tloop_hook_phase phase) {
  switch (phase) {
    case TLOOP_PHASE_MEASURE: return "measure";
    case TLOOP_PHASE_UPDATE: return "update";
    case TLOOP_PHASE_EVALUATE: return "evaluate";
    case TLOOP_PHASE_MONITOR: return "monitor";
    case TLOOP_PHASE_SAVE: return "save";
    case TLOOP_PHASE_LOG: return "log";
  }
  return "?";
}

int phase_rank(tloop_hook_phase phase) {
  // measure, update, evaluate, monitor, log, save (update is 0 to be the default).
  switch (phase) {
    case TLOOP_PHASE_MEASURE: return 0;
    case TLOOP_PHASE_UPDATE: return 1;
    case TLOOP_PHASE_EVALUATE: return 2;
    case TLOOP_PHASE_MONITOR: return 3;
    case TLOOP_PHASE_LOG: return 4;
    case TLOOP_PHASE_SAVE: return 5;
  }
  return 1;
}

std::vector<size_t> dispatch_order(const std::vector<tloop_hook_phase>& phases) {
  std::vector<size_t> order(phases.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return phase_rank(phases[a]) < phase_rank(phases[b]); });
  return order;
}

namespace {

// Libraries stay loaded until the process exits: plugin instances, tensors
// with plugin-made autograd nodes and static descriptors may outlive any
// owner we could give them, so nothing is ever unloaded.
std::vector<boost::dll::shared_library>& libraries() {
  static auto* libs = new std::vector<boost::dll::shared_library>();
  return *libs;
}

// An enum member of a plugin's struct, as the integer the plugin stored. A C
// library may store any int there; reading a value outside the enumerators'
// range through the C++ enum type is undefined behaviour.
template <class E>
int64_t stored_value(const E& member) {
  static_assert(sizeof(E) == sizeof(int32_t), "C enums are int-sized");
  int32_t v;
  std::memcpy(&v, &member, sizeof v);
  return v;
}

// The newest option type a library built for ABI 1.`minor` can declare.
tloop_value_type last_option_type(uint32_t minor) {
  return minor >= 4 ? TLOOP_TYPE_INT_OR_STRING : minor >= 1 ? TLOOP_TYPE_INT_LIST : TLOOP_TYPE_STRING_LIST;
}

Schema schema_from(const tloop_plugin_descriptor& d, uint32_t abi_minor, const std::string& where) {
  Schema schema;
  if (d.option_count > 0 && d.options == nullptr) throw PluginLoadError(where + ": its options array is missing");
  // Elements are read with the writer's struct_size as the stride (ABI 1.3):
  // it may have grown; it may not be smaller than the members we read.
  const uint32_t stride = d.option_count > 0 ? d.options[0].struct_size : 0;
  if (d.option_count > 0 && stride < offsetof(tloop_option_desc, choices) + sizeof(const char*))
    throw PluginLoadError(where + ": its options have struct_size " + std::to_string(stride) + ", less than any ABI's");
  // An array's stride is its element's size, a multiple of its alignment:
  // anything else would have the host read misaligned structs.
  if (stride % alignof(tloop_option_desc) != 0)
    throw PluginLoadError(where + ": its options have struct_size " + std::to_string(stride) +
                          ", not a multiple of the struct's alignment (" + std::to_string(alignof(tloop_option_desc)) +
                          ")");
  for (uint32_t i = 0; i < d.option_count; ++i) {
    const tloop_option_desc& o = *TLOOP_ARRAY_AT(tloop_option_desc, d.options, i);
    if (o.struct_size != stride)
      throw PluginLoadError(where + ": option " + std::to_string(i) + " has struct_size " + std::to_string(o.struct_size) +
                            ", but the first has " + std::to_string(stride) + " (an array's elements share one size)");
    if (o.name == nullptr || *o.name == '\0') throw PluginLoadError(where + ": option " + std::to_string(i) + " has no name");
    // The spec's own keys in a plugin's table: plugin, key, and on_error
    // (kept for the per-hook error policy).
    for (const char* reserved : {"plugin", "key", "on_error"})
      if (std::strcmp(o.name, reserved) == 0)
        throw PluginLoadError(where + ": option '" + o.name + "' is reserved by the run spec (plugin, key, on_error)");
    const int64_t type = stored_value(o.type);
    if (type < 0 || type > last_option_type(abi_minor))
      throw PluginLoadError(where + ": option '" + o.name + "' has type " + std::to_string(type) +
                            ", not a tloop_value_type of ABI 1." + std::to_string(abi_minor) + " (0 to " +
                            std::to_string(last_option_type(abi_minor)) + ")");
    const std::string option = where + ": option '" + o.name + "'";
    for (const OptionSpec& earlier : schema)
      if (earlier.name == o.name) throw PluginLoadError(option + " is declared twice");
    if (o.choices && o.type != TLOOP_TYPE_STRING && o.type != TLOOP_TYPE_STRING_LIST &&
        o.type != TLOOP_TYPE_INT_OR_STRING)
      throw PluginLoadError(option + " has choices, but only string options can have them (it is " +
                            type_word(o.type) + ")");
    if (o.default_value && *o.default_value != '\0') {  // "": optional without a default
      bool fits = false;
      try {
        const toml::table holder = parse_literal(o.default_value, "default");
        fits = type_ok(*holder.get("v"), o.type);
      } catch (const toml::parse_error&) {
      }
      if (!fits)
        throw PluginLoadError(option + " has the default " + o.default_value + ", which is not " + type_word(o.type));
    }
    OptionSpec s;
    s.name = o.name;
    s.type = o.type;
    if (o.default_value) s.default_literal = std::string(o.default_value);
    s.doc = o.doc ? o.doc : "";
    if (o.has_min) s.min = o.min;
    if (o.has_max) s.max = o.max;
    if (o.choices) s.choices = split(o.choices, '|');
    schema.push_back(std::move(s));
  }
  return schema;
}

}  // namespace

std::optional<std::string> directory_problem(const fs::path& path, bool* system_error) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (fs::is_directory(status)) return std::nullopt;
  const bool failed = ec && ec != std::errc::no_such_file_or_directory;  // a symlink loop, no permission
  if (system_error) *system_error = failed;
  if (failed) return ec.message();
  return fs::exists(status) ? "not a directory" : "no such directory";
}

namespace {
// Why loading code from `path` (a plugin directory or library) is unsafe:
// writable by every user, or owned by another user than the one running
// tloop or root; std::nullopt when it is safe. A group-writable path is safe
// with a warning (clusters share groups with umask 002): `warning` gets it.
std::optional<std::string> insecure_path(const fs::path& path, std::string* warning) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;  // what is missing is reported where it is used
  const char* what = S_ISDIR(st.st_mode) ? "plugin directory " : "plugin library ";
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
  if (st.st_mode & S_IWOTH)
    return str(what, path.string(), " is writable by every user (mode ", mode,
               "): anyone could put code there that tloop would run; fix it with chmod o-w ", path.string());
  if (st.st_uid != ::getuid() && st.st_uid != 0) {
    const struct passwd* owner = ::getpwuid(st.st_uid);
    return str(what, path.string(), " is owned by ", owner ? owner->pw_name : "another user", " (uid ", st.st_uid,
               "), neither you nor root: its owner could change the code tloop runs; copy it, or chown it");
  }
  if ((st.st_mode & S_IWGRP) && warning)
    *warning = str(what, path.string(), " is writable by its group (mode ", mode,
                   "): loaded, but anyone in the group can change the code tloop runs");
  return std::nullopt;
}

// Refuses an unsafe path (or warns, once per path, under allow_insecure).
void check_secure(const fs::path& path, bool allow_insecure) {
  static std::set<std::string> warned;
  std::string warning;
  if (auto problem = insecure_path(path, &warning)) {
    if (!allow_insecure) throw PluginLoadError(*problem + ", or set [plugins] allow_insecure = true to load it anyway");
    warning = *problem + " (loaded: [plugins] allow_insecure = true)";
  }
  if (!warning.empty() && warned.insert(path.string()).second) log::warn(warning);
}
}  // namespace

std::vector<LoadedPlugin> plugins_of(const tloop_library* info, const std::string& shown) {
  if (info == nullptr || info->struct_size < offsetof(tloop_library, plugin_count) + sizeof(uint32_t))
    throw PluginLoadError(shown + ": the entry point returned no valid library record (a message from the "
                                  "plugin, if any, is above)");

  const std::string host_abi = str(TLOOP_ABI_VERSION_MAJOR, ".", TLOOP_ABI_VERSION_MINOR);
  const std::string lib_abi = str(info->abi_major, ".", info->abi_minor);
  if (info->abi_major != TLOOP_ABI_VERSION_MAJOR)
    throw PluginLoadError(shown + ": built for plugin ABI " + lib_abi + ", but this tloop speaks ABI " + host_abi +
                          " (major versions must match); rebuild the plugin against this tloop's SDK");
  if (info->abi_minor > TLOOP_ABI_VERSION_MINOR)
    throw PluginLoadError(shown + ": built for plugin ABI " + lib_abi + ", newer than this tloop's ABI " + host_abi +
                          "; upgrade tloop or rebuild the plugin against ABI " + host_abi);
  if (info->torch_version != nullptr && std::strcmp(info->torch_version, host_torch_version()) != 0)
    throw PluginLoadError(shown + ": built against LibTorch " + info->torch_version + ", but this tloop runs LibTorch " +
                          host_torch_version() + "; rebuild the plugin against LibTorch " + host_torch_version());

  if (info->plugin_count > 0 && info->plugins == nullptr)
    throw PluginLoadError(shown + ": the library record declares " + std::to_string(info->plugin_count) +
                          " plugins but no array of them");
  std::vector<LoadedPlugin> found;
  for (uint32_t i = 0; i < info->plugin_count; ++i) {
    const tloop_plugin_descriptor* d = info->plugins[i];
    if (d == nullptr || d->struct_size < offsetof(tloop_plugin_descriptor, task) + sizeof(void*) || d->name == nullptr ||
        *d->name == '\0')
      throw PluginLoadError(shown + ": plugin descriptor " + std::to_string(i) + " is invalid");
    const std::string where = shown + ": plugin '" + d->name + "'";
    // What `tloop new` accepts: a name that is a TOML bare key, a file name and a C identifier.
    if (!std::regex_match(d->name, std::regex("[a-z][a-z0-9_]*")))
      throw PluginLoadError(where + ": a plugin name is lowercase letters, digits and '_', starting with a letter");
    const int64_t kind = stored_value(d->kind);
    if (kind == TLOOP_KIND_HOOK) {
      if (d->hook == nullptr || d->hook->create == nullptr || d->hook->destroy == nullptr)
        throw PluginLoadError(where + " is a hook without create/destroy");
    } else if (kind == TLOOP_KIND_TASK) {
      const tloop_task_vtable* t = d->task;
      if (t == nullptr || t->create == nullptr || t->destroy == nullptr || t->setup == nullptr ||
          t->next_batch == nullptr || t->forward == nullptr)
        throw PluginLoadError(where + " is a task without create/destroy/setup/next_batch/forward");
    } else {
      throw PluginLoadError(where + " has an unknown kind " + std::to_string(kind));
    }
    tloop_hook_phase phase = TLOOP_PHASE_UPDATE;  // hooks built for 1.2 or older
    if (kind == TLOOP_KIND_HOOK && info->abi_minor >= 3 && TLOOP_HAS_MEMBER(d->hook, tloop_hook_vtable, phase)) {
      if (d->hook->phase < TLOOP_PHASE_UPDATE || d->hook->phase > TLOOP_PHASE_SAVE)
        throw PluginLoadError(where + " declares phase " + std::to_string(d->hook->phase) + ", not a tloop_hook_phase (" +
                              std::to_string(TLOOP_PHASE_UPDATE) + " to " + std::to_string(TLOOP_PHASE_SAVE) + ")");
      phase = static_cast<tloop_hook_phase>(d->hook->phase);
    }
    found.push_back({d->name, d->kind, d->version ? d->version : "", d->description ? d->description : "", shown,
                     schema_from(*d, info->abi_minor, where), d, info->abi_minor, phase});
  }
  return found;
}

void Catalog::load_file(const fs::path& file) {
  std::error_code ec;
  const std::string canonical = fs::weakly_canonical(file, ec).string();
  const std::string shown = file.string();
  if (std::find(loaded_files_.begin(), loaded_files_.end(), canonical) != loaded_files_.end()) return;

  if (std::error_code status_ec; !fs::exists(file, status_ec) && status_ec)  // a symbolic link loop
    throw PluginLoadError(shown + ": cannot be loaded: " + status_ec.message());
  check_secure(file, allow_insecure_);
  // dlopen of a truncated file dies of SIGBUS; refuse it with a message first.
  if (auto problem = elf_problem(file)) throw PluginLoadError(shown + ": cannot be loaded: " + *problem);
  boost::dll::shared_library lib;
  try {
    lib.load(file, boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw PluginLoadError(shown + ": not a tloop plugin: cannot be loaded as a shared library (" + e.what() + ")");
  }
  if (!lib.has(TLOOP_ENTRY_SYMBOL))
    throw PluginLoadError(shown + ": not a tloop plugin: it exports no '" TLOOP_ENTRY_SYMBOL
                                  "' entry point (export one with TLOOP_PLUGIN_LIBRARY)");
  auto entry = lib.get<const tloop_library*()>(TLOOP_ENTRY_SYMBOL);
  const tloop_library* info = nullptr;
  try {  // the SDK's entry point catches everything; a hand-written one may not
    info = entry();
  } catch (const std::exception& e) {
    throw PluginLoadError(shown + ": the entry point threw: " + e.what());
  } catch (...) {
    throw PluginLoadError(shown + ": the entry point threw an unknown exception");
  }
  std::vector<LoadedPlugin> found = plugins_of(info, shown);
  for (size_t i = 0; i < found.size(); ++i) {
    const LoadedPlugin* existing = find(found[i].name);
    if (existing == nullptr)
      for (size_t j = 0; j < i; ++j)
        if (found[j].name == found[i].name) existing = &found[j];
    if (existing)
      throw PluginLoadError("two plugins are named '" + found[i].name + "': one in " + existing->file +
                            " and one in " + shown + "; remove one of them from the plugin path");
  }
  for (auto& p : found) plugins_.emplace(p.name, std::move(p));
  loaded_files_.push_back(canonical);
  libraries().push_back(std::move(lib));
}

std::vector<std::string> Catalog::scan(const PluginSearch& search) {
  allow_insecure_ = search.allow_insecure;
  std::vector<std::string> problems;
  std::vector<std::pair<fs::path, bool>> dirs;  // path, named by the user
  for (const auto& d : search.dirs) dirs.emplace_back(d, false);
  for (const auto& d : search.named_dirs) dirs.emplace_back(d, true);
  for (const auto& [dir, named] : dirs) {
    bool system_error = false;
    if (auto problem = directory_problem(dir, &system_error)) {
      // A default directory need not exist; one the user named must, and an
      // error (a symbolic link loop) is named wherever it is.
      if (named || system_error) problems.push_back("plugin directory " + dir.string() + ": " + *problem);
      continue;
    }
    try {
      check_secure(dir, allow_insecure_);
    } catch (const PluginLoadError& e) {
      problems.emplace_back(e.what());
      continue;
    }
    std::vector<fs::path> files;
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) problems.push_back("plugin directory " + dir.string() + ": " + ec.message());
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::error_code entry_ec;  // a broken link is load_file's to report
      if (it->path().extension() == ".so" && !it->is_directory(entry_ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());  // a stable order makes duplicate errors reproducible
    for (const auto& f : files) {
      try {
        load_file(f);
      } catch (const PluginLoadError& e) {
        problems.emplace_back(e.what());
      }
    }
  }
  return problems;
}

const LoadedPlugin* Catalog::find(const std::string& name) const {
  auto it = plugins_.find(name);
  return it == plugins_.end() ? nullptr : &it->second;
}

std::vector<const LoadedPlugin*> Catalog::plugins() const {
  std::vector<const LoadedPlugin*> out;
  for (const auto& [name, p] : plugins_) out.push_back(&p);
  return out;
}

std::vector<std::string> Catalog::names(tloop_plugin_kind kind) const {
  std::vector<std::string> out;
  for (const auto& [name, p] : plugins_)
    if (p.kind == kind) out.push_back(name);
  return out;
}

std::vector<fs::path> default_plugin_dirs() {
  std::vector<fs::path> dirs;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // Relative to the executable, as CMake laid them out (runtime/CMakeLists.txt).
    dirs.push_back((exe.parent_path() / TLOOP_BUILD_PLUGIN_DIR_FROM_EXE).lexically_normal());    // build tree
    dirs.push_back((exe.parent_path() / TLOOP_INSTALL_PLUGIN_DIR_FROM_EXE).lexically_normal());  // install tree
  }
  if (const char* env = std::getenv("TLOOP_PLUGIN_PATH"))
    for (const auto& d : split(env, ':'))
      if (!d.empty()) dirs.emplace_back(d);
  return dirs;
}

}  // namespace tloop
