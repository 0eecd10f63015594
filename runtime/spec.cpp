// Resolving a parsed spec: every section validated against its schema,
// the task's and hooks' options against their plugins', defaults filled,
// and the typed RunSpec the run is built from.
#include "spec.h"
#include "spec_detail.h"

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

// The longest name (between '/') in a path, in bytes.
size_t longest_name(const fs::path& path) {
  size_t longest = 0;
  for (const fs::path& part : path) longest = std::max(longest, part.native().size());
  return longest;
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
  std::string on_error = "abort";
  if (kind == TLOOP_KIND_HOOK)
    if (const toml::node* e = t.get("on_error")) {
      static const std::vector<std::string> policies = {"abort", "disable", "warn"};
      const std::string v = e->is_string() ? e->as_string()->get() : "";
      if (std::find(policies.begin(), policies.end(), v) == policies.end()) {
        std::string msg = where(e->source(), file) + ": " + key_path + ".on_error: must be one of abort, disable, warn";
        msg += e->is_string() ? ", got \"" + v + "\"" : ", got " + describe(*e);
        if (const std::string s = e->is_string() ? closest_match(v, policies) : ""; !s.empty())
          msg += "; did you mean '" + s + "'?";
        problems.push_back(msg);
      } else {
        on_error = v;
      }
    }
  validate_table(t, plugin->schema, key_path, problems,
                 kind == TLOOP_KIND_HOOK ? std::vector<std::string>{"plugin", "key", "on_error"}
                                         : std::vector<std::string>{"plugin"});
  if (problems.size() != before) return std::nullopt;
  PluginUse use{name, key_path, state_key, t, on_error};
  for (const char* reserved : {"plugin", "key", "on_error"}) use.options.erase(reserved);
  return use;
}

}  // namespace

RunSpec resolve_spec(toml::table root, const std::string& file, const Catalog& catalog) {
  RunSpec spec;
  spec.file = file;
  std::vector<std::string> problems;

  const std::vector<std::string> sections = {"run", "trainer", "task", "optimizer", "scheduler", "hooks", "plugins", "eval"};
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
  toml::table* eval = section(root, "eval", false, file, problems);

  if (run) {
    validate_table(*run, core_schema("run"), "run", problems);
    if (const toml::node* w = run->get("workspace"); w && w->is_string()) {
      const std::string ws = w->as_string()->get();
      std::error_code ec;
      if (ws.empty())
        problems.push_back(where(w->source(), file) + ": run.workspace: is empty (leave it out for runs/<name>)");
      else if (const size_t longest = longest_name(ws); longest > 255)
        problems.push_back(where(w->source(), file) + ": run.workspace: a name in the path is " +
                           std::to_string(longest) + " bytes long; at most 255 fit in a directory");
      else if (fs::exists(ws, ec) && !fs::is_directory(ws, ec))
        problems.push_back(where(w->source(), file) + ": run.workspace: \"" + ws + "\" exists and is not a directory");
      else
        // A file on the way there makes the workspace impossible to create.
        for (fs::path p = fs::path(ws).parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path())
          if (fs::exists(p, ec) && !fs::is_directory(p, ec)) {
            problems.push_back(where(w->source(), file) + ": run.workspace: \"" + p.string() +
                               "\" is a file, so \"" + ws + "\" cannot be created");
            break;
          }
    }
  }
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
    // torch.optim.SGD's own rule, found here rather than as a LibTorch
    // exception once training starts.
    if (type == "sgd")
      if (const toml::node* n = optimizer->get("nesterov"); n && n->value_or(false) && (*optimizer)["momentum"].value_or(0.0) <= 0.0)
        problems.push_back(where(n->source(), file) +
                           ": optimizer.nesterov: needs momentum > 0 (Nesterov momentum is a kind of momentum)");
    // Defaults of the other optimizers' keys stay out of the resolved spec,
    // so that it validates again as it is.
    for (const auto& k : type == "sgd" ? adam_only : sgd_only) optimizer->erase(k);
  }
  if (scheduler) validate_table(*scheduler, core_schema("scheduler"), "scheduler", problems);
  if (plugins) validate_table(*plugins, core_schema("plugins"), "plugins", problems);
  if (eval) {
    validate_table(*eval, core_schema("eval"), "eval", problems);
    if (const toml::array* metrics = (*eval)["metrics"].as_array()) {
      static const std::vector<std::string> builtin = {"accuracy", "top_k_accuracy", "mse", "mae", "mean:<output>"};
      static const std::regex metric_re("accuracy|top_k_accuracy|mse|mae|mean:[A-Za-z0-9_./-]+");
      for (const toml::node& m : *metrics)
        if (const auto* name = m.as_string(); name && !std::regex_match(name->get(), metric_re)) {
          std::string msg = where(m.source(), file) + ": eval.metrics: unknown metric \"" + name->get() + "\"";
          if (const std::string s = closest_match(name->get(), builtin); !s.empty()) msg += "; did you mean '" + s + "'?";
          problems.push_back(msg + " (metrics: " + join(builtin, ", ") + ")");
        }
    }
  }

  if (task) {
    if (auto use = plugin_use(*task, "task", TLOOP_KIND_TASK, catalog, file, problems)) spec.task = *use;
  }
  if (toml::node* hooks = root.get("hooks")) {
    toml::array* list = hooks->as_array();
    if (list == nullptr || !list->is_array_of_tables()) {
      // Name the entry that is not a table (an override may have put it there).
      const toml::node* culprit = hooks;
      if (list)
        for (const toml::node& entry : *list)
          if (!entry.is_table()) {
            culprit = &entry;
            break;
          }
      problems.push_back(where(culprit->source(), file) + ": hooks: expected an array of tables ([[hooks]])");
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
  spec.signal_grace = tr["signal_grace"].as_floating_point()->get();

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

  auto& ev = *eval;
  const auto strings = [](const toml::node& list) {
    std::vector<std::string> out;
    for (const toml::node& n : *list.as_array()) out.push_back(n.as_string()->get());
    return out;
  };
  spec.eval = {ev["interval"].as_integer()->get(),    ev["interval_epochs"].as_integer()->get(),
               strings(*ev.get("splits")),            strings(*ev.get("metrics")),
               ev["top_k"].as_integer()->get(),       ev["max_batches"].as_integer()->get(),
               ev["sanity_batches"].as_integer()->get()};

  spec.resolved = std::move(root);
  return spec;
}

std::string to_toml(const toml::table& table) {
  std::ostringstream os;
  os << toml::toml_formatter{table} << "\n";
  return os.str();
}

}  // namespace tloop
