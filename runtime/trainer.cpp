#include "trainer.h"

#include "autocast_scope.h"

#include "exit_codes.h"
#include "log.h"
#include "signals.h"
#include "text.h"

#include <tloop/keys.h>

#include <ATen/TensorOperators.h>
#include <ATen/record_function.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <chrono>
#include <cstring>
#include <cmath>

namespace tloop {
namespace {

using Clock = std::chrono::steady_clock;
// Forwards in one step that return no loss before the step fails.
constexpr int64_t kMaxForwardsWithoutLoss = 10000;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string records_text(const Metrics& records) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : records) parts.push_back(str(k, "=", v));
  return parts.empty() ? "no records" : "records: " + join(parts, ", ");
}

}  // namespace

TrainerConfig TrainerConfig::from(const RunSpec& spec, c10::Device device) {
  TrainerConfig c;
  c.max_steps = spec.max_steps;
  c.gradient_accumulation_steps = spec.gradient_accumulation_steps;
  c.grad_clip = spec.grad_clip;
  c.autocast_dtype = tloop::autocast_dtype(spec.mixed_precision);
  c.max_non_finite_grad_retries = spec.max_non_finite_grad_retries;
  c.signal_grace = spec.signal_grace;
  c.scheduler = spec.scheduler;
  c.device = device;
  c.eval = spec.eval;
  return c;
}

Trainer::Trainer(TrainerConfig config, Host& host, TaskInstance& task,
                 std::vector<std::unique_ptr<HookInstance>>& hooks, Optimizer& optimizer, Evaluator* evaluator)
    : config_(std::move(config)), host_(host), task_(task), hooks_(hooks), optimizer_(optimizer), evaluator_(evaluator) {
  if (!evaluator_ || evaluator_->task_splits().empty()) config_.eval = EvalSpec{};
  for (const auto& [name, p] : host_.parameters())
    if (p.requires_grad()) params_.push_back(p);
  for (auto& hook : hooks_)
    if (hook->wants_micro_step_events()) micro_step_hooks_.push_back(hook.get());
  batches_per_epoch_ = task_.batches_per_epoch();
  if (batches_per_epoch_)
    log::info(str(task_.label(), ": ", *batches_per_epoch_, " batches per epoch (",
                  static_cast<double>(*batches_per_epoch_) / static_cast<double>(config_.gradient_accumulation_steps),
                  " steps)"));
  if (config_.autocast_dtype == c10::kHalf) scaler_ = std::make_unique<GradScaler>(config_.device);
  if (config_.eval.interval_epochs > 0 && !batches_per_epoch_)
    throw std::invalid_argument(str("eval.interval_epochs = ", config_.eval.interval_epochs, " counts epochs, but ",
                                    task_.label(), " declares no epoch length (tloop.epochs/1); give eval.interval in steps"));
}

bool Trainer::eval_due(int64_t epochs_before) const {
  const EvalSpec& e = config_.eval;
  if (!e.on()) return false;
  if (host_.step() == config_.max_steps) return true;
  if (e.interval > 0 && host_.step() % e.interval == 0) return true;
  return e.interval_epochs > 0 && epochs_done() / e.interval_epochs > epochs_before / e.interval_epochs;
}

void Trainer::evaluate_step() {
  last_eval_ = evaluator_->evaluate(evaluator_->training_splits(), Evaluator::Mode::kTraining);
  host_.step_info()[TLOOP_INFO_EVAL_TIME].push_back(evaluator_->last_seconds());
}

void Trainer::for_each_hook(void (HookInstance::*event)()) {
  for (auto& hook : hooks_) ((*hook).*event)();
}

void Trainer::train() {
  try {
    run_steps();
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    const int code = exit_code_of(error);
    try {
      std::rethrow_exception(error);
    } catch (const ExitRequested&) {  // ends the run without an error
    } catch (const Interrupted&) {
    } catch (const std::exception& e) {
      host_.set_run_failure(e.what(), resumable_step());
    } catch (...) {
      host_.set_run_failure("unknown error", std::nullopt);
    }
    for (auto& hook : hooks_) hook->finish(code);
    throw;
  }
  for (auto& hook : hooks_) hook->finish(0);
}

std::optional<int64_t> Trainer::resumable_step() const {
  if (!boundary_) return std::nullopt;
  std::vector<at::Tensor> state;
  for (const auto* list : {&host_.parameters(), &host_.buffers()})
    for (const auto& [name, t] : *list)
      if (at::isFloatingType(t.scalar_type())) state.push_back(t.detach());
  if (!std::isfinite(total_grad_norm(state, INFINITY).item<double>())) {
    log::warn(str("step ", *boundary_, ": the weights are not finite, so the run's state is not offered for saving"));
    return std::nullopt;
  }
  return boundary_;
}

