// Optimizers from LibTorch (torch::optim), built from the [optimizer] section.
#pragma once

#include "host.h"
#include "spec.h"

#include <memory>

namespace torch::optim {
class Optimizer;
}

namespace tloop {

class Optimizer : public ParamGroups {
 public:
  Optimizer(const OptimizerSpec& spec, const std::vector<at::Tensor>& params);
  ~Optimizer() override;

  void step();
  void zero_grad();
  /// Sets every group's learning rate to its base rate times `factor`.
  void set_lr_factor(double factor);

  size_t count() const override;
  const std::string& name(size_t group) const override;
  double lr(size_t group) const override;

  /// Per-parameter state as plain entries ("optimizer/<param>/exp_avg", ".../step",
  /// ...): tensors that a checkpoint copies and writes like any other.
  void state_dict(const std::vector<std::pair<std::string, at::Tensor>>& params, StateDict& out) const;
  /// Restores what state_dict wrote; parameters without saved state start fresh.
  void load_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& params, const StateDict& in);

 private:
  std::string type_;
  std::string step_range_, zero_grad_range_;  // profiler ranges
  std::unique_ptr<torch::optim::Optimizer> impl_;
  std::vector<double> base_lrs_;
  std::vector<std::string> names_;
};

/// Learning-rate factor for the step after `completed_steps`: linear warm-up
/// then constant, cosine or linear decay to `min_lr_ratio`. A pure function
/// of the step, so resuming a run needs nothing but the step.
double lr_factor(const SchedulerSpec& spec, int64_t completed_steps, int64_t max_steps);

}  // namespace tloop
