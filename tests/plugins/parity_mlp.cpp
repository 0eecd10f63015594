// Test task for the trainloop equivalence suite (tests/python/
// test_trainloop_parity.py): a two-layer tanh MLP whose data and initial
// weights come from files that the Python side wrote, so that tloop and
// trainloop start from the same bits. Each file is raw little-endian float32
// (numpy's tofile) in `data`: x.f32 [n, dim], y.f32 [n, 1], l1.weight.f32
// [hidden, dim], l1.bias.f32 [hidden], l2.weight.f32 [1, hidden],
// l2.bias.f32 [1]. Batch i is rows [i * batch_size, (i + 1) * batch_size)
// modulo n. The ops are those of the Python model, in the same order.
#include <tloop/torch.hpp>

#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/tanh.h>

#include <fstream>

namespace {

at::Tensor read_f32(const std::string& path, at::IntArrayRef shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  std::ifstream in(path, std::ios::binary);
  const auto bytes = static_cast<std::streamsize>(t.numel() * sizeof(float));
  in.read(reinterpret_cast<char*>(t.data_ptr<float>()), bytes);
  if (in.gcount() != bytes || in.peek() != std::char_traits<char>::eof())
    throw tloop::Error(path + ": expected exactly " + std::to_string(bytes) + " bytes of float32");
  return t;
}

class ParityMlp : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"parity_mlp",
            "1.0.0",
            "Test task: an MLP on data and initial weights read from float32 files (trainloop parity)",
            {
                tloop::option("data", "", "directory of the .f32 files"),
                tloop::option("n", 64, "samples").at_least(1),
                tloop::option("dim", 5, "inputs").at_least(1),
                tloop::option("hidden", 16, "hidden units").at_least(1),
                tloop::option("batch_size", 8, "samples per micro-batch").at_least(1),
                tloop::option("half_loss", false, "return the loss in float16 (the grad scaler must scale it in float32)"),
            }};
  }
  ParityMlp(tloop::Context&, const tloop::Options& o)
      : dir_(o.get_string("data")),
        n_(o.get_int("n")),
        dim_(o.get_int("dim")),
        hidden_(o.get_int("hidden")),
        batch_(o.get_int("batch_size")),
        half_loss_(o.get_bool("half_loss")) {
    if (n_ % batch_ != 0) throw tloop::Error("n must be a multiple of batch_size");
  }

  void setup(tloop::Context& ctx) override {
    const c10::Device device(ctx.device());
    x_ = read_f32(dir_ + "/x.f32", {n_, dim_}).to(device);
    y_ = read_f32(dir_ + "/y.f32", {n_, 1}).to(device);
    // Registered in the order of the Python module's parameters().
    const std::pair<const char*, std::vector<int64_t>> shapes[] = {
        {"l1.weight", {hidden_, dim_}}, {"l1.bias", {hidden_}}, {"l2.weight", {1, hidden_}}, {"l2.bias", {1}}};
    for (const auto& [name, shape] : shapes) {
      at::Tensor p = read_f32(dir_ + "/" + name + ".f32", shape).to(device).requires_grad_(true);
      tloop::register_parameter(ctx, name, p);
      params_.push_back(p);
    }
  }

  void next_batch(tloop::Context&) override {
    const int64_t start = (batches_ * batch_) % n_;
    xb_ = x_.slice(0, start, start + batch_);
    yb_ = y_.slice(0, start, start + batch_);
    ++batches_;
  }

  std::optional<at::Tensor> forward(tloop::Context&) override {
    at::Tensor h = at::tanh(at::linear(xb_, params_[0], params_[1]));
    at::Tensor loss = at::mse_loss(at::linear(h, params_[2], params_[3]), yb_);
    return half_loss_ ? loss.to(at::kHalf) : loss;
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("batches", batches_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    batches_ = in.get_int("batches").value_or(0);
  }

 private:
  std::string dir_;
  int64_t n_, dim_, hidden_, batch_;
  bool half_loss_;
  int64_t batches_ = 0;
  at::Tensor x_, y_, xb_, yb_;
  std::vector<at::Tensor> params_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<ParityMlp>())
