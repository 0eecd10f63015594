#include "run.h"
#include "spec_detail.h"

#include "autocast_scope.h"
#include "log.h"
#include "rng_state.h"
#include "text.h"

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <tloop/keys.h>

#include <chrono>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <sstream>

namespace tloop {
namespace fs = std::filesystem;

Catalog load_catalog(const PluginSearch& search) {
  Catalog catalog;
  const std::vector<std::string> problems = catalog.scan(search);
  if (!problems.empty()) throw PluginLoadError(join(problems, "\n"));
  return catalog;
}

namespace {

// The built-in receiver of every log call: one JSON object per call with the
// step and the flattened keys, appended and flushed so it can be read (tail -f,
// pandas) while the run goes on. Non-finite values are written as null. A
// run that starts at step S (resumed) logs the steps after S again: their
// rows from before move to metrics.replaced.jsonl, so that metrics.jsonl
// holds each step once and nothing is lost.
class MetricsFile {
 public:
  // Nothing is written before the run starts: a run refused in resume
  // leaves the previous metrics.jsonl as it was.
  explicit MetricsFile(fs::path path) : path_(std::move(path)) {}

  void write(int64_t step, const Metrics& metrics) {
    if (!out_.is_open()) open();
    nlohmann::ordered_json row;
    row["step"] = step;
    for (const auto& [k, v] : metrics) row[k] = std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
    out_ << row.dump() << '\n';
    out_.flush();
    if (!out_) throw std::runtime_error("cannot write " + path_.string());
  }

  void start_at(int64_t start) {
    std::string text;
    {
      std::ifstream in(path_);
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    // A last line without its newline was torn by a kill (or would glue onto the next row).
    bool changed = !text.empty() && text.back() != '\n';
    std::string kept, moved, line;
    std::istringstream lines(text);
    while (std::getline(lines, line)) {
      const auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!row.is_object() || !row.contains("step") || !row["step"].is_number_integer()) {
        changed = true;  // a fragment no reader can use
        continue;
      }
      const bool again = row["step"].get<int64_t>() > start;
      (again ? moved : kept) += line + '\n';
      changed |= again;
    }
    if (!changed) return open();
    if (!moved.empty()) {
      std::ofstream replaced(path_.parent_path() / "metrics.replaced.jsonl", std::ios::app);
      replaced << moved;
      if (!replaced.flush()) throw std::runtime_error("cannot write metrics.replaced.jsonl in " + path_.parent_path().string());
    }
    const fs::path tmp = path_.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << kept;
      if (!out.flush()) throw std::runtime_error("cannot write " + tmp.string());
    }
    out_.close();
    fs::rename(tmp, path_);
    open();
    if (!moved.empty())
      log::info(str("metrics.jsonl: the rows after step ", start,
                    ", which this run logs again, moved to metrics.replaced.jsonl"));
  }

 private:
  void open() {
    out_ = std::ofstream(path_, std::ios::app);
    if (!out_) throw std::runtime_error("cannot open " + path_.string());
  }
  fs::path path_;
  std::ofstream out_;
};

void add_metrics_file(Host& host, const fs::path& path) {
  auto file = std::make_shared<MetricsFile>(path);
  host.add_metrics_sink([file](int64_t step, const Metrics& metrics) { file->write(step, metrics); });
  host.add_start_listener([file](int64_t step) { file->start_at(step); });
}

c10::Device resolve_device(const std::string& device) {
  const bool cuda = torch::cuda::is_available();
  if (device == "auto") return cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  c10::Device d(device);
  if (d.is_cuda()) {
    if (!cuda) throw SpecError({"trainer.device: \"" + device + "\" was asked for, but no CUDA device is available"});
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (d.has_index() && d.index() >= count)
      throw SpecError({str("trainer.device: \"", device, "\" does not exist (", count, " CUDA devices)")});
    if (!d.has_index()) d = c10::Device(c10::kCUDA, 0);
  }
  return d;
}

}  // namespace

