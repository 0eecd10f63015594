// checkpointing: trainloop's CheckpointingHook, made durable.
//
// A checkpoint is a directory <path>/<step> (or <step>_keep, never pruned):
//   model.pt          {name: tensor} of parameters and buffers; torch.load reads it
//   model.safetensors the same, when `safetensors = true`
//   state.pt          every other tensor of the run state (optimizer, RNG, EMA, ...)
//   state.json        the run state's numbers and strings (step, data position, spec, ...)
//   manifest.json     every file above with its size and CRC-32
// It is written into <path>/.tmp-<name>, each file fsync'd, the directory
// fsync'd, renamed into place, the parent fsync'd, and only then is <path>/latest
// pointed at it (write + fsync + rename); a failed save removes its .tmp-.
// A load verifies the manifest and falls back to the newest valid checkpoint
// when the newest is damaged, moving the damaged one aside (damaged-<name>):
// nothing is deleted but what pruning removes by the keep rules.
//
// With `monitor` (a metric the evaluation logs, "val/loss"), the checkpoints
// of the `keep_best` best values are kept too, as Lightning's
// ModelCheckpoint(monitor, save_top_k) keeps them: a step whose value enters
// the best is saved even off the interval, and <path>/best (written like
// latest) names the best one. The best list is part of the hook's state, so
// it survives pruning and a resume.
#include "../common/monitored_metric.h"
#include "checkpoint_reader.h"
#include "durable_io.h"

#include <tloop/torch.hpp>
#include <tloop/torch_save.hpp>

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <ctime>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <thread>
#include <variant>

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// A checkpoint's content, detached from the live run.
struct Snapshot {
  int64_t step = 0;
  Named model;    // "model/<name>" without the prefix
  Named tensors;  // every other tensor, full key
  json scalars = json::object();
};

const std::map<std::string, int> kSignals = {
    {"SIGINT", SIGINT}, {"SIGTERM", SIGTERM}, {"SIGUSR1", SIGUSR1}, {"SIGHUP", SIGHUP}};

// safetensors: 8-byte little-endian header length, a JSON header, then the raw
// tensor bytes. Written by hand: no C++ safetensors library is packaged for
// Debian, and the format is this small.
std::vector<char> safetensors_bytes(const Named& tensors) {
  static const std::map<at::ScalarType, const char*> dtypes = {
      {at::kFloat, "F32"}, {at::kDouble, "F64"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kLong, "I64"},
      {at::kInt, "I32"},   {at::kShort, "I16"},  {at::kChar, "I8"},   {at::kByte, "U8"},       {at::kBool, "BOOL"}};
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::vector<at::Tensor> contiguous;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    auto it = dtypes.find(c.scalar_type());
    if (it == dtypes.end()) throw tloop::Error("safetensors: unsupported dtype of '" + name + "'");
    const size_t n = c.nbytes();
    header[name] = {{"dtype", it->second}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    contiguous.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  // One allocation of the final size, filled in place: [u64 LE header length][header][data]. (Growing
  // an 8-byte vector with insert() was correct but tripped GCC 12's -Warray-bounds/-Wstringop-overread
  // false positive on vector range insertion.)
  std::vector<char> out(8 + text.size() + offset);
  const uint64_t len = text.size();
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 8, text.data(), text.size());
  char* data = out.data() + 8 + text.size();
  for (const auto& c : contiguous) {
    const size_t n = c.nbytes();
    if (n > 0) std::memcpy(data, c.data_ptr(), n);  // an empty tensor may have no storage (data_ptr null)
    data += n;
  }
  return out;
}

/// Points root/<pointer> ("latest", "best") at checkpoint `name`, durably:
/// written to <pointer>.tmp and fsync'd, renamed over it, the directory fsync'd.
void write_pointer(const fs::path& root, const std::string& pointer, const std::string& name) {
  const std::string text = name + "\n";
  const fs::path tmp = root / (pointer + ".tmp");
  checkpointing::write_file_durably(tmp, text.data(), text.size());
  fs::rename(tmp, root / pointer);
  checkpointing::fsync_directory(root);
}

