// regression_mlp: a two-layer MLP fitting a fixed synthetic function.
// Data is generated from the run seed, iterated in order, and identical on
// every device, which makes this task the workhorse of the loop's tests.
// Optional dropout and input noise are drawn during training from the run
// device's default generator (on CUDA, the state a checkpoint must carry for
// an exact resume); both are off by default.
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

#include <cmath>

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
            }};
  }

  RegressionMlp(tloop::Context&, const tloop::Options& o)
      : batch_size_(o.get_int("batch_size")),
        input_dim_(o.get_int("input_dim")),
        hidden_dim_(o.get_int("hidden_dim")),
        dataset_size_(o.get_int("dataset_size")),
        noise_(o.get_double("noise")),
        dropout_(o.get_double("dropout")),
        input_noise_(o.get_double("input_noise")) {}

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
    at::Tensor h = at::tanh(at::linear(xb_, w1_, b1_));
    if (dropout_ > 0) h = at::dropout(h, dropout_, /*train=*/true);
    at::Tensor pred = at::linear(h, w2_, b2_);
    return at::mse_loss(pred.to(at::kFloat), yb_);
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("cursor", cursor_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    if (auto c = in.get_int("cursor")) cursor_ = *c;
  }

 private:
  int64_t batch_size_, input_dim_, hidden_dim_, dataset_size_;
  double noise_, dropout_, input_noise_;
  int64_t cursor_ = 0;
  at::Tensor x_, y_, xb_, yb_, w1_, b1_, w2_, b2_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<RegressionMlp>())
