// The host side of the C function table plugins call (tloop_host_api) and
// the extensions the host offers. Every function catches everything: no
// exception may cross into plugin code.
#include "host.h"

#include "log.h"
#include "text.h"

#include <c10/core/TensorImpl.h>

#include "signals.h"

#include <tloop/keys.h>

#include <cstring>

namespace tloop {
namespace {

using TensorPtr = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

at::Tensor borrowed(tloop_tensor h) {
  return at::Tensor(TensorPtr::reclaim_copy(reinterpret_cast<c10::TensorImpl*>(h)));
}
tloop_tensor raw(const at::Tensor& t) { return reinterpret_cast<tloop_tensor>(t.unsafeGetTensorImpl()); }

Host& H(tloop_host* h) { return *reinterpret_cast<Host*>(h); }

const toml::node* option_node(const tloop_options* o, const char* name) {
  return o && o->table && name ? o->table->get(name) : nullptr;
}

// Element `index` of list option `name`, or nullptr with *status saying why.
const toml::node* option_element(const tloop_options* o, const char* name, size_t index, tloop_status* status) {
  const toml::node* n = option_node(o, name);
  const toml::array* a = n ? n->as_array() : nullptr;
  *status = !n ? TLOOP_NOT_FOUND : !a ? TLOOP_TYPE_MISMATCH : index >= a->size() ? TLOOP_NOT_FOUND : TLOOP_OK;
  return *status == TLOOP_OK ? a->get(index) : nullptr;
}

std::string state_key(const tloop_state* s, const char* key) { return s->prefix + key; }

// The entries a state reads from: its own dict, or the one it was given to read.
const StateDict& entries(const tloop_state* s) { return s->read ? *s->read : *s->dict; }

// The value of type T under `key`, or nullptr with *status saying why.
template <class T>
const T* state_find(const tloop_state* s, const char* key, tloop_status* status) {
  const StateDict& d = entries(s);
  auto it = d.find(state_key(s, key));
  const T* v = it == d.end() ? nullptr : std::get_if<T>(&it->second);
  *status = it == d.end() ? TLOOP_NOT_FOUND : v ? TLOOP_OK : TLOOP_TYPE_MISMATCH;
  return v;
}

template <class T>
tloop_status state_get(const tloop_state* s, const char* key, T* out) {
  tloop_status st;
  if (const T* v = state_find<T>(s, key, &st)) *out = *v;
  return st;
}

template <class T>
tloop_status state_put(tloop_state* s, const char* key, T value) {
  if (s->dict == nullptr || key == nullptr) return TLOOP_INVALID_ARGUMENT;
  (*s->dict)[state_key(s, key)] = std::move(value);
  return TLOOP_OK;
}

}  // namespace

// The function table plugins call. Every function catches everything: no
// exception may cross into plugin code.
struct HostApi {
  static void set_error(tloop_host* h, const char* m) { H(h).error_ = m ? m : "(no message)"; }
  static void log(tloop_host*, tloop_log_level level, const char* m) {
    try {
      log::write(level == TLOOP_LOG_DEBUG  ? log::Level::debug
                 : level == TLOOP_LOG_INFO ? log::Level::info
                 : level == TLOOP_LOG_WARN ? log::Level::warn
                                           : log::Level::error,
                 m ? m : "");
    } catch (...) {
    }
  }
  static int64_t step(tloop_host* h) { return H(h).step_; }
  static int64_t max_steps(tloop_host* h) { return H(h).info_.max_steps; }
  static int32_t rank(tloop_host* h) { return H(h).info_.rank; }
  static int32_t world_size(tloop_host* h) { return H(h).info_.world_size; }
  static uint64_t seed(tloop_host* h) { return H(h).info_.seed; }
  static const char* workspace(tloop_host* h) { return H(h).info_.workspace.c_str(); }
  static const char* device(tloop_host* h) { return H(h).info_.device.c_str(); }
  static const char* resolved_spec(tloop_host* h) { return H(h).info_.resolved_spec.c_str(); }

