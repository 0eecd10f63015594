// ema: an exponential moving average of the model's parameters and buffers,
// with the semantics of torch.optim.swa_utils.AveragedModel(model,
// multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True): the first update
// copies, later ones do ema = decay * ema + (1 - decay) * param, and a count of
// updates is kept like n_averaged. Updates use the fused _foreach_ kernels.
// At the end it writes <workspace>/ema_model.pt, which Python's torch.load reads.
// With eval_with_ema, evaluations see the averaged weights: they are swapped
// into the model in before_eval and the training weights back, bit for bit,
// in after_eval (tloop.eval_events/1).
#include <tloop/torch.hpp>
#include <tloop/torch_save.hpp>

#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>

namespace {

class Ema : public tloop::Hook {
 public:
  // Averages the weights before any checkpoint of the step is written.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_UPDATE;
  static constexpr bool eval_events = true;

  static tloop::PluginInfo info() {
    return {"ema",
            "1.0.0",
            "Exponential moving average of parameters and buffers; writes ema_model.pt",
            {
                tloop::option("decay", 0.999, "ema = decay * ema + (1 - decay) * param").range(0, 1),
                tloop::option("update_interval", 1, "steps between updates").at_least(1),
                tloop::option("start_step", 0, "no updates before this step").at_least(0),
                tloop::option("device", "model", "where the average lives: model (its device) or cpu")
                    .one_of({"model", "cpu"}),
                tloop::option("file", "ema_model.pt", "written in the workspace at the end (\"\" for none)"),
                tloop::option("eval_with_ema", "none",
                              "evaluations ([eval]) of the EMA weights: none; replace (they are evaluated instead "
                              "of the training weights, as val/...); both (the training weights as val/..., the "
                              "EMA's as val_ema/...)")
                    .one_of({"none", "replace", "both"}),
            }};
  }

  Ema(tloop::Context& ctx, const tloop::Options& o)
      : decay_(o.get_double("decay")),
        update_interval_(o.get_int("update_interval")),
        start_step_(o.get_int("start_step")),
        on_cpu_(o.get_string("device") == "cpu"),
        file_(o.get_string("file").empty() ? "" : tloop::workspace_path(ctx, "file", o.get_string("file"))),
        eval_with_ema_(o.get_string("eval_with_ema")) {}

  std::vector<std::string> eval_variants(tloop::Context&) override {
    return eval_with_ema_ == "both" ? std::vector<std::string>{"ema"} : std::vector<std::string>{};
  }

  void before_eval(tloop::Context& ctx, const tloop::EvalPass& pass) override {
    if (!evaluates_ema(pass)) return;
    if (names_.empty()) collect(ctx);  // an evaluation before any step (the sanity pass)
    at::NoGradGuard no_grad;
    training_weights_.clear();
    for (size_t i = 0; i < sources_.size(); ++i) {
      training_weights_.push_back(sources_[i].detach().clone());
      sources_[i].detach().copy_(averaged_[i]);
    }
  }

  void after_eval(tloop::Context&, const tloop::EvalPass& pass, const tloop::Metrics&) override {
    if (!evaluates_ema(pass) || training_weights_.empty()) return;
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < sources_.size(); ++i) sources_[i].detach().copy_(training_weights_[i]);  // bit for bit
    training_weights_.clear();
  }

  void before_train(tloop::Context& ctx) override {
    if (!names_.empty()) return;  // a loaded state already set things up
    collect(ctx);
  }

  void after_step(tloop::Context& ctx) override {
    const int64_t step = ctx.step();
    if (step < start_step_ || step % update_interval_ != 0) return;
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> current = on_cpu_ ? to_cpu(sources_) : sources_;
    if (n_averaged_ == 0) {
      at::_foreach_copy_(averaged_, current);
    } else {
      // Floating tensors are averaged; integer buffers (counters) are copied.
      std::vector<at::Tensor> avg_f, cur_f, avg_i, cur_i;
      for (size_t i = 0; i < averaged_.size(); ++i) {
        (averaged_[i].is_floating_point() ? avg_f : avg_i).push_back(averaged_[i]);
        (averaged_[i].is_floating_point() ? cur_f : cur_i).push_back(current[i]);
      }
      if (!avg_f.empty()) at::_foreach_lerp_(avg_f, cur_f, 1.0 - decay_);
      if (!avg_i.empty()) at::_foreach_copy_(avg_i, cur_i);
    }
    ++n_averaged_;
  }

  void after_train(tloop::Context& ctx) override {
    if (file_.empty() || ctx.rank() != 0) return;
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (size_t i = 0; i < names_.size(); ++i) named.emplace_back(names_[i], averaged_[i]);
    const std::filesystem::path path = file_;
    const std::filesystem::path tmp = path.string() + ".tmp";
    tloop::save_tensors(tmp.string(), named);
    std::filesystem::rename(tmp, path);  // never a half-written file under the final name
    ctx.info("ema: wrote " + path.string() + " (" + std::to_string(n_averaged_) + " updates)");
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override {
    out.put("n_averaged", n_averaged_);
    for (size_t i = 0; i < names_.size(); ++i) tloop::put_tensor(out, "ema_model/" + names_[i], averaged_[i]);
  }

  void load_state_dict(tloop::Context& ctx, const tloop::StateReader& in) override {
    if (names_.empty()) collect(ctx);
    n_averaged_ = in.get_int("n_averaged").value_or(0);
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < names_.size(); ++i) {
      auto t = tloop::get_tensor(in, "ema_model/" + names_[i]);
      if (!t) throw tloop::Error("the saved EMA state has no '" + names_[i] + "'");
      averaged_[i].copy_(*t);
    }
  }

 private:
  void collect(tloop::Context& ctx) {
    for (const auto& list : {tloop::parameters(ctx), tloop::buffers(ctx)})
      for (const auto& [name, t] : list) {
        names_.push_back(name);
        sources_.push_back(t);
      }
    at::NoGradGuard no_grad;
    for (const auto& t : sources_) {
      at::Tensor copy = t.detach().clone();
      averaged_.push_back(on_cpu_ ? copy.to(at::kCPU) : copy);
    }
  }

  bool evaluates_ema(const tloop::EvalPass& pass) const {
    return (eval_with_ema_ == "replace" && pass.variant.empty()) || (eval_with_ema_ == "both" && pass.variant == "ema");
  }

  static std::vector<at::Tensor> to_cpu(const std::vector<at::Tensor>& ts) {
    std::vector<at::Tensor> out;
    out.reserve(ts.size());
    for (const auto& t : ts) out.push_back(t.detach().to(at::kCPU, /*non_blocking=*/false));
    return out;
  }

  double decay_;
  int64_t update_interval_, start_step_;
  bool on_cpu_;
  std::string file_;
  int64_t n_averaged_ = 0;
  std::vector<std::string> names_;
  std::string eval_with_ema_;
  std::vector<at::Tensor> sources_, averaged_;
  std::vector<at::Tensor> training_weights_;  // while the EMA's are swapped in for an evaluation
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Ema>())
