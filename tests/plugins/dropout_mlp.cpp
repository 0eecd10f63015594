// Test task: regression_mlp's model and data with dropout on the hidden layer
// and Gaussian noise on the inputs, both drawn during training from the global
// generator of the run's device (on CUDA: the default CUDA generator, whose
// state a checkpoint must save and restore for an exact resume). Data is made
// on the CPU from the run seed and iterated in order; the position is the
// task's state.
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

class DropoutMlp : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"dropout_mlp",
            "1.0.0",
            "Test task: an MLP with dropout and input noise drawn on the run's device during training",
            {
                tloop::option("batch_size", 64, "samples per micro-batch").at_least(1),
                tloop::option("input_dim", 8, "input features").at_least(1),
                tloop::option("hidden_dim", 64, "hidden units").at_least(1),
                tloop::option("dataset_size", 2048, "samples in the dataset; batches wrap around").at_least(1),
                tloop::option("dropout", 0.25, "dropout probability of the hidden layer").range(0, 0.9),
                tloop::option("input_noise", 0.05, "standard deviation of the noise added to each batch's inputs")
                    .at_least(0),
            }};
  }

  DropoutMlp(tloop::Context&, const tloop::Options& o)
      : batch_size_(o.get_int("batch_size")),
        input_dim_(o.get_int("input_dim")),
        hidden_dim_(o.get_int("hidden_dim")),
        dataset_size_(o.get_int("dataset_size")),
        dropout_(o.get_double("dropout")),
        input_noise_(o.get_double("input_noise")) {}

  void setup(tloop::Context& ctx) override {
    const c10::Device device(ctx.device());
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.seed() + 7919);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor w_true = at::randn({1, input_dim_}, gen, f32);
    at::Tensor v_true = at::randn({1, input_dim_}, gen, f32);
    x_ = at::randn({dataset_size_, input_dim_}, gen, f32);
    y_ = at::linear(x_, w_true) * 0.5 + at::sin(at::linear(x_, v_true));
    x_ = x_.to(device);
    y_ = y_.to(device);
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
    // Noise from the device's default generator (no explicit generator).
    xb_ = at::index_select(x_, 0, idx) + input_noise_ * at::randn({batch_size_, input_dim_}, x_.options());
    yb_ = at::index_select(y_, 0, idx);
    cursor_ = (cursor_ + batch_size_) % dataset_size_;
  }

  std::optional<at::Tensor> forward(tloop::Context&) override {
    at::Tensor h = at::dropout(at::tanh(at::linear(xb_, w1_, b1_)), dropout_, /*train=*/true);
    at::Tensor pred = at::linear(h, w2_, b2_);
    return at::mse_loss(pred.to(at::kFloat), yb_);
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("cursor", cursor_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    if (auto c = in.get_int("cursor")) cursor_ = *c;
  }

 private:
  int64_t batch_size_, input_dim_, hidden_dim_, dataset_size_;
  double dropout_, input_noise_;
  int64_t cursor_ = 0;
  at::Tensor x_, y_, xb_, yb_, w1_, b1_, w2_, b2_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<DropoutMlp>())