  static int32_t option_is_set(const tloop_options* o, const char* name) { return option_node(o, name) != nullptr; }
  static tloop_status option_bool(const tloop_options* o, const char* name, int32_t* out) {
    const toml::node* n = option_node(o, name);
    if (!n) return TLOOP_NOT_FOUND;
    if (!n->is_boolean()) return TLOOP_TYPE_MISMATCH;
    *out = n->as_boolean()->get() ? 1 : 0;
    return TLOOP_OK;
  }
  static tloop_status option_int(const tloop_options* o, const char* name, int64_t* out) {
    const toml::node* n = option_node(o, name);
    if (!n) return TLOOP_NOT_FOUND;
    if (!n->is_integer()) return TLOOP_TYPE_MISMATCH;
    *out = n->as_integer()->get();
    return TLOOP_OK;
  }
  static tloop_status option_double(const tloop_options* o, const char* name, double* out) {
    const toml::node* n = option_node(o, name);
    if (!n) return TLOOP_NOT_FOUND;
    if (!n->is_number()) return TLOOP_TYPE_MISMATCH;
    *out = n->is_integer() ? static_cast<double>(n->as_integer()->get()) : n->as_floating_point()->get();
    return TLOOP_OK;
  }
  static tloop_status option_string(const tloop_options* o, const char* name, const char** out) {
    const toml::node* n = option_node(o, name);
    if (!n) return TLOOP_NOT_FOUND;
    if (!n->is_string()) return TLOOP_TYPE_MISMATCH;
    *out = n->as_string()->get().c_str();
    return TLOOP_OK;
  }
  static tloop_status option_string_list(const tloop_options* o, const char* name, size_t index, const char** out) {
    tloop_status st;
    const toml::node* e = option_element(o, name, index, &st);
    if (!e) return st;
    if (!e->is_string()) return TLOOP_TYPE_MISMATCH;
    *out = e->as_string()->get().c_str();
    return TLOOP_OK;
  }
  static tloop_status option_int_list(const tloop_options* o, const char* name, size_t index, int64_t* out) {
    tloop_status st;
    const toml::node* e = option_element(o, name, index, &st);
    if (!e) return st;
    if (!e->is_integer()) return TLOOP_TYPE_MISMATCH;
    *out = e->as_integer()->get();
    return TLOOP_OK;
  }

  static tloop_status step_info_get(tloop_host* h, const char* key, const double** values, size_t* count) {
    if (!key) return TLOOP_INVALID_ARGUMENT;
    auto& info = H(h).step_info_;
    auto it = info.find(key);
    if (it == info.end()) return TLOOP_NOT_FOUND;
    *values = it->second.data();
    *count = it->second.size();
    return TLOOP_OK;
  }
  static void step_info_append(tloop_host* h, const char* key, double v) {
    try {
      if (key) H(h).step_info_[key].push_back(v);
    } catch (...) {
    }
  }
  static void step_info_visit(tloop_host* h, tloop_step_info_visitor visit, void* user) {
    for (const auto& [k, v] : H(h).step_info_) visit(user, k.c_str(), v.data(), v.size());
  }
  static void record(tloop_host* h, const char* key, double v) {
    try {
      if (key) H(h).micro_records_.emplace_back(key, v);
    } catch (...) {
    }
  }

  static tloop_status log_metrics(tloop_host* h, const tloop_metric* m, size_t n) {
    try {
      if (n > 0 && (m == nullptr || m[0].struct_size < offsetof(tloop_metric, value) + sizeof(double)))
        throw std::invalid_argument("log_metrics: the metrics array is missing or its struct_size is too small");
      Metrics metrics;
      for (size_t i = 0; i < n; ++i) {
        const tloop_metric& metric = *TLOOP_ARRAY_AT(tloop_metric, m, i);
        metrics.emplace_back(metric.key ? metric.key : "", metric.value);
      }
      H(h).log_metrics(metrics);
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(e.what());
      return TLOOP_ERROR;
    }
  }
  static tloop_status log_images(tloop_host* h, const tloop_image* images, size_t n) {
    try {
      H(h).log_images(images, n);
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(e.what());
      return TLOOP_ERROR;
    }
  }

