// Checkpointing: durability under SIGKILL, verification, disk-full, signals,
// retention, and exact resume.
#include "support.h"

#include <ATen/ops/equal.h>
#include <nlohmann/json.hpp>
#include <tloop/torch_save.hpp>

#include "checks.h"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>

using test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string regression_spec(const fs::path& ws, int64_t steps, const std::string& checkpointing,
                            const std::string& schedule = "cosine") {
  return "[run]\nworkspace = \"" + ws.string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
         "\ngradient_accumulation_steps = 2\n[task]\nplugin = \"regression_mlp\"\nhidden_dim = 64\ndataset_size = 2048\n"
         "[optimizer]\ntype = \"adamw\"\nlr = 0.003\n[scheduler]\ntype = \"" + schedule + "\"\nwarmup_steps = 50\n"
         "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
         "[[hooks]]\nplugin = \"checkpointing\"\n" + checkpointing + "\n";
}

using test::spawn;
using test::wait_exit;

// step -> every train/loss logged for it (a killed run logs some steps twice).
std::map<int64_t, std::vector<double>> losses(const fs::path& metrics) { return test::logged(metrics, "train/loss"); }

std::string latest(const fs::path& ws) { return std::to_string(test::latest_step(ws)); }

auto model_of(const fs::path& checkpoint) { return test::read_tensors(checkpoint / "model.pt"); }

void check_same_model(const fs::path& a, const fs::path& b) { test::check_same_tensors(a / "model.pt", b / "model.pt"); }

int kills_wanted() {
  const char* env = std::getenv("TLOOP_FAULT_KILLS");
  return env ? std::atoi(env) : 20;
}

// A run to signal at observed steps: endless, so that no signal can come after
// its end however the test process is scheduled. Each life is stopped once the
// workspace's metrics.jsonl has a step >= `target`.
void stop_at(const fs::path& spec, const fs::path& metrics, const fs::path& log, int64_t target, int sig) {
  const pid_t pid = spawn(spec, log);
  test::wait_until([&] { return test::last_logged_step(metrics) >= target; },
                   "step " + std::to_string(target) + " in " + metrics.string(), pid);
  kill(pid, sig);
  INFO(test::read_file(log));
  REQUIRE(wait_exit(pid) == 128 + sig);
}

constexpr int64_t kEndless = 100000000;

}  // namespace

TEST_CASE("a run SIGKILLed at random moments resumes to bit-identical weights and losses" *
          doctest::test_suite("slow")) {
  TempDir dir;
  // Each endless life is killed once it has logged a random 1..80 steps past
  // the furthest step any life reached: kill moments follow observed progress,
  // not the clock, so every life gets further on any machine. A last life runs
  // to a finite end, and so does the reference. The schedule (warm-up, then
  // constant) does not depend on max_steps, so lives of either length agree.
  const std::string ckpt = "interval = 40\nkeep_previous = 1\n";
  test::write_file(dir / "endless.toml", regression_spec(dir / "faulty", kEndless, ckpt, "constant"));
  const fs::path metrics = dir / "faulty" / "metrics.jsonl";
  std::mt19937 rng(20261123);
  std::uniform_int_distribution<int64_t> ahead(1, 80);
  int64_t furthest = 0;
  for (int life = 0; life < kills_wanted(); ++life) {
    stop_at(dir / "endless.toml", metrics, dir / "faulty.log", furthest + ahead(rng), SIGKILL);
    furthest = test::last_logged_step(metrics);
  }
  const int64_t steps = furthest + 60;
  test::write_file(dir / "ref.toml", regression_spec(dir / "ref", steps, ckpt, "constant"));
  test::write_file(dir / "last.toml", regression_spec(dir / "faulty", steps, ckpt, "constant"));
  REQUIRE(wait_exit(spawn(dir / "last.toml", dir / "faulty.log")) == 0);
  REQUIRE(wait_exit(spawn(dir / "ref.toml", dir / "ref.log")) == 0);
  // The kills must have hit a run with checkpoints to resume from, or nothing was tested.
  const std::string log = test::read_file(dir / "faulty.log");
  size_t resumes = 0;
  for (size_t at = log.find("checkpointing: resumed from"); at != std::string::npos;
       at = log.find("checkpointing: resumed from", at + 1))
    ++resumes;
  MESSAGE(kills_wanted(), " kills, ", resumes, " resumes from a checkpoint, ", steps, " steps");
  CHECK(resumes >= static_cast<size_t>(kills_wanted()) / 2);

  const auto reference = losses(dir / "ref" / "metrics.jsonl");
  const auto faulty = losses(metrics);
  REQUIRE(reference.size() == static_cast<size_t>(steps));
  REQUIRE(faulty.size() == static_cast<size_t>(steps));
  size_t mismatches = 0;
  for (const auto& [step, values] : faulty)
    for (double v : values)
      if (v != reference.at(step).front()) ++mismatches;
  CHECK(mismatches == 0);
  CHECK(latest(dir / "ref") == std::to_string(steps));
  CHECK(latest(dir / "faulty") == std::to_string(steps));
  check_same_model(dir / "ref" / "checkpoints" / std::to_string(steps),
                   dir / "faulty" / "checkpoints" / std::to_string(steps));
}

