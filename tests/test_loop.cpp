// The core loop's semantics, on real plugins loaded through the loader.
#include "support.h"

#include "grad_scaler.h"
#include "signals.h"

#include <ATen/ops/ones.h>
#include <doctest/doctest.h>

#include <cmath>

using test::TempDir;

namespace {

const std::string kTestPlugins = std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR + "\"]\n";

std::string regression_spec(int batch, int accumulation, int steps) {
  return "[trainer]\nmax_steps = " + std::to_string(steps) +
         "\ngradient_accumulation_steps = " + std::to_string(accumulation) +
         "\n[task]\nplugin = \"regression_mlp\"\nbatch_size = " + std::to_string(batch) +
         "\n[optimizer]\ntype = \"sgd\"\nlr = 0.1\n";
}

std::string scripted_spec(const std::string& task_options, const std::string& trainer_options, int steps = 3) {
  return kTestPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) + "\n" + trainer_options +
         "\n[task]\nplugin = \"scripted_task\"\n" + task_options + "\n[optimizer]\ntype = \"sgd\"\nlr = 1.0\n";
}

void check_close(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(std::abs(a[i] - b[i]) <= tol);
}

}  // namespace

TEST_CASE("k micro-steps of batch B end with the same weights as one step of batch k*B (SGD)") {
  TempDir a, b;
  auto accumulated = test::train(a, regression_spec(8, 4, 5));
  auto whole = test::train(b, regression_spec(32, 1, 5));
  for (const char* name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
    INFO(name);
    check_close(test::values(*accumulated, name), test::values(*whole, name), 1e-6);
  }
  // And training moved the weights at all.
  TempDir c;
  auto untrained = test::train(c, regression_spec(32, 1, 1), {"optimizer.lr=0.0"});
  CHECK(std::abs(test::values(*untrained, "fc1.weight")[0] - test::values(*whole, "fc1.weight")[0]) > 1e-4);
}

TEST_CASE("the same seed repeats a run exactly and another seed does not") {
  TempDir a, b, c;
  auto first = test::train(a, regression_spec(16, 2, 4));
  auto second = test::train(b, regression_spec(16, 2, 4));
  auto other = test::train(c, regression_spec(16, 2, 4), {"run.seed=1"});
  CHECK(test::values(*first, "fc1.weight") == test::values(*second, "fc1.weight"));
  CHECK(test::values(*first, "fc1.weight") != test::values(*other, "fc1.weight"));
}

TEST_CASE("a micro-step whose loss is None does not count towards accumulation") {
  TempDir dir;
  // Every second forward returns no loss: each step needs 2 real backwards.
  auto run = test::train(dir, scripted_spec("none_every = 2", "gradient_accumulation_steps = 2"));
  auto& info = run->host().step_info();
  CHECK(info["loss"].size() == 2);
  // The third step ran forwards 8..11; 8 and 10 gave no loss.
  CHECK(info["data_time"].size() == 4);
  CHECK(info["records/forward"] == std::vector<double>{8, 9, 10, 11});
  // Two real backwards of loss/2 per step, lr 1: w decreases by exactly 1 per step.
  CHECK(test::values(*run, "w")[0] == doctest::Approx(1.0 - 3.0));
}

TEST_CASE("non-finite gradients retry the whole step") {
  TempDir dir;
  auto run = test::train(dir, scripted_spec("nan_forwards = 3", "max_non_finite_grad_retries = 5", 1));
  // Three NaN attempts, then a good one: only the good one's loss and gradient count.
  CHECK(run->host().step_info()["retries"] == std::vector<double>{3});
  CHECK(run->host().step_info()["loss"] == std::vector<double>{1.0});
  CHECK(run->host().step_info()["data_time"].size() == 4);  // the step waited for every attempt's batch
  CHECK(test::values(*run, "w")[0] == doctest::Approx(0.0));
}

