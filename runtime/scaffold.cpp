#include "scaffold.h"

#include <filesystem>
#include <fstream>
#include <regex>
#include <stdexcept>
#include <vector>

namespace tloop {
namespace {

const char* kCMake = R"(cmake_minimum_required(VERSION 3.25)
project(@NAME@ LANGUAGES CXX)

# Point CMAKE_PREFIX_PATH at the tloop install prefix if CMake does not find it.
find_package(tloop 0.1 REQUIRED)
# TORCH links LibTorch, for plugins that use tensors (#include <tloop/torch.hpp>);
# without it the plugin loads under any LibTorch. @TORCH_NOTE@
tloop_add_plugin(@NAME@ @TORCH@SOURCES @NAME@.cpp)

# `ctest` runs the plugin in a short training run with the installed tloop.
enable_testing()
add_test(NAME @NAME@_trains
         COMMAND ${TLOOP_EXECUTABLE} run ${CMAKE_CURRENT_SOURCE_DIR}/test/spec.toml
                 --set "run.workspace=\"${CMAKE_CURRENT_BINARY_DIR}/test-run\"")
set_tests_properties(@NAME@_trains PROPERTIES
  ENVIRONMENT "TLOOP_PLUGIN_PATH=${CMAKE_BINARY_DIR}/plugins"
  PASS_REGULAR_EXPRESSION "@EXPECT@")
)";

const char* kHook = R"(// @NAME@: a tloop hook. Events you can override, in the order they come:
// resume (restore a previous run), before_train; per step before_step,
// before_optimizer_step, after_step; after_train; finish(ctx, exit_code)
// (once, however training ended: close files here). Whenever anything logs:
// on_log, on_log_images. Around checkpoints: state_dict, load_state_dict.
// With `static constexpr bool micro_step_events = true;` also after_forward,
// before_backward, after_backward per micro-step; `static constexpr
// tloop_hook_phase phase = ...;` says when it runs among the other hooks.
// See tloop/sdk.hpp and docs/plugins.md.
#include <tloop/sdk.hpp>

class @CLASS@ : public tloop::Hook {
 public:
  static tloop::PluginInfo info() {
    return {"@NAME@",
            "0.1.0",
            "TODO: what @NAME@ does, in one line",
            {tloop::option("interval", 10, "steps between messages").at_least(1)}};
  }

  @CLASS@(tloop::Context&, const tloop::Options& options) : interval_(options.get_int("interval")) {}

  void after_step(tloop::Context& ctx) override {
    if (ctx.step() % interval_ != 0) return;
    const std::vector<double> loss = ctx.step_info(TLOOP_INFO_LOSS);
    ctx.info("@NAME@: step " + std::to_string(ctx.step()) + " loss " + (loss.empty() ? "-" : std::to_string(loss[0])));
  }

  void after_train(tloop::Context& ctx) override {
    ctx.info("@NAME@: after_train at step " + std::to_string(ctx.step()));
  }

 private:
  int64_t interval_;
};

TLOOP_PLUGIN_LIBRARY(tloop::hook<@CLASS@>())
)";

const char* kTask = R"(// @NAME@: a tloop task: the model, the data and the loss. This one fits a
// linear map y = 3x - 1 from noisy samples; replace it with your own.
// Resume-exact: batch i is drawn from a generator seeded with (seed, i), and
// the batch counter is saved with checkpoints, so a resumed run sees the
// same data as an uninterrupted one. Keep that property when you replace it.
#include <tloop/torch.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>

class @CLASS@ : public tloop::Task {
 public:
  static tloop::PluginInfo info() {
    return {"@NAME@",
            "0.1.0",
            "TODO: what @NAME@ trains, in one line",
            {tloop::option("batch_size", 32, "samples per micro-batch").at_least(1)}};
  }

  @CLASS@(tloop::Context&, const tloop::Options& options) : batch_size_(options.get_int("batch_size")) {}

  void setup(tloop::Context& ctx) override {
    device_ = c10::Device(ctx.device());
    seed_ = ctx.seed();
    weight_ = at::zeros({1, 1}, at::TensorOptions().device(device_)).requires_grad_(true);
    bias_ = at::zeros({1}, at::TensorOptions().device(device_)).requires_grad_(true);
    tloop::register_parameter(ctx, "weight", weight_);
    tloop::register_parameter(ctx, "bias", bias_);
  }