TEST_CASE("digits_cnn stopped by SIGTERM and resumed ends exactly like an uninterrupted run" *
          doctest::test_suite("slow")) {
  TempDir dir;
  auto spec = [&](const std::string& name, int64_t steps) {
    return "[run]\nworkspace = \"" + (dir / name).string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
           "\n[task]\nplugin = \"digits_cnn\"\nnum_images = 0\n"
           "[optimizer]\nlr = 0.003\n[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
           "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1000\nexit_signals = [\"SIGTERM\"]\n";
  };
  // Two endless lives (a constant rate: max_steps changes nothing else) stopped
  // by SIGTERM once they have logged a step 100 past where the last one stopped;
  // a third runs to the end, and so does the reference.
  test::write_file(dir / "endless.toml", spec("stopped", kEndless));
  const fs::path metrics = dir / "stopped" / "metrics.jsonl";
  for (int life = 0; life < 2; ++life) {
    const int64_t target = test::last_logged_step(metrics) + 100;
    stop_at(dir / "endless.toml", metrics, dir / "stopped.log", target, SIGTERM);
    CHECK(std::stoll(latest(dir / "stopped")) >= target);  // that step's checkpoint, saved on the signal
  }
  const int64_t steps = test::last_logged_step(metrics) + 100;
  test::write_file(dir / "ref.toml", spec("ref", steps));
  test::write_file(dir / "last.toml", spec("stopped", steps));
  REQUIRE(wait_exit(spawn(dir / "last.toml", dir / "stopped.log")) == 0);
  REQUIRE(wait_exit(spawn(dir / "ref.toml", dir / "ref.log")) == 0);
  INFO(test::read_file(dir / "stopped.log"));
  CHECK(test::read_file(dir / "stopped.log").find("checkpointing: resumed from") != std::string::npos);
  CHECK(latest(dir / "stopped") == std::to_string(steps));
  const auto reference = losses(dir / "ref" / "metrics.jsonl");
  const auto stopped = losses(metrics);
  CHECK(stopped.size() == static_cast<size_t>(steps));
  for (const auto& [step, values] : stopped)
    for (double v : values) CHECK(v == reference.at(step).front());
  check_same_model(dir / "ref" / "checkpoints" / std::to_string(steps),
                   dir / "stopped" / "checkpoints" / std::to_string(steps));
}

TEST_CASE("a damaged newest checkpoint is named and the previous valid one is loaded") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml", regression_spec(ws, 30, "interval = 10\nkeep_previous = 5\n"));
  REQUIRE(wait_exit(spawn(dir / "spec.toml", dir / "first.log")) == 0);
  const fs::path bad = ws / "checkpoints" / "30" / "model.pt";
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    char c;
    f.read(&c, 1);
    f.seekp(100);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  test::write_file(dir / "more.toml", regression_spec(ws, 35, "interval = 10\nkeep_previous = 5\n"));
  REQUIRE(wait_exit(spawn(dir / "more.toml", dir / "second.log")) == 0);
  const std::string log = test::read_file(dir / "second.log");
  INFO(log);
  CHECK(log.find("checkpoint " + (ws / "checkpoints" / "30").string() + " is damaged: " + bad.string() +
                 ": checksum mismatch (the file is damaged); moved to " + (ws / "checkpoints" / "damaged-30").string() +
                 " and trying an older one") != std::string::npos);
  CHECK(log.find("resumed from " + (ws / "checkpoints" / "20").string() + " at step 20") != std::string::npos);
  CHECK(log.find("finished 'more': 35/35 steps") != std::string::npos);
  // Kept for inspection, never pruned, while the re-run wrote a new step 30.
  CHECK(fs::exists(ws / "checkpoints" / "damaged-30" / "model.pt"));
  CHECK(fs::exists(ws / "checkpoints" / "30" / "manifest.json"));
}

