#include "spec.h"

#include "text.h"

#include <cmath>
#include <filesystem>
#include <regex>
#include <sstream>

namespace tloop {
namespace fs = std::filesystem;

SpecError::SpecError(const std::vector<std::string>& problems)
    : std::runtime_error(join(problems, "\n")), problems_(problems) {}

namespace {

// "file:line:column", or the --set argument a value came from.
std::string where(const toml::source_region& r, const std::string& file) {
  std::string path = r.path ? *r.path : file;
  if (path.rfind("--set ", 0) == 0) return path;
  if (r.begin.line == 0) return path;
  return str(path, ":", r.begin.line, ":", r.begin.column);
}

std::string child_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

const char* type_word(tloop_value_type t) {
  switch (t) {
    case TLOOP_TYPE_BOOL: return "a boolean";
    case TLOOP_TYPE_INT: return "an integer";
    case TLOOP_TYPE_DOUBLE: return "a number";
    case TLOOP_TYPE_STRING: return "a string";
    case TLOOP_TYPE_STRING_LIST: return "a list of strings";
    case TLOOP_TYPE_INT_LIST: return "a list of integers";
  }
  return "a value";
}

std::string describe(const toml::node& n) {
  std::ostringstream os;
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: os << "a string (\"" << n.as_string()->get() << "\")"; break;
    case toml::node_type::integer: os << "an integer (" << n.as_integer()->get() << ")"; break;
    case toml::node_type::floating_point: os << "a number (" << n.as_floating_point()->get() << ")"; break;
    case toml::node_type::boolean: os << "a boolean (" << (n.as_boolean()->get() ? "true" : "false") << ")"; break;
    default: os << "a " << n.type(); break;
  }
  return os.str();
}

bool type_ok(const toml::node& n, tloop_value_type t) {
  switch (t) {
    case TLOOP_TYPE_BOOL: return n.is_boolean();
    case TLOOP_TYPE_INT: return n.is_integer();
    case TLOOP_TYPE_DOUBLE: return n.is_number();
    case TLOOP_TYPE_STRING: return n.is_string();
    case TLOOP_TYPE_STRING_LIST: {
      const toml::array* a = n.as_array();
      return a && std::all_of(a->begin(), a->end(), [](const toml::node& e) { return e.is_string(); });
    }
    case TLOOP_TYPE_INT_LIST: {
      const toml::array* a = n.as_array();
      return a && std::all_of(a->begin(), a->end(), [](const toml::node& e) { return e.is_integer(); });
    }
  }
  return false;
}

std::string number_text(double v) { return str(v); }

Schema make_run_schema() {
  return {
      optional("name", TLOOP_TYPE_STRING, "run name; defaults to the spec file's name"),
      optional("workspace", TLOOP_TYPE_STRING,
               "directory for checkpoints, logs and outputs; defaults to runs/<name> (relative to the working directory)"),
      option("seed", 0, "seeds every random number generator").at_least(0),
  };
}
Schema make_trainer_schema() {
  return {
      required("max_steps", TLOOP_TYPE_INT, "number of optimizer steps").at_least(1),
      option("gradient_accumulation_steps", 1, "micro-steps (real backwards) per optimizer step").at_least(1),
      optional("grad_clip", TLOOP_TYPE_DOUBLE, "clip the global gradient norm to this value (> 0); off when absent")
          .at_least(0),
      optional("mixed_precision", TLOOP_TYPE_STRING, "autocast dtype; off when absent").one_of({"bf16", "fp16"}),
      option("device", "auto", "auto | cpu | cuda | cuda:N"),
      optional("max_non_finite_grad_retries", TLOOP_TYPE_INT,
               "retries of a step whose gradients are not finite; unbounded when absent")
          .at_least(0),
  };
}
Schema make_optimizer_schema() {
  return {
      option("type", "adamw", "optimizer").one_of({"sgd", "adam", "adamw"}),
      option("lr", 1e-3, "base learning rate").at_least(0),
      option("weight_decay", 0.0, "weight decay (decoupled for adamw)").at_least(0),
      option("momentum", 0.0, "sgd only: momentum").range(0, 1),
      option("nesterov", false, "sgd only: Nesterov momentum"),
      option("beta1", 0.9, "adam/adamw only").range(0, 1),
      option("beta2", 0.999, "adam/adamw only").range(0, 1),
      option("eps", 1e-8, "adam/adamw only").at_least(0),
  };
}
Schema make_scheduler_schema() {
  return {
      option("type", "constant", "learning-rate shape after warm-up").one_of({"constant", "cosine", "linear"}),
      option("warmup_steps", 0, "linear warm-up steps").at_least(0),
      option("min_lr_ratio", 0.0, "cosine/linear: final learning rate as a fraction of lr").range(0, 1),
  };
}
Schema make_plugins_schema() {
  return {option("paths", std::vector<std::string>{},
                 "extra plugin directories, searched after the built-in ones and TLOOP_PLUGIN_PATH")};
}

// Parses a TOML literal for a default or an override value.
toml::table parse_literal(const std::string& literal, const std::string& source) {
  return toml::parse("v = " + literal, source);
}

}  // namespace