void Trainer::run_steps() {
  for_each_hook(&HookInstance::resume);  // a checkpointing hook may restore the step here
  // The learning rate of the next step is a function of the steps done,
  // which also makes a resumed run pick up exactly where it stopped.
  optimizer_.set_lr_factor(lr_factor(config_.scheduler, host_.step(), config_.max_steps));
  // Hooks see the epoch from before_train on: whether the task has epochs
  // at all, and where a resumed run stands.
  if (batches_per_epoch_) host_.step_info()[TLOOP_INFO_EPOCH] = {static_cast<double>(epochs_done())};
  for_each_hook(&HookInstance::before_train);
  // A short evaluation before the first step (Lightning's sanity check):
  // a broken evaluation fails now, not after hours of training.
  if (config_.eval.sanity_batches > 0 && !host_.exit_requested()) {
    const Metrics m = evaluator_->evaluate(evaluator_->training_splits(), Evaluator::Mode::kSanity);
    log::info(str("sanity check passed (", config_.eval.sanity_batches, " batches per split): ", metrics_text(m)));
  }
  // The run has started: nothing refused it. Only now are the workspace's
  // spec.resolved.toml and metrics.jsonl written.
  host_.started();
  boundary_signal_ = pending_signal();  // a signal before the first step: no step runs
  while (host_.step() < config_.max_steps) {
    if (auto code = host_.exit_requested()) throw ExitRequested(*code);
    if (boundary_signal_) throw Interrupted(boundary_signal_);
    host_.set_step(host_.step() + 1);
    host_.step_info().clear();
    run_step();
  }
  if (auto code = host_.exit_requested()) throw ExitRequested(*code);
  boundary_ = host_.step();
  for_each_hook(&HookInstance::after_train);
  boundary_.reset();
}

void Trainer::run_step() {
  // The step's profiler range, under the name torch.profiler gives steps
  // (trace readers find iterations by it); costs one check when no profiler runs.
  RECORD_USER_SCOPE(str("ProfilerStep#", host_.step()));
  const auto t0 = Clock::now();
  StepInfo& info = host_.step_info();
  const int64_t epochs_before = batches_per_epoch_ ? epochs_done() : 0;
  if (batches_per_epoch_) info[TLOOP_INFO_EPOCH].push_back(static_cast<double>(epochs_before));
  boundary_ = host_.step() - 1;
  for_each_hook(&HookInstance::before_step);
  boundary_.reset();

  int64_t retries = 0;
  for (;;) {
    accumulate();
    if (scaler_) {
      scaler_->unscale(grads());  // inf/nan here makes the scaler skip the step
      break;
    }
    // The infinity norm is finite exactly when every element is (an L2 norm
    // overflows for large finite gradients); trainloop checks the same.
    const double norm = total_grad_norm(grads(), INFINITY).item<double>();
    if (std::isfinite(norm)) break;
    optimizer_.zero_grad();
    ++retries;
    if (config_.max_non_finite_grad_retries && retries > *config_.max_non_finite_grad_retries)
      throw TrainingError(str("step ", host_.step(), ": gradients are not finite after ", retries - 1,
                              " retries (trainer.max_non_finite_grad_retries = ", *config_.max_non_finite_grad_retries,
                              "); lower the learning rate, clip gradients or check the data"));
    non_finite_grads_(str("step ", host_.step(), ": gradients are not finite (max |g| ", norm,
                          "); retrying the step (retry ", retries, ")"));
    check_signal_mid_step(/*retrying=*/true, 0, retries);
    // A retried attempt's losses and records do not belong to the step; its
    // fetches' times do (the step waited for them), as in trainloop.
    info.erase(TLOOP_INFO_LOSS);
    for (auto it = info.begin(); it != info.end();)
      it = it->first.rfind(TLOOP_INFO_RECORD, 0) == 0 || it->first.rfind(TLOOP_INFO_LOSS_TERM, 0) == 0 ? info.erase(it) : ++it;
  }

  for_each_hook(&HookInstance::before_optimizer_step);
  if (config_.grad_clip) {
    RECORD_USER_SCOPE("tloop::clip_grad_norm");
    // torch.nn.utils.clip_grad_norm_, op for op: the coefficient is computed
    // in the gradients' dtype (Python's `max_norm / t` is reciprocal(t) *
    // max_norm) and always applied, so the clipped values match bit for bit.
    const std::vector<at::Tensor> g = grads();
    at::Tensor norm = total_grad_norm(g, 2.0);
    info[TLOOP_INFO_GRAD_NORM].push_back(norm.item<double>());  // before clipping, like clip_grad_norm_'s return value
    if (!g.empty()) at::_foreach_mul_(g, at::clamp_max(at::reciprocal(norm + 1e-6) * *config_.grad_clip, 1.0));
  }
  for (size_t i = 0; i < optimizer_.count(); ++i) info[TLOOP_INFO_LR + optimizer_.name(i)].push_back(optimizer_.lr(i));
  if (scaler_) {
    if (!scaler_->found_inf()) optimizer_.step();
    info[TLOOP_INFO_LOSS_SCALE].push_back(scaler_->current_scale());
    scaler_->update();
  } else {
    optimizer_.step();
  }
  optimizer_.zero_grad();
  optimizer_.set_lr_factor(lr_factor(config_.scheduler, host_.step(), config_.max_steps));

  info[TLOOP_INFO_RETRIES].push_back(static_cast<double>(retries));
  info[TLOOP_INFO_STEP_TIME].push_back(seconds_since(t0));
  if (batches_per_epoch_) info[TLOOP_INFO_EPOCH_END].push_back(static_cast<double>(epochs_done() - epochs_before));
  // The loop stops after this step only for a signal that was already
  // pending when after_step began, so every hook's after_step saw it (a
  // checkpointing hook saves on it); a later one waits for the next step.
  boundary_signal_ = pending_signal();
  // The evaluation runs after the state updates (ema) and before the hooks
  // of the evaluate, monitor, log and save phases, which see its metrics.
  bool evaluated = !eval_due(epochs_before);
  for (auto& hook : hooks_) {
    if (!evaluated && phase_rank(hook->phase()) >= phase_rank(TLOOP_PHASE_EVALUATE)) {
      boundary_.reset();  // weights may be swapped (ema): no emergency save from inside
      evaluate_step();
      evaluated = true;
    }
    const bool state_done = hook->phase() == TLOOP_PHASE_LOG || hook->phase() == TLOOP_PHASE_SAVE;
    boundary_ = state_done ? std::optional<int64_t>(host_.step()) : std::nullopt;
    hook->after_step();
  }
  boundary_.reset();
  if (!evaluated) evaluate_step();
}