/// Writes a snapshot as checkpoint directory `name` under `root`, atomically.
void write_checkpoint(const fs::path& root, const std::string& name, const Snapshot& snap, bool safetensors) {
  fs::create_directories(root);
  const fs::path tmp = root / (".tmp-" + name);
  const fs::path final_dir = root / name;
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  // A save that fails (a full disk) leaves nothing of itself behind.
  struct RemoveUnlessDone {
    const fs::path& dir;
    bool done = false;
    ~RemoveUnlessDone() {
      std::error_code ec;
      if (!done) fs::remove_all(dir, ec);
    }
  } cleanup{tmp};

  json manifest = {{"format", 1}, {"step", snap.step}, {"files", json::object()}};
  // Files are streamed to disk as they are produced, checksummed on the way.
  auto put = [&](const std::string& file, const std::function<void(const std::function<void(const char*, size_t)>&)>& produce) {
    checkpointing::DurableFile out(tmp / file);
    produce([&](const char* data, size_t n) { out.append(data, n); });
    out.finish();
    manifest["files"][file] = {{"size", out.size()}, {"crc32", out.crc32()}};
  };
  auto bytes = [](std::vector<char> b) {
    return [b = std::move(b)](const std::function<void(const char*, size_t)>& sink) { sink(b.data(), b.size()); };
  };
  put("model.pt", [&](const auto& sink) { tloop::serialize_tensors(snap.model, sink); });
  if (safetensors) put("model.safetensors", bytes(safetensors_bytes(snap.model)));
  put("state.pt", [&](const auto& sink) { tloop::serialize_tensors(snap.tensors, sink); });
  const std::string scalars = snap.scalars.dump(1);
  put("state.json", bytes(std::vector<char>(scalars.begin(), scalars.end())));
  const std::string manifest_text = manifest.dump(1);
  checkpointing::write_file_durably(tmp / "manifest.json", manifest_text.data(), manifest_text.size());
  checkpointing::fsync_directory(tmp);

  // Replace an existing checkpoint of the same name only once the new one is complete.
  const fs::path old = root / (".old-" + name);
  if (fs::exists(final_dir)) {
    fs::remove_all(old);
    fs::rename(final_dir, old);
  }
  fs::rename(tmp, final_dir);
  cleanup.done = true;
  checkpointing::fsync_directory(root);
  fs::remove_all(old);

  write_pointer(root, "latest", name);
}

// "500" -> 500, "500_keep" -> 500; anything else -> -1.
int64_t step_of(const std::string& name) {
  static const std::regex re("([0-9]+)(_keep)?");
  std::smatch m;
  return std::regex_match(name, m, re) ? std::stoll(m[1].str()) : -1;
}

class Checkpointing : public tloop::Hook {
 public:
  // Saves last, after every other hook: a checkpoint holds their state after
  // the step (the EMA of that step, a logger's aggregates) and follows its log rows.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_SAVE;
  // after_eval gives the monitored metric's values (tloop.eval_events/1).
  static constexpr bool eval_events = true;

  static tloop::PluginInfo info() {
    return {"checkpointing",
            "1.0.0",
            "Durable, verified checkpoints every interval steps; resumes exactly; saves on signals",
            {
                tloop::option("interval", 1000, "steps between checkpoints (the last step is always saved)").at_least(1),
                tloop::option("interval_epochs", 0,
                              "epochs between checkpoints, saved at an epoch's last step, instead of interval "
                              "(0: count steps; needs a task with epochs)")
                    .at_least(0),
                tloop::option("keep_previous", 0, "regular checkpoints kept besides the newest").at_least(0),
                tloop::option("keep_interval", 0, "checkpoints at multiples of this step are kept forever (0: none)")
                    .at_least(0),
                tloop::option("keep_steps", std::vector<int64_t>{}, "checkpoints at these steps are kept forever"),
                tloop::option("path", "checkpoints", "directory, relative to the workspace unless absolute"),
                tloop::option("load", "latest",
                              "\"latest\" (resume when there is one), \"none\", \"best\" (the checkpoint <path>/best "
                              "names; it must exist), a checkpoint's name in path (\"1000\"), or a checkpoint "
                              "directory"),
                tloop::option("monitor", "",
                              "a metric the evaluation logs, by its full key (\"val/accuracy\"): the checkpoints of "
                              "its keep_best best values are kept, each saved when its value comes (even off the "
                              "interval), and <path>/best names the best (\"\": none)"),
                tloop::option("mode", "min", "whether lower (\"min\") or higher (\"max\") values of monitor are better")
                    .one_of({"min", "max"}),
                tloop::optional("keep_best", TLOOP_TYPE_INT,
                                "checkpoints kept for the best values of monitor (with monitor; default 1); one that "
                                "leaves them is pruned like a regular one; a NaN or infinite value never enters")
                    .at_least(0),
                tloop::option("exit_signals", {"SIGTERM", "SIGUSR1"},
                              "signals that save a checkpoint and exit (what schedulers send before a kill; "
                              "[] for none)")
                    .one_of({"SIGTERM", "SIGUSR1", "SIGINT", "SIGHUP", "TERM", "USR1", "INT", "HUP"}),
                tloop::option("allow_fresh_start", false,
                              "when every checkpoint is damaged, start from step 0 instead of stopping "
                              "(the damaged ones are kept, moved aside)"),
                tloop::option("overwrite", false,
                              "with load = \"none\", move existing checkpoints aside into replaced-<time>/ "
                              "instead of refusing to start"),
                tloop::option_int_or_string("exit_code", "128+signal",
                                            "exit code after a signal save: \"128+signal\" or a number")
                    .one_of({"128+signal"})
                    .range(0, 255),
                tloop::option("exit_wait", 0.0, "seconds to wait after a signal save before exiting").at_least(0),
                tloop::option("async", false, "write checkpoints on a background thread"),
                tloop::option("on_save_error", "abort", "when a save fails: abort the run or continue")
                    .one_of({"abort", "continue"}),
                tloop::option("safetensors", false, "also write model.safetensors"),
                tloop::option("save_on_error", true,
                              "when the run fails at a step boundary (a hook's error in before_step, or in "
                              "after_step of a log or save hook) with finite weights, save that step before exiting"),
            }};
  }

