// The built-in hook plugins, loaded through the loader in real runs.
#include "support.h"

#include "exit_codes.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>
#include <sstream>
#include <tuple>

using test::TempDir;

namespace {

// An ETA of any length (h:mm:ss): how long is up to the machine.
const std::regex kEta(R"(\| ETA \d+:\d\d:\d\d)");

const std::string kTestPlugins = std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR + "\"]\n";

// scripted_task with SGD lr 1 and gradient 1: after step t every w_i is 1 - t.
std::string linear_spec(int steps, const std::string& hooks) {
  return kTestPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) +
         "\n[task]\nplugin = \"scripted_task\"\ndim = 3\n[optimizer]\ntype = \"sgd\"\nlr = 1.0\n" + hooks;
}

std::vector<double> as_values(const tloop::StateValue& v) {
  at::Tensor t = std::get<at::Tensor>(v).detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

// step -> key -> values, from event_recorder's step_info lines.
std::map<int, std::map<std::string, std::vector<double>>> recorded_step_info(const test::fs::path& file) {
  std::map<int, std::map<std::string, std::vector<double>>> out;
  for (const auto& line : test::read_lines(file)) {
    std::istringstream in(line);
    std::string label, what, key;
    int step;
    in >> label >> what;
    if (what != "step_info") continue;
    in >> step >> key;
    for (double v; in >> v;) out[step][key].push_back(v);
  }
  return out;
}

}  // namespace

TEST_CASE("ema equals the closed form over k steps and counts its updates") {
  TempDir dir;
  auto run = test::train(dir, linear_spec(5, "[[hooks]]\nplugin = \"ema\"\ndecay = 0.75\n"));
  // w_t = 1 - t; the first update copies, then ema = 0.75 ema + 0.25 w_t.
  double ema = 0.0;
  for (int t = 2; t <= 5; ++t) ema = 0.75 * ema + 0.25 * (1.0 - t);
  const tloop::StateDict state = run->plugin_state();
  CHECK(std::get<int64_t>(state.at("hooks/ema/n_averaged")) == 5);
  for (double v : as_values(state.at("hooks/ema/ema_model/w"))) CHECK(v == doctest::Approx(ema).epsilon(1e-6));
}

TEST_CASE("ema honours update_interval and start_step") {
  TempDir dir;
  auto run = test::train(
      dir, linear_spec(6, "[[hooks]]\nplugin = \"ema\"\ndecay = 0.5\nupdate_interval = 2\nstart_step = 3\ndevice = \"cpu\"\n"));
  // Updates at steps 4 and 6: copy w_4 = -3, then 0.5 * -3 + 0.5 * -5.
  const tloop::StateDict state = run->plugin_state();
  CHECK(std::get<int64_t>(state.at("hooks/ema/n_averaged")) == 2);
  for (double v : as_values(state.at("hooks/ema/ema_model/w"))) CHECK(v == doctest::Approx(-4.0));
}

TEST_CASE("ema survives a state-dict round trip, and two instances keep separate state") {
  TempDir a, b;
  const std::string hooks = "[[hooks]]\nplugin = \"ema\"\ndecay = 0.5\n[[hooks]]\nplugin = \"ema\"\nkey = \"ema_slow\"\ndecay = 0.9\n";
  auto first = test::train(a, linear_spec(4, hooks));
  auto second = test::train(b, linear_spec(2, hooks));
  const tloop::StateDict saved = first->plugin_state();
  CHECK(as_values(saved.at("hooks/ema/ema_model/w")) != as_values(saved.at("hooks/ema_slow/ema_model/w")));
  second->load_plugin_state(saved);
  const tloop::StateDict loaded = second->plugin_state();
  for (const char* key : {"hooks/ema/ema_model/w", "hooks/ema_slow/ema_model/w"}) {
    INFO(key);
    CHECK(as_values(loaded.at(key)) == as_values(saved.at(key)));
  }
  CHECK(std::get<int64_t>(loaded.at("hooks/ema_slow/n_averaged")) == 4);
}

TEST_CASE("two hooks with the same state key are a spec error") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, linear_spec(1, "[[hooks]]\nplugin = \"ema\"\n[[hooks]]\nplugin = \"ema\"\n")),
                       doctest::Contains("hooks[1]: its state key 'ema' is used by hooks[0] too"), tloop::SpecError);
}

