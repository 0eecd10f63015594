// loss_tracker: an out-of-tree hook. Every `every` steps it appends
// "<step> <mean loss>" to <workspace>/<file>, and at the end the best loss.
#include <tloop/sdk.hpp>

#include <fstream>
#include <limits>

class LossTracker : public tloop::Hook {
 public:
  static tloop::PluginInfo info() {
    return {"loss_tracker",
            "0.1.0",
            "Writes the loss every few steps and the best loss to a file in the workspace",
            {tloop::option("every", 5, "steps between lines").at_least(1),
             tloop::option("file", "loss_tracker.txt", "file in the workspace")}};
  }

  LossTracker(tloop::Context& ctx, const tloop::Options& o)
      : every_(o.get_int("every")), path_(ctx.workspace() + "/" + o.get_string("file")) {}

  void after_step(tloop::Context& ctx) override {
    const std::vector<double> losses = ctx.step_info("loss");
    if (losses.empty()) return;
    double mean = 0;
    for (double l : losses) mean += l / static_cast<double>(losses.size());
    best_ = std::min(best_, mean);
    if (ctx.step() % every_ == 0) append(std::to_string(ctx.step()) + " " + std::to_string(mean));
  }

  void after_train(tloop::Context& ctx) override {
    append("best " + std::to_string(best_));
    ctx.info("loss_tracker: best loss " + std::to_string(best_) + " written to " + path_);
  }

  // The best loss survives a resume.
  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("best", best_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    best_ = in.get_double("best").value_or(best_);
  }

 private:
  void append(const std::string& line) {
    std::ofstream out(path_, std::ios::app);
    out << line << '\n';
    if (!out) throw tloop::Error("cannot write " + path_);
  }
  int64_t every_;
  std::string path_;
  double best_ = std::numeric_limits<double>::infinity();
};

TLOOP_PLUGIN_LIBRARY(tloop::hook<LossTracker>())