std::unique_ptr<Run> Run::prepare(const RunOptions& options) {
  std::unique_ptr<Run> run(new Run());
  toml::table root = parse_spec(options.spec_file, options.overrides);
  run->catalog_ = load_catalog(spec_plugin_search(root, options.spec_file));
  // The device is checked against the machine after validation; its error
  // still names where the spec (or an override) asked for it.
  std::string device_at = options.spec_file;
  if (const toml::node* d = root.at_path("trainer.device").node()) device_at = where(d->source(), options.spec_file);
  run->spec_ = resolve_spec(std::move(root), options.spec_file, run->catalog_);
  try {
    run->device_ = resolve_device(run->spec_.device);
  } catch (const SpecError& e) {
    throw SpecError({device_at + ": " + e.what()});
  }
  return run;
}

void Run::create_plugins() {
  if (host_) return;
  const RunSpec& s = spec_;
  RunInfo info;
  info.max_steps = s.max_steps;
  info.seed = s.seed;
  info.workspace = fs::absolute(s.workspace).lexically_normal().string();
  info.device = device_.str();
  info.resolved_spec = to_toml(s.resolved);
  host_ = std::make_unique<Host>(info);

  // Seed before any plugin creates tensors, so model initialisation repeats.
  at::manual_seed(s.seed);

  task_ = std::make_unique<TaskInstance>(*catalog_.find(s.task.plugin), *host_, s.task.options,
                                         "task (" + s.task.plugin + ")");
  // Hooks are called phase by phase (measure, update, evaluate, monitor,
  // log, save), in spec order within a phase: the order below is the one
  // every event uses, so a checkpoint never depends on where the spec lists
  // a hook.
  std::vector<tloop_hook_phase> phases;
  for (const auto& use : s.hooks) phases.push_back(catalog_.find(use.plugin)->phase);
  for (size_t i : dispatch_order(phases)) {
    const auto& use = s.hooks[i];
    hooks_.push_back(std::make_unique<HookInstance>(*catalog_.find(use.plugin), *host_, use.options,
                                                    use.key_path + " (" + use.plugin + ")", use.state_key,
                                                    on_error_from(use.on_error)));
  }
  evaluator_ = std::make_unique<Evaluator>(s.eval, *host_, *task_, hooks_, device_, autocast_dtype(s.mixed_precision));
  check_eval_spec();
}

namespace {
// "<label> has no split 'vla'; did you mean 'val'? (splits: val, test)"
std::string no_such_split(const std::string& label, const std::string& name, const std::vector<std::string>& splits) {
  std::string msg = label + " has no split '" + name + "'";
  if (const std::string s = closest_match(name, splits); !s.empty()) msg += "; did you mean '" + s + "'?";
  return msg + " (splits: " + join(splits, ", ") + ")";
}
}  // namespace

void Run::check_eval_spec() const {
  const toml::table& ev = *spec_.resolved["eval"].as_table();
  const auto at = [&](const toml::node* n) { return where(n ? n->source() : ev.source(), spec_.file); };
  const std::vector<std::string>& splits = evaluator_->task_splits();
  if (splits.empty()) {
    for (const char* key : {"interval", "interval_epochs", "sanity_batches"})
      if (ev[key].value_or<int64_t>(0) > 0)
        throw SpecError({str(at(ev.get(key)), ": eval.", key, ": ", task_->label(),
                             " declares no evaluation splits (tloop.eval/1), so there is nothing to evaluate")});
    return;
  }
  std::vector<std::string> problems;
  const toml::array* listed = ev["splits"].as_array();
  for (size_t i = 0; listed && i < listed->size(); ++i) {
    const std::string name = listed->get(i)->value_or<std::string>("");
    if (std::find(splits.begin(), splits.end(), name) != splits.end()) continue;
    problems.push_back(str(at(listed->get(i)), ": eval.splits: ", no_such_split(task_->label(), name, splits)));
  }
  if (!problems.empty()) throw SpecError(problems);
}