TEST_CASE("logging's aggregates equal hand-computed means and log the learning rate each step used") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  const std::string spec =
      "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) +
      "\"]\n[trainer]\nmax_steps = 7\ngradient_accumulation_steps = 2\ngrad_clip = 10.0\n"
      "[task]\nplugin = \"regression_mlp\"\nbatch_size = 8\n[optimizer]\ntype = \"sgd\"\nlr = 0.1\n"
      "[scheduler]\ntype = \"linear\"\nwarmup_steps = 3\n"
      "[[hooks]]\nplugin = \"cuda_max_memory\"\n"
      "[[hooks]]\nplugin = \"event_recorder\"\nstep_info = true\nfile = \"" + events + "\"\n"
      "[[hooks]]\nplugin = \"logging\"\ninterval = 3\n";
  test::train(dir, spec);
  const auto info = recorded_step_info(events);
  std::vector<nlohmann::json> rows;
  for (const auto& line : test::read_lines(dir / "ws" / "metrics.jsonl")) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == 3);  // steps 3 and 6, and the last step 7
  const std::vector<std::pair<int, int>> intervals = {{1, 3}, {4, 6}, {7, 7}};
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto [first, last] = intervals[r];
    INFO("interval ending at step ", intervals[r].second);
    CHECK(rows[r]["step"] == last);
    // data_time: each step's total over its fetches, averaged over steps (trainloop's definition).
    double data_time = 0;
    for (int s = first; s <= last; ++s) {
      double step_total = 0;
      for (double v : info.at(s).at("data_time")) step_total += v;
      data_time += step_total;
    }
    CHECK(rows[r]["train/data_time"].get<double>() == doctest::Approx(data_time / (last - first + 1)).epsilon(1e-12));
    for (const char* key : {"loss", "grad_norm", "step_time", "retries"}) {
      double sum = 0;
      int n = 0;
      for (int s = first; s <= last; ++s)
        for (double v : info.at(s).at(key)) {
          sum += v;
          ++n;
        }
      INFO(key);
      CHECK(rows[r][std::string("train/") + key].get<double>() == doctest::Approx(sum / n).epsilon(1e-12));
    }
    double max_rss = 0;
    for (int s = first; s <= last; ++s) max_rss = std::max(max_rss, info.at(s).at("max_rss")[0]);
    CHECK(rows[r]["train/max_rss"].get<double>() == doctest::Approx(max_rss));
    // The rate the interval's last step used: the schedule at (last - 1) completed steps.
    const double used = 0.1 * tloop::lr_factor({"linear", 3, 0.0}, last - 1, 7);
    CHECK(rows[r]["train/lr/group_0"].get<double>() == doctest::Approx(used).epsilon(1e-12));
    CHECK(used != doctest::Approx(0.1 * tloop::lr_factor({"linear", 3, 0.0}, last, 7)));
  }
}

TEST_CASE("a record reported on some steps only is the mean over those steps, absent where none reported it") {
  // scripted_task records sparse = step on steps 3, 6 and 9: trainloop's
  // key_average over the steps of the interval that reported it, never a
  // value carried over from an earlier interval.
  for (const auto& [interval, expected] : std::vector<std::pair<int, std::map<int64_t, double>>>{
           {2, {{4, 3.0}, {6, 6.0}, {9, 9.0}}},  // rows at 2, 4, 6, 8, 9
           {6, {{6, 4.5}, {9, 9.0}}}}) {         // rows at 6 and 9
    const int every = interval;  // INFO's lambda cannot capture a structured binding before C++20
    INFO("logging interval ", every);
    TempDir dir;
    test::train(dir, kTestPlugins + "[trainer]\nmax_steps = 9\n[task]\nplugin = \"scripted_task\"\nrecord_every = 3\n"
                                    "[optimizer]\ntype = \"sgd\"\n[[hooks]]\nplugin = \"logging\"\ninterval = " +
                                    std::to_string(interval) + "\n");
    std::map<int64_t, double> logged;
    int64_t rows = 0;
    for (const auto& line : test::read_lines(dir / "ws" / "metrics.jsonl")) {
      const auto row = nlohmann::json::parse(line);
      ++rows;
      if (row.contains("train/sparse")) logged[row["step"].get<int64_t>()] = row["train/sparse"].get<double>();
    }
    CHECK(rows == (interval == 2 ? 5 : 2));
    CHECK(logged == expected);
  }
}

