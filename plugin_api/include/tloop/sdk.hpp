// tloop C++ plugin SDK: a thin, header-only layer over tloop/plugin.h.
//
// A hook is a class deriving from tloop::Hook with
//   static tloop::PluginInfo info();
//   MyHook(tloop::Context& ctx, const tloop::Options& options);
// and overriding the events it cares about. One line exports the library:
//   TLOOP_PLUGIN_LIBRARY(tloop::hook<MyHook>())
//
// This header needs no LibTorch. Plugins that use tensors include
// tloop/torch.hpp instead, which adds tensor conversion and tloop::Task.
#pragma once

#include <tloop/keys.h>
#include <tloop/plugin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

// The LibTorch version a library reports. tloop/torch.hpp defines it; a
// library that never touches a tensor reports none and loads under any LibTorch.
#ifndef TLOOP_LIBRARY_TORCH_VERSION
#define TLOOP_LIBRARY_TORCH_VERSION nullptr
#endif

namespace tloop {

/// Thrown by plugin code to fail the current event with a message.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------ option schema

/// One option a plugin declares; `tloop describe` prints it and the host
/// validates and defaults the spec against it before anything runs.
struct OptionSpec {
  std::string name;
  tloop_value_type type = TLOOP_TYPE_STRING;
  /// TOML literal of the default; std::nullopt means required; "" means
  /// optional without a default (Options::has() tells whether it was given).
  std::optional<std::string> default_literal;
  std::string doc;
  std::optional<double> min, max;
  std::vector<std::string> choices;

  OptionSpec& at_least(double v) { min = v; return *this; }
  OptionSpec& at_most(double v) { max = v; return *this; }
  OptionSpec& range(double lo, double hi) { min = lo; max = hi; return *this; }
  OptionSpec& one_of(std::vector<std::string> values) { choices = std::move(values); return *this; }
};

namespace detail {
inline std::string toml_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default: out += c;
    }
  }
  return out + "\"";
}
inline std::string double_literal(double v) {
  std::string s;
  for (int precision = 15; precision <= 17; ++precision) {  // the shortest text that reads back as v
    std::ostringstream os;
    os.precision(precision);
    os << v;
    s = os.str();
    if (std::stod(s) == v) break;
  }
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a TOML float
  return s;
}
}  // namespace detail

inline OptionSpec option(std::string name, bool def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_BOOL, def ? "true" : "false", std::move(doc), {}, {}, {}};
}
inline OptionSpec option(std::string name, int def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_INT, std::to_string(def), std::move(doc), {}, {}, {}};
}
inline OptionSpec option(std::string name, int64_t def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_INT, std::to_string(def), std::move(doc), {}, {}, {}};
}
inline OptionSpec option(std::string name, double def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_DOUBLE, detail::double_literal(def), std::move(doc), {}, {}, {}};
}
inline OptionSpec option(std::string name, const char* def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_STRING, detail::toml_quote(def), std::move(doc), {}, {}, {}};
}
inline OptionSpec option(std::string name, std::string def, std::string doc) {
  return option(std::move(name), def.c_str(), std::move(doc));
}
namespace detail {
// "[a, b]" with each element written by `literal`.
template <class T, class Literal>
std::string list_literal(const std::vector<T>& values, Literal literal) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + literal(values[i]);
  return out + "]";
}
}  // namespace detail
inline OptionSpec option(std::string name, std::vector<std::string> def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_STRING_LIST, detail::list_literal(def, detail::toml_quote), std::move(doc),
          {}, {}, {}};
}
inline OptionSpec option(std::string name, std::vector<int64_t> def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_INT_LIST,
          detail::list_literal(def, [](int64_t v) { return std::to_string(v); }), std::move(doc), {}, {}, {}};
}
// The natural spellings of list defaults, option("tags", {"a", "b"}, ...)
// and option("steps", {1, 2}, ...): without these a braced list is
// ambiguous (a std::string can be built from two const char*).
inline OptionSpec option(std::string name, std::initializer_list<const char*> def, std::string doc) {
  return option(std::move(name), std::vector<std::string>(def.begin(), def.end()), std::move(doc));
}
inline OptionSpec option(std::string name, std::initializer_list<int64_t> def, std::string doc) {
  return option(std::move(name), std::vector<int64_t>(def), std::move(doc));
}
/// An option that is an integer or a string (ABI 1.4), such as
/// checkpointing's `exit_code = 3` or `"128+signal"`. The default is either;
/// one_of() constrains the string form, range() and at_least() the integer.
/// Read it with Options::get_int_or_string.
inline OptionSpec option_int_or_string(std::string name, const char* def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_INT_OR_STRING, detail::toml_quote(def), std::move(doc), {}, {}, {}};
}
inline OptionSpec option_int_or_string(std::string name, int64_t def, std::string doc) {
  return {std::move(name), TLOOP_TYPE_INT_OR_STRING, std::to_string(def), std::move(doc), {}, {}, {}};
}
/// An option the spec must give.
inline OptionSpec required(std::string name, tloop_value_type type, std::string doc) {
  return {std::move(name), type, std::nullopt, std::move(doc), {}, {}, {}};
}
/// An option the spec may leave out, with no default (e.g. "no clipping").
inline OptionSpec optional(std::string name, tloop_value_type type, std::string doc) {
  return {std::move(name), type, std::string(), std::move(doc), {}, {}, {}};
}