TEST_CASE("non-finite gradients fail after the maximum number of retries with the documented message") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, scripted_spec("nan_forwards = 10", "max_non_finite_grad_retries = 2")),
                       "step 1: gradients are not finite after 2 retries (trainer.max_non_finite_grad_retries = 2); "
                       "lower the learning rate, clip gradients or check the data",
                       tloop::TrainingError);
}

TEST_CASE("finite gradients too large for an L2 norm are not retried") {
  TempDir dir;
  // Each gradient is 1e20: the squares overflow float32, every element is finite.
  auto run = test::train(dir, scripted_spec("dim = 3\ngrad_scale = 1e20", "max_non_finite_grad_retries = 0", 1),
                         {"optimizer.lr=1e-20"});
  CHECK(run->host().step_info()["retries"] == std::vector<double>{0});
  for (double w : test::values(*run, "w")) CHECK(w == doctest::Approx(0.0));
}

TEST_CASE("clipping records the pre-clip gradient norm and clips") {
  TempDir dir;
  // dim 4, d loss / d w_i = 3: the norm is 6; clipped to 1.5 each gradient is 0.75.
  auto run = test::train(dir, scripted_spec("dim = 4\ngrad_scale = 3.0", "grad_clip = 1.5", 1));
  REQUIRE(run->host().step_info()["grad_norm"].size() == 1);
  CHECK(run->host().step_info()["grad_norm"][0] == doctest::Approx(6.0));
  for (double w : test::values(*run, "w")) CHECK(w == doctest::Approx(1.0 - 0.75).epsilon(1e-6));

  TempDir unclipped_dir;
  auto unclipped = test::train(unclipped_dir, scripted_spec("dim = 4\ngrad_scale = 3.0", "", 1));
  CHECK(unclipped->host().step_info().count("grad_norm") == 0);
  for (double w : test::values(*unclipped, "w")) CHECK(w == doctest::Approx(1.0 - 3.0));
}

TEST_CASE("events of a step reach two hooks in spec order") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  const std::string hooks = "[[hooks]]\nplugin = \"event_recorder\"\nkey = \"A\"\nlabel = \"A\"\nfile = \"" + events +
                            "\"\n[[hooks]]\nplugin = \"event_recorder\"\nkey = \"B\"\nlabel = \"B\"\nfile = \"" + events + "\"\n";
  test::train(dir, scripted_spec("", "", 2) + hooks);
  std::vector<std::string> expected = {"A before_train 0", "B before_train 0"};
  for (int step = 1; step <= 2; ++step)
    for (const char* event : {"before_step", "before_optimizer_step", "after_step"})
      for (const char* hook : {"A", "B"}) expected.push_back(std::string(hook) + " " + event + " " + std::to_string(step));
  expected.push_back("A after_train 2");
  expected.push_back("B after_train 2");
  expected.push_back("A finish 2 0");
  expected.push_back("B finish 2 0");
  CHECK(test::read_lines(events) == expected);
}

