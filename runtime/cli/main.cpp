// tloop: the command-line interface.
//   tloop run SPEC [--set k=v]...     train
//   tloop validate SPEC [--set k=v]... check a spec without running it
//   tloop plugins                      list the plugins found
//   tloop describe PLUGIN              a plugin's options
//   tloop eval SPEC [--checkpoint C] [--split S] [--json]   evaluate a checkpoint
//   tloop predict SPEC --checkpoint C [--split S]           write its outputs (.npy)
// Exit codes: 0 success, 2 bad input, 1 training failure, 128+N after signal N.
#include "../exit_codes.h"
#include "../log.h"
#include "../run.h"
#include "../scaffold.h"
#include "../signals.h"
#include "../text.h"

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <iostream>

namespace {

std::string type_name(tloop_value_type t) {
  switch (t) {
    case TLOOP_TYPE_BOOL: return "bool";
    case TLOOP_TYPE_INT: return "int";
    case TLOOP_TYPE_DOUBLE: return "float";
    case TLOOP_TYPE_STRING: return "string";
    case TLOOP_TYPE_STRING_LIST: return "list of strings";
    case TLOOP_TYPE_INT_LIST: return "list of integers";
    case TLOOP_TYPE_INT_OR_STRING: return "int or string";
  }
  return "?";
}

int list_plugins(const tloop::PluginSearch& search) {
  tloop::Catalog catalog;
  const auto problems = catalog.scan(search);
  const size_t searched = search.dirs.size() + search.named_dirs.size();
  std::printf("%-20s %-5s %-9s %s\n", "NAME", "KIND", "VERSION", "FILE");
  for (const auto* p : catalog.plugins())
    std::printf("%-20s %-5s %-9s %s\n", p->name.c_str(), tloop::kind_name(p->kind), p->version.c_str(),
                p->file.c_str());
  if (catalog.plugins().empty()) std::printf("(no plugins found; searched %zu directories)\n", searched);
  for (const auto& problem : problems) tloop::log::error(problem);
  return problems.empty() ? 0 : tloop::kExitBadInput;
}

int describe(const std::string& name, const tloop::PluginSearch& search) {
  const tloop::Catalog catalog = tloop::load_catalog(search);
  const tloop::LoadedPlugin* p = catalog.find(name);
  if (p == nullptr) {
    std::vector<std::string> names = catalog.names(TLOOP_KIND_HOOK);
    for (const auto& t : catalog.names(TLOOP_KIND_TASK)) names.push_back(t);
    std::string msg = "no plugin named '" + name + "'";
    const std::string suggestion = tloop::closest_match(name, names);
    if (!suggestion.empty()) msg += "; did you mean '" + suggestion + "'?";
    tloop::log::error(msg + " (see `tloop plugins`)");
    return tloop::kExitBadInput;
  }
  std::printf("%s %s (%s plugin)\n  %s\n  file: %s\n", p->name.c_str(), p->version.c_str(),
              tloop::kind_name(p->kind), p->description.c_str(), p->file.c_str());
  if (p->kind == TLOOP_KIND_HOOK) std::printf("  phase: %s\n", tloop::phase_name(p->phase));
  std::printf("\n");
  if (p->schema.empty()) {
    std::printf("options: none\n");
    return 0;
  }
  std::printf("options:\n");
  for (const auto& o : p->schema) {
    std::string dflt = !o.default_literal ? "required" : o.default_literal->empty() ? "optional, no default"
                                                                                     : "default " + *o.default_literal;
    std::string constraint;
    if (o.min && o.max)
      constraint = tloop::str(", ", *o.min, " to ", *o.max);
    else if (o.min)
      constraint = tloop::str(", >= ", *o.min);
    else if (o.max)
      constraint = tloop::str(", <= ", *o.max);
    if (!o.choices.empty()) constraint += ", one of " + tloop::join(o.choices, " | ");
    std::printf("  %-24s %s (%s%s)\n  %-24s   %s\n", o.name.c_str(), type_name(o.type).c_str(), dflt.c_str(),
                constraint.c_str(), "", o.doc.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tloop: a C++ training runtime on LibTorch with plugin hooks and tasks"};
  app.require_subcommand(1);
  std::string level = "info";
  app.add_option("--log-level", level, "debug | info | warn | error | off")->capture_default_str();

  tloop::RunOptions run_options;
  auto* run = app.add_subcommand("run", "Train from a TOML run spec");
  run->add_option("spec", run_options.spec_file, "the run spec (TOML)")->required();
  run->add_option("--set", run_options.overrides, "override a spec value: key.path=value (repeatable)");

  tloop::RunOptions validate_options;
  bool print_resolved = false;
  auto* validate = app.add_subcommand("validate", "Check a run spec and the plugins it names, without running");
  validate->add_option("spec", validate_options.spec_file, "the run spec (TOML)")->required();
  validate->add_option("--set", validate_options.overrides, "override a spec value: key.path=value (repeatable)");
  validate->add_flag("--print", print_resolved, "print the resolved spec (defaults filled)");

  std::vector<std::string> plugin_dirs;
  bool allow_insecure = false;
  auto* plugins = app.add_subcommand("plugins", "List the plugins found on the plugin path");
  plugins->add_option("--path", plugin_dirs, "extra plugin directory (repeatable)");
  plugins->add_flag("--allow-insecure", allow_insecure,
                    "load from directories and files other users can write or own ([plugins] allow_insecure)");

  std::string plugin_name;
  auto* describe_cmd = app.add_subcommand("describe", "Show a plugin's options, types, defaults and docs");
  describe_cmd->add_option("plugin", plugin_name, "plugin name")->required();
  describe_cmd->add_option("--path", plugin_dirs, "extra plugin directory (repeatable)");
  describe_cmd->add_flag("--allow-insecure", allow_insecure,
                         "load from directories and files other users can write or own ([plugins] allow_insecure)");

  tloop::RunOptions eval_options;
  std::string checkpoint = "latest", split;
  bool as_json = false;
  auto* eval_cmd = app.add_subcommand("eval", "Evaluate a checkpoint of a run on the task's splits");
  eval_cmd->add_option("spec", eval_options.spec_file, "the run spec (TOML) of the run")->required();
  eval_cmd->add_option("--checkpoint", checkpoint, "latest | best | a checkpoint's name | a checkpoint directory")
      ->capture_default_str();
  eval_cmd->add_option("--split", split, "the split to evaluate (default: [eval] splits, or the task's first)");
  eval_cmd->add_flag("--json", as_json, "print the metrics as one JSON object");
  eval_cmd->add_option("--set", eval_options.overrides, "override a spec value: key.path=value (repeatable)");
  auto* predict_cmd = app.add_subcommand(
      "predict", "Write a checkpoint's outputs on a split to <workspace>/predictions/<split>/*.npy");
  predict_cmd->add_option("spec", eval_options.spec_file, "the run spec (TOML) of the run")->required();
  predict_cmd->add_option("--checkpoint", checkpoint, "latest | best | a checkpoint's name | a checkpoint directory")
      ->required();
  predict_cmd->add_option("--split", split, "the split to predict (default: [eval] splits, or the task's first)");
  predict_cmd->add_option("--set", eval_options.overrides, "override a spec value: key.path=value (repeatable)");

  std::string new_kind, new_name;
  auto* new_cmd = app.add_subcommand("new", "Create a plugin project: tloop new hook|task NAME");
  new_cmd->add_option("kind", new_kind, "hook or task")->required()->check(CLI::IsMember({"hook", "task"}));
  new_cmd->add_option("name", new_name, "plugin name (lowercase, digits, '_')")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : tloop::kExitBadInput;
  }
  const auto parsed_level = tloop::log::parse_level(level);
  if (!parsed_level) {
    std::cerr << "--log-level: unknown level '" << level << "' (debug, info, warn, error, off)\n";
    return tloop::kExitBadInput;
  }
  tloop::log::set_level(*parsed_level);

  int code = 0;
  try {
    if (*run) {
      tloop::install_signal_handlers();
      auto r = tloop::Run::prepare(run_options);
      try {
        r->execute();
      } catch (const tloop::ExitRequested& e) {
        if (e.code() != 0) throw;
        // A hook ended the run early, successfully (early stopping): the
        // summary says where it ended.
        tloop::log::info(std::string("exiting: ") + e.what());
      }
      std::cout << r->summary() << std::endl;
      tloop::log::debug(r->summary());  // into the log file; the terminal has it on stdout
    } else if (*validate) {
      auto r = tloop::Run::prepare(validate_options);
      r->create_plugins();  // what a plugin refuses when created, found here too
      if (print_resolved) std::cout << tloop::to_toml(r->spec().resolved);
      std::cout << validate_options.spec_file << ": OK (task " << r->spec().task.plugin << ", "
                << r->spec().hooks.size() << " hooks, " << r->spec().max_steps << " steps)" << std::endl;
    } else if (*eval_cmd || *predict_cmd) {
      auto r = tloop::Run::prepare(eval_options);
      const tloop::Metrics metrics = r->evaluate_checkpoint(
          checkpoint, split.empty() ? std::vector<std::string>{} : std::vector<std::string>{split}, predict_cmd->parsed());
      // Numbers as JSON writes them: the shortest text that reads back exactly.
      nlohmann::ordered_json out = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metrics)
        out[k] = std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
      if (as_json)
        std::cout << out.dump() << std::endl;
      else
        for (const auto& [k, v] : out.items()) std::cout << k << " " << v.dump() << "\n";
      std::cout << std::flush;
    } else if (*plugins || *describe_cmd) {
      tloop::PluginSearch search;
      search.dirs = tloop::default_plugin_dirs();
      for (const auto& d : plugin_dirs) search.named_dirs.emplace_back(d);
      search.allow_insecure = allow_insecure;
      code = *plugins ? list_plugins(search) : describe(plugin_name, search);
    } else if (*new_cmd) {
      std::cout << tloop::scaffold_plugin(new_kind, new_name)
                << "Build it against the installed tloop:\n  cmake -S " << new_name << " -B " << new_name
                << "/build -DCMAKE_PREFIX_PATH=<tloop prefix> && cmake --build " << new_name << "/build && ctest --test-dir "
                << new_name << "/build\n";
    }
  } catch (...) {
    // What is logged depends on the kind of failure; the exit code comes
    // from the one place that decides it for hooks' finish too.
    code = tloop::exit_code_of(std::current_exception());
    try {
      throw;
    } catch (const tloop::SpecError& e) {
      for (const auto& p : e.problems()) tloop::log::error(p);
    } catch (const tloop::ExitRequested& e) {
      tloop::log::info(std::string("exiting: ") + e.what());
    } catch (const tloop::Interrupted& e) {
      tloop::log::warn(e.what());
    } catch (const c10::Error& e) {  // LibTorch's message, without its C++ backtrace
      tloop::log::error(std::string("training failed: ") + e.what_without_backtrace());
    } catch (const std::exception& e) {
      tloop::log::error(code == tloop::kExitTrainingFailed ? std::string("training failed: ") + e.what() : e.what());
    } catch (...) {
      tloop::log::error("training failed: unknown exception");
    }
  }
  tloop::log::flush();
  return code;
}
