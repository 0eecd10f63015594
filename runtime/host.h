// The host side of the plugin ABI: the tloop_host behind every context and
// its function table (host_api.cpp). The instances that wrap plugin calls
// are in plugin_instance.h.
#pragma once

#include "plugin_loader.h"

#include <ATen/core/Tensor.h>
#include <tloop/plugin.h>
#include <toml++/toml.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace tloop {

/// A plugin failed an event; the message names the plugin and the event.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A plugin refused its input during the run (an event returned
/// TLOOP_INVALID_ARGUMENT: an option combination, a missing checkpoint):
/// bad input, exit code 2, like an error in the spec.
class PluginBadInput : public PluginError {
 public:
  using PluginError::PluginError;
};

/// A hook failed inside a call of another plugin (on_log within a log call):
/// the message names the hook that failed, whose on_error policy already
/// chose to abort, so the caller's policy does not apply.
class NestedPluginError : public PluginError {
 public:
  using PluginError::PluginError;
};

/// A plugin refused its options when created: bad input too.
class PluginCreateError : public PluginBadInput {
 public:
  using PluginBadInput::PluginBadInput;
};

using StateValue = std::variant<at::Tensor, int64_t, double, std::string>;
/// A flat state dictionary: '/'-separated keys ("hooks/ema/ema_model/weight").
using StateDict = std::map<std::string, StateValue>;

struct RunInfo {
  int64_t max_steps = 0;
  int32_t rank = 0;
  int32_t world_size = 1;
  uint64_t seed = 0;
  std::string workspace;  // absolute
  std::string device;     // "cpu", "cuda:0"
  std::string resolved_spec;
};

/// Learning rates by param group, as the optimizer holds them.
class ParamGroups {
 public:
  virtual ~ParamGroups() = default;
  virtual size_t count() const = 0;
  virtual const std::string& name(size_t group) const = 0;
  virtual double lr(size_t group) const = 0;
};

using Metrics = std::vector<std::pair<std::string, double>>;
/// The ABI's view of `metrics` for on_log and after_eval: its names point
/// into `metrics`, which must outlive it.
std::vector<tloop_metric> abi_metrics(const Metrics& metrics);
using StepInfo = std::map<std::string, std::vector<double>>;
using MetricsSink = std::function<void(int64_t step, const Metrics&)>;

class HookInstance;

/// The function table every plugin's context points to (host_api.cpp).
const tloop_host_api* host_api_table();

