// Checkpointing: durability under SIGKILL, verification, disk-full, signals,
// retention, and exact resume.
#include "support.h"

#include <ATen/ops/equal.h>
#include <nlohmann/json.hpp>
#include <tloop/torch_save.hpp>

#include "doctest_after_c10.h"  // last of the headers that bring in c10 logging

#include <algorithm>
#include <csignal>
#include <fstream>
#include <map>
#include <random>

using test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string regression_spec(const fs::path& ws, int steps, const std::string& checkpointing) {
  return "[run]\nworkspace = \"" + ws.string() + "\"\n[trainer]\nmax_steps = " + std::to_string(steps) +
         "\ngradient_accumulation_steps = 2\n[task]\nplugin = \"regression_mlp\"\nhidden_dim = 64\ndataset_size = 2048\n"
         "[optimizer]\ntype = \"adamw\"\nlr = 0.003\n[scheduler]\ntype = \"cosine\"\nwarmup_steps = 50\n"
         "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
         "[[hooks]]\nplugin = \"checkpointing\"\n" + checkpointing + "\n";
}

using test::spawn;
using test::wait_exit;

// step -> every train/loss logged for it (a killed run logs some steps twice).
std::map<int64_t, std::vector<double>> losses(const fs::path& metrics) {
  std::map<int64_t, std::vector<double>> out;
  for (const auto& line : test::read_lines(metrics)) {
    nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.contains("train/loss")) continue;  // a line torn by SIGKILL
    out[row["step"].get<int64_t>()].push_back(row["train/loss"].get<double>());
  }
  return out;
}

std::string latest(const fs::path& ws) {
  std::string name = test::read_file(ws / "checkpoints" / "latest");
  return name.substr(0, name.find('\n'));
}

std::vector<std::pair<std::string, at::Tensor>> model_of(const fs::path& checkpoint) {
  std::ifstream in(checkpoint / "model.pt", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return tloop::load_tensors(bytes);
}

void check_same_model(const fs::path& a, const fs::path& b) {
  auto ma = model_of(a), mb = model_of(b);
  REQUIRE(ma.size() == mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    INFO(ma[i].first);
    CHECK(ma[i].first == mb[i].first);
    CHECK(at::equal(ma[i].second, mb[i].second));  // bit for bit
  }
}

int kills_wanted() {
  const char* env = std::getenv("TLOOP_FAULT_KILLS");
  return env ? std::atoi(env) : 20;
}

}  // namespace