TEST_CASE("with every checkpoint damaged a resume stops with exit 2, or starts over with allow_fresh_start") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml", regression_spec(ws, 20, "interval = 10\nkeep_previous = 5\n"));
  REQUIRE(wait_exit(spawn(dir / "spec.toml", dir / "first.log")) == 0);
  for (const char* step : {"10", "20"}) fs::resize_file(ws / "checkpoints" / step / "state.pt", 10);  // cut short
  const auto before = test::read_lines(ws / "metrics.jsonl");

  test::write_file(dir / "more.toml", regression_spec(ws, 30, "interval = 10\nkeep_previous = 5\n"));
  CHECK(wait_exit(spawn(dir / "more.toml", dir / "second.log")) == 2);
  const std::string log = test::read_file(dir / "second.log");
  INFO(log);
  CHECK(log.find("no valid checkpoint to resume in " + (ws / "checkpoints").string() + ": 20 (") != std::string::npos);
  CHECK(log.find("; 10 (") != std::string::npos);
  CHECK(log.find("set allow_fresh_start = true to start from step 0") != std::string::npos);
  CHECK(log.find("training failed") == std::string::npos);
  // Nothing deleted: both moved aside whole; no step trained or logged.
  CHECK(fs::file_size(ws / "checkpoints" / "damaged-10" / "state.pt") == 10);
  CHECK(fs::file_size(ws / "checkpoints" / "damaged-20" / "state.pt") == 10);
  CHECK(test::read_lines(ws / "metrics.jsonl") == before);

  test::write_file(dir / "fresh.toml",
                   regression_spec(ws, 30, "interval = 10\nkeep_previous = 5\nallow_fresh_start = true\n"));
  // Moved aside by the run before, so this one finds no checkpoint at all: a new run.
  CHECK(wait_exit(spawn(dir / "fresh.toml", dir / "third.log")) == 0);
  CHECK(latest(ws) == "30");
  CHECK(fs::exists(ws / "checkpoints" / "damaged-10"));
}

TEST_CASE("load = \"none\" refuses to replace an earlier run's checkpoints unless overwrite moves them aside") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml", regression_spec(ws, 10, "interval = 5\nkeep_previous = 1\n"));
  REQUIRE(wait_exit(spawn(dir / "spec.toml", dir / "first.log")) == 0);

  test::write_file(dir / "again.toml", regression_spec(ws, 10, "interval = 5\nkeep_previous = 1\nload = \"none\"\n"));
  CHECK(wait_exit(spawn(dir / "again.toml", dir / "second.log")) == 2);
  const std::string log = test::read_file(dir / "second.log");
  INFO(log);
  CHECK(log.find("load = \"none\" starts from step 0, but " + (ws / "checkpoints").string() +
                 " holds checkpoints of an earlier run (5, 10) that it would replace; set overwrite = true") !=
        std::string::npos);
  CHECK(latest(ws) == "10");

  test::write_file(dir / "over.toml", regression_spec(ws, 10, "interval = 5\nkeep_previous = 1\nload = \"none\"\noverwrite = true\n"));
  REQUIRE(wait_exit(spawn(dir / "over.toml", dir / "third.log")) == 0);
  std::vector<fs::path> replaced;
  for (const auto& e : fs::directory_iterator(ws / "checkpoints"))
    if (e.path().filename().string().rfind("replaced-", 0) == 0) replaced.push_back(e.path());
  REQUIRE(replaced.size() == 1);
  CHECK(fs::exists(replaced[0] / "5" / "manifest.json"));
  CHECK(fs::exists(replaced[0] / "10" / "manifest.json"));
  CHECK(test::read_file(replaced[0] / "latest") == "10\n");
  CHECK(latest(ws) == "10");  // the new run's own
  CHECK(test::read_file(dir / "third.log").find("resumed from") == std::string::npos);
}

TEST_CASE("a second run on a workspace in use exits 2 naming the holder, and touches nothing") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml", regression_spec(ws, kEndless, "interval = 1\nkeep_previous = 1000\n"));
  const pid_t first = spawn(dir / "spec.toml", dir / "first.log");
  test::wait_until([&] { return test::last_logged_step(ws / "metrics.jsonl") >= 2; }, "steps in metrics.jsonl", first);
  const auto second = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
  INFO(second.output);
  CHECK(second.exit_code == 2);
  CHECK(second.output.find("workspace " + ws.string() + " is in use by another tloop run (pid " + std::to_string(first) +
                           "); wait for it to end, or give this run another workspace") != std::string::npos);
  kill(first, SIGKILL);
  wait_exit(first);
  // The second run wrote nothing: the first one's log has no line of it.
  CHECK(test::read_file(ws / "logs" / "tloop.log").find("is in use by another") == std::string::npos);
  // The kernel released the lock with the killed process: a new run resumes.
  test::write_file(dir / "more.toml", regression_spec(ws, test::last_logged_step(ws / "metrics.jsonl") + 2, "interval = 1\n"));
  CHECK(wait_exit(spawn(dir / "more.toml", dir / "third.log")) == 0);
}

TEST_CASE("with checkpointing on, SIGTERM saves by default") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml", regression_spec(ws, kEndless, "interval = 1000000\n"));
  const pid_t pid = spawn(dir / "spec.toml", dir / "run.log");
  test::wait_until([&] { return test::last_logged_step(ws / "metrics.jsonl") >= 1; }, "a step in metrics.jsonl", pid);
  kill(pid, SIGTERM);
  CHECK(wait_exit(pid) == 128 + SIGTERM);
  INFO(test::read_file(dir / "run.log"));
  CHECK(std::stoll(latest(ws)) >= 1);
}

