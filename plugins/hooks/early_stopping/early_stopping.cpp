// early_stopping: Lightning's EarlyStopping. Watches a metric the evaluation
// logs ("val/loss") and ends the run (exit code 0) once it has not improved
// for `patience` evaluations in a row: improved means lower than the best by
// more than min_delta (mode "min"), or higher (mode "max"). With check_finite
// a NaN or infinite value stops the run at once.
//
// Its state (the best value and its step, the evaluations without
// improvement, whether and where it stopped) is in checkpoints, so a resumed
// run stops where an uninterrupted one would. A run that stopped early, run
// again, does not train on: it exits 0 at once, unless trainer.max_steps was
// raised or resume_stopped = true.
#include "../common/monitored_metric.h"

#include <tloop/sdk.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

namespace {

using tloop_hooks::format_value;

class EarlyStopping : public tloop::Hook {
 public:
  // Acts on what the evaluation measured, before anything logs or saves: a
  // checkpoint of the step that stops the run records that it stopped.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_MONITOR;
  static constexpr bool eval_events = true;

  static tloop::PluginInfo info() {
    return {"early_stopping",
            "1.0.0",
            "Ends the run when a monitored evaluation metric stops improving (Lightning's EarlyStopping)",
            {
                tloop::required("monitor", TLOOP_TYPE_STRING,
                                "the metric to watch, by its full key as the evaluation logs it (\"val/loss\")"),
                tloop::option("mode", "min", "whether lower (\"min\") or higher (\"max\") values are better")
                    .one_of({"min", "max"}),
                tloop::option("patience", 3, "evaluations in a row without improvement that stop the run").at_least(1),
                tloop::option("min_delta", 0.0, "how much better than the best a value must be to count as improved")
                    .at_least(0),
                tloop::option("check_finite", true, "stop at once when the value is NaN or infinite"),
                tloop::optional("stopping_threshold", TLOOP_TYPE_DOUBLE,
                                "stop at once when the value is better than this (a target reached; unset: never)"),
                tloop::optional("divergence_threshold", TLOOP_TYPE_DOUBLE,
                                "stop at once when the value is worse than this (the run diverged; unset: never)"),
                tloop::option("resume_stopped", false,
                              "a run that stopped early, run again, trains on (and may stop again) instead of "
                              "exiting at once; raising trainer.max_steps does the same"),
            }};
  }

  EarlyStopping(tloop::Context&, const tloop::Options& o)
      : watched_(o.get_string("monitor")),
        mode_(o.get_string("mode")),
        patience_(o.get_int("patience")),
        min_delta_(o.get_double("min_delta")),
        check_finite_(o.get_bool("check_finite")),
        resume_stopped_(o.get_bool("resume_stopped")) {
    if (o.has("stopping_threshold")) stopping_threshold_ = o.get_double("stopping_threshold");
    if (o.has("divergence_threshold")) divergence_threshold_ = o.get_double("divergence_threshold");
  }

  void before_train(tloop::Context& ctx) override {
    if (!stopped_) return;
    const std::string where =
        "the run stopped early at step " + std::to_string(stopped_step_) + (reason_.empty() ? "" : ": " + reason_);
    if (!resume_stopped_ && ctx.max_steps() <= stopped_max_steps_) {
      ctx.info("early_stopping: " + where + "; not training on: raise trainer.max_steps above " +
               std::to_string(stopped_max_steps_) + " or set resume_stopped = true");
      ctx.request_exit(0);
      return;
    }
    ctx.info("early_stopping: " + where + "; training on (" +
             (resume_stopped_ ? std::string("resume_stopped = true")
                              : "trainer.max_steps raised from " + std::to_string(stopped_max_steps_) + " to " +
                                    std::to_string(ctx.max_steps())) +
             "), with the evaluations without improvement counted from 0");
    stopped_ = false;
    wait_ = 0;
  }

  void after_step(tloop::Context&) override { watched_.check_prefix(); }