/// What a plugin tells the host about itself.
struct PluginInfo {
  std::string name;
  std::string version;
  std::string description;
  std::vector<OptionSpec> options;
};

// ------------------------------------------------------------------ host access

/// A metric or image as plugins see it; images are borrowed views.
using Metrics = std::vector<std::pair<std::string, double>>;

struct ImageView {
  std::string key;
  int width = 0, height = 0, channels = 0;
  int64_t row_stride = 0;
  const uint8_t* pixels = nullptr;
};

/// The options given to a plugin's constructor (already validated and defaulted).
class Options {
 public:
  Options(const tloop_context* ctx, const tloop_options* options) : api_(ctx->api), options_(options) {}

  /// False for an optional option (declared with tloop::optional) the spec left out.
  bool has(const char* name) const { return api_->option_is_set(options_, name) != 0; }
  bool get_bool(const char* name) const {
    int32_t v = 0;
    check(api_->option_bool(options_, name, &v), name);
    return v != 0;
  }
  int64_t get_int(const char* name) const {
    int64_t v = 0;
    check(api_->option_int(options_, name, &v), name);
    return v;
  }
  double get_double(const char* name) const {
    double v = 0;
    check(api_->option_double(options_, name, &v), name);
    return v;
  }
  std::string get_string(const char* name) const {
    const char* v = nullptr;
    check(api_->option_string(options_, name, &v), name);
    return v;
  }
  /// A TLOOP_TYPE_INT_OR_STRING option: the integer, or the string.
  std::variant<int64_t, std::string> get_int_or_string(const char* name) const {
    int64_t i = 0;
    const tloop_status st = api_->option_int(options_, name, &i);
    if (st != TLOOP_TYPE_MISMATCH) {
      check(st, name);
      return i;
    }
    return get_string(name);
  }
  std::vector<int64_t> get_int_list(const char* name) const {
    return get_list<int64_t, int64_t>(name, api_->option_int_list);
  }
  std::vector<std::string> get_string_list(const char* name) const {
    return get_list<std::string, const char*>(name, api_->option_string_list);
  }

 private:
  // Reads elements until the host says TLOOP_NOT_FOUND.
  template <class T, class Raw, class Get>
  std::vector<T> get_list(const char* name, Get get) const {
    std::vector<T> out;
    for (size_t i = 0;; ++i) {
      Raw v{};
      const tloop_status st = get(options_, name, i, &v);
      if (st == TLOOP_NOT_FOUND) return out;
      check(st, name);
      out.emplace_back(v);
    }
  }
  static void check(tloop_status st, const char* name) {
    if (st != TLOOP_OK) throw Error(std::string("option '") + name + "' is missing or has another type");
  }
  const tloop_host_api* api_;
  const tloop_options* options_;
};

/// The host, as a plugin sees it during one call.
class Context {
 public:
  explicit Context(const tloop_context* ctx) : ctx_(ctx), api_(ctx->api), host_(ctx->host) {}

