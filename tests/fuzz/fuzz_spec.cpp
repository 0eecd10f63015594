// Fuzz target: the run-spec loader, as `tloop validate` runs it before any
// plugin is created: TOML parsing, `--set` overrides, [plugins] paths, the
// core schema and every plugin's schema, defaults, the resolved spec's text.
//
// Input: the spec's text; the lines after a line "#%set" (a TOML comment)
// are `--set` arguments, one per line. The plugins are the built-in and test
// plugins, loaded once from TLOOP_PLUGIN_PATH (scripts/fuzz and the replay
// test set it). Bad input must end in a SpecError, nothing else.
#include "spec.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

const tloop::Catalog& catalog() {
  static const tloop::Catalog* loaded = [] {
    auto* c = new tloop::Catalog();
    tloop::PluginSearch search;
    search.dirs = tloop::default_plugin_dirs();
    for (const std::string& problem : c->scan(search)) std::fprintf(stderr, "fuzz_spec: %s\n", problem.c_str());
    if (c->find("regression_mlp") == nullptr || c->find("checkpointing") == nullptr) {
      std::fprintf(stderr, "fuzz_spec: the built-in plugins are not on TLOOP_PLUGIN_PATH\n");
      std::abort();
    }
    return c;
  }();
  return *loaded;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  catalog();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view marker = "\n#%set\n";
  const size_t at = input.find(marker);
  const std::string_view text = input.substr(0, at);
  std::vector<std::string> overrides;
  if (at != std::string_view::npos) {
    std::string_view rest = input.substr(at + marker.size());
    while (!rest.empty()) {
      const size_t nl = rest.find('\n');
      overrides.emplace_back(rest.substr(0, nl));
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    }
  }
  const std::string file = "/nonexistent/fuzz.toml";  // relative plugin paths resolve to nothing real
  try {
    toml::table root = tloop::parse_spec_text(text, file, overrides);
    tloop::spec_plugin_search(root, file);
    const tloop::RunSpec spec = tloop::resolve_spec(std::move(root), file, catalog());
    // The resolved spec is written into the workspace and read back on resume.
    const std::string resolved = tloop::to_toml(spec.resolved);
    (void)tloop::parse_spec_text(resolved, "resolved.toml", {});
  } catch (const tloop::SpecError&) {
  }
  return 0;
}
