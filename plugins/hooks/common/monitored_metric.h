// The metric a monitoring hook watches (checkpointing's monitor,
// early_stopping): its full key as the evaluation logs it ("val/loss") and
// the evaluation pass that gives it (prefix "val").
#pragma once

#include <tloop/sdk.hpp>

#include <algorithm>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace tloop_hooks {

/// A metric's value as the monitors' messages show it ("0.125", "nan").
inline std::string format_value(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

/// A monitor's mode option: whether higher ("max") or lower ("min") values
/// of its metric are better.
class Mode {
 public:
  explicit Mode(const std::string& name) : maximize_(name == "max") {}
  /// Whether `a` is strictly better than `b`.
  bool better(double a, double b) const { return maximize_ ? a > b : a < b; }
  bool maximize() const { return maximize_; }
  std::string name() const { return maximize_ ? "max" : "min"; }

 private:
  bool maximize_;
};

class MonitoredMetric {
 public:
  /// Throws std::invalid_argument (bad input) for a key that is not <prefix>/<name>.
  explicit MonitoredMetric(std::string key) : key_(std::move(key)) {
    const size_t slash = key_.rfind('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == key_.size())
      throw std::invalid_argument("monitor = \"" + key_ + "\": expected a metric's full key, <prefix>/<name> (\"val/loss\")");
    prefix_ = key_.substr(0, slash);
  }
  const std::string& key() const { return key_; }
  const std::string& prefix() const { return prefix_; }

  /// The metric's value in an evaluation pass's metrics, or std::nullopt for
  /// a pass that does not give it: the sanity pass, a prediction, another
  /// split or variant. Throws std::invalid_argument, naming what the pass
  /// logged, when the metric's own pass lacks it (a misspelt monitor): the
  /// sanity pass checks this too, so the error comes before the first step.
  std::optional<double> value_in(const tloop::EvalPass& pass, const tloop::Metrics& metrics) {
    if (pass.predict) return std::nullopt;
    if (pass.prefix != prefix_) {
      if (std::find(others_.begin(), others_.end(), pass.prefix) == others_.end()) others_.push_back(pass.prefix);
      return std::nullopt;
    }
    seen_ = true;
    const auto it = std::find_if(metrics.begin(), metrics.end(), [&](const auto& m) { return m.first == key_; });
    if (it == metrics.end()) {
      std::string logged;
      for (const auto& [key, value] : metrics) logged += (logged.empty() ? "" : ", ") + key;
      throw std::invalid_argument("monitor = \"" + key_ + "\": the evaluation of " + pass.prefix +
                                  " logged no such metric (it logged: " + (logged.empty() ? "nothing" : logged) + ")");
    }
    if (pass.sanity) return std::nullopt;
    return it->second;
  }

  /// Called in after_step, once the step's evaluations (or the sanity pass)
  /// ran: throws std::invalid_argument when passes ran and none logs under
  /// the metric's prefix (a misspelt "vall/loss"), naming the prefixes that do.
  void check_prefix() {
    if (seen_ || others_.empty()) return;
    std::string logged;
    for (const auto& p : others_) logged += (logged.empty() ? "" : ", ") + p + "/";
    throw std::invalid_argument("monitor = \"" + key_ + "\": no evaluation logs under " + prefix_ +
                                "/ (this run's evaluations log under " + logged + ")");
  }

 private:
  std::string key_, prefix_;
  bool seen_ = false;               // a pass under prefix_ ran
  std::vector<std::string> others_;  // the prefixes of the other passes that ran
};

}  // namespace tloop_hooks
