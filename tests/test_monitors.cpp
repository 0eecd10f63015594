// Monitors: best-k checkpoints by a monitored metric, and early stopping.
#include "support.h"

#include "checks.h"

#include <nlohmann/json.hpp>

#include <csignal>
#include <set>
#include <tuple>

using test::TempDir;
namespace fs = std::filesystem;

namespace {

const std::string kTestPlugins = std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR + "\"]\n";

// scripted_task evaluated every `eval_interval` steps: its "val/loss" at the
// n-th evaluation is values[n] (the last one once they run out).
std::string spec(const fs::path& ws, int64_t steps, int64_t eval_interval, const std::vector<std::string>& values,
                 const std::string& hooks, const std::string& task_extra = "") {
  std::string list;
  for (const auto& v : values) list += (list.empty() ? "\"" : ", \"") + v + "\"";
  return kTestPlugins + "[run]\nworkspace = \"" + ws.string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
         "\n[task]\nplugin = \"scripted_task\"\neval_values = [" + list + "]\n" + task_extra +
         "[optimizer]\ntype = \"sgd\"\n[eval]\ninterval = " + std::to_string(eval_interval) +
         "\n[[hooks]]\nplugin = \"logging\"\ninterval = 1\n" + hooks;
}

// The entries of a checkpoint directory, sorted: checkpoints and pointers.
std::set<std::string> listing(const fs::path& root) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(root)) out.insert(e.path().filename().string());
  return out;
}

// A checkpoint's scalar state (state.json) under `prefix`, as "key=value" lines.
std::map<std::string, std::string> saved_state(const fs::path& checkpoint, const std::string& prefix) {
  const auto scalars = nlohmann::json::parse(test::read_file(checkpoint / "state.json"));
  std::map<std::string, std::string> out;
  for (const auto& [key, v] : scalars.items())
    if (key.rfind(prefix, 0) == 0) out[key.substr(prefix.size())] = v.begin().value().dump();
  return out;
}

// checkpointing's best list in a checkpoint: (step, value), best first.
std::vector<std::pair<int64_t, double>> best_list(const fs::path& checkpoint) {
  const auto scalars = nlohmann::json::parse(test::read_file(checkpoint / "state.json"));
  const std::string p = "hooks/checkpointing/best/";
  std::vector<std::pair<int64_t, double>> out;
  for (int64_t i = 0; i < scalars.at(p + "count").at("int").get<int64_t>(); ++i)
    out.emplace_back(scalars.at(p + std::to_string(i) + "/step").at("int").get<int64_t>(),
                     scalars.at(p + std::to_string(i) + "/value").at("double").get<double>());
  return out;
}

using Best = std::vector<std::pair<int64_t, double>>;

// The message of the bad-input error `fn` fails with ("" when it does not).
template <class Fn>
std::string bad_input(Fn&& fn) {
  try {
    fn();
  } catch (const tloop::PluginBadInput& e) {
    return e.what();
  }
  return "";
}

