// Test hook: appends "<label> <event> <step>" to a file for every event, so
// tests can check the order of events across hooks loaded from real .so files.
#include <tloop/sdk.hpp>

#include <fstream>

namespace {

class EventRecorder : public tloop::Hook {
 public:
  static tloop::PluginInfo info() {
    return {"event_recorder",
            "1.0.0",
            "Test hook: writes every event it receives to a file",
            {tloop::required("file", TLOOP_TYPE_STRING, "file the events are appended to"),
             tloop::option("label", "hook", "name written before each event")}};
  }
  EventRecorder(tloop::Context&, const tloop::Options& o)
      : out_(o.get_string("file"), std::ios::app), label_(o.get_string("label")) {
    if (!out_) throw tloop::Error("cannot open " + o.get_string("file"));
  }

  void before_train(tloop::Context& c) override { write(c, "before_train"); }
  void before_step(tloop::Context& c) override { write(c, "before_step"); }
  void before_optimizer_step(tloop::Context& c) override { write(c, "before_optimizer_step"); }
  void after_step(tloop::Context& c) override { write(c, "after_step"); }
  void after_train(tloop::Context& c) override { write(c, "after_train"); }
  void on_log(tloop::Context& c, const tloop::Metrics& m) override {
    write(c, "on_log", m.empty() ? "" : " " + m.front().first);
  }
  void on_log_images(tloop::Context& c, const std::vector<tloop::ImageView>& images) override {
    write(c, "on_log_images", " " + std::to_string(images.size()));
  }

 private:
  void write(tloop::Context& c, const char* event, const std::string& extra = "") {
    out_ << label_ << ' ' << event << ' ' << c.step() << extra << '\n';
    out_.flush();
  }
  std::ofstream out_;
  std::string label_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<EventRecorder>())
