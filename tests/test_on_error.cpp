// A hook's on_error policy (abort | disable | warn), and the emergency
// checkpoint an abort at a step boundary leaves behind.
#include "support.h"

#include "checks.h"

#include <algorithm>
#include <regex>

using test::TempDir;
namespace fs = std::filesystem;

namespace {

// regression_mlp with logging, an event_recorder (log phase) configured by
// `recorder`, and checkpointing every 5 steps.
std::string spec(const TempDir& dir, int64_t steps, const std::string& recorder,
                 const std::string& checkpointing = "interval = 5\n", const std::string& optimizer = "") {
  return "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) + "\"]\n[run]\nworkspace = \"" +
         (dir / "ws").string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
         "\n[task]\nplugin = \"regression_mlp\"\nhidden_dim = 16\ndataset_size = 256\n"
         "[optimizer]\ntype = \"adamw\"\nlr = 0.003\n" + optimizer +
         "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
         "[[hooks]]\nplugin = \"event_recorder\"\nfile = \"" + (dir / "events.txt").string() +
         "\"\nreport_failure = true\n" + recorder +
         "[[hooks]]\nplugin = \"checkpointing\"\n" + checkpointing;
}

struct Outcome {
  int code;
  std::string log;  // the run's stdout and stderr
};

Outcome run(const TempDir& dir, const std::string& text, const std::string& name = "spec.toml") {
  test::write_file(dir / name, text);
  const fs::path log = dir / (name + ".log");
  const int code = test::wait_exit(test::spawn(dir / name, log));
  return {code, test::read_file(log)};
}

std::vector<std::string> checkpoint_names(const fs::path& ws) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(ws / "checkpoints"))
    if (e.is_directory()) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The recorder's lines that start with `prefix` ("hook failure").
std::vector<std::string> lines_with(const fs::path& events, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& line : test::read_lines(events))
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  return out;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a hook failing in after_step aborts by default, and the step it ended is saved and resumes exactly") {
  TempDir dir, ref;
  const std::string recorder = "fail_at = 7\n";
  const Outcome failed = run(dir, spec(dir, 10, recorder));
  INFO(failed.log);
  CHECK(failed.code == 1);
  CHECK(failed.log.find("hooks[1] (event_recorder) failed in after_step: recorder failure in after_step at step 7") !=
        std::string::npos);
  CHECK(failed.log.find("emergency checkpoint of that step saved in " + (dir / "ws" / "checkpoints" / "7").string()) !=
        std::string::npos);
  CHECK(checkpoint_names(dir / "ws") == std::vector<std::string>{"7"});  // 5 pruned after it, as after any save
  CHECK(test::latest_step(dir / "ws") == 7);
  // Every hook got finish, and the host told them why and what step is whole.
  const auto failure = lines_with(dir / "events.txt", "hook failure");
  REQUIRE(failure.size() == 1);
  CHECK(failure[0].rfind("hook failure 7 7 hooks[1] (event_recorder) failed in after_step", 0) == 0);
  CHECK(lines_with(dir / "events.txt", "hook finish") == std::vector<std::string>{"hook finish 7 1"});

  // Resumed (step 7 does not run again, so nothing fails), the run ends with
  // the weights of a run that never failed.
  const Outcome resumed = run(dir, spec(dir, 10, recorder), "again.toml");
  INFO(resumed.log);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.log.find("resumed from " + (dir / "ws" / "checkpoints" / "7").string() + " at step 7") !=
        std::string::npos);
  const Outcome clean = run(ref, spec(ref, 10, ""));
  INFO(clean.log);
  REQUIRE(clean.code == 0);
  test::check_same_tensors(ref / "ws" / "checkpoints" / "10" / "model.pt", dir / "ws" / "checkpoints" / "10" / "model.pt");
  test::check_same_tensors(ref / "ws" / "checkpoints" / "10" / "state.pt", dir / "ws" / "checkpoints" / "10" / "state.pt");
}

TEST_CASE("a failure in before_step saves the step before it, and save_on_error = false saves nothing") {
  SUBCASE("saved") {
    TempDir dir;
    const Outcome out = run(dir, spec(dir, 10, "fail_at = 7\nfail_in = \"before_step\"\n"));
    INFO(out.log);
    CHECK(out.code == 1);
    CHECK(test::latest_step(dir / "ws") == 6);
    CHECK(lines_with(dir / "events.txt", "hook failure 6 6 ").size() == 1);  // the host's step is 6 in finish
  }
  SUBCASE("save_on_error = false") {
    TempDir dir;
    const Outcome out = run(dir, spec(dir, 10, "fail_at = 7\nfail_in = \"before_step\"\n",
                                      "interval = 5\nsave_on_error = false\n"));
    INFO(out.log);
    CHECK(out.code == 1);
    CHECK(test::latest_step(dir / "ws") == 5);
    CHECK(out.log.find("emergency") == std::string::npos);
  }
}

TEST_CASE("no emergency checkpoint of half a step or of weights that are not finite") {
  SUBCASE("a failure in before_optimizer_step: gradients summed, weights not yet stepped") {
    TempDir dir;
    const Outcome out = run(dir, spec(dir, 10, "fail_at = 7\nfail_in = \"before_optimizer_step\"\n"));
    INFO(out.log);
    CHECK(out.code == 1);
    CHECK(test::latest_step(dir / "ws") == 5);
    CHECK(lines_with(dir / "events.txt", "hook failure 7 -1 ").size() == 1);
  }
  SUBCASE("weights made infinite by a huge learning rate") {
    TempDir dir;
    // scripted_task's gradient is grad_scale everywhere: finite in step 1,
    // whose SGD update (lr 1e38 * 1e10) sends every weight to -inf; the
    // recorder fails right after.
    TempDir inf;
    std::string text = spec(inf, 10, "fail_at = 1\n", "interval = 100\n");
    text = std::regex_replace(text, std::regex("plugin = \"regression_mlp\"\nhidden_dim = 16\ndataset_size = 256"),
                              "plugin = \"scripted_task\"\ngrad_scale = 1e10");
    text = std::regex_replace(text, std::regex("type = \"adamw\"\nlr = 0.003"), "type = \"sgd\"\nlr = 1e38");
    const Outcome bad = run(inf, text);
    INFO(bad.log);
    CHECK(bad.code == 1);
    CHECK(bad.log.find("the weights are not finite") != std::string::npos);
    CHECK(!fs::exists(inf / "ws" / "checkpoints" / "1"));
    CHECK(lines_with(inf / "events.txt", "hook failure 1 -1 ").size() == 1);
  }
}

