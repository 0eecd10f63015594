// digits_cnn: a small CNN on the 8x8 UCI handwritten digits (1797 images).
// Splits the images (seeded) into "val", "test" and training, reports train
// accuracy every step as a record, and is evaluated by the host's evaluation
// loop (tloop.eval/1) on "val" and "test". Logs sample images (the first
// step) and, at the last evaluation of a run, the val confusion matrix and
// val predictions.
#include <tloop/torch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <dlfcn.h>
#include <zlib.h>

#include <algorithm>
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
            "Small CNN on the 8x8 UCI handwritten digits with seeded val and test splits",
            {
                tloop::option("batch_size", 64, "images per micro-batch").at_least(1),
                tloop::option("holdout_fraction", 0.2, "fraction of the images held out as the \"val\" split")
                    .range(0.05, 0.9),
                tloop::option("test_fraction", 0.1, "fraction of the images held out as the \"test\" split (0: none)")
                    .range(0, 0.5),
                tloop::option("eval_batch_size", 256, "images per evaluation batch").at_least(1),
                tloop::option("channels", 16, "channels of the first convolution").at_least(1),
                tloop::option("hidden", 64, "units of the hidden linear layer").at_least(1),
                tloop::option("num_images", 16, "sample images logged at the first step and val predictions at the last")
                    .range(0, 64),
                tloop::option("data", "", "path of digits.csv.gz; empty: the copy installed beside the plugin"),
            }};
  }

  DigitsCnn(tloop::Context&, const tloop::Options& o)
      : batch_size_(o.get_int("batch_size")),
        holdout_fraction_(o.get_double("holdout_fraction")),
        test_fraction_(o.get_double("test_fraction")),
        eval_batch_size_(o.get_int("eval_batch_size")),
        channels_(o.get_int("channels")),
        hidden_(o.get_int("hidden")),
        num_images_(o.get_int("num_images")),
        data_path_(o.get_string("data")) {
    if (data_path_.empty()) data_path_ = (plugin_dir() / "digits_cnn_data" / "digits.csv.gz").string();
    // Read here, not in setup: a data file or batch size that cannot work is
    // found by `tloop validate` (which creates plugins) too. 1797 small rows.
    read_digits(data_path_, pixels_, labels_);
    const int64_t n = static_cast<int64_t>(labels_.size());
    n_val_ = static_cast<int64_t>(static_cast<double>(n) * holdout_fraction_);
    n_test_ = static_cast<int64_t>(static_cast<double>(n) * test_fraction_);
    const int64_t n_train = n - n_val_ - n_test_;
    if (n_train < 1)
      throw std::invalid_argument("holdout_fraction and test_fraction leave no training images (" +
                                  std::to_string(n) + " images)");
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
    // perm: [val | test | training]. val is the first n_val images whatever
    // test_fraction is.
    const int64_t n_val = n_val_, n_test = n_test_;
    at::Tensor val_idx = perm.slice(0, 0, n_val), test_idx = perm.slice(0, n_val, n_val + n_test),
               train_idx = perm.slice(0, n_val + n_test);
    x_val_ = x.index_select(0, val_idx).to(device_);
    y_val_ = y.index_select(0, val_idx).to(device_);
    x_test_ = x.index_select(0, test_idx).to(device_);
    y_test_ = y.index_select(0, test_idx).to(device_);
    x_train_ = x.index_select(0, train_idx).to(device_);
    y_train_ = y.index_select(0, train_idx).to(device_);
    ctx.info("digits_cnn: " + std::to_string(x_train_.size(0)) + " training, " + std::to_string(n_val) + " val and " +
             std::to_string(n_test) + " test images from " + data_path_);

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

    // Once per step (forward runs once per micro-batch).
    const int64_t step = ctx.step();
    if (step != last_step_) {
      last_step_ = step;
      if (num_images_ > 0 && step == 1) log_images(ctx, "samples", at::Tensor(), false);
    }
    return loss;
  }

  // ---- evaluation (tloop.eval/1). The eval position is apart from the
  // training cursor, not part of the state (every pass starts over), and
  // draws no random numbers. The splits are known from the options (the
  // host asks before setup, to check the spec).
  std::vector<std::string> eval_splits(tloop::Context&) override {
    std::vector<std::string> splits{"val"};
    if (n_test_ > 0) splits.push_back("test");
    return splits;
  }
  std::vector<std::string> default_metrics(tloop::Context&, const std::string&) override { return {"accuracy"}; }
  void set_training(tloop::Context&, bool training) override { net_->train(training); }

  std::optional<int64_t> eval_begin(tloop::Context&, const std::string& split) override {
    if (split == "val") {
      eval_x_ = x_val_;
      eval_y_ = y_val_;
    } else if (split == "test" && n_test_ > 0) {
      eval_x_ = x_test_;
      eval_y_ = y_test_;
    } else {
      throw std::invalid_argument("digits_cnn has no evaluation split '" + split + "' (it has " +
                                  (n_test_ > 0 ? "val and test" : "val; test_fraction is 0") + ")");
    }
    eval_pos_ = 0;
    confusion_ = at::zeros({kClasses, kClasses}, at::TensorOptions().dtype(at::kLong));
    confusion_samples_ = 0;
    return (eval_x_.size(0) + eval_batch_size_ - 1) / eval_batch_size_;
  }

  bool eval_next(tloop::Context&) override {
    const int64_t n = eval_x_.defined() ? eval_x_.size(0) : 0;
    if (eval_pos_ >= n) return false;
    const int64_t end = std::min(eval_pos_ + eval_batch_size_, n);
    exb_ = eval_x_.slice(0, eval_pos_, end);
    eyb_ = eval_y_.slice(0, eval_pos_, end);
    eval_pos_ = end;
    return true;
  }

  void eval_forward(tloop::Context& ctx, bool predict) override {
    at::Tensor logits = net_->forward(exb_).to(at::kFloat);
    tloop::publish(ctx, "logits", logits);
    tloop::publish(ctx, "targets", eyb_);
    tloop::record(ctx, "loss", F::cross_entropy(logits, eyb_));
    if (!predict) {
      at::Tensor cell = (eyb_ * kClasses + logits.argmax(1)).to(at::kCPU);
      confusion_ += at::bincount(cell, {}, kClasses * kClasses).view({kClasses, kClasses});
      confusion_samples_ += cell.size(0);
    }
  }

  // At the run's last evaluation (the last step), once per step even when
  // an EMA pass evaluates val again: the val confusion matrix and val
  // predictions as images.
  void eval_end(tloop::Context& ctx, const std::string& split) override {
    const int64_t step = ctx.step();
    if (split != "val" || step != ctx.max_steps() || step == images_step_ || confusion_samples_ == 0) return;
    images_step_ = step;
    log_confusion_matrix(ctx, "val/confusion_matrix");
    if (num_images_ > 0) {
      torch::NoGradGuard no_grad;
      const int64_t count = std::min<int64_t>(num_images_, x_val_.size(0));
      at::Tensor predicted = net_->forward(x_val_.slice(0, 0, count)).argmax(1);
      log_images(ctx, "predictions", predicted, true);
    }
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
  // The current pass's confusion matrix, gray: 10x10 cells of 16x16 pixels,
  // a cell's intensity 255 * count / row sum (row: the true class).
  void log_confusion_matrix(tloop::Context& ctx, const std::string& key) {
    constexpr int kCell = 16;
    constexpr int side = static_cast<int>(kClasses) * kCell;
    std::vector<uint8_t> pixels(static_cast<size_t>(side) * side, 0);
    at::Tensor counts = confusion_.contiguous();
    const int64_t* c = counts.data_ptr<int64_t>();
    for (int64_t r = 0; r < kClasses; ++r) {
      int64_t row_sum = 0;
      for (int64_t p = 0; p < kClasses; ++p) row_sum += c[r * kClasses + p];
      for (int64_t p = 0; p < kClasses; ++p) {
        const auto v = static_cast<uint8_t>(row_sum > 0 ? 255 * c[r * kClasses + p] / row_sum : 0);
        for (int y = 0; y < kCell; ++y)
          for (int x = 0; x < kCell; ++x) pixels[(r * kCell + y) * side + p * kCell + x] = v;
      }
    }
    ctx.log_images({{key, side, side, 1, side, pixels.data()}});
  }

  // Gray images scaled 4x (32x32); keys carry the label (and the prediction).
  void log_images(tloop::Context& ctx, const std::string& prefix, const at::Tensor& predicted, bool with_prediction) {
    const int64_t count = std::min<int64_t>(num_images_, x_val_.size(0));
    constexpr int kScale = 4;
    at::Tensor pixels = (x_val_.slice(0, 0, count).to(at::kCPU) * 255.0)
                            .clamp(0, 255)
                            .to(at::kByte)
                            .repeat_interleave(kScale, 2)
                            .repeat_interleave(kScale, 3)
                            .contiguous();
    at::Tensor labels = y_val_.slice(0, 0, count).to(at::kCPU);
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
  double holdout_fraction_, test_fraction_;
  int64_t eval_batch_size_, channels_, hidden_, num_images_;
  int64_t n_val_ = 0, n_test_ = 0;  // the split sizes, from the options and the data
  std::string data_path_;
  std::vector<float> pixels_;    // read in create, made tensors in setup
  std::vector<int64_t> labels_;
  uint64_t seed_ = 0;
  c10::Device device_ = c10::Device(c10::kCPU);
  at::Tensor x_train_, y_train_, x_val_, y_val_, x_test_, y_test_, order_, xb_, yb_;
  int64_t epoch_ = 0, cursor_ = 0, last_step_ = -1;
  // The evaluation pass: its split, position, batch and confusion matrix
  // (CPU int64, true class x predicted class).
  at::Tensor eval_x_, eval_y_, exb_, eyb_, confusion_;
  int64_t eval_pos_ = 0, confusion_samples_ = 0, images_step_ = -1;
  DigitsNet net_{nullptr};
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::task<DigitsCnn>())