  const tloop_context* raw() const { return ctx_; }
  const tloop_host_api* api() const { return api_; }
  tloop_host* host() const { return host_; }

  int64_t step() const { return api_->step(host_); }
  int64_t max_steps() const { return api_->max_steps(host_); }
  int rank() const { return api_->rank(host_); }
  int world_size() const { return api_->world_size(host_); }
  uint64_t seed() const { return api_->seed(host_); }
  std::string workspace() const { return api_->workspace(host_); }
  std::string device() const { return api_->device(host_); }
  std::string resolved_spec() const { return api_->resolved_spec(host_); }

  /// The first of SIGINT, SIGTERM, SIGUSR1, SIGHUP received, or 0 (ABI 1.1).
  int pending_signal() const { return api_->pending_signal(host_); }
  /// Ends the run with `exit_code` at the next step boundary; the first
  /// request wins (ABI 1.1, defined in 1.3).
  void request_exit(int exit_code) const { api_->request_exit(host_, exit_code); }

  /// The host's extension named `id` ("tloop.<name>/<version>", ABI 1.3), or
  /// nullptr when this host lacks it (also a host older than 1.3): do without.
  const void* extension(const char* id) const {
    return TLOOP_HAS_MEMBER(api_, tloop_host_api, get_extension) && api_->get_extension
               ? api_->get_extension(host_, id)
               : nullptr;
  }
  /// Why the last host function that failed did, or "" (tloop.host_errors/1).
  std::string host_error() const {
    const auto* ext = static_cast<const tloop_host_errors_v1*>(extension(TLOOP_HOST_ERRORS_ID));
    return ext ? ext->last_error(host_) : "";
  }
  /// In finish: the error that ends the run, or "" when it ends without one
  /// (tloop.run_failure/1; "" on a host without it).
  std::string run_error() const {
    const auto* ext = static_cast<const tloop_run_failure_v1*>(extension(TLOOP_RUN_FAILURE_ID));
    const char* e = ext ? ext->error(host_) : nullptr;
    return e ? e : "";
  }
  /// In finish, after an error: the complete step the run's state holds when
  /// a checkpoint of it would resume exactly, else -1 (tloop.run_failure/1).
  int64_t resumable_step() const {
    const auto* ext = static_cast<const tloop_run_failure_v1*>(extension(TLOOP_RUN_FAILURE_ID));
    int64_t step = -1;
    return ext && ext->resumable_step(host_, &step) ? step : -1;
  }
  /// Throws `what` with the host's reason appended when `status` is a failure.
  void check(tloop_status status, const std::string& what) const {
    if (status == TLOOP_OK) return;
    const std::string why = host_error();
    throw Error(why.empty() ? what : what + ": " + why);
  }

  void debug(const std::string& m) const { api_->log(host_, TLOOP_LOG_DEBUG, m.c_str()); }
  void info(const std::string& m) const { api_->log(host_, TLOOP_LOG_INFO, m.c_str()); }
  void warn(const std::string& m) const { api_->log(host_, TLOOP_LOG_WARN, m.c_str()); }
  void error(const std::string& m) const { api_->log(host_, TLOOP_LOG_ERROR, m.c_str()); }