class Host {
 public:
  explicit Host(RunInfo info);
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  const tloop_context* context() const { return &context_; }
  const RunInfo& info() const { return info_; }

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }

  StepInfo& step_info() { return step_info_; }
  /// Records of the current micro-step, in the order the task gave them.
  Metrics& micro_records() { return micro_records_; }

  /// Named step outputs (tloop.step_outputs/1). The trainer opens and closes
  /// the window in which a task's forward may add them.
  using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;
  void begin_forward() {
    named_losses_.clear();
    published_.clear();
    in_forward_ = true;
  }
  void end_forward() { in_forward_ = false; }
  const NamedTensors& named_losses() const { return named_losses_; }
  const NamedTensors& published() const { return published_; }
  void clear_published() { published_.clear(); }
  /// The step's tensor records so far, in order; taken once per step.
  NamedTensors take_tensor_records() { return std::exchange(tensor_records_, {}); }

  const std::vector<std::pair<std::string, at::Tensor>>& parameters() const { return parameters_; }
  const std::vector<std::pair<std::string, at::Tensor>>& buffers() const { return buffers_; }
  /// Called by the task during setup only.
  void add_tensor(const std::string& name, const at::Tensor& t, bool is_buffer);
  void close_registration() { registration_open_ = false; }

  void set_param_groups(const ParamGroups* groups) { param_groups_ = groups; }
  const ParamGroups* param_groups() const { return param_groups_; }

  /// Hooks that receive log / log_images, in dispatch order.
  void set_hooks(const std::vector<std::unique_ptr<HookInstance>>* hooks) { hooks_ = hooks; }
  /// Built-in receivers of every log call (e.g. metrics.jsonl).
  void add_metrics_sink(MetricsSink sink) { sinks_.push_back(std::move(sink)); }
  /// Built-in receivers of the step the run starts from, once resume has
  /// restored it (0 for a new run) and before_train accepted the run: steps
  /// after it are logged again.
  void add_start_listener(std::function<void(int64_t step)> listener) { start_listeners_.push_back(std::move(listener)); }
  void started() {
    for (const auto& listener : start_listeners_) listener(step_);
  }
  void log_metrics(const Metrics& metrics);
  void log_images(const tloop_image* images, size_t count);

  /// Provided by the run: the complete run state, for run_state_dict and
  /// run_load_state_dict (ABI 1.1).
  void set_run_state(std::function<void(StateDict&)> save, std::function<void(const StateDict&)> load) {
    save_run_state_ = std::move(save);
    load_run_state_ = std::move(load);
  }
  /// An exit a hook asked for (request_exit), if any.
  std::optional<int> exit_requested() const { return exit_request_; }

  void set_error(std::string message) { error_ = std::move(message); }
  std::string take_error();
  /// A host function a plugin called failed: the message is the plugin's
  /// error until it sets its own, and stays readable (tloop.host_errors/1).
  void host_failed(std::string message) {
    host_error_ = message;
    error_ = std::move(message);
  }

  /// Errors keep their author: a hook that fails inside a dispatch another
  /// plugin started (on_log within log) is remembered here, and if that
  /// plugin's call then fails, the error names the hook, not the caller.
  void note_nested_failure(const std::string& what) {
    if (!nested_failure_) nested_failure_ = what;
  }
  std::optional<std::string> take_nested_failure() { return std::exchange(nested_failure_, std::nullopt); }
  /// Plugin calls in progress (a plugin's call into the host can call plugins).
  int& call_depth() { return call_depth_; }

  /// Why the run ends, for hooks' finish (tloop.run_failure/1): the error,
  /// and the complete step the state holds when it can still be saved.
  void set_run_failure(std::string error, std::optional<int64_t> resumable_step) {
    run_error_ = std::move(error);
    resumable_step_ = resumable_step;
    if (resumable_step) step_ = *resumable_step;
  }

 private:
  RunInfo info_;
  tloop_context context_;
  int64_t step_ = 0;
  StepInfo step_info_;
  Metrics micro_records_;
  NamedTensors named_losses_, published_, tensor_records_;
  bool in_forward_ = false;
  std::vector<std::pair<std::string, at::Tensor>> parameters_, buffers_;
  bool registration_open_ = true;
  const ParamGroups* param_groups_ = nullptr;
  const std::vector<std::unique_ptr<HookInstance>>* hooks_ = nullptr;
  std::vector<MetricsSink> sinks_;
  std::vector<std::function<void(int64_t)>> start_listeners_;
  bool dispatching_ = false;
  std::function<void(StateDict&)> save_run_state_;
  std::function<void(const StateDict&)> load_run_state_;
  template <class Call>
  void dispatch(Call call);
  std::optional<int> exit_request_;
  std::string error_;
  std::string host_error_;  // the last host function failure, for tloop.host_errors/1
  std::optional<std::string> nested_failure_;
  int call_depth_ = 0;
  std::optional<std::string> run_error_;
  std::optional<int64_t> resumable_step_;
  friend struct HostApi;
};

}  // namespace tloop

// Definitions of the ABI's opaque types.
struct tloop_options {
  const toml::table* table;
};
struct tloop_state {
  tloop::StateDict* dict;  // null when reading
  const tloop::StateDict* read;
  std::string prefix;
  std::unique_ptr<tloop::StateDict> owned;  // states made by state_new
};
