// profiler: records windows of steps with LibTorch's profiler (Kineto), on a
// schedule with the meaning of torch.profiler.schedule(skip_first, wait,
// warmup, active, repeat), and writes each window as a Chrome trace:
//
//   <workspace>/<dir>/steps_<first>-<last>/rank<r>.pt.trace.json
//
// One directory per window is what both readers take: Holistic Trace
// Analysis (TraceAnalysis(trace_dir=...), one file per rank) and TensorBoard's
// PyTorch profiler plugin (a run per directory). Each step of a window is a
// `ProfilerStep#<step>` range, as torch.profiler names them (HTA finds the
// iterations by them): the host marks each step, and in it the data fetch,
// forward, backward, optimizer step and every hook call (docs/plugins.md,
// "Events and their order"; README, "Profiling").
//
// Steps are counted from the first step this process runs, as a
// torch.profiler schedule counts from the profiler's start: a resumed run
// profiles its own first steps again. A window cut short by the end of the run
// (or an error or a signal) is written with the steps it has.
#include <tloop/torch.hpp>

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <filesystem>
#include <set>

// Declared in torch/csrc/profiler/kineto_shim.h, which needs libkineto's
// headers that the torch wheel does not ship; exported by libtorch_cpu.
namespace torch::autograd::profiler {
TORCH_API void addMetadataJson(const std::string& key, const std::string& value);
}

namespace {

namespace fs = std::filesystem;
namespace kprof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

class Profiler : public tloop::Hook {
 public:
  // Last of all phases, so that a step's range holds the other hooks'
  // after_step work (EMA, logging, a checkpoint save) of the same step.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_SAVE;

  static tloop::PluginInfo info() {
    return {"profiler",
            "1.0.0",
            "Records windows of steps with the LibTorch profiler (Kineto) as Chrome traces",
            {
                tloop::option("skip_first", 0, "steps to leave out before the first window").at_least(0),
                tloop::option("wait", 1, "steps at the start of each window that are not recorded").at_least(0),
                tloop::option("warmup", 1, "steps profiled but not recorded, after wait (the profiler's warm-up)")
                    .at_least(0),
                tloop::option("active", 3, "steps recorded in each window").at_least(1),
                tloop::option("repeat", 1, "windows to record (0: until the run ends)").at_least(0),
                tloop::option("dir", "profiler", "directory in the workspace for the traces"),
                tloop::option("record_shapes", false, "record operators' input shapes"),
                tloop::option("profile_memory", false, "record tensor allocations and frees"),
                tloop::option("with_stack", false, "record the C++/Python stack of each operator"),
                tloop::option("cuda", true, "record CUDA kernels and memcpys too when the run is on a GPU"),
            }};
  }

  Profiler(tloop::Context& ctx, const tloop::Options& o)
      : skip_first_(o.get_int("skip_first")),
        wait_(o.get_int("wait")),
        warmup_(o.get_int("warmup")),
        active_(o.get_int("active")),
        repeat_(o.get_int("repeat")),
        config_(ProfilerState::KINETO, o.get_bool("record_shapes"), o.get_bool("profile_memory"),
                o.get_bool("with_stack")),
        dir_(tloop::workspace_path(ctx, "dir", o.get_string("dir"))) {
    activities_.insert(ActivityType::CPU);
    if (o.get_bool("cuda") && c10::Device(ctx.device()).is_cuda()) activities_.insert(ActivityType::CUDA);
  }

  ~Profiler() override { stop(); }

  // Like torch.profiler's step(): at each step boundary, the window that ends
  // is written and the next step's state is entered, so that recording is on
  // before the host opens the step's range.
  void before_train(tloop::Context& ctx) override { enter(ctx, action_at(0)); }

  void after_step(tloop::Context& ctx) override {
    if (action_at(steps_seen_++) == Action::record_and_save) save(ctx);
    if (ctx.step() < ctx.max_steps()) enter(ctx, action_at(steps_seen_));
  }

  void after_train(tloop::Context& ctx) override { save(ctx); }

  // However the run ended: a window cut short is written with its steps, and
  // the profiler is never left running.
  void finish(tloop::Context& ctx, int) override { save(ctx); }

 private:
  enum class Action { none, warmup, record, record_and_save };
  enum class State { idle, prepared, recording };

  // torch.profiler.schedule's action for the n-th step (0-based).
  Action action_at(int64_t n) const {
    if (n < skip_first_) return Action::none;
    n -= skip_first_;
    const int64_t cycle = wait_ + warmup_ + active_;
    if (repeat_ > 0 && n / cycle >= repeat_) return Action::none;
    const int64_t m = n % cycle;
    if (m < wait_) return Action::none;
    if (m < wait_ + warmup_) return Action::warmup;
    return m == cycle - 1 ? Action::record_and_save : Action::record;
  }

  // Prepares or starts the profiler for the next step's action.
  void enter(tloop::Context& ctx, Action action) {
    if (action == Action::none) return;
    if (state_ == State::idle) {
      kprof::prepareProfiler(config_, activities_);
      state_ = State::prepared;
    }
    if (action == Action::warmup || state_ == State::recording) return;
    kprof::enableProfiler(config_, activities_);
    state_ = State::recording;
    window_first_ = ctx.step() + 1;
  }

  // Ends a recording window and writes its trace (none for a window that
  // recorded no step).
  void save(tloop::Context& ctx) {
    if (state_ != State::recording) return;
    // The kernels of the window's last step belong in its trace.
    if (activities_.count(ActivityType::CUDA)) c10::cuda::device_synchronize();
    // HTA reads the rank from here (torch.profiler adds the same key).
    kprof::addMetadataJson("distributedInfo", "{\"rank\": " + std::to_string(ctx.rank()) +
                                                  ", \"world_size\": " + std::to_string(ctx.world_size()) + "}");
    std::unique_ptr<kprof::ProfilerResult> result = kprof::disableProfiler();
    state_ = State::idle;
    if (ctx.step() < window_first_) return;  // no step of the window began
    const int64_t last = ctx.step();  // a step cut short by an error counts
    const fs::path window = dir_ / ("steps_" + std::to_string(window_first_) + "-" + std::to_string(last));
    fs::create_directories(window);
    const fs::path path = window / ("rank" + std::to_string(ctx.rank()) + ".pt.trace.json");
    const fs::path tmp = path.string() + ".tmp";
    result->save(tmp.string());
    fs::rename(tmp, path);  // a reader never sees half a trace
    ctx.info("profiler: steps " + std::to_string(window_first_) + "-" + std::to_string(last) + " -> " +
             path.string());
  }

  // For the destructor, when no event could end the window (never throws).
  void stop() noexcept {
    if (state_ != State::recording) return;
    try {
      kprof::disableProfiler();
    } catch (...) {
    }
    state_ = State::idle;
  }

  int64_t skip_first_, wait_, warmup_, active_, repeat_;
  ProfilerConfig config_;
  fs::path dir_;
  std::set<ActivityType> activities_;
  State state_ = State::idle;
  int64_t steps_seen_ = 0;
  int64_t window_first_ = 0;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Profiler>())
