// The Host: the run's facts, step info, registered tensors and the log
// dispatch behind every plugin's context.
#include "host.h"

#include "plugin_instance.h"
#include "text.h"

namespace tloop {

Host::Host(RunInfo info)
    : info_(std::move(info)),
      context_{sizeof(tloop_context), host_api_table(), reinterpret_cast<tloop_host*>(this)} {}

std::string Host::take_error() {
  std::string e = error_.empty() ? "(the plugin gave no message)" : error_;
  error_.clear();
  return e;
}

void Host::add_tensor(const std::string& name, const at::Tensor& t, bool is_buffer) {
  if (!registration_open_) throw std::logic_error("tensors can only be registered during setup");
  if (!t.defined()) throw std::invalid_argument("'" + name + "' is an undefined tensor");
  for (const auto* list : {&parameters_, &buffers_})
    for (const auto& [existing, _] : *list)
      if (existing == name) throw std::invalid_argument("'" + name + "' is registered twice");
  (is_buffer ? buffers_ : parameters_).emplace_back(name, t);
}

// Calls every hook, refusing re-entry (a log from inside on_log), and
// remembers a failing hook as the author of the error (note_nested_failure).
template <class Call>
void Host::dispatch(Call call) {
  dispatching_ = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{dispatching_};
  try {
    for (const auto& hook : *hooks_) call(*hook);
  } catch (const PluginError& e) {
    note_nested_failure(e.what());
    throw;
  }
}

std::vector<tloop_metric> abi_metrics(const Metrics& metrics) {
  std::vector<tloop_metric> raw;
  raw.reserve(metrics.size());
  for (const auto& [k, v] : metrics) raw.push_back({sizeof(tloop_metric), k.c_str(), v});
  return raw;
}

void Host::log_metrics(const Metrics& metrics) {
  if (dispatching_) throw std::logic_error("log called from inside on_log or on_log_images");
  for (const auto& sink : sinks_) sink(step_, metrics);
  if (!hooks_) return;
  const std::vector<tloop_metric> raw_metrics = abi_metrics(metrics);
  dispatch([&](HookInstance& hook) { hook.on_log(raw_metrics.data(), raw_metrics.size()); });
}

void Host::log_images(const tloop_image* images, size_t count) {
  if (dispatching_) throw std::logic_error("log_images called from inside on_log or on_log_images");
  if (count > 0 && (images == nullptr || images[0].struct_size < offsetof(tloop_image, pixels) + sizeof(void*)))
    throw std::invalid_argument("log_images: the images array is missing or its struct_size is too small");
  // Copied at this host's element size: the writer's may be larger (a newer
  // minor), and hooks built for 1.2 or older index with their own sizeof.
  std::vector<tloop_image> copies;
  copies.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    tloop_image im = *TLOOP_ARRAY_AT(tloop_image, images, i);
    im.struct_size = sizeof(tloop_image);
    if (!im.key || !im.pixels || im.width <= 0 || im.height <= 0 ||
        (im.channels != 1 && im.channels != 3 && im.channels != 4) ||
        im.row_stride < static_cast<int64_t>(im.width) * im.channels)
      throw std::invalid_argument(str("log_images: image ", i, " ('", im.key ? im.key : "", "') is malformed"));
    copies.push_back(im);
  }
  if (!hooks_) return;
  dispatch([&](HookInstance& hook) { hook.on_log_images(copies.data(), copies.size()); });
}

}  // namespace tloop