// Whether `text` holds `part`; on failure both are shown.
bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("checkpointing with monitor keeps the keep_best best checkpoints, saved off the interval, and best names the best") {
  TempDir dir;
  const fs::path root = dir / "ws" / "checkpoints";
  // val/loss at steps 10, 20, ... 100; mode min, keep_best 2. NaN never
  // enters; 0.25 at step 80 ties the best (step 40) and pushes 60 out, and
  // the earlier of equal values stays the best.
  const std::vector<std::string> values = {"nan", "0.5", "0.75", "0.25", "0.625", "0.375", "0.875", "0.25", "0.5", "0.75"};
  const std::string ckpt =
      "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1000\nkeep_previous = 1\nmonitor = \"val/loss\"\n"
      "keep_best = 2\n";
  test::train(dir, spec(dir / "ws", 100, 10, values, ckpt));
  // Saved: 20, 30, 40, 60, 80 (each entering the best 2, off the interval) and
  // 100 (the last step). Pruned: 20 and 30 once they left the best; 60 left
  // it too but is the one regular checkpoint keep_previous = 1 keeps.
  CHECK(listing(root) == std::set<std::string>{"40", "60", "80", "100", "best", "latest"});
  CHECK(test::read_file(root / "best") == "40\n");
  CHECK(test::read_file(root / "latest") == "100\n");
  CHECK(best_list(root / "100") == Best{{40, 0.25}, {80, 0.25}});
  // Each checkpoint holds the list as of its step, itself included.
  CHECK(best_list(root / "40") == Best{{40, 0.25}, {20, 0.5}});
  CHECK(best_list(root / "60") == Best{{40, 0.25}, {60, 0.375}});

  // load = "best" resumes from what best names.
  auto run = test::train(dir, spec(dir / "ws", 40, 10, values,
                                   "[[hooks]]\nplugin = \"checkpointing\"\nload = \"best\"\nmonitor = \"val/loss\"\n"));
  CHECK(run->host().step() == 40);
  run.reset();

  TempDir fresh;
  const std::string error = bad_input(
      [&] { test::train(fresh, spec(fresh / "ws", 10, 10, values, "[[hooks]]\nplugin = \"checkpointing\"\nload = \"best\"\n")); });
  INFO(error);
  CHECK(contains(error, "(checkpointing) refused its input in resume: load = \"best\": there is no best checkpoint (" +
                            (fresh / "ws" / "checkpoints" / "best").string() + " does not exist"));
}

TEST_CASE("the best checkpoints of a run killed by SIGKILL and resumed are those of an uninterrupted run") {
  TempDir dir;
  // mode max, keep_best 2, val/loss every 5 steps; keep_previous 0 prunes
  // every regular checkpoint. The run is killed at step 26, after step 25
  // entered the best: its checkpoint must hold a best list with 25 in it.
  const std::vector<std::string> values = {"0.25", "0.5",    "0.375", "0.125", "0.75", "0.625",
                                           "0.5",  "0.875", "0.0625", "0.75"};
  const std::string ckpt =
      "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1000\nkeep_previous = 0\nmonitor = \"val/loss\"\n"
      "mode = \"max\"\nkeep_best = 2\n";
  const fs::path ws = dir / "killed";
  test::write_file(dir / "hang.toml", spec(ws, 60, 5, values, ckpt, "hang_at = 26\n"));
  test::write_file(dir / "resume.toml", spec(ws, 60, 5, values, ckpt));
  test::write_file(dir / "ref.toml", spec(dir / "ref", 60, 5, values, ckpt));

  const pid_t pid = test::spawn(dir / "hang.toml", dir / "killed.log");
  test::wait_until(
      [&] {
        return test::latest_step(ws) >= 25 && fs::exists(ws / "checkpoints" / "best") &&
               test::read_file(ws / "checkpoints" / "best") == "25\n";
      },
      "the checkpoint of step 25 named by best", pid);
  kill(pid, SIGKILL);
  CHECK(test::wait_exit(pid) == 128 + SIGKILL);
  INFO(test::read_file(dir / "killed.log"));
  CHECK(test::latest_step(ws) == 25);
  CHECK(listing(ws / "checkpoints") == std::set<std::string>{"10", "25", "best", "latest"});
  CHECK(best_list(ws / "checkpoints" / "25") == Best{{25, 0.75}, {10, 0.5}});

  REQUIRE(test::wait_exit(test::spawn(dir / "resume.toml", dir / "killed.log")) == 0);
  REQUIRE(test::wait_exit(test::spawn(dir / "ref.toml", dir / "ref.log")) == 0);
  CHECK(contains(test::read_file(dir / "killed.log"),
                 "checkpointing: resumed from " + (ws / "checkpoints" / "25").string() + " at step 25"));
  const std::set<std::string> expected = {"25", "40", "60", "best", "latest"};
  CHECK(listing(dir / "ref" / "checkpoints") == expected);
  CHECK(listing(ws / "checkpoints") == expected);
  CHECK(test::read_file(dir / "ref" / "checkpoints" / "best") == "40\n");
  CHECK(test::read_file(ws / "checkpoints" / "best") == "40\n");
  CHECK(best_list(ws / "checkpoints" / "60") == Best{{40, 0.875}, {25, 0.75}});
  CHECK(saved_state(ws / "checkpoints" / "60", "hooks/checkpointing/") ==
        saved_state(dir / "ref" / "checkpoints" / "60", "hooks/checkpointing/"));
}

