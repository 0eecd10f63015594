// One training run from a spec: validate everything first, then create the
// workspace, the plugins and the trainer, and train.
#pragma once

#include "plugin_instance.h"
#include "optimizer.h"
#include "plugin_loader.h"
#include "spec.h"
#include "trainer.h"

#include <memory>
#include <string>
#include <vector>

namespace tloop {

struct RunOptions {
  std::string spec_file;
  std::vector<std::string> overrides;  // --set key.path=value
};

/// Loads the plugins `search` finds; a refused library or directory throws
/// PluginLoadError naming it.
Catalog load_catalog(const PluginSearch& search);

class Run {
 public:
  /// Parses and validates the spec and the plugins it names. Creates nothing on
  /// disk. Throws SpecError or PluginLoadError (bad input).
  static std::unique_ptr<Run> prepare(const RunOptions& options);

  const RunSpec& spec() const { return spec_; }
  const Catalog& catalog() const { return catalog_; }

  /// Creates the workspace, the task and the hooks, then trains to max_steps.
  void execute();
  /// Creates the task and the hooks from their options, as execute does
  /// first: what a plugin refuses in create is found without running
  /// (`tloop validate`). Plugins write nothing when created.
  void create_plugins();
  /// "finished 'digits': 500/500 steps in 12.3 s, loss 0.012, accuracy 0.98, val/accuracy 0.9721"
  std::string summary() const;

  /// `tloop eval` / `tloop predict`: restores `checkpoint` ("latest", "best",
  /// a name or a directory) through the spec's hooks that load checkpoints
  /// (an option `load`: checkpointing), then evaluates `splits` ([]: [eval]
  /// splits, or the task's first) without training. With `predict`, writes
  /// every published output under <workspace>/predictions/<split>/ as .npy
  /// and returns no metrics. Writes nothing else in the workspace.
  Metrics evaluate_checkpoint(const std::string& checkpoint, std::vector<std::string> splits, bool predict);

  /// The task's and every hook's state: "task/<key>", "hooks/<state key>/<key>".
  StateDict plugin_state() const;
  void load_plugin_state(const StateDict& state);
  /// Everything a resumed run needs (ABI run_state_dict): plugin_state() plus
  /// "model/...", "optimizer/<param>/...", "trainer/step", "grad_scaler/...",
  /// "rng/...", "meta/spec", "meta/plugins".
  StateDict run_state() const;
  void load_run_state(const StateDict& state);

  Host& host() { return *host_; }
  Trainer& trainer() { return *trainer_; }
  ~Run();

 private:
  Run() = default;
  /// The workspace, the task's model, the optimizer and the trainer: all a
  /// run needs before its first event.
  void build(bool training);
  /// [eval] against the task's splits; throws SpecError naming the key.
  void check_eval_spec() const;
  /// Creates and locks the workspace of a training run; its log file,
  /// spec.resolved.toml and metrics.jsonl.
  void open_workspace();
  /// Holds <workspace>/.tloop.lock for the run's life; throws std::invalid_argument
  /// (bad input) naming the holder when another run has it.
  void lock_workspace(const std::string& workspace);
  int lock_fd_ = -1;
  Catalog catalog_;
  RunSpec spec_;
  c10::Device device_ = c10::Device(c10::kCPU);
  std::unique_ptr<Host> host_;
  std::unique_ptr<TaskInstance> task_;
  std::vector<std::unique_ptr<HookInstance>> hooks_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Evaluator> evaluator_;
  std::unique_ptr<Trainer> trainer_;
  double seconds_ = 0.0;
};

}  // namespace tloop