TEST_CASE("a full disk during a save keeps the previous checkpoints and follows on_save_error") {
  // Measure one checkpoint, then leave room for one and a half.
  TempDir probe;
  test::write_file(probe / "spec.toml", regression_spec(probe / "ws", 10, "interval = 10\n"));
  REQUIRE(wait_exit(spawn(probe / "spec.toml", probe / "run.log")) == 0);
  uintmax_t one = 0;
  for (const auto& f : fs::directory_iterator(probe / "ws" / "checkpoints" / "10")) one += f.file_size();
  const std::string budget = std::to_string(one * 3 / 2);
  for (const std::string policy : {"continue", "abort"}) {
    INFO(policy);
    TempDir dir;
    const fs::path ws = dir / "ws";
    test::write_file(dir / "spec.toml",
                     regression_spec(ws, 30, "interval = 10\nkeep_previous = 5\non_save_error = \"" + policy + "\"\n"));
    const std::string env = "LD_PRELOAD=" + std::string(TLOOP_TEST_SHIM_DIR) +
                            "/enospc_shim.so TLOOP_TEST_ENOSPC_MATCH=/checkpoints/ TLOOP_TEST_ENOSPC_AFTER=" + budget;
    const int code = wait_exit(spawn(dir / "spec.toml", dir / "run.log", env));
    const std::string log = test::read_file(dir / "run.log");
    INFO(log);
    CHECK(log.find("checkpoint of step 20 failed: ") != std::string::npos);
    CHECK(log.find("No space left on device (the previous checkpoints are intact)") != std::string::npos);
    CHECK(test::read_file(ws / "checkpoints" / "latest") == "10\n");
    CHECK_FALSE(fs::exists(ws / "checkpoints" / "20"));
    for (const auto& e : fs::directory_iterator(ws / "checkpoints")) {  // a failed save leaves nothing behind
      INFO(e.path());
      CHECK(e.path().filename().string().rfind(".tmp-", 0) != 0);
    }
    if (policy == "abort") {
      CHECK(code == 1);
      CHECK(log.find("stopping (on_save_error = \"abort\")") != std::string::npos);
    } else {
      CHECK(code == 0);
      CHECK(log.find("training continues (on_save_error = \"continue\")") != std::string::npos);
    }
    // The intact checkpoint loads: a run without the full disk resumes from it.
    REQUIRE(wait_exit(spawn(dir / "spec.toml", dir / "resume.log")) == 0);
    CHECK(test::read_file(dir / "resume.log").find("resumed from " + (ws / "checkpoints" / "10").string()) !=
          std::string::npos);
  }
}

TEST_CASE("SIGTERM and SIGUSR1 in exit_signals save that step's checkpoint and exit 128+N, or exit_code") {
  struct Case {
    int sig;
    std::string exit_code;  // the option's line, if any
    int expected;
  };
  // exit_code is trainloop's: "128+signal" (the default) or a number.
  for (const Case& c : {Case{SIGTERM, "", 128 + SIGTERM}, Case{SIGUSR1, "", 128 + SIGUSR1},
                        Case{SIGTERM, "exit_code = \"128+signal\"\n", 128 + SIGTERM},
                        Case{SIGUSR1, "exit_code = 7\n", 7}}) {
    INFO(strsignal(c.sig), " ", c.exit_code);
    TempDir dir;
    const fs::path ws = dir / "ws";
    test::write_file(dir / "spec.toml",
                     regression_spec(ws, kEndless, "interval = 1000000\nexit_signals = [\"SIGTERM\", \"SIGUSR1\"]\n" +
                                                       c.exit_code));
    const pid_t pid = spawn(dir / "spec.toml", dir / "run.log");
    test::wait_until([&] { return test::last_logged_step(ws / "metrics.jsonl") >= 1; }, "a step in metrics.jsonl", pid);
    kill(pid, c.sig);
    CHECK(wait_exit(pid) == c.expected);
    const std::string log = test::read_file(dir / "run.log");
    INFO(log);
    const std::string step = latest(ws);
    CHECK(std::stoll(step) > 0);
    CHECK(log.find("received: checkpoint of step " + step + " saved; exiting with code " + std::to_string(c.expected)) !=
          std::string::npos);
    CHECK(fs::exists(ws / "checkpoints" / step / "manifest.json"));
  }
}

