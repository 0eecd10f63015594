// Spec errors through the real CLI: file:line:column, key path, exit code 2,
// and nothing created in the workspace.
#include "support.h"

#include <doctest/doctest.h>

using test::TempDir;

namespace {

struct Checked {
  test::CommandResult result;
  bool workspace_exists;
};

// Writes `spec` to <dir>/spec.toml with its workspace at <dir>/ws and validates
// it with `tloop run`.
Checked run_cli(const TempDir& dir, const std::string& spec, const std::string& extra_args = "") {
  test::write_file(dir / "spec.toml", "[run]\nworkspace = \"" + (dir / "ws").string() + "\"\n" + spec);
  auto result = test::run_command(test::cli() + " run " + (dir / "spec.toml").string() + " " + extra_args);
  return {result, std::filesystem::exists(dir / "ws")};
}

void expect_bad_input(const Checked& c, const std::vector<std::string>& messages) {
  INFO(c.result.output);
  CHECK(c.result.exit_code == 2);
  CHECK_FALSE(c.workspace_exists);
  for (const auto& m : messages) {
    INFO("expected: ", m);
    CHECK(c.result.output.find(m) != std::string::npos);
  }
}

const std::string kTask = "[task]\nplugin = \"regression_mlp\"\n";

}  // namespace

TEST_CASE("an unknown key is reported with file:line:column and a did-you-mean") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_step = 10\n" + kTask);
  const std::string file = (dir / "spec.toml").string();
  expect_bad_input(c, {file + ":4:1: trainer.max_step: unknown key; did you mean 'max_steps'?",
                       file + ":3:1: trainer.max_steps: missing required key"});
}

TEST_CASE("a value of the wrong type is reported with its location and key path") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = \"10\"\n" + kTask);
  expect_bad_input(c, {(dir / "spec.toml").string() + ":4:13: trainer.max_steps: expected an integer, got a string (\"10\")"});
}

TEST_CASE("a bad value is reported: out of range, and not one of the choices") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\ngradient_accumulation_steps = 0\nmixed_precision = \"fp8\"\n" + kTask);
  const std::string file = (dir / "spec.toml").string();
  expect_bad_input(c, {file + ":5:31: trainer.gradient_accumulation_steps: must be at least 1, got an integer (0)",
                       file + ":6:19: trainer.mixed_precision: must be one of bf16, fp16, got \"fp8\""});
}

TEST_CASE("inf and nan are refused for every number, core and plugin options alike") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 10\ngrad_clip = inf\n" + kTask +
                            "[optimizer]\nlr = nan\n[[hooks]]\nplugin = \"ema\"\ndecay = -inf\n",
                   "--set optimizer.weight_decay=inf");
  const std::string file = (dir / "spec.toml").string();
  expect_bad_input(c, {file + ":5:13: trainer.grad_clip: must be a finite number, got a number (inf)",
                       "optimizer.lr: must be a finite number, got a number (nan)",
                       "hooks[0].decay: must be a finite number, got a number (-inf)",
                       "--set optimizer.weight_decay=inf: optimizer.weight_decay: must be a finite number"});
}

TEST_CASE("an integer literal for a number option is that number, in core sections and plugin options") {
  TempDir dir;
  test::write_file(dir / "spec.toml", "[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\n[trainer]\nmax_steps = 1\ngrad_clip = 1\nsignal_grace = 0\n" + kTask +
                                          "[optimizer]\nlr = 1\n[[hooks]]\nplugin = \"ema\"\ndecay = 0\n");
  const auto r = test::run_command(test::cli() + " run " + (dir / "spec.toml").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const std::string resolved = test::read_file(dir / "ws" / "spec.resolved.toml");
  for (const char* line : {"grad_clip = 1.0", "signal_grace = 0.0", "lr = 1.0", "decay = 0.0"}) {
    INFO(line);
    CHECK(resolved.find(line) != std::string::npos);
  }
}

TEST_CASE("validate finds what would fail later: nesterov without momentum, a workspace that cannot be one") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\n" + kTask + "[optimizer]\ntype = \"sgd\"\nnesterov = true\n");
  expect_bad_input(c, {"optimizer.nesterov: needs momentum > 0"});
  test::write_file(dir / "a_file", "not a directory\n");
  for (const auto& [workspace, message] : std::vector<std::pair<std::string, std::string>>{
           {"", "run.workspace: is empty (leave it out for runs/<name>)"},
           {(dir / "a_file").string(), "run.workspace: \"" + (dir / "a_file").string() + "\" exists and is not a directory"},
           {(dir / "a_file" / "ws").string(),
            "run.workspace: \"" + (dir / "a_file").string() + "\" is a file, so \"" + (dir / "a_file" / "ws").string() +
                "\" cannot be created"}}) {
    const std::string& ws_option = workspace;  // INFO's lambda cannot capture a structured binding before C++20
    INFO(ws_option);
    test::write_file(dir / "ws.toml", "[run]\nworkspace = \"" + workspace + "\"\n[trainer]\nmax_steps = 5\n" + kTask);
    for (const char* command : {" validate ", " run "}) {
      const auto r = test::run_command(test::cli() + command + (dir / "ws.toml").string());
      INFO(command, r.output);
      CHECK(r.exit_code == 2);
      CHECK(r.output.find(message) != std::string::npos);
    }
  }
  CHECK(test::read_file(dir / "a_file") == "not a directory\n");
}

