// The core sections' schemas: [run], [trainer], [optimizer], [scheduler],
// [plugins], with their defaults, bounds and documentation.
#include "spec.h"

#include <limits>
#include <map>

namespace tloop {
namespace {

Schema make_run_schema() {
  return {
      optional("name", TLOOP_TYPE_STRING, "run name; defaults to the spec file's name"),
      optional("workspace", TLOOP_TYPE_STRING,
               "directory for checkpoints, logs and outputs; defaults to runs/<name> (relative to the working directory)"),
      option("seed", 0, "seeds every random number generator").at_least(0),
  };
}
Schema make_trainer_schema() {
  return {
      required("max_steps", TLOOP_TYPE_INT, "number of optimizer steps").at_least(1),
      option("gradient_accumulation_steps", 1, "micro-steps (real backwards) per optimizer step").at_least(1),
      optional("grad_clip", TLOOP_TYPE_DOUBLE, "clip the global gradient norm to this value (> 0); off when absent")
          .at_least(0),
      optional("mixed_precision", TLOOP_TYPE_STRING, "autocast dtype; off when absent").one_of({"bf16", "fp16"}),
      option("device", "auto", "auto | cpu | cuda | cuda:N"),
      optional("max_non_finite_grad_retries", TLOOP_TYPE_INT,
               "retries of a step whose gradients are not finite; unbounded when absent")
          .at_least(0),
      option("signal_grace", 10.0,
             "seconds a step in progress may take to reach its end after a signal (where it can be saved); "
             "past them, or while it retries non-finite gradients, it is abandoned unsaved")
          .at_least(0),
  };
}
constexpr double kFloatMax = std::numeric_limits<float>::max();

Schema make_optimizer_schema() {
  return {
      option("type", "adamw", "optimizer").one_of({"sgd", "adam", "adamw"}),
      // At most float's range: LibTorch converts them to the weights' dtype
      // in the update, and 1e300 would fail there, in step 1.
      option("lr", 1e-3, "base learning rate").range(0, kFloatMax),
      option("weight_decay", 0.0, "weight decay (decoupled for adamw)").range(0, kFloatMax),
      option("momentum", 0.0, "sgd only: momentum").range(0, 1),
      option("nesterov", false, "sgd only: Nesterov momentum"),
      option("beta1", 0.9, "adam/adamw only").range(0, 1),
      option("beta2", 0.999, "adam/adamw only").range(0, 1),
      option("eps", 1e-8, "adam/adamw only").range(0, kFloatMax),
  };
}
Schema make_scheduler_schema() {
  return {
      option("type", "constant", "learning-rate shape after warm-up").one_of({"constant", "cosine", "linear"}),
      option("warmup_steps", 0, "linear warm-up steps").at_least(0),
      option("min_lr_ratio", 0.0, "cosine/linear: final learning rate as a fraction of lr").range(0, 1),
  };
}
Schema make_eval_schema() {
  return {
      option("interval", 0,
             "steps between evaluations during training (0: none); when on, the last step always evaluates")
          .at_least(0),
      option("interval_epochs", 0,
             "epochs between evaluations, at an epoch's last step, instead of interval (needs a task with epochs)")
          .at_least(0),
      option("splits", std::vector<std::string>{}, "splits evaluated during training; []: the task's first"),
      option("metrics", std::vector<std::string>{},
             "accuracy | top_k_accuracy | mse | mae | mean:<output>; []: the task's defaults (its records are "
             "always aggregated)"),
      option("top_k", 5, "k of top_k_accuracy (logged as top_<k>_accuracy)").at_least(1),
      option("max_batches", 0, "batches per split in one evaluation (0: the whole split)").at_least(0),
      option("sanity_batches", 0,
             "batches of each split evaluated before the first step, which catches a broken evaluation before "
             "hours of training (0: none); nothing is logged")
          .at_least(0),
  };
}
Schema make_plugins_schema() {
  return {option("paths", std::vector<std::string>{},
                 "extra plugin directories, searched after the built-in ones and TLOOP_PLUGIN_PATH"),
          option("allow_insecure", false,
                 "load plugins from directories and files that other users can write or own (refused otherwise)")};
}

}  // namespace

const Schema& core_schema(const std::string& section) {
  static const std::map<std::string, Schema> schemas = {
      {"run", make_run_schema()},           {"trainer", make_trainer_schema()},
      {"optimizer", make_optimizer_schema()}, {"scheduler", make_scheduler_schema()},
      {"plugins", make_plugins_schema()},   {"eval", make_eval_schema()},
  };
  return schemas.at(section);
}

}  // namespace tloop