void Run::execute() {
  build(/*training=*/true);
  // The log file is complete and the time taken known when execute returns,
  // also when it throws (an exit request's summary tells the time too).
  struct Finally {
    double& seconds;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    ~Finally() {
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::flush();
    }
  } finally{seconds_};
  trainer_->train();
}

void Run::build(bool training) {
  const RunSpec& s = spec_;
  create_plugins();
  if (training) open_workspace();
  // Evaluating a checkpoint writes nothing of a run; the lock keeps a
  // training run from saving (or a resume from moving) checkpoints meanwhile.
  else if (fs::is_directory(host_->info().workspace)) try {
      lock_workspace(host_->info().workspace);
    } catch (const std::runtime_error& e) {  // a read-only workspace: nothing can save there either
      log::debug(str("evaluating without the workspace lock: ", e.what()));
    }

  task_->setup();
  host_->close_registration();
  std::vector<at::Tensor> params;
  int64_t numel = 0;
  for (const auto& [name, p] : host_->parameters())
    if (p.requires_grad()) {
      params.push_back(p);
      numel += p.numel();
    }
  if (params.empty()) throw PluginError(task_->label() + " registered no trainable parameters in setup");
  log::info(str("model: ", params.size(), " parameter tensors, ", numel, " values"));

  optimizer_ = std::make_unique<Optimizer>(s.optimizer, params);
  host_->set_param_groups(optimizer_.get());
  if (training) host_->set_hooks(&hooks_);  // evaluating a checkpoint logs to no hook
  trainer_ = std::make_unique<Trainer>(TrainerConfig::from(s, device_), *host_, *task_, hooks_, *optimizer_,
                                       evaluator_.get());
  host_->set_run_state([this](StateDict& out) { out = run_state(); },
                       [this](const StateDict& in) { load_run_state(in); });
}

void Run::open_workspace() {
  const RunSpec& s = spec_;
  const RunInfo& info = host_->info();
  // Everything is valid: now the workspace may be written, by this run alone.
  // A workspace that cannot hold a run is bad input, like a wrong key.
  try {
    fs::create_directories(info.workspace);
    lock_workspace(info.workspace);
    fs::create_directories(fs::path(info.workspace) / "logs");
    for (const char* file : {"spec.resolved.toml", "metrics.jsonl", "metrics.replaced.jsonl", "logs/tloop.log"})
      if (const fs::path p = fs::path(info.workspace) / file; fs::exists(p) && !fs::is_regular_file(p))
        throw std::invalid_argument(p.string() + " is not a file");
    log::set_file_sink((fs::path(info.workspace) / "logs" / "tloop.log").string());
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    throw std::invalid_argument("workspace " + info.workspace + " cannot be used: " + e.what());
  }
  // Written once the run has started (after resume and before_train): a run refused before
  // leaves the previous run's files as they were.
  const fs::path resolved = fs::path(info.workspace) / "spec.resolved.toml";
  host_->add_start_listener([resolved, text = info.resolved_spec](int64_t) {
    std::ofstream out(resolved);
    out << "# The fully resolved run spec of this run (defaults filled), written by tloop.\n" << text;
    if (!out.flush()) throw std::runtime_error("cannot write " + resolved.string());
  });
  add_metrics_file(*host_, fs::path(info.workspace) / "metrics.jsonl");
  log::info(str("run '", s.name, "': workspace ", info.workspace, ", device ", info.device, ", task ", s.task.plugin,
                ", ", s.hooks.size(), " hooks"));
}