TEST_CASE("early_stopping ends the run at the evaluation that exhausts patience, saved, and a re-run does not train on") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  const fs::path metrics = ws / "metrics.jsonl";
  // val/loss at 10, 20, 30 improves (0.5, 0.25, 0.125), then 0.25 at 40 and
  // 50: the second evaluation without improvement (patience 2) is step 50.
  const std::string hooks =
      "[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/loss\"\npatience = 2\n"
      "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1000\n";
  test::write_file(dir / "spec.toml", spec(ws, 1000, 10, {"0.5", "0.25", "0.125", "0.25"}, hooks));
  CHECK(test::wait_exit(test::spawn(dir / "spec.toml", dir / "first.log")) == 0);
  {
    const std::string log = test::read_file(dir / "first.log");
    INFO(log);
    CHECK(contains(log, "early_stopping: val/loss did not improve for 2 evaluations (best 0.125 at step 30); "
                        "stopping at step 50"));
    CHECK(test::last_logged_step(metrics) == 50);
    CHECK(test::logged(metrics, "train/loss").size() == 50);
    // Off the interval, saved as the run ends: a re-run resumes there.
    CHECK(test::latest_step(ws) == 50);
    CHECK(contains(log, "checkpointing: the run ended early at step 50"));
    CHECK(saved_state(ws / "checkpoints" / "50", "hooks/early_stopping/").at("stopped") == "1");
    // The summary says where the run ended, with its last evaluation.
    CHECK(contains(log, "finished 'spec': 50/1000 steps in "));
    CHECK(contains(log, ", val/loss 0.2500"));
  }

  // The same spec again: no step, exit 0, and it says why.
  const auto before = test::read_lines(metrics);
  CHECK(test::wait_exit(test::spawn(dir / "spec.toml", dir / "second.log")) == 0);
  {
    const std::string log = test::read_file(dir / "second.log");
    INFO(log);
    CHECK(contains(log, "early_stopping: the run stopped early at step 50: val/loss did not improve for 2 evaluations "
                        "(best 0.125 at step 30); not training on: raise trainer.max_steps above 1000 or set "
                        "resume_stopped = true"));
    CHECK(test::read_lines(metrics) == before);  // not a row more
    CHECK(test::latest_step(ws) == 50);
  }

  // A higher max_steps trains on; the last value repeats, so two more
  // evaluations without improvement stop it again at step 70.
  const auto more = test::run_command(test::cli() + " run " + (dir / "spec.toml").string() + " --set trainer.max_steps=2000");
  INFO(more.output);
  CHECK(more.exit_code == 0);
  CHECK(contains(more.output, "early_stopping: the run stopped early at step 50: val/loss did not improve for 2 "
                              "evaluations (best 0.125 at step 30); training on (trainer.max_steps raised from 1000 "
                              "to 2000)"));
  CHECK(contains(more.output, "early_stopping: val/loss did not improve for 2 evaluations (best 0.125 at step 30); "
                              "stopping at step 70"));
  CHECK(test::last_logged_step(metrics) == 70);
  CHECK(test::latest_step(ws) == 70);
}

