// The evaluation loop: splits, metrics, hook events, sanity batches, tloop eval and predict.
#include "support.h"

#include "checks.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <regex>

using test::TempDir;
namespace fs = std::filesystem;

namespace {

// The last line a command printed (its stdout's JSON; the log goes before it, on stderr).
nlohmann::json last_json_line(const std::string& output) {
  std::string text = output;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return nlohmann::json::parse(text.substr(text.rfind('\n') + 1));
}

// regression_mlp with randomness in training (dropout, input noise): an
// evaluation that drew from the training's generators would change the losses.
std::string regression_spec(const std::string& extra) {
  return R"(
[trainer]
max_steps = 30
[task]
plugin = "regression_mlp"
hidden_dim = 16
dropout = 0.2
input_noise = 0.1
val_size = 250
eval_batch_size = 100
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
[[hooks]]
plugin = "logging"
interval = 1
)" + extra;
}

std::map<int64_t, std::vector<double>> losses(const TempDir& dir) {
  return test::logged(dir / "ws" / "metrics.jsonl", "train/loss");
}

}  // namespace

TEST_CASE("a run with evaluation and sanity batches has exactly the training losses and weights of one without") {
  TempDir plain, evaluated;
  auto a = test::train(plain, regression_spec(""));
  auto b = test::train(evaluated, regression_spec("[eval]\ninterval = 4\nsanity_batches = 2\nmax_batches = 2\n"));
  REQUIRE(losses(plain).size() == 30);
  CHECK(losses(plain) == losses(evaluated));  // bit for bit
  for (const char* p : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) CHECK(test::values(*a, p) == test::values(*b, p));
  // Evaluated at multiples of 4 and at the last step; the sanity pass logs nothing.
  const auto mse = test::logged(evaluated / "ws" / "metrics.jsonl", "val/mse");
  std::vector<int64_t> steps;
  for (const auto& [step, v] : mse) steps.push_back(step);
  CHECK(steps == std::vector<int64_t>{4, 8, 12, 16, 20, 24, 28, 30});
  CHECK(test::logged(plain / "ws" / "metrics.jsonl", "val/mse").empty());
}

TEST_CASE("split metrics are sums over samples, so a task's batch-mean record equals the metric over the split") {
  // val_size 250 in batches of 100, 100, 50: the record 'loss' (each batch's
  // MSE) weighted by batch size is the split's MSE; a mean of batch means is not.
  TempDir dir;
  auto run = test::train(dir, regression_spec("[eval]\ninterval = 10\n"));
  const fs::path metrics = dir / "ws" / "metrics.jsonl";
  const auto mse = test::logged(metrics, "val/mse"), loss = test::logged(metrics, "val/loss"),
             mae = test::logged(metrics, "val/mae");
  REQUIRE(mse.size() == 3);
  for (const auto& [step, v] : mse) {
    const auto at = step;  // INFO's lambda cannot capture a structured binding before C++20
    INFO("step ", at);
    CHECK(loss.at(step)[0] == doctest::Approx(v[0]).epsilon(1e-6));  // float32 batch means vs a float64 sum
    CHECK(mae.at(step)[0] > 0.0);
    CHECK(mae.at(step)[0] * mae.at(step)[0] <= v[0] * (1 + 1e-12));  // mean |d|^2 <= mean d^2
  }
  // The summary line ends with the final evaluation, rounded.
  CHECK(std::regex_search(run->summary(), std::regex(R"(val/mse [0-9]+\.[0-9]{4}, val/mae [0-9]+\.[0-9]{4}, val/loss [0-9]+\.[0-9]{4}$)")));
}

