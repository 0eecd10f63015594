// The evaluation loop (ABI tloop.eval/1 and tloop.eval_events/1): passes over
// a task's splits with gradients off, the model in eval mode, the training's
// autocast and random number generators untouched, and metrics aggregated
// over the whole split.
#pragma once

#include "plugin_instance.h"
#include "spec.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tloop {

/// A pass's metrics as sums and sample counts: value = sum / count. Sums of
/// passes (or of ranks) merge by adding, which a mean of means cannot do:
/// the distributed run all-reduces `sums` and `counts` and then reads values().
struct MetricTotals {
  std::vector<std::string> names;  // "accuracy", "loss"
  std::vector<double> sums, counts;

  /// Adds `other`'s sums and counts (same names, in the same order).
  void merge(const MetricTotals& other);
  /// "<prefix>/<name>" = sum / count, in order.
  Metrics values(const std::string& prefix) const;
};

/// Per-sample outputs of a prediction pass, by output name (CPU tensors, in batch order).
using Predictions = std::vector<std::pair<std::string, std::vector<at::Tensor>>>;

class Evaluator {
 public:
  Evaluator(EvalSpec spec, Host& host, TaskInstance& task, std::vector<std::unique_ptr<HookInstance>>& hooks,
            c10::Device device, std::optional<c10::ScalarType> autocast);

  /// The splits the task evaluates (none: it has no evaluation).
  const std::vector<std::string>& task_splits() const { return task_splits_; }
  /// The splits evaluated during training: [eval] splits, or the task's first.
  std::vector<std::string> training_splits() const;

  enum class Mode { kTraining, kSanity, kStandalone, kPredict };
  /// Evaluates each split: a plain pass, then one per hook variant. Logs the
  /// metrics (not in the sanity pass) and returns them all, in order.
  Metrics evaluate(const std::vector<std::string>& splits, Mode mode, Predictions* predictions = nullptr);

  /// Seconds the last evaluate() took.
  double last_seconds() const { return last_seconds_; }

 private:
  /// One pass over `split` (`variant`: a hook's, or ""): its metrics, given
  /// to the hooks' after_eval.
  Metrics pass(const std::string& split, const std::string& variant, Mode mode, Predictions* predictions);
  std::vector<std::string> metrics_of(const std::string& split);

  EvalSpec spec_;
  Host& host_;
  TaskInstance& task_;
  std::vector<HookInstance*> hooks_;  // those offering tloop.eval_events/1, in phase order
  c10::Device device_;
  std::optional<c10::ScalarType> autocast_;
  std::vector<std::string> task_splits_;
  std::optional<std::vector<std::pair<std::string, HookInstance*>>> variants_;  // asked once
  std::map<std::string, std::vector<std::string>> metrics_;                   // by split
  double last_seconds_ = 0.0;
};

/// "val/loss 0.25, val/accuracy 0.9", as the log shows an evaluation's metrics.
std::string metrics_text(const Metrics& metrics);

/// Writes `tensor` as a NumPy .npy file (format 1.0), atomically.
void write_npy(const std::string& path, const at::Tensor& tensor);

}  // namespace tloop