  /// All values of a step-info key; empty when the key is absent.
  std::vector<double> step_info(const std::string& key) const {
    const double* v = nullptr;
    size_t n = 0;
    if (api_->step_info_get(host_, key.c_str(), &v, &n) != TLOOP_OK) return {};
    return std::vector<double>(v, v + n);
  }
  /// Every step-info key with its values.
  std::map<std::string, std::vector<double>> step_info() const {
    std::map<std::string, std::vector<double>> out;
    api_->step_info_visit(
        host_,
        [](void* user, const char* key, const double* v, size_t n) {
          (*static_cast<std::map<std::string, std::vector<double>>*>(user))[key] = std::vector<double>(v, v + n);
        },
        &out);
    return out;
  }
  /// The epoch the current step belongs to (epochs completed before it
  /// began, 0-based), or std::nullopt when the task declares no epochs
  /// (tloop.epochs/1). From before_train on (there: the first step's epoch).
  std::optional<int64_t> epoch() const {
    const std::optional<double> e = last_step_info(TLOOP_INFO_EPOCH);
    return e ? std::optional<int64_t>(static_cast<int64_t>(*e)) : std::nullopt;
  }
  /// Epochs the current step completed (1 at the step that drew an epoch's
  /// last batch); 0 before after_step and without epochs.
  int64_t epochs_ended() const { return static_cast<int64_t>(last_step_info(TLOOP_INFO_EPOCH_END).value_or(0.0)); }
  /// The last value of a step-info key, read in place; std::nullopt when absent.
  std::optional<double> last_step_info(const char* key) const {
    const double* v = nullptr;
    size_t n = 0;
    if (api_->step_info_get(host_, key, &v, &n) != TLOOP_OK || n == 0) return std::nullopt;
    return v[n - 1];
  }
  void step_info_append(const std::string& key, double value) const {
    api_->step_info_append(host_, key.c_str(), value);
  }
  void record(const std::string& key, double value) const { api_->record(host_, key.c_str(), value); }

  void log(const Metrics& metrics) const {
    std::vector<tloop_metric> raw;
    raw.reserve(metrics.size());
    for (const auto& [k, v] : metrics) raw.push_back({sizeof(tloop_metric), k.c_str(), v});
    throw_if_failed(api_->log_metrics(host_, raw.data(), raw.size()));
  }
  void log_images(const std::vector<ImageView>& images) const {
    std::vector<tloop_image> raw;
    raw.reserve(images.size());
    for (const auto& im : images)
      raw.push_back({sizeof(tloop_image), im.key.c_str(), im.width, im.height, im.channels, im.row_stride, im.pixels});
    throw_if_failed(api_->log_images(host_, raw.data(), raw.size()));
  }

  size_t param_group_count() const { return api_->param_group_count(host_); }
  std::string param_group_name(size_t i) const { return api_->param_group_name(host_, i); }
  double param_group_lr(size_t i) const { return api_->param_group_lr(host_, i); }

 private:
  // A failing log dispatch already carries the failing hook's message on the host.
  static void throw_if_failed(tloop_status st) {
    if (st != TLOOP_OK) throw Error("a receiver of the log failed (the host names it)");
  }
  const tloop_context* ctx_;
  const tloop_host_api* api_;
  tloop_host* host_;
};

/// An interval given in steps or in epochs, as a hook's options give it
/// (`interval`, `interval_epochs`): `due` in after_step says whether the step
/// just done ends one. With `epochs` > 0 it counts epochs only: it is due at
/// the end of every `epochs`-th epoch, and needs a task that declares its
/// epoch length (check it with `require` in before_train).
struct Every {
  int64_t steps = 0;
  int64_t epochs = 0;

  bool due(const Context& ctx) const {
    if (epochs > 0) {
      const std::optional<int64_t> e = ctx.epoch();
      const int64_t ended = ctx.epochs_ended();
      return e && ended > 0 && (*e + ended) / epochs > *e / epochs;
    }
    return steps > 0 && ctx.step() % steps == 0;
  }
  /// Throws std::invalid_argument (bad input: exit code 2) when epochs are
  /// asked for but the task has none; `option` names the option.
  void require(const Context& ctx, const std::string& option) const {
    if (epochs > 0 && !ctx.epoch())
      throw std::invalid_argument(option + " = " + std::to_string(epochs) +
                  " counts epochs, but the task declares no epoch length (tloop.epochs/1); give the interval in steps");
  }
};

/// Option `option`'s `value` as a path inside the workspace: a relative path
/// without "..", a NUL or a name longer than 255 bytes. Throws
/// std::invalid_argument (bad input, exit code 2) naming the option, so that
/// no option makes a hook write outside the workspace.
inline std::string workspace_path(const Context& ctx, const std::string& option, const std::string& value) {
  const auto refuse = [&](const std::string& why) {
    throw std::invalid_argument(option + " = \"" + value + "\" " + why + " (a path relative to the workspace)");
  };
  if (value.empty()) refuse("is empty");
  if (value.find('\0') != std::string::npos) refuse("contains a NUL character");
  if (value.front() == '/') refuse("is absolute");
  size_t begin = 0;
  while (begin <= value.size()) {
    const size_t end = std::min(value.find('/', begin), value.size());
    const std::string part = value.substr(begin, end - begin);
    if (part == "..") refuse("leaves the workspace ('..')");
    if (part.size() > 255) refuse("has a name longer than 255 bytes");
    begin = end + 1;
  }
  return ctx.workspace() + "/" + value;
}