TEST_CASE("a run SIGKILLed at random moments resumes to bit-identical weights and losses" *
          doctest::test_suite("slow")) {
  TempDir dir;
  // Each life is killed once it has logged a random 1..80 steps past the
  // furthest step any life reached: kill moments follow observed progress, not
  // the clock, so every life gets further on any machine. The run is long
  // enough that a kill never comes after its end.
  const int kills = kills_wanted();
  const int64_t steps = 80 * int64_t{kills} + 400;
  const std::string ckpt = "interval = 40\nkeep_previous = 1\n";
  test::write_file(dir / "ref.toml", regression_spec(dir / "ref", static_cast<int>(steps), ckpt));
  test::write_file(dir / "faulty.toml", regression_spec(dir / "faulty", static_cast<int>(steps), ckpt));
  REQUIRE(wait_exit(spawn(dir / "ref.toml", dir / "ref.log")) == 0);

  const fs::path metrics = dir / "faulty" / "metrics.jsonl";
  std::mt19937 rng(20261123);
  std::uniform_int_distribution<int64_t> ahead(1, 80);
  int64_t furthest = 0;
  for (int life = 0; life < kills; ++life) {
    const int64_t target = furthest + ahead(rng);
    const pid_t pid = spawn(dir / "faulty.toml", dir / "faulty.log");
    test::wait_until([&] { return test::last_logged_step(metrics) >= target; },
                     "step " + std::to_string(target) + " in " + metrics.string(), pid);
    kill(pid, SIGKILL);
    INFO(test::read_file(dir / "faulty.log"));
    REQUIRE(wait_exit(pid) == 128 + SIGKILL);
    furthest = std::max(target, test::last_logged_step(metrics));
  }
  INFO(test::read_file(dir / "faulty.log"));
  REQUIRE(wait_exit(spawn(dir / "faulty.toml", dir / "faulty.log")) == 0);
  // The kills must have hit a run with checkpoints to resume from, or nothing was tested.
  const std::string log = test::read_file(dir / "faulty.log");
  size_t resumes = 0;
  for (size_t at = log.find("checkpointing: resumed from"); at != std::string::npos;
       at = log.find("checkpointing: resumed from", at + 1))
    ++resumes;
  MESSAGE(kills, " kills, ", resumes, " resumes from a checkpoint");
  CHECK(resumes >= static_cast<size_t>(kills) / 2);

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
  auto spec = [&](const std::string& name) {
    return "[run]\nworkspace = \"" + (dir / name).string() +
           "\"\n[trainer]\nmax_steps = 300\n[task]\nplugin = \"digits_cnn\"\neval_interval = 1000\nnum_images = 0\n"
           "[optimizer]\nlr = 0.003\n[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
           "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 1000\nexit_signals = [\"SIGTERM\"]\n";
  };
  test::write_file(dir / "ref.toml", spec("ref"));
  test::write_file(dir / "stopped.toml", spec("stopped"));
  REQUIRE(wait_exit(spawn(dir / "ref.toml", dir / "ref.log")) == 0);
  // Two lives stopped once they have logged steps 100 and 200, a third to the end.
  const fs::path metrics = dir / "stopped" / "metrics.jsonl";
  for (int64_t target : {100, 200}) {
    const pid_t pid = spawn(dir / "stopped.toml", dir / "stopped.log");
    test::wait_until([&] { return test::last_logged_step(metrics) >= target; },
                     "step " + std::to_string(target) + " in " + metrics.string(), pid);
    kill(pid, SIGTERM);
    INFO(test::read_file(dir / "stopped.log"));
    REQUIRE(wait_exit(pid) == 128 + SIGTERM);
    CHECK(std::stoll(latest(dir / "stopped")) >= target);  // that step's checkpoint, saved on the signal
  }
  REQUIRE(wait_exit(spawn(dir / "stopped.toml", dir / "stopped.log")) == 0);
  INFO(test::read_file(dir / "stopped.log"));
  CHECK(test::read_file(dir / "stopped.log").find("checkpointing: resumed from") != std::string::npos);
  CHECK(latest(dir / "stopped") == "300");
  const auto reference = losses(dir / "ref" / "metrics.jsonl");
  for (const auto& [step, values] : losses(dir / "stopped" / "metrics.jsonl"))
    for (double v : values) CHECK(v == reference.at(step).front());
  check_same_model(dir / "ref" / "checkpoints" / "300", dir / "stopped" / "checkpoints" / "300");
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
                 ": checksum mismatch (the file is damaged); falling back to an older one") != std::string::npos);
  CHECK(log.find("resumed from " + (ws / "checkpoints" / "20").string() + " at step 20") != std::string::npos);
  CHECK(log.find("finished 'more': 35/35 steps") != std::string::npos);
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

TEST_CASE("SIGTERM and SIGUSR1 in exit_signals save that step's checkpoint and exit 128+N") {
  for (int sig : {SIGTERM, SIGUSR1}) {
    INFO(strsignal(sig));
    TempDir dir;
    const fs::path ws = dir / "ws";
    test::write_file(dir / "spec.toml",
                     regression_spec(ws, 100000000, "interval = 1000000\nexit_signals = [\"SIGTERM\", \"SIGUSR1\"]\n"));
    const pid_t pid = spawn(dir / "spec.toml", dir / "run.log");
    test::wait_until([&] { return test::last_logged_step(ws / "metrics.jsonl") >= 1; }, "a step in metrics.jsonl", pid);
    kill(pid, sig);
    CHECK(wait_exit(pid) == 128 + sig);
    const std::string log = test::read_file(dir / "run.log");
    INFO(log);
    const std::string step = latest(ws);
    CHECK(std::stoll(step) > 0);
    CHECK(log.find("received: checkpoint of step " + step + " saved; exiting with code " + std::to_string(128 + sig)) !=
          std::string::npos);
    CHECK(fs::exists(ws / "checkpoints" / step / "manifest.json"));
  }
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
  CHECK(listings == expected);
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
  CHECK(run_async->host().step_info().count("checkpoint_stall") == 1);
  CHECK_FALSE(fs::exists(async_dir / "ws" / "checkpoints" / "10"));  // pruned (keep_previous = 0) once 12 was saved
}

TEST_CASE("load: a missing explicit checkpoint is an error, a missing latest is a fresh start") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(test::train(dir, regression_spec(dir / "ws", 3, "load = \"/nonexistent/ckpt\"\n")),
                       "hooks[1] (checkpointing) failed in resume: load: no checkpoint at '/nonexistent/ckpt'",
                       tloop::PluginError);
  TempDir fresh;
  auto run = test::train(fresh, regression_spec(fresh / "ws", 3, ""));
  CHECK(run->host().step() == 3);
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
