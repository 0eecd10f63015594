// digits_cnn: a small CNN on the 8x8 UCI handwritten digits (1797 images).
// Holds out a seeded fraction, reports train accuracy every step and holdout
// accuracy every eval_interval steps and at the last as records, and logs
// sample images (the first step) and holdout predictions (the last).
#include <tloop/torch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <dlfcn.h>
#include <zlib.h>

#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace {
namespace F = torch::nn::functional;

constexpr int64_t kSide = 8;
constexpr int64_t kClasses = 10;

struct DigitsNetImpl : torch::nn::Module {
  DigitsNetImpl(int64_t channels, int64_t hidden)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, channels, 3).padding(1)))),
        conv2(register_module("conv2",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, 2 * channels, 3).padding(1)))),
        fc1(register_module("fc1", torch::nn::Linear(2 * channels * 4 * 4, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, kClasses))) {}

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = F::relu(conv1->forward(x));
    h = F::max_pool2d(F::relu(conv2->forward(h)), F::MaxPool2dFuncOptions(2));
    h = F::relu(fc1->forward(h.flatten(1)));
    return fc2->forward(h);
  }

  torch::nn::Conv2d conv1, conv2;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(DigitsNet);

// The directory of this plugin library, where the build puts the data.
std::filesystem::path plugin_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&plugin_dir), &info) == 0 || info.dli_fname == nullptr)
    throw tloop::Error("cannot locate the digits_cnn library on disk");
  return std::filesystem::path(info.dli_fname).parent_path();
}

// Reads the scikit-learn digits CSV (gzip): 64 pixel values 0..16, then the label.
void read_digits(const std::string& path, std::vector<float>& pixels, std::vector<int64_t>& labels) {
  gzFile f = gzopen(path.c_str(), "rb");
  // The data is the user's input (the `data` option): its problems are bad
  // input (exit 2), named by file and line.
  if (f == nullptr) throw std::invalid_argument("cannot open the digits data '" + path + "'");
  char line[1024];
  int line_no = 0;
  while (gzgets(f, line, sizeof(line)) != nullptr) {
    ++line_no;
    std::stringstream ss(line);
    std::string cell;
    std::vector<int> values;
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    while (std::getline(ss, cell, ',')) {
      size_t used = 0;
      int v = -1;
      try {
        v = std::stoi(cell, &used);
      } catch (const std::exception&) {
      }
      const bool blank_rest = cell.find_first_not_of(" \t\r\n", used) == std::string::npos;
      if (used == 0 || !blank_rest || v < 0 || (values.size() < kSide * kSide && v > 16) ||
          (values.size() == kSide * kSide && v > 9)) {
        gzclose(f);
        throw std::invalid_argument(where + "value " + std::to_string(values.size() + 1) + " ('" + cell +
                                    "') is not a pixel (0..16) or a label (0..9)");
      }
      values.push_back(v);
    }
    if (values.size() != kSide * kSide + 1) {
      gzclose(f);
      throw std::invalid_argument(where + "expected 65 values (64 pixels and the label), got " +
                                  std::to_string(values.size()));
    }
    for (int i = 0; i < kSide * kSide; ++i) pixels.push_back(static_cast<float>(values[i]) / 16.0f);
    labels.push_back(values.back());
  }
  gzclose(f);
}

