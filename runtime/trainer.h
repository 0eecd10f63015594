// BaseTrainer: the training loop (trainloop semantics) and event dispatch.
#pragma once

#include "evaluator.h"
#include "grad_scaler.h"
#include "log.h"
#include "plugin_instance.h"
#include "optimizer.h"
#include "spec.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

namespace tloop {

/// Training cannot go on (e.g. gradients stay non-finite); the CLI exits 1.
class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TrainerConfig {
  int64_t max_steps = 1;
  int64_t gradient_accumulation_steps = 1;
  std::optional<double> grad_clip;
  std::optional<c10::ScalarType> autocast_dtype;  // bf16 / fp16; none = off
  std::optional<int64_t> max_non_finite_grad_retries;
  double signal_grace = 10.0;  // seconds a step may go on after a signal
  SchedulerSpec scheduler{"constant", 0, 0.0};
  c10::Device device = c10::Device(c10::kCPU);
  EvalSpec eval;

  static TrainerConfig from(const RunSpec& spec, c10::Device device);
};

class Trainer {
 public:
  /// `evaluator`: evaluates when config.eval says (nullptr: never).
  Trainer(TrainerConfig config, Host& host, TaskInstance& task, std::vector<std::unique_ptr<HookInstance>>& hooks,
          Optimizer& optimizer, Evaluator* evaluator = nullptr);

  /// Runs from host.step() to max_steps: resume, before_train, the steps,
  /// after_train; then finish with the run's exit code, also when a signal,
  /// an exit request or an error ends it early (rethrown after finish).
  void train();

  /// Last loss and the last value of every record, for the final summary.
  std::optional<double> last_loss() const { return last_loss_; }
  const std::map<std::string, double>& last_records() const { return last_records_; }
  /// The metrics of the last evaluation ("val/accuracy", ...), for the summary.
  const Metrics& last_eval() const { return last_eval_; }
  GradScaler* scaler() { return scaler_.get(); }
  /// Micro-batches drawn so far (next_batch calls): the run's data position,
  /// from which epochs are counted (tloop.epochs/1). Saved in the run state.
  int64_t batches() const { return batches_; }
  void set_batches(int64_t batches) { batches_ = batches; }

 private:
  void run_steps();
  void run_step();
  /// Micro-steps until `gradient_accumulation_steps` real backwards happened.
  void accumulate();
  std::vector<at::Tensor> grads() const;
  at::Tensor sum_of_named_losses(bool forward_returned_a_loss);
  void read_step_scalars();
  /// Complete passes over the task's data so far (tasks with epochs).
  int64_t epochs_done() const { return batches_ / *batches_per_epoch_; }
  at::Tensor total_grad_norm(const std::vector<at::Tensor>& grads, double norm_type) const;
  void for_each_hook(void (HookInstance::*event)());
  /// Whether the step that just ended evaluates: [eval] interval or
  /// interval_epochs, and always the last step when evaluation is on.
  bool eval_due(int64_t epochs_before) const;
  void evaluate_step();
  /// The complete step a checkpoint taken now would resume exactly: the step
  /// boundary the failing event ran at, when the weights are finite.
  std::optional<int64_t> resumable_step() const;
  /// Acts on a signal that arrives in the middle of a step: the step goes on
  /// to its end (where a hook may save it) for signal_grace seconds; past
  /// them, or while it retries, it is abandoned (throws Interrupted).
  void check_signal_mid_step(bool retrying, int64_t micro_steps, int64_t retries);

  TrainerConfig config_;
  Host& host_;
  TaskInstance& task_;
  std::vector<std::unique_ptr<HookInstance>>& hooks_;
  Optimizer& optimizer_;
  Evaluator* evaluator_;
  Metrics last_eval_;
  std::vector<at::Tensor> params_;
  Host::NamedTensors loss_terms_;                // this step's named losses, read with the tensor records
  std::vector<HookInstance*> micro_step_hooks_;  // those offering tloop.micro_step_events/1
  std::optional<int64_t> batches_per_epoch_;    // the task's epoch length, when it declares one
  int64_t batches_ = 0;
  int boundary_signal_ = 0;                      // pending when the last after_step began
  // While a hook event runs at a step boundary, the complete step the state
  // holds: in before_step (the previous step), in after_step for hooks of the
  // log and save phases (every state-updating phase is done), in after_train.
  std::optional<int64_t> boundary_;
  std::unique_ptr<GradScaler> scaler_;
  bool warned_none_loss_ = false;
  std::optional<std::chrono::steady_clock::time_point> signal_seen_;  // first seen mid-step
  bool warned_finishing_step_ = false;
  log::RepeatedWarning non_finite_grads_, non_finite_loss_;
  std::optional<double> last_loss_;
  std::map<std::string, double> last_records_;
};

}  // namespace tloop
