// The CLI's commands, outputs and exit codes.
#include "support.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <regex>

using test::TempDir;

TEST_CASE("tloop plugins lists name, kind, version and file of every plugin found") {
  auto r = test::run_command(test::cli() + " plugins");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(std::regex_search(r.output, std::regex(R"(digits_cnn\s+task\s+1\.0\.0\s+\S+/plugins/digits_cnn\.so)")));
  CHECK(std::regex_search(r.output, std::regex(R"(regression_mlp\s+task\s+1\.0\.0\s+\S+/plugins/regression_mlp\.so)")));

  auto extra = test::run_command(test::cli() + " plugins --path " + TLOOP_TEST_PLUGIN_DIR);
  CHECK(std::regex_search(extra.output, std::regex(R"(event_recorder\s+hook\s+1\.0\.0)")));
}

TEST_CASE("tloop describe prints a plugin's options with types, defaults, ranges and docs") {
  auto r = test::run_command(test::cli() + " describe digits_cnn");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("digits_cnn 1.0.0 (task plugin)") != std::string::npos);
  CHECK(std::regex_search(r.output, std::regex(R"(batch_size\s+int \(default 64, >= 1\)\s+images per micro-batch)")));
  CHECK(std::regex_search(r.output, std::regex(R"(holdout_fraction\s+float \(default 0\.2, 0\.05 to 0\.9\))")));

  // Hooks say when they run among the others.
  auto hook = test::run_command(test::cli() + " describe checkpointing");
  CHECK(hook.output.find("\n  phase: save\n") != std::string::npos);
  CHECK(r.output.find("phase:") == std::string::npos);  // tasks have none

  auto unknown = test::run_command(test::cli() + " describe digits_cn");
  CHECK(unknown.exit_code == 2);
  CHECK(unknown.output.find("no plugin named 'digits_cn'; did you mean 'digits_cnn'?") != std::string::npos);
}

TEST_CASE("--help works on every command and a bad command line exits 2") {
  for (const char* cmd : {"", "run", "validate", "plugins", "describe"}) {
    auto r = test::run_command(test::cli() + " " + cmd + " --help");
    INFO(cmd, r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("Usage") != std::string::npos);
  }
  CHECK(test::run_command(test::cli() + " frobnicate").exit_code == 2);
  CHECK(test::run_command(test::cli() + " --log-level loud plugins").exit_code == 2);
}

TEST_CASE("a training failure exits 1 and a signal exits 128+N") {
  TempDir dir;
  const std::string plugins = std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR + "\"]\n";
  test::write_file(dir / "fail.toml", plugins + "[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"scripted_task\"\n"
                                          "fail_in = \"forward\"\n");
  auto r = test::run_command(test::cli() + " run " + (dir / "fail.toml").string());
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("task (scripted_task) failed in forward: scripted failure in forward") != std::string::npos);
  // The log file in the workspace has the error too.
  CHECK(test::read_file(dir / "ws" / "logs" / "tloop.log").find("scripted failure in forward") != std::string::npos);

  // A long run sent SIGTERM stops at the next step boundary with 128+15,
  // and its hooks get finish with that code.
  const std::string events = (dir / "events.txt").string();
  test::write_file(dir / "long.toml", plugins + "[run]\nworkspace = \"" + (dir / "ws2").string() +
                                          "\"\n[trainer]\nmax_steps = 100000000\n[task]\nplugin = \"regression_mlp\"\n"
                                          "[[hooks]]\nplugin = \"event_recorder\"\nfile = \"" + events + "\"\n");
  const pid_t pid = test::spawn(dir / "long.toml", dir / "long.log");
  test::wait_until([&] { return std::filesystem::exists(events) &&
                                test::read_file(events).find("hook after_step 1\n") != std::string::npos; },
                   "a first step in " + events, pid);
  kill(pid, SIGTERM);
  CHECK(test::wait_exit(pid) == 128 + 15);
  const std::string output = test::read_file(dir / "long.log");
  INFO(output);
  CHECK(output.find("interrupted by signal 15") != std::string::npos);
  const auto lines = test::read_lines(events);
  REQUIRE_FALSE(lines.empty());
  CHECK(lines.back().find("hook finish ") == 0);
  CHECK(lines.back().substr(lines.back().rfind(' ')) == " 143");
}

TEST_CASE("the default spec reaches 95% validation accuracy, keeps its best checkpoint and writes TensorBoard and W&B runs" *
          doctest::test_suite("slow")) {
  TempDir dir;
  auto r = test::run_command(test::cli() + " run " + TLOOP_SOURCE_DIR + "/configs/default.toml --set run.workspace=\"" +
                             (dir / "ws").string() + "\"");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(r.output, m, std::regex(R"(finished 'digits': 600/600 steps .*, val/accuracy ([0-9]\.[0-9]{4}))")));
  CHECK(std::stod(m[1].str()) >= 0.95);
  // Both trackers are on in the default spec (their contents: tests/python).
  const auto ws = dir / "ws";
  const auto has_file = [](const std::filesystem::path& d, const std::regex& name) {
    if (!std::filesystem::is_directory(d)) return false;
    for (const auto& e : std::filesystem::directory_iterator(d))
      if (std::regex_match(e.path().filename().string(), name)) return true;
    return false;
  };
  CHECK(has_file(ws / "tb", std::regex(R"(events\.out\.tfevents\..*)")));
  // The validation split is evaluated every 100 steps ([eval] interval), in
  // rows of their own; the best checkpoint by val/accuracy is kept as `best`.
  std::vector<int64_t> val_steps;
  double best = -1.0;
  int64_t best_step = -1;
  for (const auto& line : test::read_lines(ws / "metrics.jsonl")) {
    const auto row = nlohmann::json::parse(line);
    if (!row.contains("val/accuracy")) continue;
    val_steps.push_back(row["step"].get<int64_t>());
    if (row["val/accuracy"].get<double>() > best) {
      best = row["val/accuracy"].get<double>();
      best_step = row["step"].get<int64_t>();
    }
  }
  CHECK(val_steps == std::vector<int64_t>{100, 200, 300, 400, 500, 600});
  CHECK(test::read_file(ws / "checkpoints" / "best") == std::to_string(best_step) + "\n");
  const std::string id = test::read_file(ws / "wandb_run_id");
  CHECK(has_file(ws / "wandb" / "latest-run", std::regex("run-" + id + "\\.wandb")));
}