TEST_CASE("named losses, a tensor record and a published tensor reach the step info and micro-step hooks") {
  // scripted_task: loss = 2 * sum(w) as terms a (1/4) and b (3/4), w of 3
  // ones, SGD lr 1, accumulation 3: each micro-step adds 2/3 to each
  // gradient, and w drops by 2 per step.
  TempDir dir;
  const std::string events = (dir / "micro.txt").string();
  auto run = test::train(dir, scripted_spec("dim = 3\ngrad_scale = 2.0\noutputs = \"named\"",
                                            "gradient_accumulation_steps = 3", 2) +
                                  "[[hooks]]\nplugin = \"micro_recorder\"\nfile = \"" + events + "\"\n");
  std::vector<std::string> expected;
  for (int step = 1; step <= 2; ++step) {
    const double w = step == 1 ? 1.0 : -1.0;
    for (int m = 0; m < 3; ++m) {
      expected.push_back("after_forward " + std::to_string(step) + " " + std::to_string(m) + " " +
                         std::to_string(2 * w));
      expected.push_back("before_backward " + std::to_string(step) + " " + std::to_string(m));
      expected.push_back("after_backward " + std::to_string(step) + " " + std::to_string(m));
    }
  }
  const auto lines = test::read_lines(events);
  REQUIRE(lines.size() == expected.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    INFO(lines[i]);
    if (lines[i].rfind("after_backward", 0) != 0) {
      CHECK(lines[i] == expected[i]);
      continue;
    }
    // The gradient summed over the step's micro-steps so far, this one included.
    const size_t last_space = lines[i].rfind(' ');
    CHECK(lines[i].substr(0, last_space) == expected[i]);
    const int micro = static_cast<int>(i % 9) / 3;
    CHECK(std::stod(lines[i].substr(last_space + 1)) == doctest::Approx((micro + 1) * 2.0 / 3.0).epsilon(1e-6));
  }
  // Step 2 (w = -1): the terms, their sum as the loss, and the tensor record.
  const tloop::StepInfo& info = run->host().step_info();
  CHECK(info.at("loss/a") == std::vector<double>(3, 0.25 * 2 * -3.0));
  CHECK(info.at("loss/b") == std::vector<double>(3, 0.75 * 2 * -3.0));
  CHECK(info.at("loss") == std::vector<double>(3, 2 * -3.0));
  CHECK(info.at("records/w_sum") == std::vector<double>(3, -3.0));
  for (double w : test::values(*run, "w")) CHECK(w == doctest::Approx(1.0 - 2 * 2.0));
}

TEST_CASE("a forward that adds named losses and also returns a loss is an error naming the task") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, scripted_spec("outputs = \"named_and_loss\"", "")),
                       "task (scripted_task) returned a loss and also added named losses (add_loss); with named "
                       "losses, forward returns none: the loss is their sum",
                       tloop::TrainingError);
}

TEST_CASE("request_exit ends the run after the step: every hook finishes it, after_train is skipped, the first code wins") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  // A asks for 3 at step 2; B, after it in the same phase, asks for 4 in the same step.
  const std::string hooks = "[[hooks]]\nplugin = \"event_recorder\"\nkey = \"A\"\nlabel = \"A\"\nexit_at = 2\n"
                            "exit_code = 3\nfile = \"" + events + "\"\n"
                            "[[hooks]]\nplugin = \"event_recorder\"\nkey = \"B\"\nlabel = \"B\"\nexit_at = 2\n"
                            "exit_code = 4\nfile = \"" + events + "\"\n";
  int code = 0;
  try {
    test::train(dir, scripted_spec("", "", 5) + hooks);
  } catch (const tloop::ExitRequested& e) {
    code = e.code();
  }
  CHECK(code == 3);
  std::vector<std::string> expected = {"A before_train 0", "B before_train 0"};
  for (int step = 1; step <= 2; ++step)
    for (const char* event : {"before_step", "before_optimizer_step", "after_step"})
      for (const char* hook : {"A", "B"}) expected.push_back(std::string(hook) + " " + event + " " + std::to_string(step));
  expected.push_back("A finish 2 3");
  expected.push_back("B finish 2 3");
  CHECK(test::read_lines(events) == expected);
}

TEST_CASE("a hook that fails inside on_log is named with its own message, not the plugin that logged") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  CHECK_THROWS_WITH_AS(test::train(dir, scripted_spec("", "") + "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
                                            "[[hooks]]\nplugin = \"event_recorder\"\nfail_on_log = true\nfile = \"" +
                                            events + "\"\n"),
                       "hooks[1] (event_recorder) failed in on_log: recorder failure in on_log "
                       "(while hooks[0] (logging) was in after_step)",
                       tloop::PluginError);
}

