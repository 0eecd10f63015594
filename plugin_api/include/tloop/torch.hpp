// tloop C++ SDK for plugins that use tensors: tensor handles <-> at::Tensor,
// and the tloop::Task base class. Including this header makes the library
// report the LibTorch version it was built against; the host refuses to load
// it under any other.
#pragma once

#include <torch/headeronly/version.h>

#undef TLOOP_LIBRARY_TORCH_VERSION
#define TLOOP_LIBRARY_TORCH_VERSION TORCH_VERSION

#include <ATen/core/Tensor.h>
#include <tloop/sdk.hpp>

#include <optional>
#include <string>

namespace tloop {

namespace detail {
using TensorPtr = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
/// `t` as a BORROWED handle, for a host call that takes its own reference.
inline tloop_tensor borrow(const at::Tensor& t) { return reinterpret_cast<tloop_tensor>(t.unsafeGetTensorImpl()); }
}  // namespace detail

/// A NEW REFERENCE handle to `t` (nullptr for an undefined tensor).
inline tloop_tensor new_handle(const at::Tensor& t) {
  if (!t.defined()) return nullptr;
  detail::TensorPtr owned = t.getIntrusivePtr();  // one more reference, handed over
  return reinterpret_cast<tloop_tensor>(owned.release());
}

/// The tensor behind a BORROWED handle; the handle stays owned by the caller.
inline at::Tensor from_borrowed(tloop_tensor h) {
  if (h == nullptr) return at::Tensor();
  return at::Tensor(detail::TensorPtr::reclaim_copy(reinterpret_cast<c10::TensorImpl*>(h)));
}

/// The tensor behind a NEW REFERENCE handle, taking over its reference.
inline at::Tensor from_owned(tloop_tensor h) {
  if (h == nullptr) return at::Tensor();
  return at::Tensor(detail::TensorPtr::reclaim(reinterpret_cast<c10::TensorImpl*>(h)));
}

inline void register_parameter(Context& ctx, const std::string& name, const at::Tensor& t) {
  ctx.check(ctx.api()->register_parameter(ctx.host(), name.c_str(), detail::borrow(t)),
            "could not register parameter '" + name + "'");
}
inline void register_buffer(Context& ctx, const std::string& name, const at::Tensor& t) {
  ctx.check(ctx.api()->register_buffer(ctx.host(), name.c_str(), detail::borrow(t)),
            "could not register buffer '" + name + "'");
}

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

namespace detail {
inline NamedTensors visit_named(Context& ctx, void (*visit)(tloop_host*, tloop_tensor_visitor, void*)) {
  NamedTensors out;
  visit(
      ctx.host(),
      [](void* user, const char* name, tloop_tensor t) {
        static_cast<NamedTensors*>(user)->emplace_back(name, from_borrowed(t));
      },
      &out);
  return out;
}
}  // namespace detail

/// The model's parameters, in registration order: the live tensors (their
/// .grad() is the gradient), not copies.
inline NamedTensors parameters(Context& ctx) { return detail::visit_named(ctx, ctx.api()->visit_parameters); }
/// The model's buffers, in registration order.
inline NamedTensors buffers(Context& ctx) { return detail::visit_named(ctx, ctx.api()->visit_buffers); }

/// Registers every parameter and buffer of a torch::nn::Module (or anything
/// with named_parameters() / named_buffers()) with the host.
template <class Module>
void register_module(Context& ctx, const Module& module, const std::string& prefix = "") {
  for (const auto& p : module.named_parameters()) register_parameter(ctx, prefix + p.key(), p.value());
  for (const auto& b : module.named_buffers()) register_buffer(ctx, prefix + b.key(), b.value());
}

// ------------------------------------------------------------------ named step outputs
// tloop.step_outputs/1 (ABI 1.3); see plugin.h for what the host does with them.

namespace detail {
inline const tloop_step_outputs_v1& step_outputs(const Context& ctx) {
  const auto* ext = static_cast<const tloop_step_outputs_v1*>(ctx.extension(TLOOP_STEP_OUTPUTS_ID));
  if (ext == nullptr) throw Error("this tloop has no " TLOOP_STEP_OUTPUTS_ID " (its plugin ABI is older than 1.3)");
  return *ext;
}
}  // namespace detail

/// From forward: a named scalar loss term. The micro-step's loss is the sum
/// of its terms (forward then returns std::nullopt); each is logged as
/// "loss/<name>".
inline void add_loss(Context& ctx, const std::string& name, const at::Tensor& loss) {
  if (detail::step_outputs(ctx).add_loss(ctx.host(), name.c_str(), detail::borrow(loss)) != TLOOP_OK)
    throw Error("add_loss('" + name + "') was refused: a scalar, once per micro-step, from forward");
}
/// From forward: a scalar record that stays a tensor until the step ends
/// (then all of the step's are read in one copy): "records/<key>".
inline void record(Context& ctx, const std::string& key, const at::Tensor& value) {
  if (detail::step_outputs(ctx).record_tensor(ctx.host(), key.c_str(), detail::borrow(value)) != TLOOP_OK)
    throw Error("record('" + key + "') was refused: a scalar tensor, from forward");
}
/// From forward: a tensor of this micro-step for hooks' after_forward.
inline void publish(Context& ctx, const std::string& name, const at::Tensor& t) {
  if (detail::step_outputs(ctx).publish(ctx.host(), name.c_str(), detail::borrow(t)) != TLOOP_OK)
    throw Error("publish('" + name + "') was refused: once per micro-step, from forward");
}
/// In a hook's after_forward: the tensor the task published as `name` (no copy).
inline std::optional<at::Tensor> published(Context& ctx, const std::string& name) {
  tloop_tensor h = nullptr;
  if (detail::step_outputs(ctx).published(ctx.host(), name.c_str(), &h) != TLOOP_OK) return std::nullopt;
  return from_borrowed(h);
}

inline void put_tensor(const StateWriter& w, const std::string& key, const at::Tensor& t) {
  StateWriter::check(w.api()->state_put_tensor(w.raw(), key.c_str(), detail::borrow(t)), key);
}
inline std::optional<at::Tensor> get_tensor(const StateReader& r, const std::string& key) {
  tloop_tensor h = nullptr;
  if (r.api()->state_get_tensor(r.raw(), key.c_str(), &h) != TLOOP_OK) return std::nullopt;
  return from_borrowed(h);
}

/// The whole run's state (ABI 1.1), owned: model, optimizer, step, grad
/// scaler, RNG, task and hook states, as a checkpointing hook saves and
/// restores it. Freed with the object.
class RunState {
 public:
  explicit RunState(Context& ctx) : ctx_(ctx), state_(ctx.api()->state_new(ctx.host())) {
    if (state_ == nullptr) throw Error("could not make a state dictionary");
  }
  ~RunState() { ctx_.api()->state_free(state_); }
  RunState(const RunState&) = delete;
  RunState& operator=(const RunState&) = delete;