const Schema& core_schema(const std::string& section) {
  static const std::map<std::string, Schema> schemas = {
      {"run", make_run_schema()},           {"trainer", make_trainer_schema()},
      {"optimizer", make_optimizer_schema()}, {"scheduler", make_scheduler_schema()},
      {"plugins", make_plugins_schema()},
  };
  return schemas.at(section);
}

void validate_table(toml::table& table, const Schema& schema, const std::string& key_path,
                    std::vector<std::string>& problems, const std::vector<std::string>& extra_keys) {
  const std::string file = table.source().path ? *table.source().path : "";
  std::vector<std::string> known = extra_keys;
  for (const auto& o : schema) known.push_back(o.name);

  for (auto&& [key, node] : table) {
    const std::string k(key.str());
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    std::string msg = where(key.source(), file) + ": " + child_path(key_path, k) + ": unknown key";
    const std::string suggestion = closest_match(k, known);
    if (!suggestion.empty())
      msg += "; did you mean '" + suggestion + "'?";
    else
      msg += " (known keys: " + join(known, ", ") + ")";
    problems.push_back(msg);
  }

  for (const auto& o : schema) {
    const std::string path = child_path(key_path, o.name);
    toml::node* node = table.get(o.name);
    if (node == nullptr) {
      if (!o.default_literal) {
        problems.push_back(where(table.source(), file) + ": " + path + ": missing required key (" +
                           type_word(o.type) + ": " + o.doc + ")");
      } else if (!o.default_literal->empty()) {
        try {
          toml::table holder = parse_literal(*o.default_literal, "default of " + path);
          table.insert(o.name, *holder.get("v"));
        } catch (const toml::parse_error& e) {
          problems.push_back(path + ": the plugin's default '" + *o.default_literal + "' is not valid TOML");
        }
      }
      continue;
    }
    const std::string at = where(node->source(), file) + ": " + path + ": ";
    if (!type_ok(*node, o.type)) {
      problems.push_back(at + "expected " + type_word(o.type) + ", got " + describe(*node));
      continue;
    }
    if (o.type == TLOOP_TYPE_INT || o.type == TLOOP_TYPE_DOUBLE) {
      const double v = node->is_integer() ? static_cast<double>(node->as_integer()->get())
                                          : node->as_floating_point()->get();
      if (std::isnan(v) || (o.min && v < *o.min) || (o.max && v > *o.max)) {
        std::string range = o.min && o.max ? "between " + number_text(*o.min) + " and " + number_text(*o.max)
                            : o.min      ? "at least " + number_text(*o.min)
                            : o.max      ? "at most " + number_text(*o.max)
                                         : "a number";
        problems.push_back(at + "must be " + range + ", got " + describe(*node));
        continue;
      }
      if (o.type == TLOOP_TYPE_DOUBLE && node->is_integer()) {
        table.insert_or_assign(o.name, v);  // readers see one type
      }
    }
    if (o.type == TLOOP_TYPE_STRING && !o.choices.empty()) {
      const std::string v = node->as_string()->get();
      if (std::find(o.choices.begin(), o.choices.end(), v) == o.choices.end()) {
        std::string msg = at + "must be one of " + join(o.choices, ", ") + ", got \"" + v + "\"";
        const std::string suggestion = closest_match(v, o.choices);
        if (!suggestion.empty()) msg += "; did you mean '" + suggestion + "'?";
        problems.push_back(msg);
      }
    }
  }
}