/// A state dictionary being written.
class StateWriter {
 public:
  StateWriter(const tloop_context* ctx, tloop_state* state) : api_(ctx->api), state_(state) {}
  /// Each put is checked: a state that refuses a value throws, naming the key.
  void put(const std::string& key, int64_t v) const { check(api_->state_put_int(state_, key.c_str(), v), key); }
  void put(const std::string& key, int v) const { put(key, static_cast<int64_t>(v)); }
  void put(const std::string& key, double v) const { check(api_->state_put_double(state_, key.c_str(), v), key); }
  void put(const std::string& key, const std::string& v) const {
    check(api_->state_put_string(state_, key.c_str(), v.c_str()), key);
  }
  static void check(tloop_status status, const std::string& key) {
    if (status != TLOOP_OK) throw Error("could not store '" + key + "' in the state (status " + std::to_string(status) + ")");
  }
  const tloop_host_api* api() const { return api_; }
  tloop_state* raw() const { return state_; }

 private:
  const tloop_host_api* api_;
  tloop_state* state_;
};

/// A state dictionary being read; getters return std::nullopt for a missing key.
class StateReader {
 public:
  StateReader(const tloop_context* ctx, const tloop_state* state) : api_(ctx->api), state_(state) {}
  std::optional<int64_t> get_int(const std::string& key) const {
    int64_t v;
    return api_->state_get_int(state_, key.c_str(), &v) == TLOOP_OK ? std::optional<int64_t>(v) : std::nullopt;
  }
  std::optional<double> get_double(const std::string& key) const {
    double v;
    return api_->state_get_double(state_, key.c_str(), &v) == TLOOP_OK ? std::optional<double>(v) : std::nullopt;
  }
  std::optional<std::string> get_string(const std::string& key) const {
    const char* v;
    return api_->state_get_string(state_, key.c_str(), &v) == TLOOP_OK ? std::optional<std::string>(v)
                                                                       : std::nullopt;
  }
  const tloop_host_api* api() const { return api_; }
  const tloop_state* raw() const { return state_; }

 private:
  const tloop_host_api* api_;
  const tloop_state* state_;
};

// ------------------------------------------------------------------ hooks

/// One pass of the evaluation loop (tloop.eval_events/1).
struct EvalPass {
  std::string split;    ///< "val"
  std::string variant;  ///< "" for the plain pass, else a hook's variant ("ema")
  std::string prefix;   ///< the metrics' key prefix: "val", "val_ema"
  bool sanity = false;  ///< the sanity pass before the first step: not logged; monitors ignore it
  bool predict = false; ///< under `tloop predict`
  int64_t batches = -1; ///< batches the pass runs; -1 when unknown
};

/// Base class of C++ hooks. Every event defaults to doing nothing.
class Hook {
 public:
  /// When the hook runs among the others, for every event (ABI 1.3): a hook
  /// declares its own with `static constexpr tloop_hook_phase phase = ...;`.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_UPDATE;
  /// The hook's extension named `id` (ABI 1.3), or nullptr; shadow it to provide one.
  static const void* get_extension(const char* /*id*/) { return nullptr; }
  /// Set to true (`static constexpr bool micro_step_events = true;`) to get
  /// after_forward / before_backward / after_backward every micro-step
  /// (tloop.micro_step_events/1); hooks without them cost the loop nothing.
  static constexpr bool micro_step_events = false;
  /// Set to true to get the evaluation events below (tloop.eval_events/1).
  static constexpr bool eval_events = false;