Metrics Run::evaluate_checkpoint(const std::string& checkpoint, std::vector<std::string> splits, bool predict) {
  // The hooks that load checkpoints (checkpointing: its option `load`) load this one.
  size_t loaders = 0;
  for (auto& use : spec_.hooks) {
    const auto& schema = catalog_.find(use.plugin)->schema;
    if (std::any_of(schema.begin(), schema.end(),
                    [](const OptionSpec& o) { return o.name == "load" && o.type == TLOOP_TYPE_STRING; })) {
      use.options.insert_or_assign("load", checkpoint);
      ++loaders;
    }
  }
  if (loaders == 0)
    throw std::invalid_argument(spec_.file + ": no hook of the spec loads checkpoints (a hook with a `load` option, " +
                                "such as checkpointing); list the one the training run used");
  build(/*training=*/false);
  for (auto& hook : hooks_) hook->resume();
  if (host_->step() == 0)
    throw std::invalid_argument("no checkpoint to evaluate: '" + checkpoint + "' found none for " + spec_.file +
                                " (has the run saved one yet?)");
  const std::vector<std::string>& known = evaluator_->task_splits();
  if (known.empty())
    throw std::invalid_argument(task_->label() + " declares no evaluation splits (tloop.eval/1): nothing to evaluate");
  if (splits.empty()) splits = evaluator_->training_splits();
  for (const auto& split : splits)
    if (std::find(known.begin(), known.end(), split) == known.end())
      throw std::invalid_argument("--split: " + no_such_split(task_->label(), split, known));
  log::info(str(predict ? "predicting" : "evaluating", " the checkpoint of step ", host_->step(), " on ",
                join(splits, ", ")));
  if (!predict) return evaluator_->evaluate(splits, Evaluator::Mode::kStandalone);
  for (const auto& split : splits) {
    Predictions outputs;
    evaluator_->evaluate({split}, Evaluator::Mode::kPredict, &outputs);
    const fs::path dir = fs::path(host_->info().workspace) / "predictions" / split;
    fs::create_directories(dir);
    std::vector<std::string> files;
    int64_t rows = 0;
    for (const auto& [name, parts] : outputs) {
      const at::Tensor all = parts.front().dim() == 0 ? at::stack(parts) : at::cat(parts);
      write_npy((dir / (name + ".npy")).string(), all);
      files.push_back(name + ".npy");
      rows = all.size(0);
    }
    log::info(str("wrote the predictions of step ", host_->step(), " for split '", split, "' (", rows, " rows) to ",
                  dir.string(), ": ", join(files, ", ")));
  }
  return {};
}

Run::~Run() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the workspace lock
}

// One run per workspace (rank 0's, in a distributed run): two would write
// the same checkpoints and logs. An flock on <workspace>/.tloop.lock, which
// the kernel releases however the process ends; the file names the holder.
void Run::lock_workspace(const std::string& workspace) {
  const std::string path = (fs::path(workspace) / ".tloop.lock").string();
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[64] = {};
    const ssize_t n = ::pread(lock_fd_, holder, sizeof(holder) - 1, 0);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string();
    who.erase(who.find_last_not_of(" \n") + 1);
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (error != EWOULDBLOCK) throw std::runtime_error("cannot lock " + path + ": " + std::strerror(error));
    throw std::invalid_argument("workspace " + workspace + " is in use by another tloop run" +
                                (who.empty() ? std::string() : " (" + who + ")") +
                                "; wait for it to end, or give this run another workspace");
  }
  const std::string me = str("pid ", ::getpid(), "\n");
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

StateDict Run::plugin_state() const {
  StateDict state;
  task_->state_dict(state, TLOOP_STATE_TASK);
  for (const auto& hook : hooks_) hook->state_dict(state);
  return state;
}

void Run::load_plugin_state(const StateDict& state) {
  task_->load_state_dict(state, TLOOP_STATE_TASK);
  for (const auto& hook : hooks_) hook->load_state_dict(state);
}

namespace {

template <class T>
const T& state_get(const StateDict& state, const std::string& key) {
  auto it = state.find(key);
  if (it == state.end()) throw std::runtime_error("the saved state has no '" + key + "'");
  const T* v = std::get_if<T>(&it->second);
  if (v == nullptr) throw std::runtime_error("the saved state's '" + key + "' has another type");
  return *v;
}

}  // namespace