TEST_CASE("exit_code is a number from 0 to 255 or the string \"128+signal\", exit_signals are known signals, and validate says which") {
  TempDir dir;
  const fs::path ws = dir / "ws";
  for (const auto& [line, message] : std::vector<std::pair<std::string, std::string>>{
           {"exit_code = \"130\"", "hooks[1].exit_code: must be one of 128+signal, got \"130\""},
           {"exit_code = 1.5", "hooks[1].exit_code: expected an integer or a string, got a number (1.5)"},
           {"exit_code = 300", "hooks[1].exit_code: must be between 0 and 255, got an integer (300)"},
           {"exit_signals = [\"SIGTERM\", \"SIGUSR2\"]",
            "hooks[1].exit_signals[1]: must be one of SIGTERM, SIGUSR1, SIGINT, SIGHUP, TERM, USR1, INT, HUP, got "
            "\"SIGUSR2\"; did you mean 'SIGUSR1'?"}}) {
    const std::string& option = line;  // INFO's lambda cannot capture a structured binding before C++20
    INFO(option);
    test::write_file(dir / "spec.toml", regression_spec(ws, 2, line + "\n"));
    const auto r = test::run_command(test::cli() + " validate " + (dir / "spec.toml").string());
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(message) != std::string::npos);
    CHECK(!fs::exists(ws));
  }
}

namespace {
// scripted_task (SGD, 4 micro-steps per step) with a checkpoint every step
// that SIGTERM saves; micro_recorder raises SIGTERM in the middle of step 3.
std::string mid_step_signal_spec(const fs::path& dir, const std::string& trainer_extra) {
  return "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) + "\"]\n[run]\nworkspace = \"" +
         (dir / "ws").string() + "\"\n[trainer]\nmax_steps = " + std::to_string(kEndless) +
         "\ngradient_accumulation_steps = 4\n" + trainer_extra +
         "[task]\nplugin = \"scripted_task\"\n[optimizer]\ntype = \"sgd\"\n"
         "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1\nexit_signals = [\"SIGTERM\"]\n"
         "[[hooks]]\nplugin = \"micro_recorder\"\nraise_at = 3\nfile = \"" + (dir / "micro.txt").string() + "\"\n";
}
}  // namespace

TEST_CASE("a signal in the middle of a step lets it end and be saved within signal_grace, else abandons it unsaved") {
  {
    INFO("default signal_grace (10 s): step 3 reaches its end and is saved");
    TempDir dir;
    test::write_file(dir / "spec.toml", mid_step_signal_spec(dir.path(), ""));
    CHECK(wait_exit(spawn(dir / "spec.toml", dir / "run.log")) == 128 + SIGTERM);
    const std::string log = test::read_file(dir / "run.log");
    INFO(log);
    CHECK(log.find("received in step 3 (2 of 4 micro-steps done): finishing the step") != std::string::npos);
    CHECK(latest(dir / "ws") == "3");
  }
  {
    INFO("signal_grace = 0: step 3 is abandoned at its next micro-step; step 2's checkpoint stands");
    TempDir dir;
    test::write_file(dir / "spec.toml", mid_step_signal_spec(dir.path(), "signal_grace = 0\n"));
    CHECK(wait_exit(spawn(dir / "spec.toml", dir / "run.log")) == 128 + SIGTERM);
    const std::string log = test::read_file(dir / "run.log");
    INFO(log);
    CHECK(log.find("step 3 abandoned after 2 of 4 micro-steps (trainer.signal_grace = 0 s); not saved, the last "
                   "checkpoint stands") != std::string::npos);
    CHECK(latest(dir / "ws") == "2");
    CHECK_FALSE(fs::exists(dir / "ws" / "checkpoints" / "3"));
    CHECK(test::read_lines(dir / "micro.txt").back().rfind("after_forward 3 2", 0) != 0);  // no third forward
  }
}

TEST_CASE("a step with a billion micro-steps is abandoned on SIGINT once signal_grace has passed") {
  TempDir dir;
  test::write_file(dir / "spec.toml",
                   "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) + "\"]\n[run]\nworkspace = \"" +
                       (dir / "ws").string() +
                       "\"\n[trainer]\nmax_steps = 2\ngradient_accumulation_steps = 1000000000\nsignal_grace = 0.2\n"
                       "[task]\nplugin = \"scripted_task\"\n[[hooks]]\nplugin = \"micro_recorder\"\nfile = \"" +
                       (dir / "micro.txt").string() + "\"\n");
  const pid_t pid = spawn(dir / "spec.toml", dir / "run.log");
  test::wait_until([&] { return fs::exists(dir / "micro.txt") && test::read_lines(dir / "micro.txt").size() >= 3; },
                   "micro-steps in micro.txt", pid);
  kill(pid, SIGINT);
  CHECK(wait_exit(pid) == 128 + SIGINT);
  const std::string log = test::read_file(dir / "run.log");
  INFO(log);
  CHECK(log.find("received in step 1") != std::string::npos);
  CHECK(log.find("step 1 abandoned after ") != std::string::npos);
  CHECK(log.find(" of 1000000000 micro-steps (trainer.signal_grace = 0.2 s)") != std::string::npos);
}

