#include "evaluator.h"

#include "autocast_scope.h"
#include "log.h"
#include "rng_state.h"
#include "text.h"

#include <tloop/keys.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <stdexcept>

namespace tloop {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Saves the host's random number generators (CPU, and the run's CUDA
// device) and restores them on exit: an evaluation, dropout in a task's
// eval_forward included, leaves the training's random streams as they were.
class RngGuard {
 public:
  explicit RngGuard(c10::Device device) : gens_(device), cpu_state_(rng_state(gens_.cpu)) {
    if (gens_.cuda) cuda_state_ = rng_state(*gens_.cuda);
  }
  ~RngGuard() {
    set_rng_state(gens_.cpu, cpu_state_);
    if (gens_.cuda) set_rng_state(*gens_.cuda, cuda_state_);
  }
  RngGuard(const RngGuard&) = delete;
  RngGuard& operator=(const RngGuard&) = delete;

 private:
  RunGenerators gens_;
  at::Tensor cpu_state_, cuda_state_;
};

// A pass's running sums: device tensors (one copy to the host at the end of
// the pass, not one sync per batch) and host doubles (records given as doubles).
class Accumulator {
 public:
  void add(const std::string& name, const at::Tensor& sum, double count) {
    const size_t i = index(name);
    at::Tensor s = sum.detach().to(at::kDouble).reshape({});
    device_sums_[i] = device_sums_[i].defined() ? device_sums_[i] + s : s;
    totals_.counts[i] += count;
  }
  void add(const std::string& name, double sum, double count) {
    const size_t i = index(name);
    totals_.sums[i] += sum;
    totals_.counts[i] += count;
  }
  bool has(const std::string& name) const {
    return std::find(totals_.names.begin(), totals_.names.end(), name) != totals_.names.end();
  }
  MetricTotals read() {
    std::vector<at::Tensor> defined;
    for (const auto& s : device_sums_)
      if (s.defined()) defined.push_back(s.to(at::kCPU).reshape({1}));
    if (!defined.empty()) {
      const at::Tensor all = at::cat(defined).contiguous();
      const double* v = all.data_ptr<double>();
      for (size_t i = 0; i < device_sums_.size(); ++i)
        if (device_sums_[i].defined()) totals_.sums[i] += *v++;
    }
    return totals_;
  }

 private:
  size_t index(const std::string& name) {
    const auto it = std::find(totals_.names.begin(), totals_.names.end(), name);
    if (it != totals_.names.end()) return static_cast<size_t>(it - totals_.names.begin());
    totals_.names.push_back(name);
    totals_.sums.push_back(0.0);
    totals_.counts.push_back(0.0);
    device_sums_.emplace_back();
    return totals_.names.size() - 1;
  }
  MetricTotals totals_;
  std::vector<at::Tensor> device_sums_;
};

const at::Tensor* find_output(const Host::NamedTensors& outputs, const std::string& name) {
  for (const auto& [n, t] : outputs)
    if (n == name) return &t;
  return nullptr;
}

}  // namespace

void MetricTotals::merge(const MetricTotals& other) {
  if (other.names != names) throw std::logic_error("merging metric totals of different metrics");
  for (size_t i = 0; i < sums.size(); ++i) {
    sums[i] += other.sums[i];
    counts[i] += other.counts[i];
  }
}

std::string metrics_text(const Metrics& metrics) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : metrics) parts.push_back(str(k, " ", v));
  return join(parts, ", ");
}

Metrics MetricTotals::values(const std::string& prefix) const {
  Metrics out;
  for (size_t i = 0; i < names.size(); ++i) out.emplace_back(prefix + "/" + names[i], sums[i] / counts[i]);
  return out;
}

Evaluator::Evaluator(EvalSpec spec, Host& host, TaskInstance& task, std::vector<std::unique_ptr<HookInstance>>& hooks,
                     c10::Device device, std::optional<c10::ScalarType> autocast)
    : spec_(std::move(spec)), host_(host), task_(task), device_(device), autocast_(autocast) {
  for (auto& hook : hooks)
    if (hook->wants_eval_events()) hooks_.push_back(hook.get());
  task_splits_ = task_.eval_splits();
}

std::vector<std::string> Evaluator::training_splits() const {
  if (!spec_.splits.empty()) return spec_.splits;
  if (task_splits_.empty()) return {};
  return {task_splits_.front()};
}

std::vector<std::string> Evaluator::metrics_of(const std::string& split) {
  auto it = metrics_.find(split);
  if (it == metrics_.end())
    it = metrics_.emplace(split, spec_.metrics.empty() ? task_.default_metrics(split) : spec_.metrics).first;
  return it->second;
}