TEST_CASE("early_stopping killed between evaluations and resumed stops at the step an uninterrupted run stops at") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  // As above (stops at 50); checkpoints every 5 steps; killed in step 47,
  // after step 45 saved one evaluation without improvement.
  const std::vector<std::string> values = {"0.5", "0.25", "0.125", "0.25"};
  const std::string hooks =
      "[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/loss\"\npatience = 2\n"
      "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 5\n";
  test::write_file(dir / "hang.toml", spec(ws, 1000, 10, values, hooks, "hang_at = 47\n"));
  test::write_file(dir / "spec.toml", spec(ws, 1000, 10, values, hooks));
  const pid_t pid = test::spawn(dir / "hang.toml", dir / "run.log");
  test::wait_until([&] { return test::latest_step(ws) >= 45; }, "the checkpoint of step 45", pid);
  kill(pid, SIGKILL);
  CHECK(test::wait_exit(pid) == 128 + SIGKILL);
  REQUIRE(test::latest_step(ws) == 45);
  const auto at45 = saved_state(ws / "checkpoints" / "45", "hooks/early_stopping/");
  CHECK(at45.at("wait") == "1");
  CHECK(at45.at("best") == "0.125");
  CHECK(at45.at("best_step") == "30");
  CHECK(at45.at("stopped") == "0");

  CHECK(test::wait_exit(test::spawn(dir / "spec.toml", dir / "run.log")) == 0);
  const std::string log = test::read_file(dir / "run.log");
  INFO(log);
  CHECK(contains(log, "checkpointing: resumed from " + (ws / "checkpoints" / "45").string() + " at step 45"));
  CHECK(contains(log, "early_stopping: val/loss did not improve for 2 evaluations (best 0.125 at step 30); "
                      "stopping at step 50"));
  CHECK(test::last_logged_step(ws / "metrics.jsonl") == 50);
  CHECK(test::latest_step(ws) == 50);
}