void Trainer::accumulate() {
  StepInfo& info = host_.step_info();
  const c10::DeviceType device_type = config_.device.type();
  int64_t micro_steps = 0;  // with a backward: what gradient_accumulation_steps counts
  for (int64_t forwards = 0; micro_steps < config_.gradient_accumulation_steps; ++forwards) {
    if (forwards > 0) check_signal_mid_step(/*retrying=*/false, micro_steps, 0);
    const auto t0 = Clock::now();
    {
      RECORD_USER_SCOPE("tloop::next_batch");
      task_.next_batch();
    }
    ++batches_;
    info[TLOOP_INFO_DATA_TIME].push_back(seconds_since(t0));

    host_.micro_records().clear();
    std::optional<at::Tensor> loss;
    {
      RECORD_USER_SCOPE("tloop::forward");
      AutocastScope autocast(device_type, config_.autocast_dtype);
      host_.begin_forward();
      struct EndForward {
        Host& host;
        ~EndForward() { host.end_forward(); }
      } end_forward{host_};
      loss = task_.forward();
    }
    if (!host_.named_losses().empty()) loss = sum_of_named_losses(loss.has_value());
    const Metrics& records = host_.micro_records();
    for (const auto& [k, v] : records) {
      info[TLOOP_INFO_RECORD + k].push_back(v);
      last_records_[k] = v;
    }
    for (HookInstance* hook : micro_step_hooks_) hook->after_forward(forwards);
    host_.clear_published();  // hooks had them in after_forward; the graph behind them can go
    if (!loss) {
      // A task that never returns a loss would spin in this step for ever.
      if (forwards + 1 - micro_steps >= kMaxForwardsWithoutLoss)
        throw TrainingError(str("step ", host_.step(), ": ", task_.label(), " returned no loss in ",
                                kMaxForwardsWithoutLoss, " forwards of one step; a step needs ",
                                config_.gradient_accumulation_steps, " forwards that return a loss"));
      if (!warned_none_loss_) {
        log::warn(str("step ", host_.step(), ": the task returned no loss; skipping backward for that micro-step ",
                      "(it does not count towards gradient_accumulation_steps; warned once)"));
        warned_none_loss_ = true;
      }
      continue;
    }
    if (loss->numel() != 1)
      throw TrainingError(str(task_.label(), " returned a loss with ", loss->numel(), " elements; it must be a scalar"));
    if (!at::isFloatingType(loss->scalar_type()))
      throw TrainingError(str(task_.label(), " returned a loss of dtype ", c10::toString(loss->scalar_type()),
                              "; it must be a floating-point scalar"));
    if (!loss->requires_grad())
      throw TrainingError(str(task_.label(), " returned a loss that does not require grad (detached, or computed ",
                              "without the registered parameters); backward would have nothing to do"));
    const double value = loss->item<double>();
    if (!std::isfinite(value))
      non_finite_loss_(str("step ", host_.step(), ": the loss is not finite (", value, "); ", records_text(records)));
    info[TLOOP_INFO_LOSS].push_back(value);
    last_loss_ = value;

    at::Tensor scaled = *loss / static_cast<double>(config_.gradient_accumulation_steps);
    if (scaler_) scaled = scaler_->scale(scaled);
    for (HookInstance* hook : micro_step_hooks_) hook->before_backward(forwards);
    {
      RECORD_USER_SCOPE("tloop::backward");
      scaled.backward();
    }
    for (HookInstance* hook : micro_step_hooks_) hook->after_backward(forwards);
    ++micro_steps;
  }
  read_step_scalars();
}