  Checkpointing(tloop::Context& ctx, const tloop::Options& o)
      : every_{o.get_int("interval"), o.get_int("interval_epochs")},
        keep_previous_(o.get_int("keep_previous")),
        keep_interval_(o.get_int("keep_interval")),
        load_(o.get_string("load")),
        exit_wait_(o.get_double("exit_wait")),
        async_(o.get_bool("async")),
        abort_on_error_(o.get_string("on_save_error") == "abort"),
        safetensors_(o.get_bool("safetensors")),
        allow_fresh_start_(o.get_bool("allow_fresh_start")),
        overwrite_(o.get_bool("overwrite")),
        save_on_error_(o.get_bool("save_on_error")),
        monitor_(o.get_string("monitor")),
        mode_(o.get_string("mode")),
        keep_best_(o.has("keep_best") ? o.get_int("keep_best") : 1) {
    if (!monitor_.empty()) watched_.emplace(monitor_);
    if (monitor_.empty() && o.has("keep_best"))
      throw std::invalid_argument("keep_best = " + std::to_string(keep_best_) +
                                  " needs monitor, the metric that ranks the checkpoints (\"val/loss\")");
    for (int64_t s : o.get_int_list("keep_steps")) keep_steps_.insert(s);
    for (const auto& name : o.get_string_list("exit_signals")) {
      auto it = kSignals.find(name.rfind("SIG", 0) == 0 ? name : "SIG" + name);
      if (it == kSignals.end()) throw tloop::Error("exit_signals: unknown signal '" + name + "' (SIGTERM, SIGUSR1, SIGINT, SIGHUP)");
      exit_signals_.insert(it->second);
    }
    // trainloop's exit_code: the string "128+signal" (its default) or a number.
    if (auto code = o.get_int_or_string("exit_code"); std::holds_alternative<int64_t>(code))
      exit_code_ = static_cast<int>(std::get<int64_t>(code));
    const fs::path p = o.get_string("path");
    root_ = p.is_absolute() ? p : fs::path(ctx.workspace()) / p;
  }

  ~Checkpointing() override {
    if (pending_.valid()) pending_.wait();  // never leave a writer thread behind
  }

  // Nothing a resume finds is deleted: a damaged checkpoint is moved aside
  // and named, and a run that would overwrite checkpoints refuses (bad input,
  // exit code 2) unless told otherwise.
  void resume(tloop::Context& ctx) override {
    if (std::error_code ec; fs::exists(root_, ec) && !fs::is_directory(root_, ec))
      throw std::invalid_argument("path: " + root_.string() + " is a file, not a checkpoint directory");
    clean_leftovers(ctx);
    if (load_ == "none" || load_.empty()) {
      start_over(ctx);
      return;
    }
    best_pointer_ = read_pointer("best");
    if (load_ != "latest") {
      const fs::path dir = load_ == "best" ? best_checkpoint() : resolve_load(load_);
      if (!fs::is_directory(dir)) throw std::invalid_argument("load: no checkpoint at '" + load_ + "' (" + dir.string() + ")");
      const std::string problem = checkpointing::verify_checkpoint(dir);
      if (!problem.empty()) throw std::invalid_argument("load: checkpoint " + dir.string() + " is damaged: " + problem);
      load(ctx, dir);
      return;
    }
    std::vector<std::string> damaged;
    for (const fs::path& dir : candidates()) {
      const std::string problem = checkpointing::verify_checkpoint(dir);
      if (problem.empty()) {
        load(ctx, dir);
        return;
      }
      const fs::path aside = move_aside(dir, "damaged-" + dir.filename().string());
      ctx.error("checkpoint " + dir.string() + " is damaged: " + problem + "; moved to " + aside.string() +
                " and trying an older one");
      damaged.push_back(dir.filename().string() + " (" + problem + ")");
    }
    if (damaged.empty()) return;  // no checkpoint yet: a new run
    const std::string what = "no valid checkpoint to resume in " + root_.string() + ": " + join(damaged, "; ") +
                             " (each moved aside as damaged-<name>)";
    if (!allow_fresh_start_)
      throw std::invalid_argument(what + "; pick one with load = \"<dir>\", or set allow_fresh_start = true to "
                                         "start from step 0");
    ctx.warn("checkpointing: " + what + "; starting from step 0 (allow_fresh_start = true)");
  }