Metrics Evaluator::evaluate(const std::vector<std::string>& splits, Mode mode, Predictions* predictions) {
  const auto t0 = Clock::now();
  if (!variants_) {
    variants_.emplace();
    static const std::regex name_re("[a-z0-9_]+");
    for (HookInstance* hook : hooks_)
      for (const std::string& v : hook->eval_variants()) {
        if (!std::regex_match(v, name_re))
          throw PluginError(str(hook->label(), " asked for the evaluation variant '", v,
                                "'; a variant is named by [a-z0-9_]+"));
        for (const auto& [other, owner] : *variants_)
          if (other == v) throw PluginError(str(hook->label(), " and ", owner->label(), " both ask for the evaluation variant '", v, "'"));
        variants_->emplace_back(v, hook);
      }
  }
  Metrics all;
  for (const std::string& split : splits) {
    std::vector<std::string> variants = {""};
    if (mode != Mode::kPredict)
      for (const auto& [v, hook] : *variants_) variants.push_back(v);
    for (const std::string& variant : variants) {
      Metrics m = pass(split, variant, mode, variant.empty() ? predictions : nullptr);
      all.insert(all.end(), m.begin(), m.end());
    }
  }
  if (mode == Mode::kTraining) host_.log_metrics(all);  // one row per evaluation, every split and variant
  last_seconds_ = seconds_since(t0);
  return all;
}

Metrics Evaluator::pass(const std::string& split, const std::string& variant, Mode mode, Predictions* predictions) {
  const bool sanity = mode == Mode::kSanity, predict = mode == Mode::kPredict;
  const std::string prefix = variant.empty() ? split : split + "_" + variant;
  const std::vector<std::string> metrics = predict ? std::vector<std::string>{} : metrics_of(split);
  const int64_t limit = sanity ? spec_.sanity_batches : predict ? 0 : spec_.max_batches;

  RngGuard rng(device_);
  at::NoGradGuard no_grad;
  std::optional<int64_t> batches = task_.eval_begin(split);
  if (limit > 0) batches = batches ? std::min(*batches, limit) : limit;
  tloop_eval_pass info{sizeof(tloop_eval_pass), split.c_str(), variant.c_str(), prefix.c_str(),
                       static_cast<int32_t>(sanity), static_cast<int32_t>(predict), batches.value_or(-1)};
  for (HookInstance* hook : hooks_) hook->before_eval(info);

  task_.set_training(false);
  struct TrainingModeBack {  // on an exception; the normal path sets it and reports failures
    TaskInstance& task;
    bool done = false;
    ~TrainingModeBack() {
      if (!done) try {
          task.set_training(true);
        } catch (...) {
        }
    }
  } training_back{task_};

  Accumulator sums;
  int64_t batch = 0;
  for (; limit == 0 || batch < limit; ++batch) {
    if (!task_.eval_next()) break;
    host_.micro_records().clear();
    {
      AutocastScope autocast(device_.type(), autocast_);
      host_.begin_forward();
      struct EndForward {
        Host& host;
        ~EndForward() { host.end_forward(); }
      } end_forward{host_};
      task_.eval_forward(predict);
    }
    const Host::NamedTensors& outputs = host_.published();
    const Host::NamedTensors records = host_.take_tensor_records();
    // A batch's samples: the rows of its targets, else of its first output.
    double samples = 1.0;
    const at::Tensor* targets = find_output(outputs, "targets");
    if (const at::Tensor* rows = targets ? targets : outputs.empty() ? nullptr : &outputs.front().second;
        rows && rows->dim() > 0)
      samples = static_cast<double>(rows->size(0));

    const auto need = [&](const std::string& metric, const char* name) -> const at::Tensor& {
      if (const at::Tensor* t = find_output(outputs, name)) return *t;
      std::vector<std::string> names;
      for (const auto& [n, _] : outputs) names.push_back("'" + n + "'");
      throw std::invalid_argument(tloop::str("eval.metrics: '", metric, "' needs the output '", name, "', which ",
                                      task_.label(), " did not publish in eval_forward of split '", split,
                                      "' (published: ", names.empty() ? "nothing" : join(names, ", "), ")"));
    };
    for (const std::string& metric : metrics) {
      if (metric == "accuracy" || metric == "top_k_accuracy") {
        const at::Tensor& logits = need(metric, "logits");
        const at::Tensor& target = need(metric, "targets");
        if (logits.dim() < 1 || logits.numel() / std::max<int64_t>(logits.size(-1), 1) != target.numel())
          throw std::invalid_argument(tloop::str("eval.metrics: '", metric, "' needs logits [samples, classes] and one ",
                                          "class index per sample in targets; ", task_.label(), " published logits ",
                                          logits.sizes(), " and targets ", target.sizes()));
        at::Tensor flat_logits = logits.reshape({-1, logits.size(-1)});
        at::Tensor flat_targets = target.reshape({-1, 1}).to(at::kLong);
        if (metric == "accuracy") {
          sums.add(metric, flat_logits.argmax(-1, true).eq(flat_targets).sum(), static_cast<double>(flat_targets.numel()));
        } else {
          if (spec_.top_k > flat_logits.size(-1))
            throw std::invalid_argument(str("eval.top_k = ", spec_.top_k, " but the logits of split '", split, "' have ",
                                            flat_logits.size(-1), " classes"));
          at::Tensor top = std::get<1>(flat_logits.topk(spec_.top_k, -1));
          sums.add(str("top_", spec_.top_k, "_accuracy"), top.eq(flat_targets).any(-1).sum(),
                   static_cast<double>(flat_targets.numel()));
        }
      } else if (metric == "mse" || metric == "mae") {
        const at::Tensor& p = need(metric, "predictions");
        const at::Tensor& t = need(metric, "targets");
        if (p.numel() != t.numel())
          throw std::invalid_argument(tloop::str("eval.metrics: '", metric, "' compares predictions and targets element by ",
                                          "element; ", task_.label(), " published predictions ", p.sizes(),
                                          " and targets ", t.sizes()));
        at::Tensor d = p.to(at::kDouble).reshape({-1}) - t.to(at::kDouble).reshape({-1});
        sums.add(metric, metric == "mse" ? (d * d).sum() : d.abs().sum(), static_cast<double>(d.numel()));
      } else {  // mean:<output>
        const std::string name = metric.substr(5);
        const at::Tensor& v = need(metric, name.c_str());
        sums.add(name, v.to(at::kDouble).sum(), static_cast<double>(v.numel()));
      }
    }
    // The task's records: each a batch mean, weighted by the batch's samples.
    const auto add_record = [&](const std::string& key, const auto& value) {
      for (const std::string& metric : metrics)
        if (key == metric || (metric.rfind("mean:", 0) == 0 && key == metric.substr(5)))
          throw std::invalid_argument(str(task_.label(), " records '", key, "' in eval_forward, which is also the name ",
                                          "of a metric in eval.metrics; rename one"));
      sums.add(key, value * samples, samples);  // a tensor stays on its device; a double is added on the host
    };
    for (const auto& [key, t] : records) add_record(key, t);
    for (const auto& [key, v] : host_.micro_records()) add_record(key, v);
    for (const auto& [name, t] : host_.named_losses()) add_record(TLOOP_INFO_LOSS_TERM + name, t);
    if (predictions)
      for (const auto& [output, t] : outputs) {
        const std::string& name = output;  // a lambda cannot capture a structured binding before C++20
        auto it = std::find_if(predictions->begin(), predictions->end(), [&](const auto& p) { return p.first == name; });
        if (it == predictions->end()) it = predictions->insert(predictions->end(), {name, {}});
        it->second.push_back(t.detach().to(at::kCPU));
      }
    host_.clear_published();
    for (HookInstance* hook : hooks_) hook->after_eval_batch(info, batch + 1);
  }
  if (batch == 0)
    throw std::invalid_argument(str(task_.label(), ": split '", split, "' gave no batch to evaluate"));
  task_.eval_end(split);
  training_back.done = true;
  task_.set_training(true);

  Metrics values = sums.read().values(prefix);
  if (!sanity && !predict) log::info(str("step ", host_.step(), ": ", metrics_text(values), " (", batch, " batches)"));
  const std::vector<tloop_metric> raw = abi_metrics(values);
  for (HookInstance* hook : hooks_) hook->after_eval(info, raw.data(), raw.size());
  return values;
}

