// Reading a spec file: TOML parsing with locations, `--set key.path=value`
// overrides, and the [plugins] paths (needed before any plugin is loaded).
#include "spec.h"
#include "spec_detail.h"

#include "text.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace tloop {
namespace fs = std::filesystem;

toml::table parse_spec(const std::string& file, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw SpecError({file + ": spec file not found"});
  std::ifstream in(file, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw SpecError({file + ": cannot be read"});
  return parse_spec_text(text, file, overrides);
}

toml::table parse_spec_text(std::string_view text, const std::string& file, const std::vector<std::string>& overrides) {
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    throw SpecError({where(e.source(), file) + ": " + std::string(e.description())});
  }

  std::vector<std::string> problems;
  for (const auto& arg : overrides) {
    const std::string source = "--set " + arg;
    const size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      problems.push_back(source + ": expected key.path=value");
      continue;
    }
    const std::string value = arg.substr(eq + 1);
    const std::vector<std::string> keys = split(arg.substr(0, eq), '.');
    toml::table holder;
    try {
      holder = parse_literal(value, source);
    } catch (const toml::parse_error&) {
      try {
        holder = parse_literal(detail::toml_quote(value), source);  // a bare word is a string
      } catch (const toml::parse_error& e) {  // not even a string: invalid UTF-8, a control character
        problems.push_back(source + ": " + std::string(e.description()));
        continue;
      }
    }
    // Keys an override adds carry its source, so that an error about them
    // names the override, not the spec file.
    const toml::source_region override_source = holder.get("v")->source();
    toml::node* cur = &root;
    std::string path;
    bool ok = true;
    for (size_t i = 0; i < keys.size() && ok; ++i) {
      const std::string& k = keys[i];
      const bool last = i + 1 == keys.size();
      path = path.empty() ? k : path + "." + k;
      if (k.empty()) {
        problems.push_back(source + ": empty key in the key path");
        ok = false;
      } else if (toml::table* t = cur->as_table()) {
        if (last) {
          if (t->contains(k))
            t->insert_or_assign(k, std::move(*holder.get("v")));  // a move keeps the value's source region
          else
            t->insert_or_assign(toml::key(k, override_source), std::move(*holder.get("v")));
        } else {
          if (!t->contains(k)) t->insert(toml::key(k, override_source), toml::table{});
          cur = t->get(k);
        }
      } else if (toml::array* a = cur->as_array()) {
        const bool numeric = std::all_of(k.begin(), k.end(), ::isdigit);
        const size_t index = numeric ? std::stoul(k) : 0;
        if (!numeric || index >= a->size()) {
          problems.push_back(str(source, ": ", path, ": no such entry (the array has ", a->size(), ")"));
          ok = false;
        } else if (last) {
          a->replace(a->cbegin() + static_cast<std::ptrdiff_t>(index), std::move(*holder.get("v")));
        } else {
          cur = a->get(index);
        }
      } else {
        problems.push_back(source + ": " + path + " is not a table");
        ok = false;
      }
    }
  }
  if (!problems.empty()) throw SpecError(problems);
  return root;
}

PluginSearch spec_plugin_search(toml::table& root, const std::string& file) {
  std::vector<std::string> problems;
  if (!root.contains("plugins")) root.insert("plugins", toml::table{});
  toml::table* plugins = root.get("plugins")->as_table();
  if (plugins == nullptr)
    throw SpecError({where(root.get("plugins")->source(), file) + ": plugins: expected a table ([plugins])"});
  validate_table(*plugins, core_schema("plugins"), "plugins", problems);
  if (!problems.empty()) throw SpecError(problems);
  PluginSearch search;
  search.dirs = default_plugin_dirs();
  const fs::path base = fs::path(file).parent_path();
  const toml::array& paths = *(*plugins)["paths"].as_array();
  for (size_t i = 0; i < paths.size(); ++i) {
    const fs::path given(paths[i].as_string()->get());
    const fs::path path = (given.is_absolute() ? given : base / given).lexically_normal();
    if (auto problem = directory_problem(path))
      problems.push_back(where(paths[i].source(), file) + ": plugins.paths[" + std::to_string(i) + "]: " +
                         path.string() + ": " + *problem);
    search.named_dirs.push_back(path);
  }
  if (!problems.empty()) throw SpecError(problems);
  search.allow_insecure = (*plugins)["allow_insecure"].value_or(false);
  return search;
}

}  // namespace tloop