TEST_CASE("early_stopping stops at a NaN value (check_finite), past stopping_threshold or divergence_threshold, and min_delta asks for a margin") {
  {
    TempDir dir;
    test::write_file(dir / "spec.toml",
                     spec(dir / "ws", 1000, 10, {"0.5", "0.25", "nan"},
                          "[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/loss\"\npatience = 5\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, "early_stopping: val/loss is nan at step 30 (check_finite); stopping at step 30"));
    CHECK(test::last_logged_step(dir / "ws" / "metrics.jsonl") == 30);
  }
  {
    // mode max, min_delta 0.1: 0.55 and 0.6 are within 0.1 of 0.5; patience 2 stops at 30.
    TempDir dir;
    test::write_file(dir / "spec.toml",
                     spec(dir / "ws", 1000, 10, {"0.5", "0.55", "0.6", "0.9"},
                          "[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/loss\"\nmode = \"max\"\n"
                          "patience = 2\nmin_delta = 0.1\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, "early_stopping: val/loss did not improve for 2 evaluations by more than 0.1 (best 0.5 "
                             "at step 10); stopping at step 30"));
    CHECK(test::last_logged_step(dir / "ws" / "metrics.jsonl") == 30);
  }
  // Lightning's thresholds compare strictly: 0.2 is not below 0.2, nor 1.0 above 1.0.
  for (const auto& c : std::vector<std::tuple<std::string, std::vector<std::string>, std::string, int64_t>>{
           {"stopping_threshold = 0.2", {"0.5", "0.25", "0.2", "0.1"},
            "early_stopping: val/loss = 0.1 at step 40 is better than stopping_threshold 0.2; stopping at step 40", 40},
           {"divergence_threshold = 1.0", {"0.5", "1.0", "1.5"},
            "early_stopping: val/loss = 1.5 at step 30 is worse than divergence_threshold 1; stopping at step 30", 30},
           {"mode = \"max\"\nstopping_threshold = 0.0", {"-0.5", "0", "0.25"},
            "early_stopping: val/loss = 0.25 at step 30 is better than stopping_threshold 0; stopping at step 30", 30}}) {
    INFO(std::get<0>(c));
    TempDir dir;
    test::write_file(dir / "spec.toml", spec(dir / "ws", 1000, 10, std::get<1>(c),
                                             "[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/loss\"\n"
                                             "patience = 5\n" + std::get<0>(c) + "\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, std::get<2>(c)));
    CHECK(test::last_logged_step(dir / "ws" / "metrics.jsonl") == std::get<3>(c));
  }
}

TEST_CASE("a monitor the evaluation does not log is bad input naming the key and what was logged") {
  for (const std::string hook : {"[[hooks]]\nplugin = \"early_stopping\"\nmonitor = \"val/accuracy\"\n",
                                 "[[hooks]]\nplugin = \"checkpointing\"\nmonitor = \"val/accuracy\"\n"}) {
    INFO(hook);
    TempDir dir;
    test::write_file(dir / "spec.toml", spec(dir / "ws", 100, 10, {"0.5"}, hook));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "monitor = \"val/accuracy\": the evaluation of val logged no such metric (it logged: "
                             "val/loss)"));
    CHECK(test::last_logged_step(dir / "ws" / "metrics.jsonl") <= 10);  // stopped at the first evaluation
  }
  for (const std::string plugin : {"early_stopping", "checkpointing"}) {
    INFO(plugin);
    TempDir dir;
    test::write_file(dir / "spec.toml",
                     spec(dir / "ws", 100, 10, {"0.5"}, "[[hooks]]\nplugin = \"" + plugin + "\"\nmonitor = \"loss\"\n"));
    const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "monitor = \"loss\": expected a metric's full key, <prefix>/<name> (\"val/loss\")"));
  }
}

TEST_CASE("a misspelt monitor fails at the sanity pass, before the first step, and a misspelt prefix at the first evaluation") {
  for (const std::string plugin : {"early_stopping", "checkpointing"}) {
    for (const auto& c : std::vector<std::pair<std::string, std::string>>{
             {"val/accuracy", "monitor = \"val/accuracy\": the evaluation of val logged no such metric (it logged: val/loss)"},
             {"vall/loss", "monitor = \"vall/loss\": no evaluation logs under vall/ (this run's evaluations log under val/)"}}) {
      for (const bool sanity : {true, false}) {
        const std::string what = plugin + " " + c.first + (sanity ? " with" : " without") + " a sanity pass";
        INFO(what);
        TempDir dir;
        const std::string hook = "[[hooks]]\nplugin = \"" + plugin + "\"\nmonitor = \"" + c.first + "\"\n";
        test::write_file(dir / "spec.toml", spec(dir / "ws", 100, 10, {"0.5"}, hook));
        const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string() +
                                         (sanity ? " --set eval.sanity_batches=1" : ""));
        INFO(r.output);
        CHECK(r.exit_code == 2);
        CHECK(contains(r.output, c.second));
        const fs::path metrics = dir / "ws" / "metrics.jsonl";
        if (sanity)  // the sanity pass runs before step 1; the prefix is checked in step 1's after_step
          CHECK((!fs::exists(metrics) || test::last_logged_step(metrics) <= 1));
        else {  // stopped at the first evaluation, step 10 (logged when the save phase's checkpointing stops it)
          CHECK(test::last_logged_step(metrics) >= 9);
          CHECK(test::last_logged_step(metrics) <= 10);
        }
      }
    }
  }
}

TEST_CASE("checkpointing warns at the end when its monitor never had a value") {
  TempDir dir;
  test::write_file(dir / "spec.toml", kTestPlugins + "[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\n[trainer]\nmax_steps = 3\n[task]\nplugin = \"scripted_task\"\n"
                                          "[[hooks]]\nplugin = \"checkpointing\"\nmonitor = \"val/loss\"\n");
  const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(contains(r.output, "checkpointing: monitor = \"val/loss\" never had a value in this run"));
  CHECK_FALSE(fs::exists(dir / "ws" / "checkpoints" / "best"));
}