  static void visit_parameters(tloop_host* h, tloop_tensor_visitor visit, void* user) {
    for (const auto& [k, t] : H(h).parameters_) visit(user, k.c_str(), raw(t));
  }
  static void visit_buffers(tloop_host* h, tloop_tensor_visitor visit, void* user) {
    for (const auto& [k, t] : H(h).buffers_) visit(user, k.c_str(), raw(t));
  }
  static size_t param_group_count(tloop_host* h) {
    return H(h).param_groups_ ? H(h).param_groups_->count() : 0;
  }
  static const char* param_group_name(tloop_host* h, size_t g) {
    const ParamGroups* groups = H(h).param_groups_;
    return groups && g < groups->count() ? groups->name(g).c_str() : "";
  }
  static double param_group_lr(tloop_host* h, size_t g) {
    const ParamGroups* groups = H(h).param_groups_;
    return groups && g < groups->count() ? groups->lr(g) : 0.0;
  }
  static tloop_status register_tensor(tloop_host* h, const char* name, tloop_tensor t, bool buffer) {
    try {
      if (!name || !t) throw std::invalid_argument("register needs a name and a tensor");
      H(h).add_tensor(name, borrowed(t), buffer);
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(e.what());
      return TLOOP_INVALID_ARGUMENT;
    }
  }
  static tloop_status register_parameter(tloop_host* h, const char* name, tloop_tensor t) {
    return register_tensor(h, name, t, false);
  }
  static tloop_status register_buffer(tloop_host* h, const char* name, tloop_tensor t) {
    return register_tensor(h, name, t, true);
  }
  static tloop_tensor tensor_retain(tloop_tensor t) {
    if (!t) return nullptr;
    return reinterpret_cast<tloop_tensor>(TensorPtr::reclaim_copy(reinterpret_cast<c10::TensorImpl*>(t)).release());
  }
  static void tensor_release(tloop_tensor t) {
    if (t) TensorPtr::reclaim(reinterpret_cast<c10::TensorImpl*>(t));  // dropped here
  }

  static tloop_status state_put_tensor(tloop_state* s, const char* key, tloop_tensor t) {
    if (!t) return TLOOP_INVALID_ARGUMENT;
    try {
      return state_put<StateValue>(s, key, borrowed(t));
    } catch (...) {
      return TLOOP_ERROR;
    }
  }
  static tloop_status state_put_int(tloop_state* s, const char* key, int64_t v) {
    try {
      return state_put<StateValue>(s, key, v);
    } catch (...) {
      return TLOOP_ERROR;
    }
  }
  static tloop_status state_put_double(tloop_state* s, const char* key, double v) {
    try {
      return state_put<StateValue>(s, key, v);
    } catch (...) {
      return TLOOP_ERROR;
    }
  }
  static tloop_status state_put_string(tloop_state* s, const char* key, const char* v) {
    if (!v) return TLOOP_INVALID_ARGUMENT;
    try {
      return state_put<StateValue>(s, key, std::string(v));
    } catch (...) {
      return TLOOP_ERROR;
    }
  }
  static tloop_status state_get_tensor(const tloop_state* s, const char* key, tloop_tensor* out) {
    tloop_status st;
    if (const at::Tensor* t = state_find<at::Tensor>(s, key, &st)) *out = raw(*t);  // BORROWED
    return st;
  }
  static tloop_status state_get_int(const tloop_state* s, const char* key, int64_t* out) {
    return state_get(s, key, out);
  }
  static tloop_status state_get_double(const tloop_state* s, const char* key, double* out) {
    return state_get(s, key, out);
  }
  static tloop_status state_get_string(const tloop_state* s, const char* key, const char** out) {
    tloop_status st;
    if (const std::string* v = state_find<std::string>(s, key, &st)) *out = v->c_str();  // BORROWED
    return st;
  }

