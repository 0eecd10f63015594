// Test hook for tloop.micro_step_events/1: writes one line per micro-step
// event, with the first element of the task's published tensor "w2" after
// forward and of the first parameter's gradient after backward.
#include <tloop/torch.hpp>

#include <csignal>
#include <fstream>

namespace {

class MicroRecorder : public tloop::Hook {
 public:
  static constexpr bool micro_step_events = true;

  static tloop::PluginInfo info() {
    return {"micro_recorder",
            "1.0.0",
            "Test hook: writes every micro-step event to a file",
            {tloop::required("file", TLOOP_TYPE_STRING, "file the events are appended to"),
             tloop::option("raise_at", 0, "after_forward of this step's micro-step 1 raises SIGTERM (0: never)")
                 .at_least(0)}};
  }
  MicroRecorder(tloop::Context&, const tloop::Options& o)
      : file_(o.get_string("file")), raise_at_(o.get_int("raise_at")) {}

  // Opened at the first event: a plugin writes nothing when created (validate creates it).
  void before_train(tloop::Context&) override {
    out_.open(file_, std::ios::app);
    if (!out_) throw tloop::Error("cannot open " + file_);
    out_.precision(17);
  }

  void after_forward(tloop::Context& c, int64_t micro_step) override {
    const auto w2 = tloop::published(c, "w2");
    out_ << "after_forward " << c.step() << ' ' << micro_step << ' '
         << (w2 ? std::to_string(w2->flatten()[0].item<double>()) : std::string("none")) << '\n';
    out_.flush();
    if (c.step() == raise_at_ && micro_step == 1) std::raise(SIGTERM);  // in the middle of a step
  }
  void before_backward(tloop::Context& c, int64_t micro_step) override {
    out_ << "before_backward " << c.step() << ' ' << micro_step << '\n';
  }
  void after_backward(tloop::Context& c, int64_t micro_step) override {
    const at::Tensor grad = tloop::parameters(c).front().second.grad();
    out_ << "after_backward " << c.step() << ' ' << micro_step << ' ' << grad.flatten()[0].item<double>() << '\n';
    out_.flush();
  }

 private:
  std::string file_;
  std::ofstream out_;
  int64_t raise_at_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<MicroRecorder>())
