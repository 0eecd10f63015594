// logging: trainloop's LoggingHook. Aggregates the step info over each
// interval (mean loss, grad norm, records, data and step times, retries; max
// memory; each group's learning rate as the last step used it; the epoch,
// when the task has epochs) and calls
// log({"train/...": ...}) so that every tracker hook and the built-in
// metrics.jsonl receive it. The last step is always logged.
#include <tloop/sdk.hpp>

#include <algorithm>
#include <cmath>
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
    for (const auto& [key, values] : ctx.step_info()) {
      if (values.empty()) continue;
      if (key == TLOOP_INFO_EPOCH_END) continue;  // "epoch" says it
      if (key == TLOOP_INFO_MAX_MEMORY || key == TLOOP_INFO_MAX_RSS) {
        auto& m = max_[key];
        m = std::max(m, *std::max_element(values.begin(), values.end()));
      } else if (key.rfind(TLOOP_INFO_LR, 0) == 0 || key == TLOOP_INFO_EPOCH) {
        last_[key] = values.back();  // the rate this step used, before the scheduler stepped; its epoch
      } else {
        // Every value of every step weighs the same: the mean over micro-steps and steps.
        auto& s = sums_[key];
        for (double v : values) {
          s.first += v;
          s.second += 1;
        }
      }
    }
    if (every_.due(ctx) || ctx.step() == ctx.max_steps()) flush(ctx);
  }

 private:
  void flush(tloop::Context& ctx) {
    tloop::Metrics metrics;
    for (const auto& [key, s] : sums_) {
      // "records/accuracy" is logged as train/accuracy, like trainloop's records.
      const std::string name = key.rfind(TLOOP_INFO_RECORD, 0) == 0 ? key.substr(sizeof(TLOOP_INFO_RECORD) - 1) : key;
      metrics.emplace_back("train/" + name, s.first / s.second);
    }
    for (const auto& [key, v] : max_) metrics.emplace_back("train/" + key, v);
    for (const auto& [key, v] : last_) metrics.emplace_back("train/" + key, v);
    sums_.clear();
    max_.clear();
    last_.clear();
    if (!metrics.empty()) ctx.log(metrics);
  }

  tloop::Every every_;
  std::map<std::string, std::pair<double, double>> sums_;  // key -> (sum, count)
  std::map<std::string, double> max_, last_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Logging>())
