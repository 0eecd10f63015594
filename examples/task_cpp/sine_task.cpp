// sine_task: an out-of-tree task. A small torch::nn MLP learns sin(x) on
// [-pi, pi]; batches are drawn from a generator seeded by the run seed, and
// the number of batches drawn is the task's state, so a resumed run draws the
// same batches it would have drawn.
#include <tloop/torch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

class SineTask : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"sine_task",
            "0.1.0",
            "An MLP learning sin(x) on [-pi, pi]",
            {tloop::option("batch_size", 64, "points per micro-batch").at_least(1),
             tloop::option("hidden", 32, "hidden units").at_least(1)}};
  }

  SineTask(tloop::Context&, const tloop::Options& o) : batch_size_(o.get_int("batch_size")), hidden_(o.get_int("hidden")) {}

  void setup(tloop::Context& ctx) override {
    device_ = c10::Device(ctx.device());
    seed_ = ctx.seed();
    net_ = torch::nn::Sequential(torch::nn::Linear(1, hidden_), torch::nn::Tanh(), torch::nn::Linear(hidden_, 1));
    net_->to(device_);
    tloop::register_module(ctx, *net_);
  }

  void next_batch(tloop::Context&) override {
    // One generator per batch index: batch n is the same whenever it is drawn.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ * 7919 + static_cast<uint64_t>(batches_++));
    x_ = (at::rand({batch_size_, 1}, gen) * 2 - 1).mul(M_PI).to(device_);
    y_ = x_.sin();
  }

  std::optional<at::Tensor> forward(tloop::Context& ctx) override {
    at::Tensor loss = torch::nn::functional::mse_loss(net_->forward(x_), y_);
    ctx.record("rmse", loss.detach().sqrt().item<double>());
    return loss;
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("batches", batches_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    batches_ = in.get_int("batches").value_or(0);
  }

 private:
  int64_t batch_size_, hidden_;
  c10::Device device_ = c10::Device(c10::kCPU);
  uint64_t seed_ = 0;
  int64_t batches_ = 0;
  torch::nn::Sequential net_{nullptr};
  at::Tensor x_, y_;
};

TLOOP_PLUGIN_LIBRARY(tloop::task<SineTask>())