StateDict Run::run_state() const {
  StateDict state = plugin_state();
  for (const auto* list : {&host_->parameters(), &host_->buffers()})
    for (const auto& [name, t] : *list) state[TLOOP_STATE_MODEL + name] = t;
  optimizer_->state_dict(host_->parameters(), state);
  state[TLOOP_STATE_STEP] = host_->step();
  state[TLOOP_STATE_BATCHES] = trainer_->batches();
  if (GradScaler* scaler = trainer_->scaler()) {
    state[TLOOP_STATE_GRAD_SCALER_SCALE] = scaler->scale_tensor();
    state[TLOOP_STATE_GRAD_SCALER_GROWTH] = scaler->growth_tracker();
  }
  const RunGenerators gens(device_);
  state[TLOOP_STATE_RNG_CPU] = rng_state(gens.cpu);
  if (gens.cuda) state[TLOOP_STATE_RNG_CUDA] = rng_state(*gens.cuda);
  state[TLOOP_STATE_META_SPEC] = host_->info().resolved_spec;
  std::string plugins = task_->plugin().name + " " + task_->plugin().version;
  for (const auto& h : hooks_) plugins += "\n" + h->plugin().name + " " + h->plugin().version;
  state[TLOOP_STATE_META_PLUGINS] = plugins;
  return state;
}

void Run::load_run_state(const StateDict& state) {
  {
    at::NoGradGuard no_grad;
    for (const auto* list : {&host_->parameters(), &host_->buffers()})
      for (const auto& [name, t] : *list) {
        const at::Tensor saved = state_get<at::Tensor>(state, TLOOP_STATE_MODEL + name);
        if (saved.sizes() != t.sizes())
          throw std::runtime_error(tloop::str(TLOOP_STATE_MODEL, name, " has shape ", saved.sizes(), " in the checkpoint but ",
                                       t.sizes(), " in the model"));
        t.copy_(saved);  // in place: the task's module holds the same tensor
      }
  }
  optimizer_->load_state_dict(host_->parameters(), state);
  host_->set_step(state_get<int64_t>(state, TLOOP_STATE_STEP));
  // Checkpoints written before tloop counted batches: every step drew its
  // gradient_accumulation_steps batches, unless it was retried.
  trainer_->set_batches(state.count(TLOOP_STATE_BATCHES) ? state_get<int64_t>(state, TLOOP_STATE_BATCHES)
                                                         : host_->step() * spec_.gradient_accumulation_steps);
  if (GradScaler* scaler = trainer_->scaler()) {
    scaler->scale_tensor().copy_(state_get<at::Tensor>(state, TLOOP_STATE_GRAD_SCALER_SCALE));
    scaler->growth_tracker().copy_(state_get<at::Tensor>(state, TLOOP_STATE_GRAD_SCALER_GROWTH));
  }
  const RunGenerators gens(device_);
  set_rng_state(gens.cpu, state_get<at::Tensor>(state, TLOOP_STATE_RNG_CPU));
  if (gens.cuda && state.count(TLOOP_STATE_RNG_CUDA)) set_rng_state(*gens.cuda, state_get<at::Tensor>(state, TLOOP_STATE_RNG_CUDA));
  load_plugin_state(state);
}

std::string Run::summary() const {
  std::string out = str("finished '", spec_.name, "': ", host_->step(), "/", spec_.max_steps, " steps in ", seconds_,
                        " s");
  if (trainer_->last_loss()) out += str(", loss ", *trainer_->last_loss());
  for (const auto& [k, v] : trainer_->last_records()) out += str(", ", k, " ", v);
  for (const auto& [k, v] : trainer_->last_eval()) {
    char rounded[32];
    std::snprintf(rounded, sizeof(rounded), "%.4f", v);
    out += str(", ", k, " ", rounded);
  }
  return out;
}

}  // namespace tloop
