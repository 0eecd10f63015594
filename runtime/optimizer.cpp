#include "optimizer.h"

#include <tloop/keys.h>

#include <ATen/record_function.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>

namespace tloop {

Optimizer::Optimizer(const OptimizerSpec& spec, const std::vector<at::Tensor>& params) : type_(spec.type) {
  // The profiler ranges are torch.optim's names, which trace readers know.
  const std::string torch_name = spec.type == "sgd" ? "SGD" : spec.type == "adam" ? "Adam" : "AdamW";
  step_range_ = "Optimizer.step#" + torch_name + ".step";
  zero_grad_range_ = "Optimizer.zero_grad#" + torch_name + ".zero_grad";
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

namespace {

template <class State>
void put_adam(const State& s, const std::string& prefix, StateDict& out) {
  out[prefix + "step"] = s.step();
  out[prefix + "exp_avg"] = s.exp_avg();
  out[prefix + "exp_avg_sq"] = s.exp_avg_sq();
  if (s.max_exp_avg_sq().defined()) out[prefix + "max_exp_avg_sq"] = s.max_exp_avg_sq();
}

const at::Tensor* tensor_at(const StateDict& in, const std::string& key) {
  auto it = in.find(key);
  return it == in.end() ? nullptr : std::get_if<at::Tensor>(&it->second);
}

// A private copy on the parameter's device: the loaded tensor may share a file buffer.
at::Tensor owned(const at::Tensor& t, const at::Tensor& param) { return t.to(param.device(), true, true); }

template <class State>
std::unique_ptr<State> load_adam(const StateDict& in, const std::string& prefix, const at::Tensor& param) {
  auto s = std::make_unique<State>();
  auto step = in.find(prefix + "step");
  if (step == in.end() || !std::holds_alternative<int64_t>(step->second))
    throw std::runtime_error("the saved optimizer state has no '" + prefix + "step'");
  s->step(std::get<int64_t>(step->second));
  for (const char* k : {"exp_avg", "exp_avg_sq"})
    if (!tensor_at(in, prefix + k)) throw std::runtime_error("the saved optimizer state has no '" + prefix + k + "'");
  s->exp_avg(owned(*tensor_at(in, prefix + "exp_avg"), param));
  s->exp_avg_sq(owned(*tensor_at(in, prefix + "exp_avg_sq"), param));
  if (const at::Tensor* m = tensor_at(in, prefix + "max_exp_avg_sq")) s->max_exp_avg_sq(owned(*m, param));
  return s;
}

}  // namespace

void Optimizer::state_dict(const std::vector<std::pair<std::string, at::Tensor>>& params, StateDict& out) const {
  auto& states = impl_->state();
  for (const auto& [name, p] : params) {
    auto it = states.find(p.unsafeGetTensorImpl());
    if (it == states.end()) continue;  // no step taken yet
    const std::string prefix = TLOOP_STATE_OPTIMIZER + name + "/";
    if (type_ == "sgd") {
      const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
      if (s.momentum_buffer().defined()) out[prefix + "momentum_buffer"] = s.momentum_buffer();
    } else if (type_ == "adam") {
      put_adam(static_cast<const torch::optim::AdamParamState&>(*it->second), prefix, out);
    } else {
      put_adam(static_cast<const torch::optim::AdamWParamState&>(*it->second), prefix, out);
    }
  }
}

void Optimizer::load_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& params, const StateDict& in) {
  auto& states = impl_->state();
  states.clear();
  for (const auto& [name, p] : params) {
    const std::string prefix = TLOOP_STATE_OPTIMIZER + name + "/";
    if (type_ == "sgd") {
      if (const at::Tensor* m = tensor_at(in, prefix + "momentum_buffer")) {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(owned(*m, p));
        states[p.unsafeGetTensorImpl()] = std::move(s);
      }
    } else if (in.count(prefix + "step")) {
      if (type_ == "adam")
        states[p.unsafeGetTensorImpl()] = load_adam<torch::optim::AdamParamState>(in, prefix, p);
      else
        states[p.unsafeGetTensorImpl()] = load_adam<torch::optim::AdamWParamState>(in, prefix, p);
    }
  }
}

void Optimizer::step() {
  RECORD_USER_SCOPE(step_range_);
  impl_->step();
}
void Optimizer::zero_grad() {
  RECORD_USER_SCOPE(zero_grad_range_);
  impl_->zero_grad(/*set_to_none=*/true);
}

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