TEST_CASE("a step retrying non-finite gradients without end is abandoned at once on SIGINT, its warnings thinned out") {
  TempDir dir;
  test::write_file(dir / "spec.toml",
                   "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) + "\"]\n[run]\nworkspace = \"" +
                       (dir / "ws").string() +
                       "\"\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"scripted_task\"\nnan_forwards = 2000000000\n");
  const pid_t pid = spawn(dir / "spec.toml", dir / "run.log");
  test::wait_until([&] { return fs::exists(dir / "run.log") && test::read_file(dir / "run.log").find("(100th time)") != std::string::npos; },
                   "the 100th retry warning", pid);
  kill(pid, SIGINT);
  CHECK(wait_exit(pid) == 128 + SIGINT);
  const std::string log = test::read_file(dir / "run.log");
  std::smatch m;
  REQUIRE(std::regex_search(log, m, std::regex(R"(step 1 abandoned in its retry ([0-9]+) \(gradients not finite\); not saved)")));
  const int64_t retries = std::stoll(m[1].str());
  CHECK(retries >= 100);
  // The first three warnings of each kind, then the 10th, 100th, ...
  int64_t grad_warnings = 0, loss_warnings = 0;
  for (const auto& line : test::read_lines(dir / "run.log")) {
    grad_warnings += line.find("gradients are not finite (max |g|") != std::string::npos;
    loss_warnings += line.find("the loss is not finite") != std::string::npos;
  }
  const auto allowed = [](int64_t n) {
    int64_t k = 3;
    for (int64_t p = 10; p <= n; p *= 10) ++k;
    return k;
  };
  CHECK(grad_warnings == allowed(retries));
  CHECK(loss_warnings <= allowed(retries + 1));
}

TEST_CASE("a signal that arrives while the hooks finish a step is saved with that step, whatever the list order") {
  // event_recorder (log phase) raises SIGTERM in its after_step of step 3;
  // checkpointing, listed first but saving last, sees it in the same step.
  TempDir dir;
  const fs::path ws = dir / "ws";
  test::write_file(dir / "spec.toml",
                   "[plugins]\npaths = [\"" + std::string(TLOOP_TEST_PLUGIN_DIR) + "\"]\n" +
                       regression_spec(ws, kEndless, "interval = 1000000\nexit_signals = [\"SIGTERM\"]\n") +
                       "[[hooks]]\nplugin = \"event_recorder\"\nraise_at = 3\nfile = \"" + (dir / "events.txt").string() +
                       "\"\n");
  CHECK(wait_exit(spawn(dir / "spec.toml", dir / "run.log")) == 128 + SIGTERM);
  INFO(test::read_file(dir / "run.log"));
  CHECK(latest(ws) == "3");
  CHECK(test::read_file(dir / "run.log").find("received: checkpoint of step 3 saved; exiting with code 143") !=
        std::string::npos);
  CHECK(test::last_logged_step(ws / "metrics.jsonl") == 3);  // logged before the save, and no step after
}

TEST_CASE("a checkpoint the model does not fit is bad input, refused with the first mismatched tensor and both shapes") {
  TempDir dir;
  auto spec = [&](int hidden) {
    return "[run]\nworkspace = \"" + (dir / "ws").string() + "\"\n[trainer]\nmax_steps = " + std::to_string(hidden / 2) +
           "\n[task]\nplugin = \"regression_mlp\"\nhidden_dim = " + std::to_string(hidden) +
           "\n[[hooks]]\nplugin = \"checkpointing\"\ninterval = 2\n";
  };
  test::train(dir, spec(8));
  CHECK_THROWS_WITH_AS(test::train(dir, spec(16)),
                       ("hooks[0] (checkpointing) refused its input in resume: cannot restore " +
                        (dir / "ws" / "checkpoints" / "4").string() +
                        ": run_load_state_dict: model/fc1.weight has shape [8, 8] in the checkpoint but [16, 8] in the "
                        "model (a checkpoint of another model or spec? point load at a matching one, or start over "
                        "with load = \"none\" and overwrite = true)")
                           .c_str(),
                       tloop::PluginBadInput);
  // The CLI exits 2 and keeps the checkpoint.
  test::write_file(dir / "wide.toml", spec(16));
  const auto out = test::run_command(test::cli() + " run " + (dir / "wide.toml").string() + " 2>&1");
  INFO(out.output);
  CHECK(out.exit_code == 2);
  CHECK(test::latest_step(dir / "ws") == 4);
}

