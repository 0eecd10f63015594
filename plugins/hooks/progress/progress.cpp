// progress: trainloop's ProgressHook. On a terminal a live one-line bar
// (percent, steps/s, ETA, loss) redrawn in place; elsewhere (CI, files) a plain
// line every `interval` steps with step/max, ETA and the means over those
// steps (as trainloop prints them) of the times, memory, loss, grad norm,
// learning rates and, with `with_records`, the records.
// Evaluations ([eval]) show their own progress: a live bar of batches with
// an ETA on a terminal, elsewhere a line every 30 s and one per finished pass.
// Needs no LibTorch: everything comes from the step info.
#include "../common/interval_stats.h"

#include <tloop/sdk.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

namespace {

using Clock = std::chrono::steady_clock;

double mean(const std::vector<double>& v) {
  return v.empty() ? NAN : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

class Progress : public tloop::Hook {
 public:
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;
  static constexpr bool eval_events = true;

  static tloop::PluginInfo info() {
    return {"progress",
            "1.0.0",
            "Progress with ETA: a live bar on a terminal, plain lines every interval elsewhere",
            {
                tloop::option("interval", 1, "steps between plain progress lines").at_least(1),
                tloop::option("with_records", false, "also show the task's records"),
                tloop::option("sync", false, "average over ranks in distributed runs (no-op on one process)"),
                tloop::option("eta_warmup", 10, "steps after the start (or resume) before an ETA is shown")
                    .at_least(0),
                tloop::option("show_units", true, "print units (s, GiB) after values"),
                tloop::option("bar", "auto", "live bar: auto (when stdout is a terminal), always, never")
                    .one_of({"auto", "always", "never"}),
            }};
  }

  Progress(tloop::Context&, const tloop::Options& o)
      : interval_(o.get_int("interval")),
        with_records_(o.get_bool("with_records")),
        eta_warmup_(o.get_int("eta_warmup")),
        units_(o.get_bool("show_units")) {
    const std::string bar = o.get_string("bar");
    live_ = bar == "always" || (bar == "auto" && isatty(STDOUT_FILENO));
  }

  void before_train(tloop::Context& ctx) override {
    if (ctx.rank() != 0) return;
    start_step_ = ctx.step();  // the ETA counts from here, so it is right after a resume
    start_time_ = Clock::now();
    if (eta_warmup_ == 0) {
      warm_step_ = start_step_;
      warm_time_ = start_time_;
    }
    ctx.info(ctx.step() > 0 ? "Resuming training at step " + std::to_string(ctx.step()) + "/" +
                                  std::to_string(ctx.max_steps())
                            : "Starting training: " + std::to_string(ctx.max_steps()) + " steps");
  }

  void after_step(tloop::Context& ctx) override {
    if (ctx.rank() != 0) return;
    const int64_t step = ctx.step(), max_steps = ctx.max_steps();
    if (step - start_step_ == eta_warmup_) {
      warm_step_ = step;
      warm_time_ = Clock::now();
    }
    const bool last = step == max_steps;
    if (live_) {
      const auto now = Clock::now();
      if (last || now - last_draw_ >= std::chrono::milliseconds(100)) {
        last_draw_ = now;
        draw_bar(ctx, step, max_steps);
      }
    } else {
      stats_.add(ctx);
      if (step % interval_ == 0 || last) ctx.info(line(step, max_steps));
    }
  }

  void before_eval(tloop::Context& ctx, const tloop::EvalPass&) override {
    if (ctx.rank() != 0) return;
    eval_start_ = eval_last_line_ = Clock::now();
  }

  void after_eval_batch(tloop::Context& ctx, const tloop::EvalPass& pass, int64_t batch) override {
    if (ctx.rank() != 0) return;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - eval_start_).count();
    const double left = pass.batches > 0 ? elapsed / static_cast<double>(batch) * static_cast<double>(pass.batches - batch) : NAN;
    std::ostringstream os;
    os << (pass.sanity ? "sanity check " : "evaluating ") << pass.prefix << " " << batch;
    if (pass.batches > 0) os << "/" << pass.batches;
    os << " batches | ETA " << (std::isfinite(left) ? duration(left) : "?");
    if (live_ && (batch == pass.batches || now - last_draw_ >= std::chrono::milliseconds(100))) {
      last_draw_ = now;
      std::fputs(("\r" + os.str() + "\033[K").c_str(), stdout);
      std::fflush(stdout);
    } else if (!live_ && now - eval_last_line_ >= std::chrono::seconds(30)) {
      eval_last_line_ = now;
      ctx.info(os.str());
    }
  }

  void after_eval(tloop::Context& ctx, const tloop::EvalPass& pass, const tloop::Metrics&) override {
    if (ctx.rank() != 0) return;
    if (live_) {
      std::fputs("\r\033[K", stdout);  // the training bar is drawn again at the next step
      std::fflush(stdout);
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - eval_start_).count();
    ctx.info(std::string(pass.sanity ? "sanity check " : "evaluated ") + pass.prefix + " in " + duration(seconds));
  }

  void after_train(tloop::Context& ctx) override {
    if (ctx.rank() != 0) return;
    if (live_) {
      std::fputs("\n", stdout);
      std::fflush(stdout);
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start_time_).count();
    ctx.info("Finished training: " + std::to_string(ctx.step() - start_step_) + " steps in " + duration(seconds));
  }

 private:
  // Seconds left, once eta_warmup steps have run since the start or resume.
  double eta(int64_t step, int64_t max_steps) const {
    if (warm_step_ < 0 || step <= warm_step_) return NAN;
    const double per_step =
        std::chrono::duration<double>(Clock::now() - warm_time_).count() / static_cast<double>(step - warm_step_);
    return per_step * static_cast<double>(max_steps - step);
  }

  std::string unit(const char* u) const { return units_ ? u : ""; }

  // Means over the steps since the last line, as trainloop prints them.
  std::string line(int64_t step, int64_t max_steps) {
    const auto stats = stats_.aggregates();
    stats_.reset();
    auto get = [&](const std::string& k) -> std::optional<double> {
      auto it = stats.find(k);
      return it == stats.end() ? std::nullopt : std::optional<double>(it->second);
    };
    std::ostringstream os;
    os << "step " << step << "/" << max_steps;
    if (auto e = get(TLOOP_INFO_EPOCH)) os << " | epoch " << static_cast<long long>(*e);
    if (auto t = get(TLOOP_INFO_STEP_TIME)) os << " | step " << number(*t) << unit("s");
    if (auto t = get(TLOOP_INFO_DATA_TIME)) os << " | data " << number(*t) << unit("s");
    const double left = eta(step, max_steps);
    if (std::isfinite(left)) os << " | ETA " << duration(left);
    for (const char* mem : {TLOOP_INFO_MAX_MEMORY, TLOOP_INFO_MAX_RSS})
      if (auto m = get(mem)) os << " | mem " << number(*m) << unit(" GiB");
    if (auto l = get(TLOOP_INFO_LOSS)) os << " | loss " << number(*l);
    if (auto g = get(TLOOP_INFO_GRAD_NORM)) os << " | grad_norm " << number(*g);
    for (const auto& [k, v] : stats)
      if (k.rfind(TLOOP_INFO_LR, 0) == 0) os << " | " << (k.size() > 3 ? "lr " + k.substr(3) : k) << " " << number(v);
    if (with_records_)
      for (const auto& [k, v] : stats)
        if (k.rfind(TLOOP_INFO_RECORD, 0) == 0) os << " | " << tloop_hooks::IntervalStats::display_name(k) << " " << number(v);
    return os.str();
  }

  void draw_bar(tloop::Context& ctx, int64_t step, int64_t max_steps) {
    constexpr int kWidth = 30;
    const double fraction = static_cast<double>(step) / static_cast<double>(max_steps);
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_time_).count();
    const double rate = elapsed > 0 ? static_cast<double>(step - start_step_) / elapsed : 0.0;
    const double left = eta(step, max_steps);
    const std::vector<double> loss = ctx.step_info(TLOOP_INFO_LOSS);
    const std::optional<int64_t> epoch = ctx.epoch();
    const std::string epoch_text = epoch ? "epoch " + std::to_string(*epoch) + " " : "";
    char buf[256];
    std::snprintf(buf, sizeof(buf), "\r%s[%s] %3.0f%% %lld/%lld | %.1f steps/s | ETA %s | loss %s\033[K", epoch_text.c_str(),
                  bar.c_str(), fraction * 100.0, static_cast<long long>(step), static_cast<long long>(max_steps), rate,
                  std::isfinite(left) ? duration(left).c_str() : "?", loss.empty() ? "-" : number(mean(loss)).c_str());
    std::fputs(buf, stdout);
    std::fflush(stdout);
  }

  int64_t interval_;
  tloop_hooks::IntervalStats stats_;
  bool with_records_;
  int64_t eta_warmup_;
  bool units_;
  bool live_ = false;
  int64_t start_step_ = 0, warm_step_ = -1;
  Clock::time_point start_time_, warm_time_, last_draw_, eval_start_, eval_last_line_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Progress>())