TEST_CASE("ema eval_with_ema evaluates the averaged weights and swaps the training weights back bit for bit") {
  const std::string ema = "[[hooks]]\nplugin = \"ema\"\ndecay = 0.9\nfile = \"\"\n";
  TempDir none, both, replace;
  auto a = test::train(none, regression_spec(ema + "[eval]\ninterval = 5\n"));
  auto b = test::train(both, regression_spec(ema + "eval_with_ema = \"both\"\n[eval]\ninterval = 5\n"));
  auto c = test::train(replace, regression_spec(ema + "eval_with_ema = \"replace\"\n[eval]\ninterval = 5\n"));
  CHECK(losses(none) == losses(both));
  CHECK(losses(none) == losses(replace));
  for (const char* p : {"fc1.weight", "fc2.weight"}) {
    CHECK(test::values(*a, p) == test::values(*b, p));
    CHECK(test::values(*a, p) == test::values(*c, p));
  }
  const auto val = [](const TempDir& d, const char* key) { return test::logged(d / "ws" / "metrics.jsonl", key); };
  // "both": the training weights as val/, the EMA's as val_ema/; "replace": the EMA's as val/.
  CHECK(val(both, "val/mse") == val(none, "val/mse"));
  REQUIRE(val(both, "val_ema/mse").size() == 6);
  CHECK(val(replace, "val/mse") == val(both, "val_ema/mse"));
  CHECK(val(both, "val_ema/mse") != val(both, "val/mse"));
  CHECK(val(replace, "val_ema/mse").empty());
}

TEST_CASE("tloop eval reproduces the run's final metrics from its checkpoint, and tloop predict writes .npy rows") {
  TempDir dir;
  const std::string spec = regression_spec(
      "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 10\nkeep_previous = 5\n[[hooks]]\nplugin = \"ema\"\ndecay = 0.9\nfile = \"\"\n"
      "eval_with_ema = \"both\"\n[eval]\ninterval = 10\n");
  test::write_file(dir / "spec.toml", spec + "[run]\nworkspace = \"ws\"\n");
  const auto trained = test::run_command("cd " + dir.path().string() + " && " + test::cli() + " run spec.toml");
  REQUIRE_MESSAGE(trained.exit_code == 0, trained.output);
  const auto rows = test::read_lines(dir / "ws" / "metrics.jsonl");
  nlohmann::json last_val;
  for (const auto& line : rows)
    if (auto row = nlohmann::json::parse(line); row.contains("val/mse")) last_val = row;
  REQUIRE(last_val["step"] == 30);

  const auto ev = test::run_command("cd " + dir.path().string() + " && " + test::cli() + " eval spec.toml --json");
  REQUIRE_MESSAGE(ev.exit_code == 0, ev.output);
  const auto printed = last_json_line(ev.output);
  for (const char* key : {"val/mse", "val/mae", "val/loss", "val_ema/mse", "val_ema/mae", "val_ema/loss"}) {
    INFO(key);
    CHECK(printed.at(key).get<double>() == last_val.at(key).get<double>());  // exactly
  }
  // The checkpoint of step 10 evaluates to the row of step 10.
  const auto at10 = test::run_command("cd " + dir.path().string() + " && " + test::cli() +
                                      " eval spec.toml --checkpoint 10 --json");
  REQUIRE_MESSAGE(at10.exit_code == 0, at10.output);
  CHECK(last_json_line(at10.output).at("val/mse").get<double>() ==
        test::logged(dir / "ws" / "metrics.jsonl", "val/mse").at(10)[0]);

  const auto pr = test::run_command("cd " + dir.path().string() + " && " + test::cli() +
                                    " predict spec.toml --checkpoint latest");
  REQUIRE_MESSAGE(pr.exit_code == 0, pr.output);
  for (const char* name : {"predictions", "targets"}) {
    const std::string npy = test::read_file(dir / "ws" / "predictions" / "val" / (std::string(name) + ".npy"));
    CHECK(npy.rfind("\x93NUMPY\x01\x00", 0) == 0);
    CHECK(npy.find("'descr': '<f4', 'fortran_order': False, 'shape': (250, 1), }") != std::string::npos);
    CHECK(npy.size() % 64 == 250 * 4 % 64);  // the data starts 64-byte aligned
  }
}

