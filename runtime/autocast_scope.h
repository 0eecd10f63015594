// Autocast for one forward (training or evaluation), restored on exit.
#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

namespace tloop {

/// The autocast dtype of trainer.mixed_precision ("bf16", "fp16"; absent, "": none).
inline std::optional<c10::ScalarType> autocast_dtype(const std::string& mixed_precision) {
  if (mixed_precision == "bf16") return c10::kBFloat16;
  if (mixed_precision == "fp16") return c10::kHalf;
  return std::nullopt;
}

/// Autocast on `device` with `dtype` while alive (none: leaves it off),
/// restored on exit, also on exceptions.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> dtype) : device_(device), active_(dtype) {
    if (!active_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool active_;
  bool prev_enabled_ = false;
  c10::ScalarType prev_dtype_ = c10::kFloat;
};

}  // namespace tloop