toml::table parse_spec(const std::string& file, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw SpecError({file + ": spec file not found"});
  toml::table root;
  try {
    root = toml::parse_file(file);
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
      holder = parse_literal(detail::toml_quote(value), source);  // a bare word is a string
    }
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
          t->insert_or_assign(k, std::move(*holder.get("v")));  // a move keeps the source region
        } else {
          if (!t->contains(k)) t->insert(k, toml::table{});
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

std::vector<std::string> spec_plugin_paths(toml::table& root, const std::string& file) {
  std::vector<std::string> problems;
  if (!root.contains("plugins")) root.insert("plugins", toml::table{});
  toml::table* plugins = root.get("plugins")->as_table();
  if (plugins == nullptr)
    throw SpecError({where(root.get("plugins")->source(), file) + ": plugins: expected a table ([plugins])"});
  validate_table(*plugins, core_schema("plugins"), "plugins", problems);
  if (!problems.empty()) throw SpecError(problems);
  std::vector<std::string> out;
  const fs::path base = fs::path(file).parent_path();
  for (const auto& p : *(*plugins)["paths"].as_array()) {
    fs::path path(p.as_string()->get());
    out.push_back((path.is_absolute() ? path : base / path).lexically_normal().string());
  }
  return out;
}

namespace {

toml::table* section(toml::table& root, const std::string& name, bool required, const std::string& file,
                     std::vector<std::string>& problems) {
  toml::node* n = root.get(name);
  if (n == nullptr) {
    if (required) {
      problems.push_back(file + ": " + name + ": missing required section [" + name + "]");
      return nullptr;
    }
    root.insert(name, toml::table{});
    n = root.get(name);
  }
  if (!n->is_table()) {
    problems.push_back(where(n->source(), file) + ": " + name + ": expected a table ([" + name + "]), got " +
                       describe(*n));
    return nullptr;
  }
  return n->as_table();
}

// Validates one `plugin = "..."` table against the named plugin's schema.
std::optional<PluginUse> plugin_use(toml::table& t, const std::string& key_path, tloop_plugin_kind kind,
                                    const Catalog& catalog, const std::string& file,
                                    std::vector<std::string>& problems) {
  const toml::node* name_node = t.get("plugin");
  if (name_node == nullptr || !name_node->is_string()) {
    problems.push_back(where(name_node ? name_node->source() : t.source(), file) + ": " + key_path +
                       ".plugin: " + (name_node ? "expected a string, got " + describe(*name_node)
                                                : std::string("missing required key (the plugin's name)")));
    return std::nullopt;
  }
  const std::string name = name_node->as_string()->get();
  const std::string at = where(name_node->source(), file) + ": " + key_path + ".plugin: ";
  const LoadedPlugin* plugin = catalog.find(name);
  if (plugin == nullptr) {
    const auto names = catalog.names(kind);
    std::string msg = at + "no " + kind_name(kind) + " plugin named '" + name + "' is loaded";
    const std::string suggestion = closest_match(name, names);
    if (!suggestion.empty()) msg += "; did you mean '" + suggestion + "'?";
    msg += names.empty() ? " (none found: check the plugin path)" : " (available: " + join(names, ", ") + ")";
    problems.push_back(msg);
    return std::nullopt;
  }
  if (plugin->kind != kind) {
    problems.push_back(at + "'" + name + "' is a " + kind_name(plugin->kind) + " plugin, not a " + kind_name(kind));
    return std::nullopt;
  }
  const size_t before = problems.size();
  std::string state_key = kind == TLOOP_KIND_TASK ? "task" : name;
  if (kind == TLOOP_KIND_HOOK) {
    if (const toml::node* k = t.get("key")) {
      static const std::regex key_re("[A-Za-z0-9_.-]+");
      if (!k->is_string() || !std::regex_match(k->as_string()->get(), key_re))
        problems.push_back(where(k->source(), file) + ": " + key_path +
                           ".key: must be a string of letters, digits, '_', '.' or '-' (the hook's state key), got " +
                           describe(*k));
      else
        state_key = k->as_string()->get();
    }
  }
  validate_table(t, plugin->schema, key_path, problems,
                 kind == TLOOP_KIND_HOOK ? std::vector<std::string>{"plugin", "key"} : std::vector<std::string>{"plugin"});
  if (problems.size() != before) return std::nullopt;
  PluginUse use{name, key_path, state_key, t};
  use.options.erase("plugin");
  use.options.erase("key");
  return use;
}

}  // namespace

RunSpec resolve_spec(toml::table root, const std::string& file, const Catalog& catalog) {
  RunSpec spec;
  spec.file = file;
  std::vector<std::string> problems;

  const std::vector<std::string> sections = {"run", "trainer", "task", "optimizer", "scheduler", "hooks", "plugins"};
  for (auto&& [key, node] : root) {
    const std::string k(key.str());
    if (std::find(sections.begin(), sections.end(), k) != sections.end()) continue;
    std::string msg = where(key.source(), file) + ": " + k + ": unknown section";
    const std::string suggestion = closest_match(k, sections);
    msg += suggestion.empty() ? " (sections: " + join(sections, ", ") + ")" : "; did you mean '" + suggestion + "'?";
    problems.push_back(msg);
  }

  toml::table* run = section(root, "run", false, file, problems);
  toml::table* trainer = section(root, "trainer", true, file, problems);
  toml::table* task = section(root, "task", true, file, problems);
  toml::table* optimizer = section(root, "optimizer", false, file, problems);
  toml::table* scheduler = section(root, "scheduler", false, file, problems);
  toml::table* plugins = section(root, "plugins", false, file, problems);

  if (run) validate_table(*run, core_schema("run"), "run", problems);
  if (trainer) {
    validate_table(*trainer, core_schema("trainer"), "trainer", problems);
    if (const toml::node* d = trainer->get("device"); d && d->is_string()) {
      static const std::regex device_re("auto|cpu|cuda(:[0-9]+)?");
      if (!std::regex_match(d->as_string()->get(), device_re))
        problems.push_back(where(d->source(), file) + ": trainer.device: must be auto, cpu, cuda or cuda:N, got \"" +
                           d->as_string()->get() + "\"");
    }
    if (const toml::node* c = trainer->get("grad_clip"); c && c->is_number() && c->value_or(1.0) <= 0.0)
      problems.push_back(where(c->source(), file) +
                         ": trainer.grad_clip: must be greater than 0 (leave it out to disable clipping)");
  }
  if (optimizer) {
    const std::string type = optimizer->contains("type") && (*optimizer)["type"].is_string()
                                 ? (*optimizer)["type"].as_string()->get()
                                 : "adamw";
    const std::vector<std::string> sgd_only = {"momentum", "nesterov"};
    const std::vector<std::string> adam_only = {"beta1", "beta2", "eps"};
    for (const auto& k : type == "sgd" ? adam_only : sgd_only)
      if (const toml::node* n = optimizer->get(k))
        problems.push_back(where(n->source(), file) + ": optimizer." + k + ": does not apply to optimizer type '" +
                           type + "'");
    validate_table(*optimizer, core_schema("optimizer"), "optimizer", problems);
    // Defaults of the other optimizers' keys stay out of the resolved spec,
    // so that it validates again as it is.
    for (const auto& k : type == "sgd" ? adam_only : sgd_only) optimizer->erase(k);
  }
  if (scheduler) validate_table(*scheduler, core_schema("scheduler"), "scheduler", problems);
  if (plugins) validate_table(*plugins, core_schema("plugins"), "plugins", problems);

  if (task) {
    if (auto use = plugin_use(*task, "task", TLOOP_KIND_TASK, catalog, file, problems)) spec.task = *use;
  }
  if (toml::node* hooks = root.get("hooks")) {
    toml::array* list = hooks->as_array();
    if (list == nullptr || !list->is_array_of_tables()) {
      problems.push_back(where(hooks->source(), file) + ": hooks: expected an array of tables ([[hooks]])");
    } else {
      for (size_t i = 0; i < list->size(); ++i) {
        if (auto use = plugin_use(*list->get(i)->as_table(), str("hooks[", i, "]"), TLOOP_KIND_HOOK, catalog, file,
                                  problems)) {
          for (const auto& other : spec.hooks)
            if (other.state_key == use->state_key)
              problems.push_back(where(list->get(i)->source(), file) + ": " + use->key_path + ": its state key '" +
                                 use->state_key + "' is used by " + other.key_path +
                                 " too; give one of them a distinct key = \"...\"");
          spec.hooks.push_back(*use);
        }
      }
    }
  } else {
    root.insert("hooks", toml::array{});
  }

  if (!problems.empty()) throw SpecError(problems);

  // Everything is valid and defaulted: read the typed values.
  spec.name = run->contains("name") ? (*run)["name"].as_string()->get() : fs::path(file).stem().string();
  spec.workspace = run->contains("workspace") ? (*run)["workspace"].as_string()->get() : "runs/" + spec.name;
  run->insert_or_assign("name", spec.name);
  run->insert_or_assign("workspace", spec.workspace);
  spec.seed = static_cast<uint64_t>((*run)["seed"].as_integer()->get());

  auto& tr = *trainer;
  spec.max_steps = tr["max_steps"].as_integer()->get();
  spec.gradient_accumulation_steps = tr["gradient_accumulation_steps"].as_integer()->get();
  if (tr.contains("grad_clip")) spec.grad_clip = tr["grad_clip"].as_floating_point()->get();
  if (tr.contains("mixed_precision")) spec.mixed_precision = tr["mixed_precision"].as_string()->get();
  spec.device = tr["device"].as_string()->get();
  if (tr.contains("max_non_finite_grad_retries"))
    spec.max_non_finite_grad_retries = tr["max_non_finite_grad_retries"].as_integer()->get();

  auto& op = *optimizer;
  spec.optimizer = {op["type"].as_string()->get(),
                    op["lr"].as_floating_point()->get(),
                    op["weight_decay"].as_floating_point()->get(),
                    op["momentum"].value_or(0.0),
                    op["beta1"].value_or(0.9),
                    op["beta2"].value_or(0.999),
                    op["eps"].value_or(1e-8),
                    op["nesterov"].value_or(false)};
  auto& sc = *scheduler;
  spec.scheduler = {sc["type"].as_string()->get(), sc["warmup_steps"].as_integer()->get(),
                    sc["min_lr_ratio"].as_floating_point()->get()};

  spec.resolved = std::move(root);
  return spec;
}

std::string to_toml(const toml::table& table) {
  std::ostringstream os;
  os << toml::toml_formatter{table} << "\n";
  return os.str();
}

}  // namespace tloop