  static tloop_state* state_new(tloop_host*) {
    try {
      auto* s = new tloop_state{nullptr, nullptr, "", std::make_unique<StateDict>()};
      s->dict = s->owned.get();
      return s;
    } catch (...) {
      return nullptr;
    }
  }
  static void state_free(tloop_state* s) { delete s; }
  static void state_visit(const tloop_state* s, tloop_state_visitor visit, void* user) {
    for (const auto& [key, value] : entries(s)) {
      if (key.rfind(s->prefix, 0) != 0) continue;
      tloop_state_value v{sizeof(tloop_state_value), TLOOP_STATE_TENSOR, nullptr, 0, 0.0, nullptr};
      if (const auto* t = std::get_if<at::Tensor>(&value)) {
        v.tensor = raw(*t);
      } else if (const auto* i = std::get_if<int64_t>(&value)) {
        v.kind = TLOOP_STATE_INT;
        v.int_value = *i;
      } else if (const auto* d = std::get_if<double>(&value)) {
        v.kind = TLOOP_STATE_DOUBLE;
        v.double_value = *d;
      } else {
        v.kind = TLOOP_STATE_STRING;
        v.string_value = std::get<std::string>(value).c_str();
      }
      visit(user, key.c_str() + s->prefix.size(), &v);
    }
  }
  static tloop_status run_state_dict(tloop_host* h, tloop_state* out) {
    try {
      if (!H(h).save_run_state_ || out == nullptr || out->dict == nullptr)
        throw std::logic_error("run_state_dict is not available here");
      StateDict state;
      H(h).save_run_state_(state);
      for (auto& [k, v] : state) (*out->dict)[out->prefix + k] = std::move(v);
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(std::string("run_state_dict: ") + e.what());
      return TLOOP_ERROR;
    }
  }
  static tloop_status run_load_state_dict(tloop_host* h, const tloop_state* in) {
    try {
      if (!H(h).load_run_state_ || in == nullptr) throw std::logic_error("run_load_state_dict is not available here");
      const StateDict& d = entries(in);
      if (in->prefix.empty()) {
        H(h).load_run_state_(d);
      } else {
        StateDict view;
        for (const auto& [k, v] : d)
          if (k.rfind(in->prefix, 0) == 0) view.emplace(k.substr(in->prefix.size()), v);
        H(h).load_run_state_(view);
      }
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(std::string("run_load_state_dict: ") + e.what());
      return TLOOP_ERROR;
    }
  }
  static int32_t pending_signal(tloop_host*) { return tloop::pending_signal(); }
  static void request_exit(tloop_host* h, int32_t code) {
    if (!H(h).exit_request_) H(h).exit_request_ = code;  // the first request wins
  }
  // ---- tloop.step_outputs/1
  // `scalar`: one element only; `once`: a name at most once per micro-step.
  static tloop_status add_output(tloop_host* h, const char* name, tloop_tensor t, Host::NamedTensors& list,
                                 const char* what, bool scalar, bool once) {
    try {
      if (!name || !*name || !t) throw std::invalid_argument(str(what, " needs a name and a tensor"));
      if (!H(h).in_forward_) throw std::logic_error(str(what, " is for a task's forward"));
      at::Tensor tensor = borrowed(t);
      if (scalar && tensor.numel() != 1)
        throw std::invalid_argument(str(what, "('", name, "'): a tensor with ", tensor.numel(),
                                        " elements; it must be a scalar"));
      if (once)
        for (const auto& [existing, _] : list)
          if (existing == name) throw std::invalid_argument(str(what, "('", name, "') was given twice in one micro-step"));
      list.emplace_back(name, std::move(tensor));
      return TLOOP_OK;
    } catch (const std::exception& e) {
      H(h).host_failed(e.what());
      return TLOOP_INVALID_ARGUMENT;
    }
  }
  static tloop_status add_loss(tloop_host* h, const char* name, tloop_tensor t) {
    return add_output(h, name, t, H(h).named_losses_, "add_loss", /*scalar=*/true, /*once=*/true);
  }
  static tloop_status record_tensor(tloop_host* h, const char* key, tloop_tensor t) {
    return add_output(h, key, t, H(h).tensor_records_, "record_tensor", /*scalar=*/true, /*once=*/false);
  }
  static tloop_status publish(tloop_host* h, const char* name, tloop_tensor t) {
    return add_output(h, name, t, H(h).published_, "publish", /*scalar=*/false, /*once=*/true);
  }
  static tloop_status published(tloop_host* h, const char* name, tloop_tensor* out) {
    if (!name || !out) return TLOOP_INVALID_ARGUMENT;
    for (const auto& [n, t] : H(h).published_)
      if (n == name) {
        *out = raw(t);  // BORROWED
        return TLOOP_OK;
      }
    return TLOOP_NOT_FOUND;
  }
  static void visit_published(tloop_host* h, tloop_tensor_visitor visit, void* user) {
    for (const auto& [n, t] : H(h).published_) visit(user, n.c_str(), raw(t));
  }

