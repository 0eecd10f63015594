// Test hook: appends "<label> <event> <step>" to a file for every event, so
// tests can check the order of events across hooks loaded from real .so files.
#include <tloop/sdk.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

namespace {

class EventRecorder : public tloop::Hook {
 public:
  // An observer: it runs after every other hook, and sees what they did.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;

  static tloop::PluginInfo info() {
    return {"event_recorder",
            "1.0.0",
            "Test hook: writes every event it receives to a file",
            {tloop::required("file", TLOOP_TYPE_STRING, "file the events are appended to"),
             tloop::option("label", "hook", "name written before each event"),
             tloop::option("step_info", false, "after each step, also write every step-info key and its values"),
             tloop::option("list_dir", "", "after each step, also write the sorted entries of this directory"),
             tloop::option("query_extension", "", "before training, ask the host for this extension id and "
                                                  "write whether it is present"),
             tloop::option("exit_at", 0, "after_step of this step asks the host to end the run (0: never)").at_least(0),
             tloop::option("exit_code", 0, "the exit code exit_at asks for"),
             tloop::option("fail_on_log", false, "on_log fails with 'recorder failure in on_log'"),
             tloop::option("raise_at", 0, "after_step of this step raises SIGTERM in the process (0: never)")
                 .at_least(0),
             tloop::option("fail_at", 0, "the event fail_in fails at this step (0: never)").at_least(0),
             tloop::option("fail_in", "after_step", "the event that fails at fail_at")
                 .one_of({"before_train", "before_step", "before_optimizer_step", "after_step", "after_train"}),
             tloop::option("fail_after", false, "fail_in fails at fail_at and at every later step too"),
             tloop::option("fail_as_bad_input", false, "the failure is a refused input (std::invalid_argument)"),
             tloop::option("report_failure", false,
                           "in finish, also write '<label> failure <resumable step> <error>' "
                           "(tloop.run_failure/1)")}};
  }
  EventRecorder(tloop::Context&, const tloop::Options& o)
      : file_(o.get_string("file")),
        label_(o.get_string("label")),
        step_info_(o.get_bool("step_info")),
        list_dir_(o.get_string("list_dir")),
        query_extension_(o.get_string("query_extension")),
        exit_at_(o.get_int("exit_at")),
        exit_code_(static_cast<int>(o.get_int("exit_code"))),
        fail_on_log_(o.get_bool("fail_on_log")),
        raise_at_(o.get_int("raise_at")),
        fail_at_(o.get_int("fail_at")),
        fail_in_(o.get_string("fail_in")),
        fail_after_(o.get_bool("fail_after")),
        fail_as_bad_input_(o.get_bool("fail_as_bad_input")),
        report_failure_(o.get_bool("report_failure")) {}

  void before_train(tloop::Context& c) override {
    if (!query_extension_.empty())
      write(c, "extension", " " + query_extension_ + (c.extension(query_extension_.c_str()) ? " present" : " absent"));
    write(c, "before_train");
    maybe_fail(c, "before_train");
  }
  void before_step(tloop::Context& c) override {
    write(c, "before_step");
    maybe_fail(c, "before_step");
  }
  void before_optimizer_step(tloop::Context& c) override {
    write(c, "before_optimizer_step");
    maybe_fail(c, "before_optimizer_step");
  }
  void after_step(tloop::Context& c) override {
    write(c, "after_step");
    maybe_fail(c, "after_step");
    if (exit_at_ > 0 && c.step() == exit_at_) c.request_exit(exit_code_);
    if (raise_at_ > 0 && c.step() == raise_at_) std::raise(SIGTERM);
    if (!list_dir_.empty()) {
      std::set<std::string> names;
      std::error_code ec;
      for (const auto& e : std::filesystem::directory_iterator(list_dir_, ec)) names.insert(e.path().filename().string());
      out_ << label_ << " ls " << c.step();
      for (const auto& n : names) out_ << ' ' << n;
      out_ << '\n';
      out_.flush();
    }
    if (!step_info_) return;
    // "<label> step_info <step> <key> v1 v2 ...", one line per key.
    for (const auto& [key, values] : c.step_info()) {
      out_.precision(17);
      out_ << label_ << " step_info " << c.step() << ' ' << key;
      for (double v : values) out_ << ' ' << v;
      out_ << '\n';
    }
    out_.flush();
  }
  void after_train(tloop::Context& c) override {
    write(c, "after_train");
    maybe_fail(c, "after_train");
  }
  void finish(tloop::Context& c, int exit_code) override {
    write(c, "finish", " " + std::to_string(exit_code));
    if (report_failure_) write(c, "failure", " " + std::to_string(c.resumable_step()) + " " + c.run_error());
  }
  void on_log(tloop::Context& c, const tloop::Metrics& m) override {
    write(c, "on_log", m.empty() ? "" : " " + m.front().first);
    if (fail_on_log_) throw tloop::Error("recorder failure in on_log");
  }
  void on_log_images(tloop::Context& c, const std::vector<tloop::ImageView>& images) override {
    write(c, "on_log_images", " " + std::to_string(images.size()));
  }

 private:
  // Opened at the first event: a plugin writes nothing when created (validate creates it).
  std::ofstream& out() {
    if (!out_.is_open()) {
      out_.open(file_, std::ios::app);
      if (!out_) throw tloop::Error("cannot open " + file_);
    }
    return out_;
  }
  void write(tloop::Context& c, const char* event, const std::string& extra = "") {
    out() << label_ << ' ' << event << ' ' << c.step() << extra << '\n';
    out_.flush();
  }
  void maybe_fail(tloop::Context& c, const char* event) {
    if (fail_at_ == 0 || fail_in_ != event || !(c.step() == fail_at_ || (fail_after_ && c.step() > fail_at_))) return;
    const std::string what = "recorder failure in " + fail_in_ + " at step " + std::to_string(c.step());
    if (fail_as_bad_input_) throw std::invalid_argument(what);
    throw tloop::Error(what);
  }

  std::string file_;
  std::ofstream out_;
  std::string label_;
  bool step_info_;
  std::string list_dir_;
  std::string query_extension_;
  int64_t exit_at_;
  int exit_code_;
  bool fail_on_log_;
  int64_t raise_at_;
  int64_t fail_at_;
  std::string fail_in_;
  bool fail_after_, fail_as_bad_input_, report_failure_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<EventRecorder>())
