// The instances that wrap one created plugin each: its `self`, the calls
// into its vtable, and the error that names it when a call fails.
#pragma once

#include "host.h"
#include "log.h"

#include <memory>
#include <optional>
#include <string>

namespace at {
struct RecordFunction;
}

namespace tloop {

/// A profiler range ("hooks[1] (progress) after_step") around one call into
/// a hook; costs one check when no profiler records.
class ProfilerRange {
 public:
  ProfilerRange(const std::string& label, const char* event);
  ~ProfilerRange();
  ProfilerRange(const ProfilerRange&) = delete;
  ProfilerRange& operator=(const ProfilerRange&) = delete;

 private:
  std::unique_ptr<at::RecordFunction> range_;
};

/// One created plugin: its `self` and the calls into it.
class PluginInstance {
 public:
  /// Creates the instance from validated options; throws PluginCreateError.
  PluginInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label);
  virtual ~PluginInstance();
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;

  /// "hooks[1] (progress)"
  const std::string& label() const { return label_; }
  const LoadedPlugin& plugin() const { return plugin_; }

 protected:
  /// Calls `fn(self, ctx, args...)` if the plugin implements it; a failure
  /// becomes a PluginError naming the plugin and the event.
  template <class Fn, class... Args>
  void call(const char* event, Fn fn, Args... args) {
    if (fn == nullptr) return;
    std::optional<ProfilerRange> range;
    if (plugin_.kind == TLOOP_KIND_HOOK) range.emplace(label_, event);
    if (const tloop_status status = invoke(fn, args...); status != TLOOP_OK) fail(event, status);
  }
  /// Calls `fn(self, ctx, args...)` and returns its status.
  template <class Fn, class... Args>
  tloop_status invoke(Fn fn, Args... args) {
    if (host_.call_depth() == 0) host_.take_nested_failure();  // a new top-level call
    ++host_.call_depth();
    const tloop_status status = fn(self_, host_.context(), args...);
    --host_.call_depth();
    return status;
  }
  /// Throws the failure of `event`: PluginBadInput for TLOOP_INVALID_ARGUMENT, else PluginError.
  [[noreturn]] void fail(const char* event, tloop_status status);

  const LoadedPlugin& plugin_;
  Host& host_;
  std::string label_;
  void* self_ = nullptr;
};

/// What a failure of one of a hook's events does (the spec's `on_error`).
/// Only the training events follow it: a refused input (exit 2), a failure
/// in resume, state_dict or load_state_dict (a checkpoint is whole or not
/// written) and one inside another plugin's call always abort.
enum class OnError {
  kAbort,    // the run ends; every hook gets finish
  kDisable,  // logged once; the hook gets no more events but finish and its state's
  kWarn,     // logged (rate-limited); the hook keeps getting events
};
OnError on_error_from(const std::string& name);  // "abort" | "disable" | "warn"

class HookInstance : public PluginInstance {
 public:
  /// `state_key`: where its state lives in the run state ("hooks/<key>/").
  HookInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label,
               std::string state_key, OnError on_error = OnError::kAbort);
  tloop_hook_phase phase() const { return plugin_.phase; }
  /// Disabled after a failure under on_error = "disable".
  bool disabled() const { return disabled_; }
  void resume();
  void before_train();
  void before_step();
  void before_optimizer_step();
  void after_step();
  void after_train();
  /// Never throws: a failure is logged, the run's outcome stays as it was.
  void finish(int exit_code) noexcept;
  void on_log(const tloop_metric* metrics, size_t count);
  void on_log_images(const tloop_image* images, size_t count);
  void state_dict(StateDict& out);
  void load_state_dict(const StateDict& in);
  /// tloop.micro_step_events/1, when the hook offers it.
  bool wants_micro_step_events() const { return micro_events_ != nullptr; }
  void after_forward(int64_t micro_step);
  void before_backward(int64_t micro_step);
  void after_backward(int64_t micro_step);
  /// tloop.eval_events/1, when the hook offers it.
  bool wants_eval_events() const { return eval_events_ != nullptr; }
  std::vector<std::string> eval_variants();
  void before_eval(const tloop_eval_pass& pass);
  void after_eval_batch(const tloop_eval_pass& pass, int64_t batch);
  void after_eval(const tloop_eval_pass& pass, const tloop_metric* metrics, size_t count);

 private:
  /// A training event: call() under the hook's on_error policy.
  template <class Fn, class... Args>
  void event(const char* name, Fn fn, Args... args);

  const tloop_hook_vtable* vt_;
  OnError on_error_;
  bool disabled_ = false;
  log::RepeatedWarning failures_;
  std::string state_prefix_;  // "hooks/<state key>/"
  const tloop_micro_step_events_v1* micro_events_ = nullptr;
  const tloop_eval_events_v1* eval_events_ = nullptr;
};

class TaskInstance : public PluginInstance {
 public:
  TaskInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label);
  void setup();
  void next_batch();
  /// The loss, or std::nullopt when the task skips backward.
  std::optional<at::Tensor> forward();
  void state_dict(StateDict& out, const std::string& prefix);
  void load_state_dict(const StateDict& in, const std::string& prefix);
  /// tloop.epochs/1 (call after setup): micro-batches per epoch, or
  /// std::nullopt when the task has no epochs. Throws PluginError for a
  /// length that is not positive.
  std::optional<int64_t> batches_per_epoch();

  /// tloop.eval/1: the splits the task evaluates (none without the extension).
  std::vector<std::string> eval_splits();
  std::vector<std::string> default_metrics(const std::string& split);
  void set_training(bool training);
  /// Starts a pass over `split`: its batch count, or std::nullopt when unknown.
  std::optional<int64_t> eval_begin(const std::string& split);
  /// False at the split's end.
  bool eval_next();
  void eval_forward(bool predict);
  void eval_end(const std::string& split);

 private:
  const tloop_task_vtable* vt_;
  const tloop_epochs_v1* epochs_ = nullptr;
  const tloop_eval_v1* eval_ = nullptr;
};

}  // namespace tloop