  // ---- tloop.host_errors/1
  static const char* last_error(tloop_host* h) { return H(h).host_error_.c_str(); }

  // ---- tloop.run_failure/1
  static const char* run_error(tloop_host* h) { return H(h).run_error_ ? H(h).run_error_->c_str() : nullptr; }
  static int32_t resumable_step(tloop_host* h, int64_t* step) {
    if (!H(h).resumable_step_ || step == nullptr) return 0;
    *step = *H(h).resumable_step_;
    return 1;
  }

  static const void* get_extension(tloop_host*, const char* id) {
    static const tloop_step_outputs_v1 step_outputs = {sizeof(tloop_step_outputs_v1), &add_loss, &record_tensor,
                                                       &publish, &published, &visit_published};
    static const tloop_host_errors_v1 host_errors = {sizeof(tloop_host_errors_v1), &last_error};
    static const tloop_run_failure_v1 run_failure = {sizeof(tloop_run_failure_v1), &run_error, &resumable_step};
    if (id == nullptr) return nullptr;
    if (std::strcmp(id, TLOOP_STEP_OUTPUTS_ID) == 0) return &step_outputs;
    if (std::strcmp(id, TLOOP_HOST_ERRORS_ID) == 0) return &host_errors;
    if (std::strcmp(id, TLOOP_RUN_FAILURE_ID) == 0) return &run_failure;
    return nullptr;
  }

  static const tloop_host_api* table() {
    static const tloop_host_api api = {
        sizeof(tloop_host_api),
        &set_error,
        &log,
        &step,
        &max_steps,
        &rank,
        &world_size,
        &seed,
        &workspace,
        &device,
        &resolved_spec,
        &option_is_set,
        &option_bool,
        &option_int,
        &option_double,
        &option_string,
        &option_string_list,
        &step_info_get,
        &step_info_append,
        &step_info_visit,
        &record,
        &log_metrics,
        &log_images,
        &visit_parameters,
        &visit_buffers,
        &param_group_count,
        &param_group_name,
        &param_group_lr,
        &register_parameter,
        &register_buffer,
        &tensor_retain,
        &tensor_release,
        &state_put_tensor,
        &state_put_int,
        &state_put_double,
        &state_put_string,
        &state_get_tensor,
        &state_get_int,
        &state_get_double,
        &state_get_string,
        &state_new,
        &state_free,
        &state_visit,
        &run_state_dict,
        &run_load_state_dict,
        &pending_signal,
        &request_exit,
        &option_int_list,
        &get_extension,
    };
    return &api;
  }
};

const tloop_host_api* host_api_table() { return HostApi::table(); }

}  // namespace tloop