TEST_CASE("no option makes a hook write outside the workspace") {
  TempDir dir;
  for (const auto& [hook, line, message] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"image_files", "dir = \"../../x\"", "dir = \"../../x\" leaves the workspace ('..')"},
           {"image_files", "dir = \"/tmp/x\"", "dir = \"/tmp/x\" is absolute"},
           {"ema", "file = \"../../x.pt\"", "file = \"../../x.pt\" leaves the workspace ('..')"},
           {"ema", "file = \"a/" + std::string(256, 'n') + ".pt\"", "has a name longer than 255 bytes"},
           {"ema", "file = \"x\\u0000.pt\"", "hooks[0].file: contains a NUL character"}}) {
    const std::string what = hook + " " + line;  // INFO's lambda cannot capture a structured binding before C++20
    INFO(what);
    test::write_file(dir / "spec.toml", "[run]\nworkspace = \"" + (dir / "ws").string() + "\"\n" +
                                            linear_spec(2, "[[hooks]]\nplugin = \"" + hook + "\"\n" + line + "\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(message) != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir / "ws"));  // refused at create, before anything is written
  }
}

TEST_CASE("progress prints the means over its interval, as trainloop does") {
  TempDir dir;
  // lr 1, gradient 1: the loss of step t is 3 (2 - t); steps 1..3 average 0.
  auto run = test::train(dir, linear_spec(6, "[[hooks]]\nplugin = \"progress\"\ninterval = 3\nbar = \"never\"\n"
                                             "with_records = true\n"));
  const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
  CHECK(log.find("step 3/6 |") != std::string::npos);
  CHECK(log.find("| loss 0 |") != std::string::npos);      // (3 + 0 - 3) / 3, not the last step's -3
  CHECK(log.find("| loss -9 |") != std::string::npos);     // steps 4..6: (-6 - 9 - 12) / 3
  CHECK(log.find("| forward 2") != std::string::npos);     // the record's mean over steps 1..3
}

TEST_CASE("progress prints step/max lines with an ETA after warm-up when not on a terminal") {
  TempDir dir;
  test::write_file(dir / "spec.toml",
                   "[run]\nworkspace = \"" + (dir / "ws").string() +
                       "\"\n[trainer]\nmax_steps = 6\n[task]\nplugin = \"regression_mlp\"\n"
                       "[[hooks]]\nplugin = \"progress\"\ninterval = 2\neta_warmup = 2\nwith_records = true\n");
  auto r = test::run_command("(" + test::cli() + " run " + (dir / "spec.toml").string() + " 2>&1) < /dev/null | cat");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("Starting training: 6 steps") != std::string::npos);
  CHECK(r.output.find("Finished training: 6 steps in") != std::string::npos);
  const auto step_line = [&](int step) {
    const std::string head = "step " + std::to_string(step) + "/6 |";
    const size_t at = r.output.find(head);
    return at == std::string::npos ? std::string() : r.output.substr(at, r.output.find('\n', at) - at);
  };
  CHECK(step_line(2).find("| loss ") != std::string::npos);
  CHECK(step_line(2).find("ETA") == std::string::npos);  // still warming up
  CHECK(std::regex_search(step_line(4), kEta));
  CHECK(step_line(6).find("| lr group_0 ") != std::string::npos);
  CHECK(step_line(3).empty());
  CHECK(r.output.find('\r') == std::string::npos);
}

TEST_CASE("progress redraws one line under a pseudo-terminal") {
  TempDir dir;
  test::write_file(dir / "spec.toml",
                   "[run]\nworkspace = \"" + (dir / "ws").string() +
                       "\"\n[trainer]\nmax_steps = 1000\n[task]\nplugin = \"regression_mlp\"\n"
                       "[[hooks]]\nplugin = \"progress\"\n");
  // util-linux `script` gives the command a pseudo-terminal as stdout.
  auto r = test::run_command("script -qefc '" + test::cli() + " run " + (dir / "spec.toml").string() + "' /dev/null");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("\r[==============================] 100% 1000/1000 |") != std::string::npos);
  CHECK(r.output.find("steps/s | ETA") != std::string::npos);
  CHECK(r.output.find("step 1/1000 |") == std::string::npos);  // no plain lines on a terminal
  // Every redraw starts with \r on the same line: the bar adds a single newline at the end.
  const std::string bar = r.output.substr(r.output.find("\r["));
  CHECK(std::count(bar.begin(), bar.begin() + static_cast<long>(bar.find("Finished")), '\n') <= 2);
}

