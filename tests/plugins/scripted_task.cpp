// Test task with behaviour chosen by options: loss = grad_scale * sum(w), with
// w a vector of ones; some forwards return no loss or a non-finite one. With
// eval_values, a split "val" of one batch whose "loss" is the next number of
// the list at each evaluation pass: metric values a test knows in advance.
#include <tloop/torch.hpp>

#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>

#include <ATen/ops/scalar_tensor.h>

#include <chrono>
#include <limits>
#include <stdexcept>
#include <thread>

namespace {

class ScriptedTask : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"scripted_task",
            "1.0.0",
            "Test task: a linear loss whose gradient is known, with injectable faults",
            {
                tloop::option("dim", 1, "size of the parameter vector").at_least(1),
                tloop::option("grad_scale", 1.0, "d loss / d w_i"),
                tloop::option("none_every", 0, "every n-th forward returns no loss (0: never)").at_least(0),
                tloop::option("nan_forwards", 0, "the first n forwards give a NaN loss and gradients").at_least(0),
                tloop::option("fail_in", "", "event that throws: create | setup | forward"),
                tloop::option("image_keys", std::vector<std::string>{}, "keys of 2x3 RGBA images logged at step 1"),
                tloop::option("outputs", "loss", "what forward gives: loss | named (add_loss 'a' and 'b', "
                                                 "record_tensor 'w_sum', publish 'w2') | named_and_loss")
                    .one_of({"loss", "named", "named_and_loss"}),
                tloop::option("record_every", 0, "record 'sparse' = the step on every n-th step only (0: never)")
                    .at_least(0),
                tloop::option("batches_per_epoch", 0, "epoch length declared (tloop.epochs/1); 0: no epochs; "
                                                     "negative: declared as given (a bad length)"),
                tloop::option("bad_loss", "", "forward returns a wrong loss: vector | integer | detached | \"\"")
                    .one_of({"", "vector", "integer", "detached"}),
                tloop::option("eval_values", std::vector<std::string>{},
                              "numbers (\"0.5\", \"nan\"): with any, the task evaluates split \"val\", one batch "
                              "recording \"loss\" = the next number at each pass (the last one once they run out)"),
                tloop::option("hang_at", 0, "the forward of this step never returns (0: never): a run to kill at a "
                                            "known step")
                    .at_least(0),
            }};
  }
  ScriptedTask(tloop::Context&, const tloop::Options& o)
      : dim_(o.get_int("dim")),
        grad_scale_(o.get_double("grad_scale")),
        none_every_(o.get_int("none_every")),
        nan_forwards_(o.get_int("nan_forwards")),
        fail_in_(o.get_string("fail_in")),
        image_keys_(o.get_string_list("image_keys")),
        outputs_(o.get_string("outputs")),
        record_every_(o.get_int("record_every")),
        batches_per_epoch_(o.get_int("batches_per_epoch")),
        bad_loss_(o.get_string("bad_loss")),
        hang_at_(o.get_int("hang_at")) {
    if (fail_in_ == "create") throw tloop::Error("scripted failure in create");
    for (const auto& text : o.get_string_list("eval_values")) {
      size_t used = 0;
      double v = 0;
      try {
        v = std::stod(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size()) throw std::invalid_argument("eval_values: '" + text + "' is not a number");
      eval_values_.push_back(v);
    }
  }

  void setup(tloop::Context& ctx) override {
    if (fail_in_ == "setup") throw tloop::Error("scripted failure in setup");
    w_ = at::ones({dim_}, at::TensorOptions().device(c10::Device(ctx.device()))).requires_grad_(true);
    tloop::register_parameter(ctx, "w", w_);
  }
  void next_batch(tloop::Context&) override { ++batches_; }
  // The counters make a resumed run draw the same faults as an uninterrupted one.
  void state_dict(tloop::Context&, tloop::StateWriter& out) override {
    out.put("batches", batches_);
    out.put("forwards", forwards_);
    out.put("eval_passes", eval_passes_);
  }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    batches_ = in.get_int("batches").value_or(0);
    forwards_ = in.get_int("forwards").value_or(0);
    eval_passes_ = in.get_int("eval_passes").value_or(0);
  }
  // Evaluation: one batch per pass; the pass counter is in the state, so a
  // resumed run goes on with the numbers where the checkpoint's run was.
  std::vector<std::string> eval_splits(tloop::Context&) override {
    return eval_values_.empty() ? std::vector<std::string>{} : std::vector<std::string>{"val"};
  }
  std::optional<int64_t> eval_begin(tloop::Context&, const std::string& split) override {
    if (split != "val") throw tloop::Error("scripted_task has no evaluation split '" + split + "'");
    eval_value_ = eval_values_.at(std::min(static_cast<size_t>(eval_passes_), eval_values_.size() - 1));
    ++eval_passes_;
    eval_batch_ = 0;
    return 1;
  }
  bool eval_next(tloop::Context&) override { return eval_batch_++ < 1; }
  void eval_forward(tloop::Context& ctx, bool) override {
    tloop::record(ctx, "loss", at::scalar_tensor(eval_value_, at::kDouble));
  }
  std::optional<int64_t> batches_per_epoch(tloop::Context&) override {
    return batches_per_epoch_ == 0 ? std::nullopt : std::optional<int64_t>(batches_per_epoch_);
  }
  std::optional<at::Tensor> forward(tloop::Context& ctx) override {
    ++forwards_;
    if (fail_in_ == "forward") throw tloop::Error("scripted failure in forward");
    if (hang_at_ > 0 && ctx.step() == hang_at_)
      for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // until the test kills the process
    ctx.record("forward", static_cast<double>(forwards_));
    if (record_every_ > 0 && ctx.step() % record_every_ == 0) ctx.record("sparse", static_cast<double>(ctx.step()));
    if (forwards_ == 1 && !image_keys_.empty()) {
      // 2 wide, 3 high, RGBA; pixel (x, y) = (10x, 20y, 7, 255 - 100x): known values for the decoders.
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 2; ++x)
          for (int c = 0; c < 4; ++c)
            pixels_[(y * 2 + x) * 4 + c] = static_cast<uint8_t>(c == 0 ? 10 * x : c == 1 ? 20 * y : c == 2 ? 7 : 255 - 100 * x);
      std::vector<tloop::ImageView> images;
      for (const auto& key : image_keys_) images.push_back({key, 2, 3, 4, 8, pixels_});
      ctx.log_images(images);
    }
    if (none_every_ > 0 && forwards_ % none_every_ == 0) return std::nullopt;
    at::Tensor loss = grad_scale_ * w_.sum();
    if (forwards_ <= nan_forwards_) loss = loss * std::numeric_limits<double>::quiet_NaN();
    if (bad_loss_ == "vector") return grad_scale_ * w_;
    if (bad_loss_ == "integer") return loss.detach().to(at::kLong);
    if (bad_loss_ == "detached") return loss.detach();
    if (outputs_ == "loss") return loss;
    // The same loss as two named terms, a record that stays a tensor and a
    // published tensor.
    tloop::add_loss(ctx, "a", 0.25 * loss);
    tloop::add_loss(ctx, "b", 0.75 * loss);
    tloop::record(ctx, "w_sum", w_.sum().detach());
    tloop::publish(ctx, "w2", w_.detach() * 2);
    if (outputs_ == "named_and_loss") return loss;
    return std::nullopt;
  }

 private:
  int64_t dim_;
  double grad_scale_;
  int64_t none_every_, nan_forwards_;
  std::string fail_in_;
  std::vector<std::string> image_keys_;
  std::string outputs_;
  int64_t record_every_, batches_per_epoch_;
  std::string bad_loss_;
  int64_t hang_at_;
  std::vector<double> eval_values_;
  int64_t eval_passes_ = 0, eval_batch_ = 0;
  double eval_value_ = 0;
  uint8_t pixels_[2 * 3 * 4] = {};
  int64_t batches_ = 0, forwards_ = 0;
  at::Tensor w_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<ScriptedTask>())
