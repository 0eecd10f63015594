// The run spec: TOML parsing, --set overrides, validation against the core
// schema and every plugin's declared schema, defaults, and the resolved spec.
#pragma once

#include "plugin_loader.h"

#include <toml++/toml.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tloop {

/// Bad input in a spec: every problem found, one per line, each naming the
/// file, line, column and key path. The CLI exits with code 2.
class SpecError : public std::runtime_error {
 public:
  explicit SpecError(const std::vector<std::string>& problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

/// A plugin named in the spec with its resolved options (defaults filled).
struct PluginUse {
  std::string plugin;
  std::string key_path;   // "task", "hooks[1]"
  std::string state_key;  // where its state lives: "task", or a hook's `key` (default: the plugin name)
  toml::table options;    // without the reserved keys "plugin", "key" and "on_error"
  /// Hooks: what a failure of one of its events does (abort | disable | warn).
  std::string on_error = "abort";
};

struct OptimizerSpec {
  std::string type;  // sgd | adam | adamw
  double lr, weight_decay, momentum, beta1, beta2, eps;
  bool nesterov;
};

struct SchedulerSpec {
  std::string type;  // constant | cosine | linear
  int64_t warmup_steps;
  double min_lr_ratio;
};

/// [eval]: evaluation during training (ABI tloop.eval/1).
struct EvalSpec {
  int64_t interval = 0;         // steps; 0: none
  int64_t interval_epochs = 0;  // epochs; 0: count steps
  std::vector<std::string> splits;   // []: the task's first
  std::vector<std::string> metrics;  // []: the task's defaults
  int64_t top_k = 5;
  int64_t max_batches = 0;     // 0: whole splits
  int64_t sanity_batches = 0;  // 0: no sanity pass
  /// Evaluation during training is on.
  bool on() const { return interval > 0 || interval_epochs > 0; }
};

struct RunSpec {
  std::string file;
  toml::table resolved;  // the whole spec, defaults filled

  std::string name;
  std::string workspace;  // as given (relative to the working directory)
  uint64_t seed;

  int64_t max_steps;
  int64_t gradient_accumulation_steps;
  std::optional<double> grad_clip;
  std::string mixed_precision;  // "" (off), "bf16" or "fp16"
  std::string device;           // auto | cpu | cuda | cuda:N
  std::optional<int64_t> max_non_finite_grad_retries;
  double signal_grace;

  PluginUse task;
  OptimizerSpec optimizer;
  SchedulerSpec scheduler;
  std::vector<PluginUse> hooks;
  EvalSpec eval;
};

/// Parses `file` and applies `--set key.path=value` overrides. Throws SpecError.
toml::table parse_spec(const std::string& file, const std::vector<std::string>& overrides);
/// The same for a spec's text; `file` names it in messages.
toml::table parse_spec_text(std::string_view text, const std::string& file, const std::vector<std::string>& overrides);

/// Where the spec's plugins are searched: the default directories, then the
/// validated `[plugins] paths` (defaults filled in `root`; relative ones
/// resolved against the spec's directory), and `allow_insecure`. Throws SpecError.
PluginSearch spec_plugin_search(toml::table& root, const std::string& file);

/// Validates everything, fills defaults and returns the typed spec. Throws
/// SpecError listing every problem. Pass the parsed table by move: a copy of a
/// toml++ node loses its source location, which every error message needs.
RunSpec resolve_spec(toml::table root, const std::string& file, const Catalog& catalog);

/// Validates `table` against `schema`, filling defaults in place; problems are
/// appended, each prefixed with its location. Used for every section and every
/// plugin's options.
void validate_table(toml::table& table, const Schema& schema, const std::string& key_path,
                    std::vector<std::string>& problems, const std::vector<std::string>& extra_keys = {});

/// The core schema of a section ("run", "trainer", ...), for docs and tests.
const Schema& core_schema(const std::string& section);

std::string to_toml(const toml::table& table);

}  // namespace tloop