TEST_CASE("on_error = \"warn\" logs each failure, thinned out, and the run goes on") {
  TempDir dir;
  const Outcome out = run(dir, spec(dir, 30, "fail_at = 3\nfail_after = true\non_error = \"warn\"\n"));
  INFO(out.log);
  CHECK(out.code == 0);
  CHECK(test::latest_step(dir / "ws") == 30);
  // 28 failures (steps 3..30): written at the 1st, 2nd, 3rd and 10th.
  CHECK(count(out.log, "recorder failure in after_step") == 4);
  CHECK(out.log.find("recorder failure in after_step at step 12 (on_error = \"warn\": the hook goes on) (10th time)") !=
        std::string::npos);
  CHECK(lines_with(dir / "events.txt", "hook after_step 30").size() == 1);  // still called
  CHECK(lines_with(dir / "events.txt", "hook finish") == std::vector<std::string>{"hook finish 30 0"});
}

TEST_CASE("on_error = \"disable\" stops a failed hook's events but finish, and the run goes on") {
  TempDir dir;
  const Outcome out = run(dir, spec(dir, 12, "fail_at = 4\non_error = \"disable\"\n"));
  INFO(out.log);
  CHECK(out.code == 0);
  CHECK(test::latest_step(dir / "ws") == 12);
  CHECK(count(out.log, "gets no more events in this run (on_error = \"disable\")") == 1);
  CHECK(lines_with(dir / "events.txt", "hook after_step 4").size() == 1);
  CHECK(lines_with(dir / "events.txt", "hook before_step 5").empty());
  CHECK(lines_with(dir / "events.txt", "hook on_log 5").empty());
  CHECK(lines_with(dir / "events.txt", "hook finish") == std::vector<std::string>{"hook finish 12 0"});
  // Its state is still saved with every checkpoint: the same spec resumes.
  const Outcome again = run(dir, spec(dir, 14, "fail_at = 4\non_error = \"disable\"\n"), "again.toml");
  INFO(again.log);
  CHECK(again.code == 0);
  CHECK(test::latest_step(dir / "ws") == 14);
}

TEST_CASE("a refused input ends the run with exit 2 whatever on_error says") {
  TempDir dir;
  const Outcome out = run(dir, spec(dir, 10, "fail_at = 2\nfail_as_bad_input = true\non_error = \"warn\"\n"));
  INFO(out.log);
  CHECK(out.code == 2);
  CHECK(out.log.find("hooks[1] (event_recorder) refused its input in after_step: recorder failure in after_step at "
                     "step 2") != std::string::npos);
}

TEST_CASE("a hook failing inside another hook's log call follows its own on_error, not the caller's") {
  // logging calls log; the recorder's on_log fails inside it.
  SUBCASE("the failing hook warns: the caller's call succeeds") {
    TempDir dir;
    const Outcome out = run(dir, spec(dir, 6, "fail_on_log = true\non_error = \"warn\"\n"));
    INFO(out.log);
    CHECK(out.code == 0);
    CHECK(out.log.find("hooks[1] (event_recorder) failed in on_log: recorder failure in on_log") != std::string::npos);
  }
  SUBCASE("the failing hook aborts: a caller that would only warn does not swallow it") {
    TempDir dir;
    std::string text = spec(dir, 6, "fail_on_log = true\n");
    text = std::regex_replace(text, std::regex("plugin = \"logging\"\ninterval = 1\n"),
                              "plugin = \"logging\"\ninterval = 1\non_error = \"warn\"\n");
    const Outcome out = run(dir, text);
    INFO(out.log);
    CHECK(out.code == 1);
    CHECK(out.log.find("hooks[1] (event_recorder) failed in on_log: recorder failure in on_log (while hooks[0] "
                       "(logging) was in after_step)") != std::string::npos);
  }
}

TEST_CASE("on_error takes abort, disable or warn, and validate says where it is wrong") {
  TempDir dir;
  test::write_file(dir / "spec.toml", spec(dir, 10, "on_error = \"wran\"\n"));
  const auto v = test::run_command(test::cli() + " validate " + (dir / "spec.toml").string() + " 2>&1");
  INFO(v.output);
  CHECK(v.exit_code == 2);
  CHECK(v.output.find("spec.toml:21:12: hooks[1].on_error: must be one of abort, disable, warn, got \"wran\"; did "
                      "you mean 'warn'?") != std::string::npos);
  // A task has no on_error: its failures always end the run.
  test::write_file(dir / "task.toml", std::regex_replace(spec(dir, 10, ""), std::regex("hidden_dim = 16\n"),
                                                         "hidden_dim = 16\non_error = \"warn\"\n"));
  const auto t = test::run_command(test::cli() + " validate " + (dir / "task.toml").string() + " 2>&1");
  INFO(t.output);
  CHECK(t.exit_code == 2);
  CHECK(t.output.find("task.on_error: unknown key") != std::string::npos);
  CHECK(!fs::exists(dir / "ws"));
}