class DigitsCnn : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"digits_cnn",
            "1.0.0",
            "Small CNN on the 8x8 UCI handwritten digits with a seeded holdout split",
            {
                tloop::option("batch_size", 64, "images per micro-batch").at_least(1),
                tloop::option("holdout_fraction", 0.2, "fraction of the images held out for evaluation")
                    .range(0.05, 0.9),
                tloop::option("eval_interval", 50, "steps between holdout evaluations (and always the last step)")
                    .at_least(1),
                tloop::option("channels", 16, "channels of the first convolution").at_least(1),
                tloop::option("hidden", 64, "units of the hidden linear layer").at_least(1),
                tloop::option("num_images", 16, "sample images logged at the first and last step").range(0, 64),
                tloop::option("data", "", "path of digits.csv.gz; empty: the copy installed beside the plugin"),
            }};
  }

  DigitsCnn(tloop::Context&, const tloop::Options& o)
      : batch_size_(o.get_int("batch_size")),
        holdout_fraction_(o.get_double("holdout_fraction")),
        eval_interval_(o.get_int("eval_interval")),
        channels_(o.get_int("channels")),
        hidden_(o.get_int("hidden")),
        num_images_(o.get_int("num_images")),
        data_path_(o.get_string("data")) {
    if (data_path_.empty()) data_path_ = (plugin_dir() / "digits_cnn_data" / "digits.csv.gz").string();
    // Read here, not in setup: a data file or batch size that cannot work is
    // found by `tloop validate` (which creates plugins) too. 1797 small rows.
    read_digits(data_path_, pixels_, labels_);
    const int64_t n = static_cast<int64_t>(labels_.size());
    const int64_t n_train = n - static_cast<int64_t>(static_cast<double>(n) * holdout_fraction_);
    if (batch_size_ > n_train)
      throw std::invalid_argument("batch_size is larger than the training set (" + std::to_string(batch_size_) +
                                  " > " + std::to_string(n_train) + " images)");
  }

  void setup(tloop::Context& ctx) override {
    device_ = c10::Device(ctx.device());
    const int64_t n = static_cast<int64_t>(labels_.size());
    at::Tensor x = at::from_blob(pixels_.data(), {n, 1, kSide, kSide}, at::kFloat).clone();
    at::Tensor y = at::from_blob(labels_.data(), {n}, at::kLong).clone();
    pixels_ = {};
    labels_ = {};

    seed_ = ctx.seed();
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ + 104729);
    at::Tensor perm = at::randperm(n, gen, at::kLong);
    const int64_t n_holdout = static_cast<int64_t>(static_cast<double>(n) * holdout_fraction_);
    at::Tensor holdout_idx = perm.slice(0, 0, n_holdout), train_idx = perm.slice(0, n_holdout);
    x_holdout_ = x.index_select(0, holdout_idx).to(device_);
    y_holdout_ = y.index_select(0, holdout_idx).to(device_);
    x_train_ = x.index_select(0, train_idx).to(device_);
    y_train_ = y.index_select(0, train_idx).to(device_);
    ctx.info("digits_cnn: " + std::to_string(x_train_.size(0)) + " training and " + std::to_string(n_holdout) +
             " holdout images from " + data_path_);

    net_ = DigitsNet(channels_, hidden_);
    net_->to(device_);
    tloop::register_module(ctx, *net_);
  }

  // next_batch starts a new epoch when fewer than batch_size samples are left.
  std::optional<int64_t> batches_per_epoch(tloop::Context&) override { return x_train_.size(0) / batch_size_; }

  void next_batch(tloop::Context&) override {
    const int64_t n = x_train_.size(0);
    if (cursor_ + batch_size_ > n || !order_.defined()) {
      if (order_.defined()) {
        ++epoch_;
        cursor_ = 0;
      }
      // Each epoch's order is a function of (seed, epoch): resuming needs only the counters.
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ * 1000003 + epoch_);
      order_ = at::randperm(n, gen, at::kLong).to(device_);
    }
    at::Tensor idx = order_.slice(0, cursor_, cursor_ + batch_size_);
    cursor_ += batch_size_;
    xb_ = x_train_.index_select(0, idx);
    yb_ = y_train_.index_select(0, idx);
  }

  std::optional<at::Tensor> forward(tloop::Context& ctx) override {
    at::Tensor logits = net_->forward(xb_).to(at::kFloat);
    at::Tensor loss = F::cross_entropy(logits, yb_);
    ctx.record("accuracy", logits.argmax(1).eq(yb_).to(at::kFloat).mean().item<double>());

    // Once per step (forward runs once per micro-batch). The holdout is
    // evaluated at multiples of eval_interval and at the last step: with a
    // logging interval that divides eval_interval, each logged
    // holdout_accuracy is the one measured at the step it is logged for.
    const int64_t step = ctx.step();
    if (step != last_step_) {
      last_step_ = step;
      if (num_images_ > 0 && step == 1) log_images(ctx, "samples", at::Tensor(), false);
      if (step % eval_interval_ == 0 || step == ctx.max_steps()) {
        at::Tensor predictions = evaluate(ctx);
        if (num_images_ > 0 && step == ctx.max_steps()) log_images(ctx, "predictions", predictions, true);
      }
    }
    return loss;
  }

  void state_dict(tloop::Context&, tloop::StateWriter& out) override {
    out.put("epoch", epoch_);
    out.put("cursor", cursor_);
  }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    epoch_ = in.get_int("epoch").value_or(0);
    cursor_ = in.get_int("cursor").value_or(0);
    order_ = at::Tensor();
    if (cursor_ > 0) {  // rebuild this epoch's order without advancing the epoch
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ * 1000003 + epoch_);
      order_ = at::randperm(x_train_.size(0), gen, at::kLong).to(device_);
    }
  }

 private:
  // Holdout accuracy as a record; returns the predicted classes.
  at::Tensor evaluate(tloop::Context& ctx) {
    torch::NoGradGuard no_grad;
    at::Tensor predicted = net_->forward(x_holdout_).argmax(1);
    ctx.record("holdout_accuracy", predicted.eq(y_holdout_).to(at::kFloat).mean().item<double>());
    return predicted;
  }

  // Gray images scaled 4x (32x32); keys carry the label (and the prediction).
  void log_images(tloop::Context& ctx, const std::string& prefix, const at::Tensor& predicted, bool with_prediction) {
    const int64_t count = std::min<int64_t>(num_images_, x_holdout_.size(0));
    constexpr int kScale = 4;
    at::Tensor pixels = (x_holdout_.slice(0, 0, count).to(at::kCPU) * 255.0)
                            .clamp(0, 255)
                            .to(at::kByte)
                            .repeat_interleave(kScale, 2)
                            .repeat_interleave(kScale, 3)
                            .contiguous();
    at::Tensor labels = y_holdout_.slice(0, 0, count).to(at::kCPU);
    at::Tensor preds = with_prediction ? predicted.slice(0, 0, count).to(at::kCPU) : at::Tensor();
    std::vector<tloop::ImageView> images;
    const int side = static_cast<int>(kSide * kScale);
    for (int64_t i = 0; i < count; ++i) {
      std::string key = prefix + "/" + std::to_string(i) + "_label" + std::to_string(labels[i].item<int64_t>());
      if (with_prediction) key += "_pred" + std::to_string(preds[i].item<int64_t>());
      images.push_back({key, side, side, 1, side, pixels[i].data_ptr<uint8_t>()});
    }
    ctx.log_images(images);
  }

  int64_t batch_size_;
  double holdout_fraction_;
  int64_t eval_interval_, channels_, hidden_, num_images_;
  std::string data_path_;
  std::vector<float> pixels_;    // read in create, made tensors in setup
  std::vector<int64_t> labels_;
  uint64_t seed_ = 0;
  c10::Device device_ = c10::Device(c10::kCPU);
  at::Tensor x_train_, y_train_, x_holdout_, y_holdout_, order_, xb_, yb_;
  int64_t epoch_ = 0, cursor_ = 0, last_step_ = -1;
  DigitsNet net_{nullptr};
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<DigitsCnn>())
