#include "grad_scaler.h"

#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_amp_update_scale.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/zeros.h>

namespace tloop {

GradScaler::GradScaler(c10::Device device, double init_scale, double growth_factor, double backoff_factor,
                       int64_t growth_interval)
    : growth_factor_(growth_factor), backoff_factor_(backoff_factor), growth_interval_(growth_interval) {
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  scale_ = at::full({}, init_scale, f32);
  growth_tracker_ = at::zeros({}, f32.dtype(at::kInt));
  found_inf_ = at::zeros({}, f32);
}

// As torch.amp.GradScaler: the float32 scale promotes a float16 loss to
// float32 (cast to float16, the default scale 65536 would be infinite).
at::Tensor GradScaler::scale(const at::Tensor& loss) const { return at::mul(loss, scale_); }

void GradScaler::unscale(const std::vector<at::Tensor>& grads) {
  if (grads.empty()) return;
  at::Tensor inv_scale = at::reciprocal(scale_.to(at::kDouble)).to(at::kFloat);
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, inv_scale);
}

bool GradScaler::found_inf() const { return found_inf_.item<float>() != 0.0f; }

void GradScaler::update() {
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, growth_factor_, backoff_factor_, growth_interval_);
  found_inf_.zero_();
}

double GradScaler::current_scale() const { return scale_.item<double>(); }

}  // namespace tloop