  /// Fills the state with the run's, live tensors included (copy them before
  /// the training goes on if they are used later).
  void collect() { ctx_.check(ctx_.api()->run_state_dict(ctx_.host(), state_), "cannot collect the run state"); }
  /// Restores the run from this state (from a hook's resume).
  void restore(const std::string& what) {
    ctx_.check(ctx_.api()->run_load_state_dict(ctx_.host(), state_), "cannot restore " + what);
  }
  /// Checked puts, as a StateWriter's.
  void put(const std::string& key, const at::Tensor& t) { put_tensor(writer(), key, t); }
  template <class V>
  void put(const std::string& key, const V& v) {
    writer().put(key, v);
  }
  /// Calls fn(key, value) for every entry in key order; tensors are borrowed.
  template <class Fn>
  void visit(Fn&& fn) const {
    ctx_.api()->state_visit(
        state_,
        [](void* user, const char* key, const tloop_state_value* v) { (*static_cast<Fn*>(user))(key, *v); },
        &fn);
  }

 private:
  StateWriter writer() const { return StateWriter(ctx_.raw(), state_); }

  Context& ctx_;
  tloop_state* state_;
};

/// Base class of C++ tasks: the model, the data and the loss.
class Task {
 public:
  /// The task's extension named `id` (ABI 1.3), or nullptr; shadow it to provide one.
  static const void* get_extension(const char* /*id*/) { return nullptr; }

  virtual ~Task() = default;
  /// Builds the model on ctx.device() and registers it (register_module).
  virtual void setup(Context& ctx) = 0;
  /// Makes the next micro-batch current; the host times this as data time.
  virtual void next_batch(Context& ctx) = 0;
  /// The loss of the current micro-batch, or std::nullopt to skip backward.
  /// Runs under the host's autocast; records go through ctx.record().
  virtual std::optional<at::Tensor> forward(Context& ctx) = 0;
  virtual void state_dict(Context&, StateWriter&) {}
  virtual void load_state_dict(Context&, const StateReader&) {}
  /// The number of micro-batches (next_batch calls) in one pass over the
  /// training data, or std::nullopt for none (a stream): with it the host
  /// counts epochs (tloop.epochs/1). Called once, after setup.
  virtual std::optional<int64_t> batches_per_epoch(Context&) { return std::nullopt; }