void Trainer::check_signal_mid_step(bool retrying, int64_t micro_steps, int64_t retries) {
  const int sig = pending_signal();
  if (sig == 0) return;
  const std::string name = strsignal(sig) ? strsignal(sig) : str("signal ", sig);
  if (!signal_seen_) signal_seen_ = Clock::now();
  if (!retrying && seconds_since(*signal_seen_) < config_.signal_grace) {
    if (!warned_finishing_step_)
      log::warn(str(name, " received in step ", host_.step(), " (", micro_steps, " of ",
                    config_.gradient_accumulation_steps, " micro-steps done): finishing the step, for at most ",
                    config_.signal_grace, " s (trainer.signal_grace)"));
    warned_finishing_step_ = true;
    return;
  }
  // What a checkpoint holds must resume bit-exactly: half a step (data drawn,
  // random numbers used, gradients summed) cannot be saved.
  throw Interrupted(sig, retrying ? str("step ", host_.step(), " abandoned in its retry ", retries,
                                        " (gradients not finite); not saved, the last checkpoint stands")
                                  : str("step ", host_.step(), " abandoned after ", micro_steps, " of ",
                                        config_.gradient_accumulation_steps, " micro-steps (trainer.signal_grace = ",
                                        config_.signal_grace, " s); not saved, the last checkpoint stands"));
}

at::Tensor Trainer::sum_of_named_losses(bool forward_returned_a_loss) {
  if (forward_returned_a_loss)
    throw TrainingError(str(task_.label(), " returned a loss and also added named losses (add_loss); with named ",
                            "losses, forward returns none: the loss is their sum"));
  at::Tensor total;
  for (const auto& [name, term] : host_.named_losses()) {  // scalars: add_loss refuses anything else
    loss_terms_.emplace_back(name, term.detach());           // read at the step's end, with the records
    total = total.defined() ? total + term : term;
  }
  return total.reshape({});
}

// The step's tensor records and named loss terms reach the step info in one
// copy to the host, rather than one device sync per value.
void Trainer::read_step_scalars() {
  const Host::NamedTensors records = host_.take_tensor_records();
  const Host::NamedTensors terms = std::exchange(loss_terms_, {});
  if (records.empty() && terms.empty()) return;
  std::vector<at::Tensor> flat;
  flat.reserve(records.size() + terms.size());
  const c10::Device device = (records.empty() ? terms : records).front().second.device();
  for (const auto* list : {&records, &terms})
    for (const auto& [key, t] : *list) flat.push_back(t.detach().reshape({1}).to(device, at::kDouble));
  const at::Tensor values = at::cat(flat).to(at::kCPU).contiguous();
  const double* v = values.data_ptr<double>();
  StepInfo& info = host_.step_info();
  for (const auto& [key, t] : records) {
    info[TLOOP_INFO_RECORD + key].push_back(*v);
    last_records_[key] = *v++;
  }
  for (const auto& [name, t] : terms) info[TLOOP_INFO_LOSS_TERM + name].push_back(*v++);
}

std::vector<at::Tensor> Trainer::grads() const {
  std::vector<at::Tensor> out;
  out.reserve(params_.size());
  for (const auto& p : params_)
    if (p.grad().defined()) out.push_back(p.grad());
  return out;
}

// torch.nn.utils.get_total_norm: the norm of the per-tensor norms.
at::Tensor Trainer::total_grad_norm(const std::vector<at::Tensor>& g, double norm_type) const {
  if (g.empty()) return at::zeros({}, at::kFloat);
  std::vector<at::Tensor> norms = at::_foreach_norm(g, norm_type);
  return at::linalg_vector_norm(at::stack(norms), norm_type);
}

}  // namespace tloop