  void before_train(tloop::Context& ctx) override { every_.require(ctx, "interval_epochs"); }

  // Saving is the last phase: the loggers have read this step's info already,
  // so the timings of a save reach the step info of the step after it.
  void before_step(tloop::Context& ctx) override {
    for (const auto& [key, value] : reported_) ctx.step_info_append(key, value);
    reported_.clear();
  }

  // The monitored metric's value of this step, kept until after_step (the
  // evaluation runs in after_step, before the hooks of the save phase).
  void after_eval(tloop::Context& ctx, const tloop::EvalPass& pass, const tloop::Metrics& metrics) override {
    const std::optional<double> value = watched_ ? watched_->value_in(pass, metrics) : std::nullopt;
    if (!value) return;
    observed_ = {ctx.step(), *value};
    received_ = true;
  }

  void after_step(tloop::Context& ctx) override {
    collect_finished_save(ctx, /*wait=*/false);
    if (watched_) watched_->check_prefix();
    trained_ = true;
    const int64_t step = ctx.step();
    const int sig = ctx.pending_signal();
    const bool exit_now = sig != 0 && exit_signals_.count(sig) > 0;
    // The best list is updated before the save, so that the checkpoint of a
    // step among the best holds a list with that step in it.
    const bool best = observed_ && observed_->first == step && enters_best(ctx, step, observed_->second);
    observed_.reset();
    // As trainloop: a step to keep is saved even off the interval; as
    // Lightning: so is a step among the best of the monitored metric.
    if (every_.due(ctx) || kept(step) || step == ctx.max_steps() || exit_now || best) save(ctx, step);
    if (exit_now) {
      collect_finished_save(ctx, /*wait=*/true);
      const int code = exit_code_.value_or(128 + sig);
      ctx.warn("checkpointing: " + std::string(strsignal(sig)) + " received: checkpoint of step " +
               std::to_string(step) + " saved; exiting with code " + std::to_string(code));
      if (exit_wait_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(exit_wait_));
      ctx.request_exit(code);
    }
  }

  void after_train(tloop::Context& ctx) override {
    collect_finished_save(ctx, /*wait=*/true);
    if (!monitor_.empty() && trained_ && !received_)
      ctx.warn("checkpointing: monitor = \"" + monitor_ + "\" never had a value in this run (no evaluation of " +
               watched_->prefix() + " ran: is [eval] interval set, and does the task evaluate that split?); no best "
               "checkpoint was chosen");
  }

  // The best list (each entry's step, checkpoint name and value, best first)
  // and what it ranks by: a resumed run goes on with it, so its checkpoints
  // survive pruning.
  void state_dict(tloop::Context&, tloop::StateWriter& out) override {
    out.put("monitor", monitor_);
    out.put("mode", mode_.name());
    out.put("best/count", static_cast<int64_t>(best_.size()));
    for (size_t i = 0; i < best_.size(); ++i) {
      const std::string key = "best/" + std::to_string(i) + "/";
      out.put(key + "step", best_[i].step);
      out.put(key + "name", best_[i].name);
      out.put(key + "value", best_[i].value);
    }
  }