TEST_CASE("image_files writes each image under its step and keeps keys inside the workspace") {
  TempDir dir;
  auto run = test::train(dir, linear_spec(2, "[[hooks]]\nplugin = \"image_files\"\n") ,
                         {"task.image_keys=[\"a/b\", \"../../escape\", \"/abs/x\", \"we ird\"]"});
  const test::fs::path step1 = dir / "ws" / "visualizations" / "1";
  for (const char* file : {"a/b.png", "escape.png", "abs/x.png", "we_ird.png"}) {
    INFO(file);
    CHECK(test::read_file(step1 / file).substr(1, 3) == "PNG");
  }
  CHECK_FALSE(test::fs::exists(dir / "escape.png"));
  CHECK_FALSE(test::fs::exists(dir / "ws" / "escape.png"));
  const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
  CHECK(log.find("image_files: key '../../escape' is not a safe relative path; writing it as 'escape'") !=
        std::string::npos);
}

TEST_CASE("cuda_max_memory on CPU says so once and records the peak RSS") {
  TempDir dir;
  auto run = test::train(dir, linear_spec(3, "[[hooks]]\nplugin = \"cuda_max_memory\"\n"));
  const auto& rss = run->host().step_info()["max_rss"];
  REQUIRE(rss.size() == 1);
  CHECK(rss[0] > 0.01);  // GiB: a process with LibTorch loaded uses well over 10 MiB
  CHECK(rss[0] < 64.0);
  CHECK(run->host().step_info().count("max_memory") == 0);
  const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
  const std::string said = "cuda_max_memory: the run is on cpu; recording the process's peak resident memory";
  CHECK(log.find(said) != std::string::npos);
  CHECK(log.find(said) == log.rfind(said));
}

TEST_CASE("progress counts its ETA from the resumed step after a resume") {
  TempDir dir;
  const std::string ckpt = "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 10\n";
  const std::string progress = "[[hooks]]\nplugin = \"progress\"\ninterval = 5\neta_warmup = 2\n";
  auto spec = [&](int steps) {
    return "[run]\nworkspace = \"" + (dir / "ws").string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
           "\n[task]\nplugin = \"regression_mlp\"\n" + ckpt + progress;
  };
  test::write_file(dir / "first.toml", spec(20));
  REQUIRE(test::run_command(test::cli() + " run " + (dir / "first.toml").string()).exit_code == 0);
  test::write_file(dir / "more.toml", spec(40));
  auto r = test::run_command("(" + test::cli() + " run " + (dir / "more.toml").string() + " 2>&1) | cat");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("Resuming training at step 20/40") != std::string::npos);
  // Warm-up counts from step 20: step 25 already has an ETA.
  const size_t at = r.output.find("step 25/40 |");
  REQUIRE(at != std::string::npos);
  CHECK(std::regex_search(r.output.substr(at, r.output.find('\n', at) - at), kEta));
  CHECK(r.output.find("Finished training: 20 steps in") != std::string::npos);
}

namespace {

// scripted_task declaring 5 batches per epoch, accumulation 2, with
// event_recorder writing each step's info, and `hooks` after it.
std::string epochs_spec(int steps, const std::string& events, const std::string& task_options,
                        const std::string& hooks) {
  return kTestPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) +
         "\ngradient_accumulation_steps = 2\nmax_non_finite_grad_retries = 3\n"
         "[task]\nplugin = \"scripted_task\"\nbatches_per_epoch = 5\n" + task_options +
         "\n[optimizer]\ntype = \"sgd\"\nlr = 0.1\n"
         "[[hooks]]\nplugin = \"event_recorder\"\nstep_info = true\nfile = \"" + events + "\"\n" + hooks;
}

}  // namespace

