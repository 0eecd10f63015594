// The metric a monitoring hook watches (checkpointing's monitor,
// early_stopping): its full key as the evaluation logs it ("val/loss") and
// the evaluation pass that gives it (prefix "val").
#pragma once

#include <tloop/sdk.hpp>

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>

namespace tloop_hooks {

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
  /// logged, when the metric's own pass lacks it (a misspelt monitor).
  std::optional<double> value_in(const tloop::EvalPass& pass, const tloop::Metrics& metrics) const {
    if (pass.sanity || pass.predict || pass.prefix != prefix_) return std::nullopt;
    const auto it = std::find_if(metrics.begin(), metrics.end(), [&](const auto& m) { return m.first == key_; });
    if (it != metrics.end()) return it->second;
    std::string logged;
    for (const auto& [key, value] : metrics) logged += (logged.empty() ? "" : ", ") + key;
    throw std::invalid_argument("monitor = \"" + key_ + "\": the evaluation of " + pass.prefix +
                                " logged no such metric (it logged: " + (logged.empty() ? "nothing" : logged) + ")");
  }

 private:
  std::string key_, prefix_;
};

}  // namespace tloop_hooks
