// The instances that wrap a plugin's vtable: each call into the plugin, and
// the error that names the plugin and the event when it fails.
#include "plugin_instance.h"

#include "log.h"
#include "spec_detail.h"
#include "text.h"

#include <ATen/record_function.h>
#include <c10/core/TensorImpl.h>
#include <tloop/keys.h>

#define TLOOP_VT(vt, type, member) (TLOOP_HAS_MEMBER(vt, type, member) ? (vt)->member : nullptr)

namespace tloop {
namespace {
using TensorPtr = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// The plugin's extension `id` as an `Ext`, or nullptr when it offers none
// (or one smaller than the struct this host knows). Extensions came with 1.3.
template <class Ext, class Vtable>
const Ext* find_extension(const LoadedPlugin& plugin, const Vtable* vt, const char* id) {
  if (plugin.abi_minor < 3) return nullptr;
  auto get = TLOOP_VT(vt, Vtable, get_extension);
  const auto* ext = get ? static_cast<const Ext*>(get(id)) : nullptr;
  return ext && ext->struct_size >= sizeof(Ext) ? ext : nullptr;
}

// Collects the names a plugin visits (splits, metrics, variants).
void collect_name(void* user, const char* name) {
  if (name != nullptr) static_cast<std::vector<std::string>*>(user)->emplace_back(name);
}
}  // namespace

ProfilerRange::ProfilerRange(const std::string& label, const char* event) {
  auto callbacks = at::getStepCallbacksUnlessEmpty(at::RecordScope::USER_SCOPE);
  if (!callbacks) return;
  range_ = std::make_unique<at::RecordFunction>(std::move(*callbacks));
  range_->before(label + " " + event);
}
ProfilerRange::~ProfilerRange() = default;  // ends the range

namespace {

// Where in the spec an error of create points: a message that starts with
// one of the options the spec sets ("dir = ...", "keep_best: ...") is about
// that option, so it gets the option's "file:line:column: " (as the schema's
// own errors have); "" for any other message.
std::string option_location(const toml::table& options, const std::string& message) {
  for (const auto& [key, node] : options) {
    const std::string_view k = key.str();
    if (message.size() <= k.size() || message.compare(0, k.size(), k) != 0) continue;
    const char next = message[k.size()];
    if (next != ' ' && next != ':' && next != '[') continue;
    const toml::source_region& at = key.source().begin.line > 0 ? key.source() : node.source();
    if (at.path && (at.begin.line > 0 || at.path->rfind("--set ", 0) == 0)) return where(at, *at.path) + ": ";
  }
  return "";
}

}  // namespace

PluginInstance::PluginInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label)
    : plugin_(plugin), host_(host), label_(std::move(label)) {
  tloop_options opts{&options};
  auto create = plugin.kind == TLOOP_KIND_HOOK ? plugin.descriptor->hook->create : plugin.descriptor->task->create;
  if (create(host.context(), &opts, &self_) != TLOOP_OK || self_ == nullptr) {
    const std::string error = host.take_error();
    throw PluginCreateError(option_location(options, error) + label_ + " could not be created: " + error);
  }
}

PluginInstance::~PluginInstance() {
  if (!self_) return;
  if (plugin_.kind == TLOOP_KIND_HOOK)
    plugin_.descriptor->hook->destroy(self_);
  else
    plugin_.descriptor->task->destroy(self_);
}

void PluginInstance::fail(const char* event, tloop_status status) {
  std::string own = host_.take_error();
  if (host_.call_depth() == 0)
    if (auto nested = host_.take_nested_failure())  // the author is the hook that failed inside
      throw NestedPluginError(*nested + " (while " + label_ + " was in " + event + ")");
  if (status == TLOOP_INVALID_ARGUMENT) throw PluginBadInput(label_ + " refused its input in " + event + ": " + own);
  throw PluginError(label_ + " failed in " + event + ": " + own);
}

OnError on_error_from(const std::string& name) {
  if (name == "disable") return OnError::kDisable;
  if (name == "warn") return OnError::kWarn;
  if (name == "abort") return OnError::kAbort;
  throw std::invalid_argument("on_error must be abort, disable or warn, got '" + name + "'");
}