  // ---- evaluation (tloop.eval/1): the host runs the loop, see plugin.h.
  /// The splits this task evaluates ("val", "test"); none: no evaluation.
  virtual std::vector<std::string> eval_splits(Context&) { return {}; }
  /// The metrics of `split` when the spec's [eval] metrics is empty
  /// ("accuracy", "top_k_accuracy", "mse", "mae", "mean:<output>").
  virtual std::vector<std::string> default_metrics(Context&, const std::string& /*split*/) { return {}; }
  /// The model's train (true) or eval (false) mode: dropout, batch norm.
  virtual void set_training(Context&, bool /*training*/) {}
  /// A new pass over `split` from its first batch; its batch count, or
  /// std::nullopt when unknown.
  virtual std::optional<int64_t> eval_begin(Context&, const std::string& split) {
    throw Error("this task has no evaluation split '" + split + "'");
  }
  /// Makes the split's next batch current; false at the split's end.
  virtual bool eval_next(Context&) { return false; }
  /// Outputs of the current batch: tloop::publish "logits", "targets",
  /// "predictions" (one row per sample); tloop::record(ctx, key, scalar)
  /// for task-defined metrics. Runs without gradients, under the autocast.
  virtual void eval_forward(Context&, bool /*predict*/) {}
  /// The pass is over (log a confusion matrix here).
  virtual void eval_end(Context&, const std::string& /*split*/) {}
};

namespace detail {
template <class T>
struct TaskAdapter {
  static tloop_status setup(void* self, const tloop_context* c) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->setup(ctx);
    });
  }
  static tloop_status next_batch(void* self, const tloop_context* c) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->next_batch(ctx);
    });
  }
  static tloop_status forward(void* self, const tloop_context* c, tloop_tensor* out) noexcept {
    *out = nullptr;
    return guarded(c, [&] {
      Context ctx(c);
      std::optional<at::Tensor> loss = static_cast<T*>(self)->forward(ctx);
      if (loss) {
        if (!loss->defined()) throw Error("forward returned an undefined tensor");
        *out = new_handle(*loss);
      }
    });
  }
  static tloop_status batches_per_epoch(void* self, const tloop_context* c, int64_t* out) noexcept {
    std::optional<int64_t> n;
    const tloop_status st = guarded(c, [&] {
      Context ctx(c);
      n = static_cast<T*>(self)->batches_per_epoch(ctx);
    });
    if (st != TLOOP_OK) return st;
    if (!n) return TLOOP_NOT_FOUND;
    *out = *n;
    return TLOOP_OK;
  }
  static tloop_status visit_splits(void* self, const tloop_context* c, tloop_name_visitor visit, void* user) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      visit_names(static_cast<T*>(self)->eval_splits(ctx), visit, user);
    });
  }
  static tloop_status visit_default_metrics(void* self, const tloop_context* c, const char* split,
                                            tloop_name_visitor visit, void* user) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      visit_names(static_cast<T*>(self)->default_metrics(ctx, split), visit, user);
    });
  }
  static tloop_status set_training(void* self, const tloop_context* c, int32_t training) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->set_training(ctx, training != 0);
    });
  }
  static tloop_status eval_begin(void* self, const tloop_context* c, const char* split, int64_t* out) noexcept {
    *out = -1;
    return guarded(c, [&] {
      Context ctx(c);
      *out = static_cast<T*>(self)->eval_begin(ctx, split).value_or(-1);
    });
  }
  static tloop_status eval_next(void* self, const tloop_context* c) noexcept {
    bool more = false;
    const tloop_status st = guarded(c, [&] {
      Context ctx(c);
      more = static_cast<T*>(self)->eval_next(ctx);
    });
    return st != TLOOP_OK ? st : more ? TLOOP_OK : TLOOP_NOT_FOUND;
  }
  static tloop_status eval_forward(void* self, const tloop_context* c, int32_t predict) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->eval_forward(ctx, predict != 0);
    });
  }
  static tloop_status eval_end(void* self, const tloop_context* c, const char* split) noexcept {
    return guarded(c, [&] {
      Context ctx(c);
      static_cast<T*>(self)->eval_end(ctx, split);
    });
  }
  static const void* get_extension(const char* id) noexcept {
    static const tloop_epochs_v1 epochs = {sizeof(tloop_epochs_v1), &batches_per_epoch};
    static const tloop_eval_v1 eval = {sizeof(tloop_eval_v1), &visit_splits, &visit_default_metrics,
                                       &set_training,         &eval_begin,   &eval_next,
                                       &eval_forward,         &eval_end};
    if (id != nullptr && std::strcmp(id, TLOOP_EPOCHS_ID) == 0) return &epochs;
    if (id != nullptr && std::strcmp(id, TLOOP_EVAL_ID) == 0) return &eval;
    return T::get_extension(id);
  }
  static const tloop_task_vtable* vtable() {
    static const tloop_task_vtable vt = {
        sizeof(tloop_task_vtable), &create<T>,         &destroy<T>, &setup, &next_batch, &forward,
        &detail::state_dict<T>,    &detail::load_state_dict<T>, &get_extension,
    };
    return &vt;
  }
};
}  // namespace detail

/// The descriptor of task class T.
template <class T>
const tloop_plugin_descriptor* task() {
  static const detail::DescriptorStorage storage(T::info(), TLOOP_KIND_TASK, nullptr,
                                                 detail::TaskAdapter<T>::vtable());
  return &storage.desc;
}

}  // namespace tloop
