// Dynamic loss scaling for fp16 autocast, the algorithm of torch.amp.GradScaler
// on ATen's fused _amp_* kernels (LibTorch's C++ API has no GradScaler).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace tloop {

class GradScaler {
 public:
  explicit GradScaler(c10::Device device, double init_scale = 65536.0, double growth_factor = 2.0,
                      double backoff_factor = 0.5, int64_t growth_interval = 2000);

  at::Tensor scale(const at::Tensor& loss) const;
  /// Divides gradients by the scale in place and notes whether any is inf/nan.
  void unscale(const std::vector<at::Tensor>& grads);
  /// True when the last unscale found inf/nan (the optimizer step is skipped).
  bool found_inf() const;
  /// Adjusts the scale after a step and clears the inf flag.
  void update();
  double current_scale() const;

  at::Tensor& scale_tensor() { return scale_; }
  at::Tensor& growth_tracker() { return growth_tracker_; }

 private:
  at::Tensor scale_, growth_tracker_, found_inf_;
  double growth_factor_, backoff_factor_;
  int64_t growth_interval_;
};

}  // namespace tloop