HookInstance::HookInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label,
                           std::string state_key, OnError on_error)
    : PluginInstance(plugin, host, options, std::move(label)),
      vt_(plugin.descriptor->hook),
      on_error_(on_error),
      state_prefix_(TLOOP_STATE_HOOKS + state_key + "/"),
      micro_events_(find_extension<tloop_micro_step_events_v1>(plugin, vt_, TLOOP_MICRO_STEP_EVENTS_ID)),
      eval_events_(find_extension<tloop_eval_events_v1>(plugin, vt_, TLOOP_EVAL_EVENTS_ID)) {}

template <class Fn, class... Args>
void HookInstance::event(const char* name, Fn fn, Args... args) {
  if (disabled_) return;
  if (on_error_ == OnError::kAbort) return call(name, fn, args...);
  try {
    call(name, fn, args...);
  } catch (const PluginBadInput&) {
    throw;  // the spec's to fix, as at validation: exit 2 whatever the policy
  } catch (const NestedPluginError&) {
    throw;  // a hook failed inside this one's call, and its own policy aborts
  } catch (const PluginError& e) {
    if (on_error_ == OnError::kWarn) {
      failures_(str(e.what(), " (on_error = \"warn\": the hook goes on)"));
      return;
    }
    disabled_ = true;
    log::error(str(e.what(), "; ", label_, " gets no more events in this run (on_error = \"disable\")"));
  }
}

void HookInstance::after_forward(int64_t micro_step) { event("after_forward", micro_events_->after_forward, micro_step); }
void HookInstance::before_backward(int64_t micro_step) {
  event("before_backward", micro_events_->before_backward, micro_step);
}
void HookInstance::after_backward(int64_t micro_step) {
  event("after_backward", micro_events_->after_backward, micro_step);
}

std::vector<std::string> HookInstance::eval_variants() {
  std::vector<std::string> names;
  if (eval_events_) call("eval_variants", eval_events_->visit_variants, &collect_name, static_cast<void*>(&names));
  return names;
}
void HookInstance::before_eval(const tloop_eval_pass& pass) { event("before_eval", eval_events_->before_eval, &pass); }
void HookInstance::after_eval_batch(const tloop_eval_pass& pass, int64_t batch) {
  event("after_eval_batch", eval_events_->after_eval_batch, &pass, batch);
}
void HookInstance::after_eval(const tloop_eval_pass& pass, const tloop_metric* metrics, size_t count) {
  event("after_eval", eval_events_->after_eval, &pass, metrics, count);
}

void HookInstance::resume() { call("resume", TLOOP_VT(vt_, tloop_hook_vtable, resume)); }
void HookInstance::before_train() { event("before_train", TLOOP_VT(vt_, tloop_hook_vtable, before_train)); }
void HookInstance::before_step() { event("before_step", TLOOP_VT(vt_, tloop_hook_vtable, before_step)); }
void HookInstance::before_optimizer_step() {
  event("before_optimizer_step", TLOOP_VT(vt_, tloop_hook_vtable, before_optimizer_step));
}
void HookInstance::after_step() { event("after_step", TLOOP_VT(vt_, tloop_hook_vtable, after_step)); }
void HookInstance::after_train() { event("after_train", TLOOP_VT(vt_, tloop_hook_vtable, after_train)); }
void HookInstance::finish(int exit_code) noexcept {
  try {
    call("finish", TLOOP_VT(vt_, tloop_hook_vtable, finish), static_cast<int32_t>(exit_code));
  } catch (const std::exception& e) {
    log::error(e.what());
  }
}
void HookInstance::on_log(const tloop_metric* metrics, size_t count) {
  event("on_log", TLOOP_VT(vt_, tloop_hook_vtable, on_log), metrics, count);
}
void HookInstance::on_log_images(const tloop_image* images, size_t count) {
  event("on_log_images", TLOOP_VT(vt_, tloop_hook_vtable, on_log_images), images, count);
}
void HookInstance::state_dict(StateDict& out) {
  tloop_state s{&out, nullptr, state_prefix_, nullptr};
  call("state_dict", TLOOP_VT(vt_, tloop_hook_vtable, state_dict), &s);
}
void HookInstance::load_state_dict(const StateDict& in) {
  tloop_state s{nullptr, &in, state_prefix_, nullptr};
  call("load_state_dict", TLOOP_VT(vt_, tloop_hook_vtable, load_state_dict), static_cast<const tloop_state*>(&s));
}