  virtual ~Hook() = default;
  /// Before any before_train: restore a previous run here (checkpointing).
  virtual void resume(Context&) {}
  /// Since ABI 1.2: once, however training ended (0, 128+N after signal N, a
  /// request_exit code, 1 after an error). Close files and sessions here.
  virtual void finish(Context&, int /*exit_code*/) {}
  virtual void before_train(Context&) {}
  virtual void before_step(Context&) {}
  virtual void before_optimizer_step(Context&) {}
  virtual void after_step(Context&) {}
  virtual void after_train(Context&) {}
  virtual void on_log(Context&, const Metrics&) {}
  virtual void on_log_images(Context&, const std::vector<ImageView>&) {}
  virtual void state_dict(Context&, StateWriter&) {}
  virtual void load_state_dict(Context&, const StateReader&) {}
  /// With micro_step_events: after the task's forward (its published
  /// tensors are readable: tloop::published), before and after the backward
  /// of a micro-step with a loss (gradients summed so far, this one included).
  /// `micro_step` counts the step's forwards from 0.
  virtual void after_forward(Context&, int64_t /*micro_step*/) {}
  virtual void before_backward(Context&, int64_t /*micro_step*/) {}
  virtual void after_backward(Context&, int64_t /*micro_step*/) {}
  /// With eval_events: more passes over every split this hook asks for
  /// (asked once, before the first evaluation); their metrics are logged
  /// as "<split>_<variant>/...".
  virtual std::vector<std::string> eval_variants(Context&) { return {}; }
  /// Before and after each evaluation pass (weights swapped in here are
  /// swapped back in after_eval); after_eval gets the pass's metrics with
  /// their full keys ("val/accuracy"). after_eval_batch counts from 1.
  virtual void before_eval(Context&, const EvalPass&) {}
  virtual void after_eval_batch(Context&, const EvalPass&, int64_t /*batch*/) {}
  virtual void after_eval(Context&, const EvalPass&, const Metrics&) {}
};

namespace detail {
inline EvalPass eval_pass(const tloop_eval_pass* p) {
  EvalPass out;
  out.split = p->split ? p->split : "";
  out.variant = p->variant ? p->variant : "";
  out.prefix = p->prefix ? p->prefix : "";
  out.sanity = p->sanity != 0;
  out.predict = p->predict != 0;
  out.batches = p->batches;
  return out;
}
/// Calls a C visitor once per name.
inline void visit_names(const std::vector<std::string>& names, tloop_name_visitor visit, void* user) {
  for (const auto& n : names) visit(user, n.c_str());
}
}  // namespace detail

// ------------------------------------------------------------------ export machinery

namespace detail {

/// Runs `fn`, turning any exception into an error status with its message.
template <class Fn>
tloop_status guarded(const tloop_context* ctx, Fn&& fn) noexcept {
  try {
    fn();
    return TLOOP_OK;
  } catch (const std::invalid_argument& e) {  // bad input: the run ends with exit code 2
    ctx->api->set_error(ctx->host, e.what());
    return TLOOP_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    ctx->api->set_error(ctx->host, e.what());
  } catch (...) {
    ctx->api->set_error(ctx->host, "unknown exception");
  }
  return TLOOP_ERROR;
}

template <class T>
tloop_status create(const tloop_context* c, const tloop_options* o, void** out) noexcept {
  return guarded(c, [&] {
    Context ctx(c);
    Options opts(c, o);
    *out = new T(ctx, opts);
  });
}
template <class T>
void destroy(void* self) noexcept {
  try {
    delete static_cast<T*>(self);
  } catch (...) {  // a destructor must not take the host down
  }
}

template <class T, void (Hook::*Event)(Context&)>
tloop_status hook_event(void* self, const tloop_context* c) noexcept {
  return guarded(c, [&] {
    Context ctx(c);
    (static_cast<T*>(self)->*Event)(ctx);
  });
}

// state_dict / load_state_dict of hooks and tasks alike.
template <class T>
tloop_status state_dict(void* self, const tloop_context* c, tloop_state* s) noexcept {
  return guarded(c, [&] {
    Context ctx(c);
    StateWriter w(c, s);
    static_cast<T*>(self)->state_dict(ctx, w);
  });
}
template <class T>
tloop_status load_state_dict(void* self, const tloop_context* c, const tloop_state* s) noexcept {
  return guarded(c, [&] {
    Context ctx(c);
    StateReader r(c, s);
    static_cast<T*>(self)->load_state_dict(ctx, r);
  });
}

/// An array of metrics as the host passes it (read with its elements' struct_size).
inline Metrics metrics_of(const tloop_metric* m, size_t n) {
  Metrics metrics;
  metrics.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const tloop_metric& metric = *TLOOP_ARRAY_AT(tloop_metric, m, i);
    metrics.emplace_back(metric.key, metric.value);
  }
  return metrics;
}