TEST_CASE("keep_previous, keep_interval and keep_steps prune step by step") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  const fs::path root = dir / "ws" / "checkpoints";
  test::train(dir,
              std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR +
                  "\"]\n[trainer]\nmax_steps = 13\n[task]\nplugin = \"regression_mlp\"\n"
                  "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 2\nkeep_previous = 1\nkeep_interval = 6\n"
                  "keep_steps = [4]\n[[hooks]]\nplugin = \"event_recorder\"\nfile = \"" + events + "\"\nlist_dir = \"" +
                  root.string() + "\"\n");
  std::vector<std::string> listings;
  for (const auto& line : test::read_lines(events))
    if (line.rfind("hook ls ", 0) == 0) listings.push_back(line.substr(8));
  const std::vector<std::string> expected = {
      "1",
      "2 2 latest",
      "3 2 latest",
      "4 2 4_keep latest",                  // 4 is kept; the previous regular one stays (keep_previous = 1)
      "5 2 4_keep latest",
      "6 2 4_keep 6_keep latest",
      "7 2 4_keep 6_keep latest",
      "8 2 4_keep 6_keep 8 latest",
      "9 2 4_keep 6_keep 8 latest",
      "10 10 4_keep 6_keep 8 latest",       // 2 pruned: only one regular besides the newest
      "11 10 4_keep 6_keep 8 latest",
      "12 10 12_keep 4_keep 6_keep latest",  // 8 pruned: 10 is the one regular kept besides the newest
      "13 10 12_keep 13 4_keep 6_keep latest",  // the last step is always saved
  };
  // event_recorder (log phase) lists the directory in after_step, before
  // checkpointing (save phase, last) saves that step: its listing at step
  // N+1 shows the checkpoints after step N's save, and the directory after
  // the run shows step 13's.
  REQUIRE(listings.size() == expected.size());
  CHECK(listings.front() == "1");
  for (size_t i = 1; i < listings.size(); ++i) {
    const std::string& after_save = expected[i - 1];
    CHECK(listings[i] == std::to_string(i + 1) + after_save.substr(after_save.find(' ') == std::string::npos
                                                                       ? after_save.size()
                                                                       : after_save.find(' ')));
  }
  std::set<std::string> final_entries;
  for (const auto& e : fs::directory_iterator(root)) final_entries.insert(e.path().filename().string());
  std::string final_listing = "13";
  for (const auto& e : final_entries) final_listing += " " + e;
  CHECK(final_listing == expected.back());
  CHECK(test::read_file(root / "latest") == "13\n");
}

TEST_CASE("model.pt holds the run's parameters exactly, and async saves write the same checkpoint") {
  TempDir sync_dir, async_dir;
  auto run_sync = test::train(sync_dir, regression_spec(sync_dir / "ws", 12, "interval = 5\nsafetensors = true\n"));
  auto run_async = test::train(async_dir, regression_spec(async_dir / "ws", 12, "interval = 5\nasync = true\n"));
  const auto saved = model_of(sync_dir / "ws" / "checkpoints" / "12");
  REQUIRE(saved.size() == run_sync->host().parameters().size());
  for (size_t i = 0; i < saved.size(); ++i) {
    CHECK(saved[i].first == run_sync->host().parameters()[i].first);
    CHECK(at::equal(saved[i].second, run_sync->host().parameters()[i].second.detach()));
  }
  check_same_model(sync_dir / "ws" / "checkpoints" / "12", async_dir / "ws" / "checkpoints" / "12");
  CHECK(fs::exists(sync_dir / "ws" / "checkpoints" / "12" / "model.safetensors"));
  // Saving comes last in a step: the stalls of the saves at steps 5 and 10
  // reach the step info, and the log, of steps 6 and 11.
  const auto stalls = test::logged(async_dir / "ws" / "metrics.jsonl", "train/checkpoint_stall");
  CHECK(stalls.size() == 2);
  CHECK(stalls.count(6) == 1);
  CHECK(stalls.count(11) == 1);
  CHECK_FALSE(fs::exists(async_dir / "ws" / "checkpoints" / "10"));  // pruned (keep_previous = 0) once 12 was saved
}

TEST_CASE("load: a missing explicit checkpoint is an error, a missing latest is a fresh start") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, regression_spec(dir / "ws", 3, "load = \"/nonexistent/ckpt\"\n")),
                       "hooks[1] (checkpointing) refused its input in resume: load: no checkpoint at "
                       "'/nonexistent/ckpt' (/nonexistent/ckpt)",
                       tloop::PluginBadInput);
  TempDir fresh;
  auto run = test::train(fresh, regression_spec(fresh / "ws", 3, ""));
  CHECK(run->host().step() == 3);
}

TEST_CASE("keep_interval and keep_steps force a save off the interval, as in trainloop") {
  TempDir dir;
  const fs::path root = dir / "ws" / "checkpoints";
  test::train(dir, regression_spec(dir / "ws", 10, "interval = 5\nkeep_interval = 4\nkeep_steps = [3]\n"));
  std::set<std::string> entries;
  for (const auto& e : fs::directory_iterator(root)) entries.insert(e.path().filename().string());
  // trainloop keeps 3, 4 and 8, and saves 5 and 10 (5 pruned once 10 is saved, keep_previous = 0).
  CHECK(entries == std::set<std::string>{"3_keep", "4_keep", "8_keep", "10", "latest"});
  const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
  CHECK(log.find("checkpoints/5") != std::string::npos);
}