TaskInstance::TaskInstance(const LoadedPlugin& plugin, Host& host, const toml::table& options, std::string label)
    : PluginInstance(plugin, host, options, std::move(label)),
      vt_(plugin.descriptor->task),
      epochs_(find_extension<tloop_epochs_v1>(plugin, vt_, TLOOP_EPOCHS_ID)),
      eval_(find_extension<tloop_eval_v1>(plugin, vt_, TLOOP_EVAL_ID)) {}

std::vector<std::string> TaskInstance::eval_splits() {
  std::vector<std::string> names;
  if (eval_) call("eval_splits", eval_->visit_splits, &collect_name, static_cast<void*>(&names));
  if (!names.empty() && (!eval_->eval_begin || !eval_->eval_next || !eval_->eval_forward))
    throw PluginError(label_ + " declares evaluation splits but not eval_begin, eval_next and eval_forward (tloop.eval/1)");
  return names;
}
std::vector<std::string> TaskInstance::default_metrics(const std::string& split) {
  std::vector<std::string> names;
  if (eval_) call("default_metrics", eval_->visit_default_metrics, split.c_str(), &collect_name, static_cast<void*>(&names));
  return names;
}
void TaskInstance::set_training(bool training) {
  if (eval_) call("set_training", eval_->set_training, static_cast<int32_t>(training));
}
std::optional<int64_t> TaskInstance::eval_begin(const std::string& split) {
  int64_t batches = -1;
  call("eval_begin", eval_->eval_begin, split.c_str(), &batches);
  return batches >= 0 ? std::optional<int64_t>(batches) : std::nullopt;
}
bool TaskInstance::eval_next() {
  const tloop_status status = invoke(eval_->eval_next);
  if (status == TLOOP_NOT_FOUND) return false;
  if (status != TLOOP_OK) fail("eval_next", status);
  return true;
}
void TaskInstance::eval_forward(bool predict) { call("eval_forward", eval_->eval_forward, static_cast<int32_t>(predict)); }
void TaskInstance::eval_end(const std::string& split) { call("eval_end", eval_->eval_end, split.c_str()); }

void TaskInstance::setup() { call("setup", vt_->setup); }
void TaskInstance::next_batch() { call("next_batch", vt_->next_batch); }
std::optional<at::Tensor> TaskInstance::forward() {
  tloop_tensor loss = nullptr;
  call("forward", vt_->forward, &loss);
  if (loss == nullptr) return std::nullopt;
  return at::Tensor(TensorPtr::reclaim(reinterpret_cast<c10::TensorImpl*>(loss)));
}
std::optional<int64_t> TaskInstance::batches_per_epoch() {
  if (!epochs_ || !epochs_->batches_per_epoch) return std::nullopt;
  int64_t n = 0;
  const tloop_status status = invoke(epochs_->batches_per_epoch, &n);
  if (status == TLOOP_NOT_FOUND) return std::nullopt;
  if (status != TLOOP_OK) fail("batches_per_epoch", status);
  if (n <= 0) throw PluginError(str(label_, " declared an epoch of ", n, " batches (batches_per_epoch); it must be at least 1"));
  return n;
}
void TaskInstance::state_dict(StateDict& out, const std::string& prefix) {
  tloop_state s{&out, nullptr, prefix, nullptr};
  call("state_dict", TLOOP_VT(vt_, tloop_task_vtable, state_dict), &s);
}
void TaskInstance::load_state_dict(const StateDict& in, const std::string& prefix) {
  tloop_state s{nullptr, &in, prefix, nullptr};
  call("load_state_dict", TLOOP_VT(vt_, tloop_task_vtable, load_state_dict), static_cast<const tloop_state*>(&s));
}

}  // namespace tloop