TEST_CASE("a missing required key and a missing section are reported") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\ngrad_clip = 1.0\n");
  const std::string file = (dir / "spec.toml").string();
  expect_bad_input(c, {file + ":3:1: trainer.max_steps: missing required key", file + ": task: missing required section [task]"});
}

TEST_CASE("plugin options are validated against the plugin's declared schema") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\n[task]\nplugin = \"digits_cnn\"\nbatchsize = 3\nholdout_fraction = 2.0\n");
  const std::string file = (dir / "spec.toml").string();
  expect_bad_input(c, {file + ":7:1: task.batchsize: unknown key; did you mean 'batch_size'?",
                       file + ":8:20: task.holdout_fraction: must be between 0.05 and 0.9, got a number (2)"});
}

TEST_CASE("an unknown plugin name suggests the closest one") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\n[task]\nplugin = \"digit_cnn\"\n");
  expect_bad_input(c, {(dir / "spec.toml").string() +
                       ":6:10: task.plugin: no task plugin named 'digit_cnn' is loaded; did you mean 'digits_cnn'?"});
}

TEST_CASE("an unknown section and a TOML syntax error are reported with their location") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\n" + kTask + "[trainr]\nx = 1\n");
  expect_bad_input(c, {(dir / "spec.toml").string() + ":7:2: trainr: unknown section; did you mean 'trainer'?"});

  TempDir dir2;
  auto syntax = run_cli(dir2, "[trainer]\nmax_steps = = 5\n");
  expect_bad_input(syntax, {(dir2 / "spec.toml").string() + ":4:"});
}

TEST_CASE("--set overrides are typed like the spec and their errors name the override") {
  TempDir dir;
  auto c = run_cli(dir, "[trainer]\nmax_steps = 5\n" + kTask, "--set trainer.max_steps=abc --set task.batch_size=0");
  expect_bad_input(c, {"--set trainer.max_steps=abc: trainer.max_steps: expected an integer, got a string (\"abc\")",
                       "--set task.batch_size=0: task.batch_size: must be at least 1, got an integer (0)"});

  TempDir ok;
  auto good = run_cli(ok, "[trainer]\nmax_steps = 5\n" + kTask, "--set trainer.max_steps=3 --set task.batch_size=4");
  INFO(good.result.output);
  CHECK(good.result.exit_code == 0);
  const std::string resolved = test::read_file(ok / "ws" / "spec.resolved.toml");
  CHECK(resolved.find("max_steps = 3") != std::string::npos);
  CHECK(resolved.find("batch_size = 4") != std::string::npos);
}

TEST_CASE("every problem in a spec is reported at once, and validate runs nothing") {
  TempDir dir;
  test::write_file(dir / "spec.toml", "[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\nseed = -1\n[trainer]\nmax_steps = 0\n[optimizer]\ntype = \"sgd\"\nbeta1 = 0.5\n" + kTask);
  auto r = test::run_command(test::cli() + " validate " + (dir / "spec.toml").string());
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("run.seed: must be at least 0") != std::string::npos);
  CHECK(r.output.find("trainer.max_steps: must be at least 1") != std::string::npos);
  CHECK(r.output.find("optimizer.beta1: does not apply to optimizer type 'sgd'") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "ws"));
}

TEST_CASE("list option defaults take their natural spelling in the SDK") {
  const tloop::OptionSpec tags = tloop::option("tags", {"a", "b"}, "doc");
  CHECK(tags.type == TLOOP_TYPE_STRING_LIST);
  CHECK(*tags.default_literal == "[\"a\", \"b\"]");
  const tloop::OptionSpec steps = tloop::option("steps", {1, 2}, "doc");
  CHECK(steps.type == TLOOP_TYPE_INT_LIST);
  CHECK(*steps.default_literal == "[1, 2]");
}

TEST_CASE("the SDK refuses an option named like a run-spec key when the descriptor is built") {
  for (const char* name : {"plugin", "key", "on_error"}) {
    INFO(name);
    tloop::PluginInfo info{"p", "1.0.0", "d", {tloop::option(name, 1, "doc")}};
    CHECK_THROWS_WITH_AS(tloop::detail::DescriptorStorage(info, TLOOP_KIND_HOOK, nullptr, nullptr),
                         (std::string("option '") + name + "' is reserved by the run spec (plugin, key, on_error): rename it").c_str(),
                         tloop::Error);
  }
}

// Found by scripts/fuzz or alongside it: each once crashed the parser (a
// stack overflow) or was undefined behaviour in it (third_party/README.md).
TEST_CASE("hostile TOML is a parse error: a key of 300,000 dotted parts, a brace in an array, a header of an ampersand") {
  TempDir dir;
  std::string dotted = "a";
  for (int i = 1; i < 300000; ++i) dotted += ".a";
  expect_bad_input(run_cli(dir, dotted + " = 1\n" + kTask), {"exceeded maximum dotted keys depth of 1024"});
  expect_bad_input(run_cli(dir, "x = [[}]]\n" + kTask), {"spec.toml:3:7: Error while parsing array: expected value or closing ']', saw '}'"});
  expect_bad_input(run_cli(dir, "[&\n" + kTask),
                   {"spec.toml:3:2: Error while parsing table header: expected bare key starting character or string "
                    "delimiter, saw '&'"});
}