TEST_CASE("a task that declares epochs gets epoch and epoch_end per step, counted in batches drawn") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  // The first forward's loss is NaN: step 1 is retried, and its first
  // attempt's two batches were drawn, so step s ends with 2s + 2 batches.
  test::train(dir, epochs_spec(12, events, "nan_forwards = 1",
                               "[[hooks]]\nplugin = \"logging\"\ninterval_epochs = 2\n"
                               "[[hooks]]\nplugin = \"checkpointing\"\ninterval_epochs = 2\nkeep_previous = 100\n"));
  const auto info = recorded_step_info(events);
  REQUIRE(info.size() == 12);
  const auto batches_after = [](int s) { return s == 0 ? 0 : 2 * s + 2; };
  std::vector<int> epoch_ends;
  for (int s = 1; s <= 12; ++s) {
    INFO("step ", s);
    const int before = batches_after(s - 1) / 5, after = batches_after(s) / 5;
    CHECK(info.at(s).at("epoch") == std::vector<double>{static_cast<double>(before)});
    CHECK(info.at(s).at("epoch_end") == std::vector<double>{static_cast<double>(after - before)});
    if (after > before) epoch_ends.push_back(s);
  }
  CHECK(epoch_ends == std::vector<int>{2, 4, 7, 9, 12});  // 6, 10, 16, 20, 26 batches

  // Every second epoch ends at steps 4 and 9 (epochs 2 and 4 complete); the last step, 12, always.
  std::vector<int64_t> rows;
  std::vector<double> epochs;
  for (const auto& line : test::read_lines(dir / "ws" / "metrics.jsonl")) {
    const auto row = nlohmann::json::parse(line);
    rows.push_back(row["step"].get<int64_t>());
    epochs.push_back(row["train/epoch"].get<double>());
    CHECK(!row.contains("train/epoch_end"));
  }
  CHECK(rows == std::vector<int64_t>{4, 9, 12});
  CHECK(epochs == std::vector<double>{1, 3, 4});  // the epoch of each row's last step
  std::vector<std::string> saved;
  for (const auto& e : test::fs::directory_iterator(dir / "ws" / "checkpoints"))
    if (e.is_directory()) saved.push_back(e.path().filename().string());
  std::sort(saved.begin(), saved.end());
  CHECK(saved == std::vector<std::string>{"12", "4", "9"});
}

TEST_CASE("a resumed run counts epochs on from the checkpoint's batches") {
  TempDir dir;
  const std::string whole = (dir / "whole.txt").string(), parts = (dir / "parts.txt").string();
  test::train(dir, epochs_spec(12, whole, "nan_forwards = 1", ""), {"run.workspace=" + (dir / "a").string()});
  const std::string spec = epochs_spec(12, parts, "nan_forwards = 1", "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 5\n");
  const std::string ws = "run.workspace=" + (dir / "b").string();
  test::train(dir, spec, {ws, "trainer.max_steps=5"});
  test::train(dir, spec, {ws});  // resumes at step 5
  const auto a = recorded_step_info(whole), b = recorded_step_info(parts);
  for (int s = 1; s <= 12; ++s) {
    INFO("step ", s);
    CHECK(b.at(s).at("epoch") == a.at(s).at("epoch"));
    CHECK(b.at(s).at("epoch_end") == a.at(s).at("epoch_end"));
  }
  CHECK(a.at(12).at("epoch") == std::vector<double>{4});  // 24 batches before step 12 (retried step 1 included)
}

TEST_CASE("intervals in epochs need a task with epochs, and an epoch length must be positive") {
  TempDir dir;
  for (const char* hook : {"logging", "checkpointing"}) {
    INFO(hook);
    const std::string spec = linear_spec(2, std::string("[[hooks]]\nplugin = \"") + hook + "\"\ninterval_epochs = 1\n");
    try {
      test::train(dir, spec);
      FAIL("a run with interval_epochs and no epochs trained");
    } catch (const std::exception& e) {
      const std::string what = e.what();
      CHECK(what.find(hook) != std::string::npos);
      CHECK(what.find("interval_epochs = 1 counts epochs, but the task declares no epoch length") != std::string::npos);
      // bad input, decided in one place: the process and every hook's finish get 2
      CHECK(tloop::exit_code_of(std::current_exception()) == tloop::kExitBadInput);
    }
  }
  {
    // Through the CLI: exit 2, and the hooks' finish saw the same code.
    test::write_file(dir / "epochs.toml", "[run]\nworkspace = \"" + (dir / "cli_ws").string() + "\"\n" +
                                              linear_spec(2, "[[hooks]]\nplugin = \"logging\"\ninterval_epochs = 1\n"
                                                             "[[hooks]]\nplugin = \"event_recorder\"\nfile = \"" +
                                                             (dir / "finish.txt").string() + "\"\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "epochs.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("hooks[0] (logging) refused its input in before_train: interval_epochs = 1") != std::string::npos);
    CHECK(r.output.find("training failed") == std::string::npos);
    CHECK(test::read_lines(dir / "finish.txt").back() == "hook finish 0 2");
  }
  try {
    std::string spec = epochs_spec(2, (dir / "e.txt").string(), "", "");
    spec.replace(spec.find("batches_per_epoch = 5"), 21, "batches_per_epoch = -3");
    test::train(dir, spec);
    FAIL("a negative epoch length was accepted");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find("declared an epoch of -3 batches") != std::string::npos);
  }
}