TEST_CASE("load: a bare name is a checkpoint in the checkpoint directory, as in trainloop") {
  TempDir dir;
  test::train(dir, regression_spec(dir / "ws", 6, "interval = 3\nkeep_steps = [2]\nkeep_previous = 5\n"));
  // "3" and "2" (saved as 2_keep) are names inside ws/checkpoints, not paths from the working directory.
  for (const char* name : {"3", "2"}) {
    INFO(name);
    auto run = test::train(dir, regression_spec(dir / "ws", 6, std::string("load = \"") + name + "\"\n"));
    const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
    CHECK(log.find("resumed from " + (dir / "ws" / "checkpoints").string() + "/" + name) != std::string::npos);
    CHECK(run->host().step() == 6);
  }
  CHECK_THROWS_WITH_AS(test::train(dir, regression_spec(dir / "ws", 6, "load = \"4\"\n")),
                       ("hooks[1] (checkpointing) refused its input in resume: load: no checkpoint at '4' (" +
                        (dir / "ws" / "checkpoints" / "4").string() + ")").c_str(),
                       tloop::PluginBadInput);
}

TEST_CASE("regression_mlp's dropout and input noise, drawn during training, resume exactly") {
  TempDir dir;
  const std::string ckpt = "interval = 10\n";
  auto spec = [&](const std::string& ws, int steps) {
    std::string s = regression_spec(dir / ws, steps, ckpt);
    return s.replace(s.find("hidden_dim = 64"), 15, "hidden_dim = 64\ndropout = 0.25\ninput_noise = 0.05");
  };
  test::write_file(dir / "ref.toml", spec("ref", 20));
  test::write_file(dir / "half.toml", spec("split", 10));
  test::write_file(dir / "rest.toml", spec("split", 20));
  test::write_file(dir / "plain.toml", regression_spec(dir / "plain", 20, ckpt));
  for (const char* name : {"ref", "half", "rest", "plain"})
    REQUIRE(wait_exit(spawn(dir / (std::string(name) + ".toml"), dir / "run.log")) == 0);
  const auto reference = losses(dir / "ref" / "metrics.jsonl");
  const auto split = losses(dir / "split" / "metrics.jsonl");
  REQUIRE(split.size() == 20);
  for (const auto& [step, values] : split) CHECK(values == reference.at(step));
  check_same_model(dir / "ref" / "checkpoints" / "20", dir / "split" / "checkpoints" / "20");
  // The options are really on: the same run without them has other losses.
  CHECK(losses(dir / "plain" / "metrics.jsonl").at(20) != reference.at(20));
}

TEST_CASE("with checkpointing listed before ema, a killed and resumed run ends with the uninterrupted run's EMA") {
  // The spec lists checkpointing first. Hooks run by phase (ema updates,
  // then checkpointing saves), so checkpoint N holds the EMA of step N and
  // the resumed run averages exactly the steps the uninterrupted one does.
  TempDir dir;
  auto spec = [&](const fs::path& ws, int64_t steps) {
    return "[run]\nworkspace = \"" + ws.string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
           "\n[task]\nplugin = \"regression_mlp\"\nhidden_dim = 64\n[optimizer]\ntype = \"adamw\"\nlr = 0.003\n"
           "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 5\n"
           "[[hooks]]\nplugin = \"ema\"\ndecay = 0.9\n"
           "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n";
  };
  const fs::path ws = dir / "killed";
  test::write_file(dir / "endless.toml", spec(ws, kEndless));
  stop_at(dir / "endless.toml", ws / "metrics.jsonl", dir / "killed.log", 12, SIGKILL);
  const int64_t resumed_from = test::latest_step(ws);
  REQUIRE(resumed_from >= 10);
  const int64_t n = resumed_from + 10;
  test::write_file(dir / "final.toml", spec(ws, n));
  REQUIRE(wait_exit(spawn(dir / "final.toml", dir / "final.log")) == 0);
  CHECK(test::read_file(dir / "final.log")
            .find("checkpointing: resumed from " + (ws / "checkpoints" / std::to_string(resumed_from)).string()) !=
        std::string::npos);
  test::write_file(dir / "ref.toml", spec(dir / "ref", n));
  REQUIRE(wait_exit(spawn(dir / "ref.toml", dir / "ref.log")) == 0);
  test::check_same_tensors(dir / "ref" / "ema_model.pt", ws / "ema_model.pt");
  check_same_model(dir / "ref" / "checkpoints" / std::to_string(n), ws / "checkpoints" / std::to_string(n));
}