TEST_CASE("every hook gets finish with exit code 1 when an error stops training, and the error still propagates") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  CHECK_THROWS_WITH_AS(test::train(dir, scripted_spec("fail_in = \"forward\"", "") +
                                            "[[hooks]]\nplugin = \"event_recorder\"\nfile = \"" + events + "\"\n"),
                       "task (scripted_task) failed in forward: scripted failure in forward", tloop::PluginError);
  CHECK(test::read_lines(events) == std::vector<std::string>{"hook before_train 0", "hook before_step 1", "hook finish 1 1"});
}

TEST_CASE("the learning rate follows warm-up then cosine, and step_info holds the rate each step used") {
  TempDir dir;
  auto run = test::train(dir, regression_spec(8, 1, 10) + "[scheduler]\ntype = \"cosine\"\nwarmup_steps = 4\n",
                         {"optimizer.lr=0.5"});
  tloop::SchedulerSpec s{"cosine", 4, 0.0};
  CHECK(tloop::lr_factor(s, 0, 10) == doctest::Approx(0.2));
  CHECK(tloop::lr_factor(s, 3, 10) == doctest::Approx(0.8));
  CHECK(tloop::lr_factor(s, 4, 10) == doctest::Approx(1.0));
  CHECK(tloop::lr_factor(s, 7, 10) == doctest::Approx(0.5));
  CHECK(tloop::lr_factor(s, 10, 10) == doctest::Approx(0.0));
  // The last step (10) used the factor for 9 completed steps.
  CHECK(run->host().step_info()["lr/group_0"] == std::vector<double>{0.5 * tloop::lr_factor(s, 9, 10)});
  tloop::SchedulerSpec linear{"linear", 0, 0.1};
  CHECK(tloop::lr_factor(linear, 5, 10) == doctest::Approx(0.55));
}

TEST_CASE("bf16 and fp16 autocast train on CPU, and fp16 goes through the grad scaler") {
  for (const char* precision : {"bf16", "fp16"}) {
    INFO(precision);
    TempDir dir;
    auto run = test::train(dir, regression_spec(16, 2, 5), {std::string("trainer.mixed_precision=\"") + precision + "\""});
    auto& info = run->host().step_info();
    REQUIRE(info["loss"].size() == 2);
    CHECK(std::isfinite(info["loss"][0]));
    CHECK(info.count("loss_scale") == (std::string(precision) == "fp16" ? 1u : 0u));
    if (std::string(precision) == "fp16") CHECK(info["loss_scale"][0] == doctest::Approx(65536.0));
  }
}

TEST_CASE("the grad scaler scales a float16 loss in float32, as torch.amp.GradScaler does") {
  tloop::GradScaler scaler{c10::Device(c10::kCPU)};
  const at::Tensor scaled = scaler.scale(at::ones({}, at::kHalf));
  CHECK((scaled.scalar_type() == at::kFloat));
  CHECK(scaled.item<double>() == 65536.0);  // in float16, 65536 is infinite
}

TEST_CASE("a plugin that throws fails with a message naming the plugin and the event") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, scripted_spec("fail_in = \"forward\"", "")),
                       "task (scripted_task) failed in forward: scripted failure in forward", tloop::PluginError);
  TempDir dir2;
  CHECK_THROWS_WITH_AS(test::train(dir2, scripted_spec("fail_in = \"create\"", "")),
                       "task (scripted_task) could not be created: scripted failure in create",
                       tloop::PluginCreateError);
  CHECK_FALSE(std::filesystem::exists(dir2 / "ws"));  // nothing was written for a run that could not start
}

TEST_CASE("the run writes its resolved spec and a log file into the workspace") {
  TempDir dir;
  test::train(dir, regression_spec(8, 1, 2));
  const std::string resolved = test::read_file(dir / "ws" / "spec.resolved.toml");
  CHECK(resolved.find("gradient_accumulation_steps = 1") != std::string::npos);
  CHECK(resolved.find("dataset_size = 1024") != std::string::npos);  // a plugin default, filled in
  CHECK(std::filesystem::exists(dir / "ws" / "logs" / "tloop.log"));
}
