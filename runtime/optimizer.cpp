#include "optimizer.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>

namespace tloop {

Optimizer::Optimizer(const OptimizerSpec& spec, const std::vector<at::Tensor>& params) {
  if (spec.type == "sgd") {
    impl_ = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(spec.lr)
                                                            .momentum(spec.momentum)
                                                            .nesterov(spec.nesterov)
                                                            .weight_decay(spec.weight_decay));
  } else if (spec.type == "adam") {
    impl_ = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(spec.lr)
                                                             .betas({spec.beta1, spec.beta2})
                                                             .eps(spec.eps)
                                                             .weight_decay(spec.weight_decay));
  } else if (spec.type == "adamw") {
    impl_ = std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(spec.lr)
                                                              .betas({spec.beta1, spec.beta2})
                                                              .eps(spec.eps)
                                                              .weight_decay(spec.weight_decay));
  } else {
    throw std::invalid_argument("unknown optimizer type '" + spec.type + "'");
  }
  for (size_t i = 0; i < impl_->param_groups().size(); ++i) {
    base_lrs_.push_back(impl_->param_groups()[i].options().get_lr());
    names_.push_back("group_" + std::to_string(i));
  }
}

Optimizer::~Optimizer() = default;

void Optimizer::step() { impl_->step(); }
void Optimizer::zero_grad() { impl_->zero_grad(/*set_to_none=*/true); }

void Optimizer::set_lr_factor(double factor) {
  auto& groups = impl_->param_groups();
  for (size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(base_lrs_[i] * factor);
}

size_t Optimizer::count() const { return impl_->param_groups().size(); }
const std::string& Optimizer::name(size_t group) const { return names_.at(group); }
double Optimizer::lr(size_t group) const { return impl_->param_groups().at(group).options().get_lr(); }

double lr_factor(const SchedulerSpec& spec, int64_t t, int64_t max_steps) {
  if (t < spec.warmup_steps) return static_cast<double>(t + 1) / static_cast<double>(spec.warmup_steps + 1);
  if (spec.type == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, max_steps - spec.warmup_steps));
  const double progress = std::clamp(static_cast<double>(t - spec.warmup_steps) / span, 0.0, 1.0);
  const double m = spec.min_lr_ratio;
  if (spec.type == "cosine") return m + (1.0 - m) * 0.5 * (1.0 + std::cos(M_PI * progress));
  return m + (1.0 - m) * (1.0 - progress);  // linear
}

}  // namespace tloop