TEST_CASE("tloop eval refuses, with exit code 2, a workspace without checkpoints and a checkpoint of another model") {
  TempDir dir;
  const std::string spec = regression_spec("[[hooks]]\nplugin = \"checkpointing\"\ninterval = 10\n[eval]\ninterval = 10\n");
  test::write_file(dir / "spec.toml", spec + "[run]\nworkspace = \"ws\"\n");
  const std::string in = "cd " + dir.path().string() + " && " + test::cli();
  const auto none = test::run_command(in + " eval spec.toml");
  CHECK(none.exit_code == 2);
  CHECK(none.output.find("no checkpoint to evaluate: 'latest' found none") != std::string::npos);
  REQUIRE(test::run_command(in + " run spec.toml").exit_code == 0);
  const auto other = test::run_command(in + " eval spec.toml --set task.hidden_dim=12");
  CHECK(other.exit_code == 2);
  CHECK(other.output.find("model/fc1.weight has shape [16, 8] in the checkpoint but [12, 8] in the model") !=
        std::string::npos);
  const auto split = test::run_command(in + " eval spec.toml --split tset");
  CHECK(split.exit_code == 2);
  CHECK(split.output.find("--split: task (regression_mlp) has no split 'tset'") != std::string::npos);
  test::write_file(dir / "bare.toml", regression_spec("[eval]\ninterval = 10\n") + "[run]\nworkspace = \"ws\"\n");
  const auto no_loader = test::run_command(in + " eval bare.toml");
  CHECK(no_loader.exit_code == 2);
  CHECK(no_loader.output.find("no hook of the spec loads checkpoints") != std::string::npos);
}

TEST_CASE("eval interval_epochs evaluates at the end of every epoch and at the last step") {
  // digits_cnn: 1259 training images in batches of 64 are 19 steps an epoch.
  TempDir dir;
  test::train(dir, "[trainer]\nmax_steps = 40\n[task]\nplugin = \"digits_cnn\"\nnum_images = 0\n"
                   "[eval]\ninterval_epochs = 1\nmax_batches = 1\n");
  std::vector<int64_t> steps;
  for (const auto& [step, v] : test::logged(dir / "ws" / "metrics.jsonl", "val/accuracy")) steps.push_back(step);
  CHECK(steps == std::vector<int64_t>{19, 38, 40});
}

TEST_CASE("metric totals merge by adding sums and counts, which a mean of means cannot do") {
  // What a distributed run does with each rank's totals of a split.
  tloop::MetricTotals a{{"accuracy", "loss"}, {3.0, 10.0}, {4.0, 4.0}};
  const tloop::MetricTotals b{{"accuracy", "loss"}, {1.0, 2.0}, {1.0, 1.0}};
  a.merge(b);
  const tloop::Metrics v = a.values("val");
  REQUIRE(v.size() == 2);
  CHECK(v[0] == std::pair<std::string, double>("val/accuracy", 0.8));  // 4 of 5, not (3/4 + 1/1) / 2
  CHECK(v[1] == std::pair<std::string, double>("val/loss", 12.0 / 5.0));
  CHECK_THROWS_AS(a.merge(tloop::MetricTotals{{"loss"}, {1.0}, {1.0}}), std::logic_error);
}

TEST_CASE("progress shows each evaluation's batches with an ETA, and the time it took") {
  TempDir dir;
  test::write_file(dir / "spec.toml", regression_spec("[[hooks]]\nplugin = \"progress\"\nbar = \"always\"\n"
                                                      "[eval]\ninterval = 15\nsanity_batches = 1\n") +
                                          "[run]\nworkspace = \"ws\"\n");
  const auto r = test::run_command("cd " + dir.path().string() + " && " + test::cli() + " run spec.toml");
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  // The live bar draws the last batch of every pass (250 samples, 3 batches).
  CHECK(r.output.find("sanity check val 1/1 batches | ETA ") != std::string::npos);
  CHECK(r.output.find("evaluating val 3/3 batches | ETA ") != std::string::npos);
  CHECK(r.output.find("evaluated val in ") != std::string::npos);
  // Evaluation time is reported apart from step time.
  CHECK(test::logged(dir / "ws" / "metrics.jsonl", "train/eval_time").size() == 2);  // steps 15 and 30
}
