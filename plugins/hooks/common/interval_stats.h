// The step info of an interval of steps, aggregated as trainloop's
// StatsHook does, for the hooks that report it (logging, progress):
//   - data_time: each step's total over its fetches, averaged over steps;
//   - max_memory, max_rss: the maximum;
//   - lr/<group>, epoch: the last step's value (the rate that step used);
//   - epoch_end: left out (epoch says it);
//   - everything else (loss, records, step time, ...): the mean over every
//     value of the steps that reported it.
#pragma once

#include <tloop/sdk.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace tloop_hooks {

class IntervalStats {
 public:

  /// Adds the current step's info (call in after_step).
  void add(const tloop::Context& ctx) {
    ++steps_;
    for (const auto& [key, values] : ctx.step_info()) {
      if (values.empty() || key == TLOOP_INFO_EPOCH_END) continue;
      Entry& e = entries_[key];
      if (key == TLOOP_INFO_MAX_MEMORY || key == TLOOP_INFO_MAX_RSS) {
        const double m = *std::max_element(values.begin(), values.end());
        e.sum = e.count == 0 ? m : std::max(e.sum, m);
        e.count = 1;
      } else if (key.rfind(TLOOP_INFO_LR, 0) == 0 || key == TLOOP_INFO_EPOCH) {
        e.sum = values.back();
        e.count = 1;
      } else if (key == TLOOP_INFO_DATA_TIME) {
        for (double v : values) e.sum += v;
        e.count += 1;
      } else {
        for (double v : values) e.sum += v;
        e.count += static_cast<double>(values.size());
      }
    }
  }

  bool empty() const { return steps_ == 0; }

  /// Every key's aggregate since the last reset, by step-info key.
  std::map<std::string, double> aggregates() const {
    std::map<std::string, double> out;
    for (const auto& [key, e] : entries_) out[key] = e.sum / e.count;
    return out;
  }

  void reset() {
    entries_.clear();
    steps_ = 0;
  }

  /// A step-info key as logging names it: "records/accuracy" is
  /// "accuracy", like trainloop's records.
  static std::string display_name(const std::string& key) {
    return key.rfind(TLOOP_INFO_RECORD, 0) == 0 ? key.substr(sizeof(TLOOP_INFO_RECORD) - 1) : key;
  }

 private:
  struct Entry {
    double sum = 0, count = 0;
  };
  std::map<std::string, Entry> entries_;
  int64_t steps_ = 0;
};

}  // namespace tloop_hooks