  void load_state_dict(tloop::Context& ctx, const tloop::StateReader& in) override {
    best_.clear();
    const std::optional<std::string> monitor = in.get_string("monitor");
    if (!monitor) return;  // a checkpoint from before monitors
    const std::string mode = in.get_string("mode").value_or("min");
    const int64_t count = in.get_int("best/count").value_or(0);
    if (count > 0 && (*monitor != monitor_ || mode != mode_.name())) {
      ctx.warn("checkpointing: the checkpoint's best list ranks monitor = \"" + *monitor + "\" (mode \"" + mode +
               "\"), this run's " + (monitor_.empty() ? std::string("has no monitor")
                                                      : "monitor = \"" + monitor_ + "\" (mode \"" +
                                                            mode_.name() + "\")") +
               ": its best checkpoints are regular ones from now on, pruned like them");
      return;
    }
    for (int64_t i = 0; i < count; ++i) {
      const std::string key = "best/" + std::to_string(i) + "/";
      const auto step = in.get_int(key + "step");
      const auto name = in.get_string(key + "name");
      const auto value = in.get_double(key + "value");
      if (!step || !name || !value || step_of(*name) != *step)
        throw std::invalid_argument("checkpointing: the saved best list's entry " + std::to_string(i) +
                                    " is incomplete or names no checkpoint of its step");
      best_.push_back({*step, *name, *value});
    }
    // A run with a smaller keep_best keeps the best of them.
    if (best_.size() > static_cast<size_t>(keep_best_)) best_.resize(static_cast<size_t>(keep_best_));
  }

  // The run ends with an error. When the host says its state still holds a
  // whole step (never half a step, never non-finite weights), that step is
  // saved, so the work since the last checkpoint survives the error.
  //
  // A run a hook ended early with exit code 0 (early stopping) saves its
  // last step, which its after_step did not save; after a normal end, that
  // step (max_steps) is saved already.
  void finish(tloop::Context& ctx, int exit_code) override {
    if (exit_code == 0) {
      collect_finished_save(ctx, /*wait=*/true);
      const int64_t step = ctx.step();
      if (step <= 0 || step == last_saved_) return;
      save(ctx, step);
      collect_finished_save(ctx, /*wait=*/true);
      ctx.info("checkpointing: the run ended early at step " + std::to_string(step) + "; its checkpoint is saved in " +
               (root_ / name_for(step)).string());
      return;
    }
    collect_finished_save(ctx, /*wait=*/true);  // a background save's failure is reported, not lost
    const int64_t step = ctx.resumable_step();
    if (!save_on_error_ || step <= 0 || step == last_saved_) return;
    save(ctx, step);
    collect_finished_save(ctx, /*wait=*/true);
    ctx.warn("checkpointing: the run failed at the end of step " + std::to_string(step) +
             ": emergency checkpoint of that step saved in " + (root_ / name_for(step)).string() +
             " (save_on_error); the error: " + ctx.run_error());
  }

 private:
  // Newest first: what `latest` names, then every checkpoint by step.
  std::vector<fs::path> candidates() const {
    std::vector<fs::path> out;
    if (const std::string name = read_pointer("latest"); !name.empty() && fs::is_directory(root_ / name))
      out.push_back(root_ / name);
    for (const auto& [step, path] : checkpoints())
      if (std::find(out.begin(), out.end(), path) == out.end()) out.push_back(path);
    return out;
  }

  // The checkpoint name a pointer file (latest, best) holds, or "" when there
  // is none or it holds no checkpoint name.
  std::string read_pointer(const std::string& pointer) const {
    if (!fs::exists(root_ / pointer)) return "";
    std::vector<char> bytes = checkpointing::read_file(root_ / pointer, 4096);  // a name and a newline
    std::string name(bytes.begin(), bytes.end());
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    return step_of(name) >= 0 ? name : "";
  }

  // load = "best": the checkpoint <path>/best names.
  fs::path best_checkpoint() const {
    const fs::path pointer = root_ / "best";
    if (!fs::exists(pointer))
      throw std::invalid_argument("load = \"best\": there is no best checkpoint (" + pointer.string() +
                                  " does not exist; a run with monitor set writes it once its metric has a value)");
    if (best_pointer_.empty())
      throw std::invalid_argument("load = \"best\": " + pointer.string() + " names no checkpoint");
    if (!fs::is_directory(root_ / best_pointer_))
      throw std::invalid_argument("load = \"best\": " + pointer.string() + " names " + best_pointer_ +
                                  ", which is not in " + root_.string());
    return root_ / best_pointer_;
  }