  void after_eval(tloop::Context& ctx, const tloop::EvalPass& pass, const tloop::Metrics& metrics) override {
    if (stopped_) return;
    const std::optional<double> observed = watched_.value_in(pass, metrics);
    if (!observed) return;
    const double value = *observed;
    const int64_t step = ctx.step();
    // Lightning's order: check_finite, stopping_threshold, divergence_threshold
    // (each a strict comparison), then patience.
    if (!std::isfinite(value)) {
      if (check_finite_) {
        stop(ctx, watched_.key() + " is " + format_value(value) + " at step " + std::to_string(step) + " (check_finite)");
        return;
      }
    } else if (stopping_threshold_ && mode_.better(value, *stopping_threshold_)) {
      stop(ctx, watched_.key() + " = " + format_value(value) + " at step " + std::to_string(step) +
                    " is better than stopping_threshold " + format_value(*stopping_threshold_));
      return;
    } else if (divergence_threshold_ && mode_.better(*divergence_threshold_, value)) {
      stop(ctx, watched_.key() + " = " + format_value(value) + " at step " + std::to_string(step) +
                    " is worse than divergence_threshold " + format_value(*divergence_threshold_));
      return;
    } else if (!best_ || mode_.better(value, mode_.maximize() ? *best_ + min_delta_ : *best_ - min_delta_)) {
      best_ = value;
      best_step_ = step;
      wait_ = 0;
      return;
    }
    // A non-finite value (with check_finite = false) never improves.
    if (++wait_ < patience_) return;
    stop(ctx, watched_.key() + " did not improve for " + std::to_string(wait_) + " evaluation" + (wait_ == 1 ? "" : "s") +
                  (min_delta_ > 0 ? " by more than " + format_value(min_delta_) : std::string()) +
                  (best_ ? " (best " + format_value(*best_) + " at step " + std::to_string(best_step_) + ")" : std::string()));
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override {
    out.put("monitor", watched_.key());
    out.put("mode", mode_.name());
    if (best_) out.put("best", *best_);  // only finite values: state.json holds them
    out.put("best_step", best_step_);
    out.put("wait", wait_);
    out.put("stopped", static_cast<int64_t>(stopped_));
    out.put("stopped_step", stopped_step_);
    out.put("stopped_max_steps", stopped_max_steps_);
    out.put("stopped_reason", reason_);
  }

  void load_state_dict(tloop::Context& ctx, const tloop::StateReader& in) override {
    const std::optional<std::string> monitor = in.get_string("monitor");
    const std::string mode = in.get_string("mode").value_or("min");
    if (!monitor) return;  // no state of this hook in the checkpoint: start afresh
    if (*monitor != watched_.key() || mode != mode_.name()) {
      ctx.warn("early_stopping: the checkpoint watched " + *monitor + " (mode \"" + mode + "\"); this run watches " +
               watched_.key() + " (mode \"" + mode_.name() + "\"): starting afresh");
      return;
    }
    best_ = in.get_double("best");
    best_step_ = in.get_int("best_step").value_or(0);
    wait_ = in.get_int("wait").value_or(0);
    stopped_ = in.get_int("stopped").value_or(0) != 0;
    stopped_step_ = in.get_int("stopped_step").value_or(0);
    stopped_max_steps_ = in.get_int("stopped_max_steps").value_or(0);
    reason_ = in.get_string("stopped_reason").value_or("");
  }

 private:
  void stop(tloop::Context& ctx, const std::string& reason) {
    stopped_ = true;
    stopped_step_ = ctx.step();
    stopped_max_steps_ = ctx.max_steps();
    reason_ = reason;
    ctx.info("early_stopping: " + reason + "; stopping at step " + std::to_string(stopped_step_));
    ctx.request_exit(0);
  }

  tloop_hooks::MonitoredMetric watched_;
  tloop_hooks::Mode mode_;
  int64_t patience_;
  double min_delta_;
  bool check_finite_, resume_stopped_;
  std::optional<double> stopping_threshold_, divergence_threshold_;

  std::optional<double> best_;
  int64_t best_step_ = 0;
  int64_t wait_ = 0;
  bool stopped_ = false;
  int64_t stopped_step_ = 0, stopped_max_steps_ = 0;
  std::string reason_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<EarlyStopping>())
