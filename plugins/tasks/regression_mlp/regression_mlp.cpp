// regression_mlp: a two-layer MLP fitting a fixed synthetic function.
// Data is generated from the run seed, iterated in order, and identical on
// every device, which makes this task the workhorse of the loop's tests.
// Optional dropout and input noise are drawn during training from the run
// device's default generator (on CUDA, the state a checkpoint must carry for
// an exact resume); both are off by default.
// A "val" split (val_size samples of the same function, from a generator of
// its own) is evaluated by the host's evaluation loop (tloop.eval/1).
// Written with plain ATen ops (no torch::nn) to keep it quick to compile.
#include <tloop/torch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/remainder.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/tanh.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace {

class RegressionMlp : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"regression_mlp",
            "1.0.0",
            "Two-layer tanh MLP regressing a fixed nonlinear function of Gaussian inputs (synthetic, seeded)",
            {
                tloop::option("batch_size", 32, "samples per micro-batch").at_least(1),
                tloop::option("input_dim", 8, "input features").at_least(1),
                tloop::option("hidden_dim", 32, "hidden units").at_least(1),
                tloop::option("dataset_size", 1024, "samples in the dataset; batches wrap around").at_least(1),
                tloop::option("noise", 0.01, "standard deviation of the target noise").at_least(0),
                tloop::option("dropout", 0.0, "dropout probability of the hidden layer").range(0, 0.9),
                tloop::option("input_noise", 0.0, "standard deviation of noise added to each batch's inputs")
                    .at_least(0),
                tloop::option("val_size", 256, "samples in the \"val\" split (0: no evaluation)").at_least(0),
                tloop::option("eval_batch_size", 100, "samples per evaluation batch").at_least(1),
            }};
  }

  RegressionMlp(tloop::Context&, const tloop::Options& o)
      : batch_size_(o.get_int("batch_size")),
        input_dim_(o.get_int("input_dim")),
        hidden_dim_(o.get_int("hidden_dim")),
        dataset_size_(o.get_int("dataset_size")),
        noise_(o.get_double("noise")),
        dropout_(o.get_double("dropout")),
        input_noise_(o.get_double("input_noise")),
        val_size_(o.get_int("val_size")),
        eval_batch_size_(o.get_int("eval_batch_size")) {}

  void setup(tloop::Context& ctx) override {
    const c10::Device device(ctx.device());
    // The data has its own generator so it does not depend on what else drew
    // from the global one.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.seed() + 7919);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor w_true = at::randn({1, input_dim_}, gen, f32);
    at::Tensor v_true = at::randn({1, input_dim_}, gen, f32);
    x_ = at::randn({dataset_size_, input_dim_}, gen, f32);
    y_ = at::linear(x_, w_true) * 0.5 + at::sin(at::linear(x_, v_true)) +
         noise_ * at::randn({dataset_size_, 1}, gen, f32);
    x_ = x_.to(device);
    y_ = y_.to(device);
    // The val split: the same function and noise, from a generator of its
    // own, so the training data and the initialisation are those of a run
    // without it.
    if (val_size_ > 0) {
      at::Generator val_gen = at::make_generator<at::CPUGeneratorImpl>(ctx.seed() + 15485863);
      x_val_ = at::randn({val_size_, input_dim_}, val_gen, f32);
      y_val_ = at::linear(x_val_, w_true) * 0.5 + at::sin(at::linear(x_val_, v_true)) +
               noise_ * at::randn({val_size_, 1}, val_gen, f32);
      x_val_ = x_val_.to(device);
      y_val_ = y_val_.to(device);
    }

    // nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from the global generator.
    auto uniform = [&](at::IntArrayRef shape, int64_t fan_in) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      return at::empty(shape, f32).uniform_(-bound, bound).to(device).requires_grad_(true);
    };
    w1_ = uniform({hidden_dim_, input_dim_}, input_dim_);
    b1_ = uniform({hidden_dim_}, input_dim_);
    w2_ = uniform({1, hidden_dim_}, hidden_dim_);
    b2_ = uniform({1}, hidden_dim_);
    tloop::register_parameter(ctx, "fc1.weight", w1_);
    tloop::register_parameter(ctx, "fc1.bias", b1_);
    tloop::register_parameter(ctx, "fc2.weight", w2_);
    tloop::register_parameter(ctx, "fc2.bias", b2_);
  }

  void next_batch(tloop::Context&) override {
    at::Tensor idx = at::remainder(at::arange(cursor_, cursor_ + batch_size_, x_.options().dtype(at::kLong)),
                                   dataset_size_);
    xb_ = at::index_select(x_, 0, idx);
    if (input_noise_ > 0) xb_ = xb_ + input_noise_ * at::randn({batch_size_, input_dim_}, x_.options());
    yb_ = at::index_select(y_, 0, idx);
    cursor_ = (cursor_ + batch_size_) % dataset_size_;
  }

  std::optional<at::Tensor> forward(tloop::Context&) override {
    return at::mse_loss(predict(xb_).to(at::kFloat), yb_);
  }

  // ---- evaluation (tloop.eval/1): "val" in order, in batches of
  // eval_batch_size (the last may be partial); no random numbers drawn.
  std::vector<std::string> eval_splits(tloop::Context&) override {
    if (val_size_ > 0) return {"val"};
    return {};
  }
  std::vector<std::string> default_metrics(tloop::Context&, const std::string&) override { return {"mse", "mae"}; }
  void set_training(tloop::Context&, bool training) override { training_ = training; }

  std::optional<int64_t> eval_begin(tloop::Context&, const std::string& split) override {
    if (split != "val" || val_size_ == 0)
      throw std::invalid_argument("regression_mlp has no evaluation split '" + split + "'" +
                                  (val_size_ == 0 ? " (val_size is 0)" : " (it has val)"));
    eval_pos_ = 0;
    return (val_size_ + eval_batch_size_ - 1) / eval_batch_size_;
  }
  bool eval_next(tloop::Context&) override {
    if (eval_pos_ >= val_size_) return false;
    const int64_t end = std::min(eval_pos_ + eval_batch_size_, val_size_);
    exb_ = x_val_.slice(0, eval_pos_, end);
    eyb_ = y_val_.slice(0, eval_pos_, end);
    eval_pos_ = end;
    return true;
  }
  void eval_forward(tloop::Context& ctx, bool) override {
    at::Tensor pred = predict(exb_).to(at::kFloat);
    tloop::publish(ctx, "predictions", pred);
    tloop::publish(ctx, "targets", eyb_);
    tloop::record(ctx, "loss", at::mse_loss(pred, eyb_));
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("cursor", cursor_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    if (auto c = in.get_int("cursor")) cursor_ = *c;
  }

 private:
  // The model: dropout (from the run device's default generator) only in train mode.
  at::Tensor predict(const at::Tensor& x) const {
    at::Tensor h = at::tanh(at::linear(x, w1_, b1_));
    if (dropout_ > 0 && training_) h = at::dropout(h, dropout_, /*train=*/true);
    return at::linear(h, w2_, b2_);
  }

  int64_t batch_size_, input_dim_, hidden_dim_, dataset_size_;
  double noise_, dropout_, input_noise_;
  int64_t val_size_, eval_batch_size_;
  int64_t cursor_ = 0, eval_pos_ = 0;
  bool training_ = true;
  at::Tensor x_, y_, xb_, yb_, w1_, b1_, w2_, b2_, x_val_, y_val_, exb_, eyb_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<RegressionMlp>())