// The .npy format (NumPy's format 1.0): a magic string, a Python-literal
// header padded to 64 bytes, then the raw little-endian data in C order.
// Written by hand: it is this small, and NumPy reads it without tloop.
void write_npy(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU);
  if (t.scalar_type() == at::kBFloat16) t = t.to(at::kFloat);  // NumPy has no bfloat16
  t = t.contiguous();
  const char* descr = nullptr;
  switch (t.scalar_type()) {
    case at::kFloat: descr = "<f4"; break;
    case at::kDouble: descr = "<f8"; break;
    case at::kHalf: descr = "<f2"; break;
    case at::kLong: descr = "<i8"; break;
    case at::kInt: descr = "<i4"; break;
    case at::kShort: descr = "<i2"; break;
    case at::kChar: descr = "|i1"; break;
    case at::kByte: descr = "|u1"; break;
    case at::kBool: descr = "|b1"; break;
    default: throw std::invalid_argument(str("predictions: cannot write dtype ", c10::toString(t.scalar_type()), " as .npy"));
  }
  std::string shape;
  for (int64_t d : t.sizes()) shape += std::to_string(d) + ", ";
  if (t.dim() > 1) shape.erase(shape.size() - 2);
  std::string header = str("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const uint16_t len = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    out.write(len_le, 2);
    out << header;
    if (t.nbytes() > 0) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    if (!out.flush()) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace tloop