  // Every checkpoint directory (<step> and <step>_keep) with its step, newest first.
  std::vector<std::pair<int64_t, fs::path>> checkpoints() const {
    std::vector<std::pair<int64_t, fs::path>> all;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(root_, ec)) {
      const int64_t step = step_of(entry.path().filename().string());
      if (entry.is_directory() && step >= 0) all.emplace_back(step, entry.path());
    }
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    return all;
  }

  // `dir` renamed to `name` under root_ (with a suffix when that exists): a
  // name that is not a step, so neither resume nor pruning touches it again.
  fs::path move_aside(const fs::path& dir, const std::string& name) const {
    const fs::path target = unused_path(name);
    fs::rename(dir, target);
    return target;
  }

  // root_/name, or root_/name-2, -3, ... when that exists.
  fs::path unused_path(const std::string& name) const {
    fs::path path = root_ / name;
    for (int i = 2; fs::exists(path); ++i) path = root_ / (name + "-" + std::to_string(i));
    return path;
  }

  // load = "none": a new run, which must not overwrite a previous one's checkpoints.
  void start_over(tloop::Context& ctx) const {
    const auto existing = checkpoints();
    if (existing.empty()) return;
    std::vector<std::string> names;  // oldest first
    for (auto it = existing.rbegin(); it != existing.rend(); ++it) names.push_back(it->second.filename().string());
    if (!overwrite_)
      throw std::invalid_argument("load = \"none\" starts from step 0, but " + root_.string() +
                                  " holds checkpoints of an earlier run (" + join(names, ", ") +
                                  ") that it would replace; set overwrite = true to move them aside, "
                                  "or use another path or workspace");
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char stamp[32];
    std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::gmtime(&now));
    const fs::path aside = unused_path(std::string("replaced-") + stamp);
    fs::create_directory(aside);
    for (const auto& [step, dir] : existing) fs::rename(dir, aside / dir.filename());
    for (const char* pointer : {"latest", "best"})
      if (fs::exists(root_ / pointer)) fs::rename(root_ / pointer, aside / pointer);
    ctx.warn("checkpointing: load = \"none\" with overwrite = true: the earlier checkpoints (" + join(names, ", ") +
             ") are moved to " + aside.string());
  }

  static std::string join(const std::vector<std::string>& parts, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
    return out;
  }

  // A save killed half-way leaves .tmp-* (never valid) and .old-* behind.
  void clean_leftovers(tloop::Context& ctx) const {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(root_, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".tmp-", 0) == 0 || name.rfind(".old-", 0) == 0 || name == "latest.tmp" || name == "best.tmp") {
        ctx.debug("checkpointing: removing the leftover " + entry.path().string());
        fs::remove_all(entry.path(), ec);
      }
    }
  }

  // A file that passed its checksum but cannot be read was written so: it is
  // named (bad input, exit 2), with LibTorch's message but not its backtrace.
  template <class Fn>
  static void reading(const fs::path& file, Fn&& fn) {
    try {
      fn();
    } catch (const c10::Error& e) {
      throw std::invalid_argument(file.string() + ": cannot be read: " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      throw std::invalid_argument(file.string() + ": cannot be read: " + e.what());
    }
  }

  // The files load() reads were just checked against the manifest, sizes
  // included, by verify_checkpoint: their size on disk is their bound.
  static constexpr uint64_t kVerified = UINT64_MAX;

  void load(tloop::Context& ctx, const fs::path& dir) {
    tloop::RunState state(ctx);
    reading(dir / "model.pt", [&] {
      for (const auto& [name, t] : tloop::load_tensors(checkpointing::read_file(dir / "model.pt", kVerified)))
        state.put(TLOOP_STATE_MODEL + name, t);
    });
    reading(dir / "state.pt", [&] {
      for (const auto& [name, t] : tloop::load_tensors(checkpointing::read_file(dir / "state.pt", kVerified)))
        state.put(name, t);
    });
    reading(dir / "state.json", [&] {
      for (const auto& [key, value] :
           checkpointing::parse_state_json(checkpointing::read_file(dir / "state.json", kVerified)))
        std::visit([&, &key = key](const auto& v) { state.put(key, v); }, value);
    });
    try {
      state.restore(dir.string());  // the host's reason, if it refuses, is in the error
    } catch (const tloop::Error& e) {
      // A checkpoint that does not fit this run's model or state is the
      // spec's to fix (bad input, exit 2), as a wrong option would be.
      throw std::invalid_argument(std::string(e.what()) +
                                  " (a checkpoint of another model or spec? point load at a matching one, or start "
                                  "over with load = \"none\" and overwrite = true)");
    }
    last_saved_ = ctx.step();     // no emergency save of the step just loaded
    ctx.info("checkpointing: resumed from " + dir.string() + " at step " + std::to_string(ctx.step()));
    // A run killed between a save and the best pointer's update left it behind.
    update_best_pointer(ctx);
  }

  Snapshot snapshot(tloop::Context& ctx, int64_t step, bool copy) {
    tloop::RunState state(ctx);
    state.collect();
    Snapshot snap;
    snap.step = step;
    state.visit([&](const std::string& key, const tloop_state_value& v) {
      switch (v.kind) {
        case TLOOP_STATE_TENSOR: {
          // A background writer needs its own copy: training goes on changing the live tensors.
          at::Tensor t = tloop::from_borrowed(v.tensor).detach();
          t = copy ? t.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true) : t.to(at::kCPU);
          if (key.rfind(TLOOP_STATE_MODEL, 0) == 0) snap.model.emplace_back(key.substr(sizeof(TLOOP_STATE_MODEL) - 1), t);
          else snap.tensors.emplace_back(key, t);
          break;
        }
        case TLOOP_STATE_INT: snap.scalars[key] = {{"int", v.int_value}}; break;
        case TLOOP_STATE_DOUBLE: snap.scalars[key] = {{"double", v.double_value}}; break;
        case TLOOP_STATE_STRING: snap.scalars[key] = {{"string", v.string_value}}; break;
      }
    });
    // model.pt lists tensors in the model's own order (parameters, then
    // buffers), like a Python state_dict, not in key order.
    std::map<std::string, size_t> position;
    const tloop::NamedTensors parameters = tloop::parameters(ctx), buffers = tloop::buffers(ctx);
    for (const auto* list : {&parameters, &buffers})
      for (const auto& [name, _] : *list) position.emplace(name, position.size());
    std::stable_sort(snap.model.begin(), snap.model.end(),
                     [&](const auto& a, const auto& b) { return position[a.first] < position[b.first]; });
    return snap;
  }

  bool kept(int64_t step) const {
    return (keep_interval_ > 0 && step % keep_interval_ == 0) || keep_steps_.count(step) > 0;
  }
  std::string name_for(int64_t step) const { return std::to_string(step) + (kept(step) ? "_keep" : ""); }

  // As trainloop: a bare name ("1000", "latest") is a checkpoint in the
  // checkpoint directory; a path with a directory part is taken as given.
  // "<step>" also finds "<step>_keep", the name a kept checkpoint has.
  fs::path resolve_load(const std::string& load) const {
    const fs::path given(load);
    if (given.is_absolute() || given.has_parent_path()) return fs::absolute(given);
    if (!fs::exists(root_ / given) && fs::is_directory(root_ / (load + "_keep"))) return root_ / (load + "_keep");
    return root_ / given;
  }

  void save(tloop::Context& ctx, int64_t step) {
    if (step == last_saved_) return;
    last_saved_ = step;
    const auto t0 = Clock::now();
    collect_finished_save(ctx, /*wait=*/true);  // at most one save in flight
    const std::string name = name_for(step);
    if (async_) {
      auto snap = std::make_shared<Snapshot>(snapshot(ctx, step, /*copy=*/true));
      const fs::path root = root_;
      const bool st = safetensors_;
      pending_name_ = name;
      pending_started_ = Clock::now();
      pending_ = std::async(std::launch::async, [root, name, snap, st] { write_checkpoint(root, name, *snap, st); });
      report(TLOOP_INFO_CHECKPOINT_STALL, seconds_since(t0));
      return;
    }
    try {
      write_checkpoint(root_, name, snapshot(ctx, step, /*copy=*/false), safetensors_);
    } catch (const std::exception& e) {
      report(TLOOP_INFO_CHECKPOINT_STALL, seconds_since(t0));
      failed(ctx, step, e.what());
      return;
    }
    const double seconds = seconds_since(t0);
    report(TLOOP_INFO_CHECKPOINT_STALL, seconds);
    report(TLOOP_INFO_CHECKPOINT_SAVE_TIME, seconds);
    saved(ctx, name);
  }

  // Surfaces the outcome of a background save (waiting for it when asked).
  void collect_finished_save(tloop::Context& ctx, bool wait) {
    if (!pending_.valid()) return;
    if (!wait && pending_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
    const auto t0 = Clock::now();
    try {
      pending_.get();
    } catch (const std::exception& e) {
      failed(ctx, step_of(pending_name_), e.what());
      return;
    }
    if (wait) report(TLOOP_INFO_CHECKPOINT_WAIT, seconds_since(t0));
    report(TLOOP_INFO_CHECKPOINT_SAVE_TIME, seconds_since(pending_started_));
    saved(ctx, pending_name_);
  }

  void report(const std::string& key, double seconds) { reported_.emplace_back(key, seconds); }

  void saved(tloop::Context& ctx, const std::string& name) {
    ctx.debug("checkpointing: saved " + (root_ / name).string());
    prune(ctx, name);
    update_best_pointer(ctx);
  }

  // Enters `value` of `step` into the best list when it belongs there:
  // strictly better than the worst kept, or fewer than keep_best kept; a NaN
  // or infinite value never does. One pushed out becomes a regular checkpoint.
  bool enters_best(tloop::Context& ctx, int64_t step, double value) {
    if (keep_best_ == 0 || !std::isfinite(value)) return false;
    if (best_.size() >= static_cast<size_t>(keep_best_) && !mode_.better(value, best_.back().value)) return false;
    // After every entry at least as good: an equal value ranks below an earlier one.
    const auto at = std::find_if(best_.begin(), best_.end(), [&](const Best& b) { return mode_.better(value, b.value); });
    best_.insert(at, Best{step, name_for(step), value});
    std::string out;
    if (best_.size() > static_cast<size_t>(keep_best_)) {
      out = "; step " + std::to_string(best_.back().step) + " leaves them";
      best_.pop_back();
    }
    ctx.info("checkpointing: " + monitor_ + " = " + tloop_hooks::format_value(value) + " at step " + std::to_string(step) +
             " is among the best " + std::to_string(keep_best_) + out + "; the best is step " +
             std::to_string(best_.front().step) + " (" + tloop_hooks::format_value(best_.front().value) + ")");
    return true;
  }

  // Points <path>/best at the best checkpoint, once that is on disk (an
  // asynchronous save of it may still be writing).
  void update_best_pointer(tloop::Context& ctx) {
    if (best_.empty() || best_.front().name == best_pointer_) return;
    const std::string& name = best_.front().name;
    if (!fs::is_directory(root_ / name)) return;
    try {
      write_pointer(root_, "best", name);
    } catch (const std::exception& e) {
      const std::string msg = "checkpointing: could not point " + (root_ / "best").string() + " at " + name + ": " +
                              e.what() + " (the checkpoint itself is intact)";
      if (abort_on_error_) throw tloop::Error(msg + "; stopping (on_save_error = \"abort\")");
      ctx.error(msg + "; training continues (on_save_error = \"continue\")");
      return;
    }
    best_pointer_ = name;
  }

  void failed(tloop::Context& ctx, int64_t step, const std::string& what) {
    // A best checkpoint that was not written is not kept as one.
    if (!fs::is_directory(root_ / name_for(step)))
      best_.erase(std::remove_if(best_.begin(), best_.end(), [&](const Best& b) { return b.step == step; }),
                  best_.end());
    const std::string msg = "checkpoint of step " + std::to_string(step) + " failed: " + what +
                            " (the previous checkpoints are intact)";
    if (abort_on_error_) throw tloop::Error(msg + "; stopping (on_save_error = \"abort\")");
    ctx.error(msg + "; training continues (on_save_error = \"continue\")");
  }

  // Keeps the newest checkpoint, `keep_previous` regular ones before it,
  // every _keep one and every one in the best list.
  void prune(tloop::Context& ctx, const std::string& newest) {
    std::vector<std::pair<int64_t, fs::path>> regular;
    for (const auto& [step, dir] : checkpoints()) {
      const std::string name = dir.filename().string();
      const bool kept = name != std::to_string(step);  // "<step>_keep"
      const bool best = std::any_of(best_.begin(), best_.end(), [&](const Best& b) { return b.name == name; });
      if (name != newest && !kept && !best) regular.emplace_back(step, dir);
    }
    std::error_code ec;
    for (size_t i = static_cast<size_t>(keep_previous_); i < regular.size(); ++i) {
      fs::remove_all(regular[i].second, ec);
      if (ec) ctx.error("checkpointing: could not prune " + regular[i].second.string() + ": " + ec.message());
    }
  }

  tloop::Every every_;
  int64_t keep_previous_, keep_interval_;
  std::set<int64_t> keep_steps_;
  std::string load_;
  std::set<int> exit_signals_;
  std::optional<int> exit_code_;
  double exit_wait_;
  bool async_, abort_on_error_, safetensors_, allow_fresh_start_, overwrite_, save_on_error_;
  // Best checkpoints by a monitored metric.
  struct Best {
    int64_t step;
    std::string name;  // the checkpoint's directory name
    double value;
  };
  std::string monitor_;
  std::optional<tloop_hooks::MonitoredMetric> watched_;  // with a monitor
  tloop_hooks::Mode mode_;
  int64_t keep_best_;
  std::vector<Best> best_;                             // best first
  std::optional<std::pair<int64_t, double>> observed_;  // this step's value of monitor
  bool received_ = false;                              // a value came in this run
  bool trained_ = false;                               // a step ran in this run
  std::string best_pointer_;                           // the name <path>/best holds
  std::vector<std::pair<std::string, double>> reported_;  // for the next step's info
  fs::path root_;
  int64_t last_saved_ = -1;
  std::future<void> pending_;
  std::string pending_name_;
  Clock::time_point pending_started_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Checkpointing>())
