// logging: trainloop's LoggingHook. Aggregates the step info over each
// interval (mean loss, grad norm, records, data time per step, step time,
// retries; max memory; each group's learning rate as the last step used it;
// the epoch, when the task has epochs) and calls log({"train/...": ...}) so
// that every tracker hook and the built-in metrics.jsonl receive it. The
// last step is always logged.
#include "../common/interval_stats.h"

#include <tloop/sdk.hpp>

#include <map>

namespace {

class Logging : public tloop::Hook {
 public:
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;

  static tloop::PluginInfo info() {
    return {"logging",
            "1.0.0",
            "Aggregates step info over an interval and logs it under train/",
            {
                tloop::option("interval", 10, "steps per logged aggregate").at_least(1),
                tloop::option("interval_epochs", 0,
                              "epochs per logged aggregate, logged at an epoch's last step, instead of interval "
                              "(0: count steps; needs a task with epochs)")
                    .at_least(0),
                tloop::option("sync", true, "combine over ranks in distributed runs (no-op on one process)"),
            }};
  }

  Logging(tloop::Context&, const tloop::Options& o) : every_{o.get_int("interval"), o.get_int("interval_epochs")} {}

  void before_train(tloop::Context& ctx) override { every_.require(ctx, "interval_epochs"); }

  void after_step(tloop::Context& ctx) override {
    stats_.add(ctx);
    if (every_.due(ctx) || ctx.step() == ctx.max_steps()) flush(ctx);
  }

 private:
  void flush(tloop::Context& ctx) {
    tloop::Metrics metrics;
    for (const auto& [key, value] : stats_.aggregates())
      metrics.emplace_back("train/" + tloop_hooks::IntervalStats::display_name(key), value);
    stats_.reset();
    if (!metrics.empty()) ctx.log(metrics);
  }

  tloop::Every every_;
  tloop_hooks::IntervalStats stats_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Logging>())