template <class T>
struct HookAdapter {
  static tloop_status on_log(void* self, const tloop_context* c, const tloop_metric* m, size_t n) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->on_log(ctx, metrics_of(m, n));
    });
  }
  static tloop_status on_log_images(void* self, const tloop_context* c, const tloop_image* im, size_t n) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      std::vector<ImageView> images;
      images.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        const tloop_image& image = *TLOOP_ARRAY_AT(tloop_image, im, i);
        images.push_back({image.key, image.width, image.height, image.channels, image.row_stride, image.pixels});
      }
      static_cast<T*>(self)->on_log_images(ctx, images);
    });
  }
  static tloop_status finish(void* self, const tloop_context* c, int32_t exit_code) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->finish(ctx, static_cast<int>(exit_code));
    });
  }
  template <void (Hook::*Event)(Context&, int64_t)>
  static tloop_status micro_event(void* self, const tloop_context* c, int64_t micro_step) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      (static_cast<T*>(self)->*Event)(ctx, micro_step);
    });
  }
  static tloop_status visit_variants(void* self, const tloop_context* c, tloop_name_visitor visit, void* user) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      visit_names(static_cast<T*>(self)->eval_variants(ctx), visit, user);
    });
  }
  static tloop_status before_eval(void* self, const tloop_context* c, const tloop_eval_pass* p) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->before_eval(ctx, eval_pass(p));
    });
  }
  static tloop_status after_eval_batch(void* self, const tloop_context* c, const tloop_eval_pass* p,
                                       int64_t batch) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->after_eval_batch(ctx, eval_pass(p), batch);
    });
  }
  static tloop_status after_eval(void* self, const tloop_context* c, const tloop_eval_pass* p,
                                 const tloop_metric* m, size_t n) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->after_eval(ctx, eval_pass(p), metrics_of(m, n));
    });
  }
  static const void* get_extension(const char* id) noexcept {
    if constexpr (T::eval_events) {
      static const tloop_eval_events_v1 events = {sizeof(tloop_eval_events_v1), &visit_variants, &before_eval,
                                                  &after_eval_batch, &after_eval};
      if (id != nullptr && std::strcmp(id, TLOOP_EVAL_EVENTS_ID) == 0) return &events;
    }
    if constexpr (T::micro_step_events) {
      static const tloop_micro_step_events_v1 events = {
          sizeof(tloop_micro_step_events_v1), &micro_event<&Hook::after_forward>,
          &micro_event<&Hook::before_backward>, &micro_event<&Hook::after_backward>};
      if (id != nullptr && std::strcmp(id, TLOOP_MICRO_STEP_EVENTS_ID) == 0) return &events;
    }
    return T::get_extension(id);
  }
  static const tloop_hook_vtable* vtable() {
    static const tloop_hook_vtable vt = {
        sizeof(tloop_hook_vtable),
        &create<T>,
        &destroy<T>,
        &hook_event<T, &Hook::before_train>,
        &hook_event<T, &Hook::before_step>,
        &hook_event<T, &Hook::before_optimizer_step>,
        &hook_event<T, &Hook::after_step>,
        &hook_event<T, &Hook::after_train>,
        &on_log,
        &on_log_images,
        &detail::state_dict<T>,
        &detail::load_state_dict<T>,
        &hook_event<T, &Hook::resume>,
        &finish,
        T::phase,
        &get_extension,
    };
    return &vt;
  }
};

/// Owns the C strings and arrays behind one descriptor for the library's lifetime.
struct DescriptorStorage {
  PluginInfo info;
  std::vector<tloop_option_desc> options;
  tloop_plugin_descriptor desc{};