  void next_batch(tloop::Context&) override {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ * 1000003 + static_cast<uint64_t>(batches_++));
    x_ = at::randn({batch_size_, 1}, gen).to(device_);
    y_ = x_ * 3.0 - 1.0 + 0.01 * at::randn({batch_size_, 1}, gen).to(device_);
  }

  std::optional<at::Tensor> forward(tloop::Context& ctx) override {
    at::Tensor loss = at::mse_loss(at::linear(x_, weight_, bias_), y_);
    ctx.record("weight", weight_.item<double>());
    return loss;
  }

  // The data position: all a resumed run needs to draw the same batches.
  void state_dict(tloop::Context&, tloop::StateWriter& out) override { out.put("batches", batches_); }
  void load_state_dict(tloop::Context&, const tloop::StateReader& in) override {
    batches_ = in.get_int("batches").value_or(0);
  }

 private:
  int64_t batch_size_;
  uint64_t seed_ = 0;
  int64_t batches_ = 0;
  c10::Device device_ = c10::Device(c10::kCPU);
  at::Tensor weight_, bias_, x_, y_;
};

TLOOP_PLUGIN_LIBRARY(tloop::task<@CLASS@>())
)";

const char* kHookSpec = R"(# A short run with the built-in regression task and this hook.
[trainer]
max_steps = 20

[task]
plugin = "regression_mlp"

[[hooks]]
plugin = "@NAME@"
interval = 5
)";

const char* kTaskSpec = R"(# A short run of this task.
[trainer]
max_steps = 200

[task]
plugin = "@NAME@"

[optimizer]
type = "sgd"
lr = 0.1
)";

const char* kReadme = R"(# @NAME@

A tloop @KIND@ plugin.

```sh
cmake -S . -B build -DCMAKE_PREFIX_PATH=<tloop install prefix>
cmake --build build
ctest --test-dir build --output-on-failure
TLOOP_PLUGIN_PATH=build/plugins tloop describe @NAME@
```
)";

std::string fill(std::string text, const std::vector<std::pair<std::string, std::string>>& values) {
  for (const auto& [key, value] : values) {
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + value.size()))
      text.replace(at, key.size(), value);
  }
  return text;
}

}  // namespace

std::string scaffold_plugin(const std::string& kind, const std::string& name) {
  namespace fs = std::filesystem;
  if (kind != "hook" && kind != "task") throw std::invalid_argument("kind must be 'hook' or 'task', got '" + kind + "'");
  if (!std::regex_match(name, std::regex("[a-z][a-z0-9_]*")))
    throw std::invalid_argument("plugin names are lowercase letters, digits and '_', starting with a letter: '" +
                                name + "'");
  if (fs::exists(name)) throw std::invalid_argument("'" + name + "' already exists; choose another name or remove it");

  std::string class_name;
  bool upper = true;
  for (char c : name) {
    if (c == '_') {
      upper = true;
      continue;
    }
    class_name += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  const bool task = kind == "task";
  const std::vector<std::pair<std::string, std::string>> values = {
      {"@NAME@", name},
      {"@CLASS@", class_name},
      {"@KIND@", kind},
      {"@TORCH@", task ? "TORCH " : ""},
      {"@TORCH_NOTE@", task ? "A task always needs it." : "Add it when this hook needs tensors."},
      {"@EXPECT@", task ? "finished '[^']*': 200/200 steps" : name + ": after_train at step 20"},
  };
  const std::vector<std::pair<fs::path, const char*>> files = {
      {"CMakeLists.txt", kCMake},
      {name + ".cpp", task ? kTask : kHook},
      {fs::path("test") / "spec.toml", task ? kTaskSpec : kHookSpec},
      {"README.md", kReadme},
  };
  std::string written;
  for (const auto& [rel, text] : files) {
    const fs::path path = fs::path(name) / rel;
    fs::create_directories(path.parent_path());
    std::ofstream out(path);
    out << fill(text, values);
    if (!out) throw std::runtime_error("cannot write " + path.string());
    written += path.string() + "\n";
  }
  return written;
}

}  // namespace tloop