  DescriptorStorage(PluginInfo i, tloop_plugin_kind kind, const tloop_hook_vtable* hook,
                    const tloop_task_vtable* task)
      : info(std::move(i)) {
    for (const auto& o : info.options) {
      for (const char* reserved : {"plugin", "key", "on_error"})  // the host refuses them too
        if (o.name == reserved)
          throw Error("option '" + o.name + "' is reserved by the run spec (plugin, key, on_error): rename it");
      tloop_option_desc d{};
      d.struct_size = sizeof(d);
      d.name = o.name.c_str();
      d.type = o.type;
      d.default_value = o.default_literal ? o.default_literal->c_str() : nullptr;
      d.doc = o.doc.c_str();
      d.has_min = o.min.has_value();
      d.min = o.min.value_or(0.0);
      d.has_max = o.max.has_value();
      d.max = o.max.value_or(0.0);
      options.push_back(d);
    }
    // choices are joined with '|' into strings that live in `joined_`.
    joined_.reserve(info.options.size());
    for (size_t i = 0; i < info.options.size(); ++i) {
      std::string j;
      for (const auto& c : info.options[i].choices) j += (j.empty() ? "" : "|") + c;
      joined_.push_back(j);
    }
    for (size_t i = 0; i < options.size(); ++i)
      options[i].choices = info.options[i].choices.empty() ? nullptr : joined_[i].c_str();
    desc.struct_size = sizeof(desc);
    desc.name = info.name.c_str();
    desc.kind = kind;
    desc.version = info.version.c_str();
    desc.description = info.description.c_str();
    desc.options = options.data();
    desc.option_count = static_cast<uint32_t>(options.size());
    desc.hook = hook;
    desc.task = task;
  }
  DescriptorStorage(const DescriptorStorage&) = delete;
  DescriptorStorage& operator=(const DescriptorStorage&) = delete;

 private:
  std::vector<std::string> joined_;
};

/// The library record returned by the entry point.
struct LibraryStorage {
  std::vector<const tloop_plugin_descriptor*> list;
  tloop_library lib{};
  LibraryStorage(const char* torch_version, std::vector<const tloop_plugin_descriptor*> plugins)
      : list(std::move(plugins)) {
    lib.struct_size = sizeof(lib);
    lib.abi_major = TLOOP_ABI_VERSION_MAJOR;
    lib.abi_minor = TLOOP_ABI_VERSION_MINOR;
    lib.torch_version = torch_version;
    lib.plugins = list.data();
    lib.plugin_count = static_cast<uint32_t>(list.size());
  }
};

}  // namespace detail

/// The descriptor of hook class T (built once, lives as long as the library).
template <class T>
const tloop_plugin_descriptor* hook() {
  static const detail::DescriptorStorage storage(T::info(), TLOOP_KIND_HOOK, detail::HookAdapter<T>::vtable(),
                                                 nullptr);
  return &storage.desc;
}

}  // namespace tloop

namespace tloop::detail {
/// The entry point failed (a plugin's info() threw): no exception may leave
/// it, so it says why on stderr and returns NULL, which the host refuses
/// naming the file.
inline const tloop_library* entry_failed(const char* why) noexcept {
  std::fprintf(stderr, "tloop plugin: the entry point failed: %s\n", why);
  return nullptr;
}
}  // namespace tloop::detail

/// Exports the library entry point listing the given descriptors, e.g.
/// TLOOP_PLUGIN_LIBRARY(tloop::hook<A>(), tloop::task<B>()). Use once per library.
#define TLOOP_PLUGIN_LIBRARY(...)                                                                      \
  extern "C" TLOOP_EXPORT const tloop_library* tloop_plugin_entry(void) {                               \
    try {                                                                                               \
      static const ::tloop::detail::LibraryStorage storage(TLOOP_LIBRARY_TORCH_VERSION, {__VA_ARGS__}); \
      return &storage.lib;                                                                              \
    } catch (const std::exception& e) {                                                                 \
      return ::tloop::detail::entry_failed(e.what());                                                   \
    } catch (...) {                                                                                     \
      return ::tloop::detail::entry_failed("unknown exception");                                        \
    }                                                                                                   \
  }
