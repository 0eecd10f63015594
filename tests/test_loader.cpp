// The loader refuses every library it cannot use, with a message naming the file.
#include "support.h"

#include "text.h"

#include <doctest/doctest.h>
#include <toml++/toml.h>

#include <algorithm>
#include <map>

#include <sys/stat.h>
#include <unistd.h>

using test::TempDir;

namespace {

std::string bad(const std::string& name) { return std::string(TLOOP_BAD_PLUGIN_DIR) + "/" + name + ".so"; }

// The default plugin directories and `named`.
tloop::PluginSearch search(const std::vector<std::filesystem::path>& named) {
  tloop::PluginSearch s;
  s.dirs = tloop::default_plugin_dirs();
  s.named_dirs = named;
  return s;
}

std::string load_error(const std::string& file) {
  tloop::Catalog catalog;
  try {
    catalog.load_file(file);
  } catch (const tloop::PluginLoadError& e) {
    return e.what();
  }
  return "(loaded without error)";
}

}  // namespace

TEST_CASE("a plain-C plugin built against the header loads and creates instances") {
  tloop::Catalog catalog;
  catalog.load_file(bad("good_c_hook"));
  const tloop::LoadedPlugin* p = catalog.find("good_c_hook");
  REQUIRE(p != nullptr);
  CHECK(p->kind == TLOOP_KIND_HOOK);
  CHECK(p->version == "0.1.0");
  CHECK(p->file == bad("good_c_hook"));
}

TEST_CASE("a file that is not a shared library is not a tloop plugin") {
  TempDir dir;
  test::write_file(dir / "fake.so", "this is text, not ELF\n");
  const std::string msg = load_error((dir / "fake.so").string());
  CHECK(msg == (dir / "fake.so").string() + ": cannot be loaded: not an ELF file (no ELF magic number)");
}

TEST_CASE("a plugin file cut short is refused with a message before dlopen, which would die of SIGBUS") {
  // A copy interrupted mid-way: the ELF header and some segments, not all.
  const std::filesystem::path real = std::filesystem::path(TLOOP_TEST_PLUGIN_DIR) / "event_recorder.so";
  const std::string bytes = test::read_file(real);
  REQUIRE(bytes.size() > 50000);
  TempDir dir;
  for (size_t keep : {size_t{64}, size_t{4096}, size_t{20000}, bytes.size() / 2, bytes.size() - 1}) {
    INFO("first ", keep, " of ", bytes.size(), " bytes");
    const std::filesystem::path cut = dir / ("cut_" + std::to_string(keep) + ".so");
    test::write_file(cut, bytes.substr(0, keep));
    const std::string msg = load_error(cut.string());
    CHECK(msg.rfind(cut.string() + ": cannot be loaded: a damaged or truncated ELF file: ", 0) == 0);
    CHECK(msg.find("but the file has " + std::to_string(keep) + " bytes (copy or build it again)") != std::string::npos);
  }
  // Through the CLI, scanning a plugin directory: exit 2 naming the file, not a crash.
  test::write_file(dir / "scan" / "event_recorder.so", bytes.substr(0, 20000));
  const auto r = test::run_command(test::cli() + " plugins --path " + (dir / "scan").string());
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK(r.output.find((dir / "scan" / "event_recorder.so").string() + ": cannot be loaded: a damaged or truncated") !=
        std::string::npos);
}

TEST_CASE("a shared library without the entry point is refused") {
  CHECK(load_error(bad("no_entry")) ==
        bad("no_entry") + ": not a tloop plugin: it exports no 'tloop_plugin_entry' entry point "
                          "(export one with TLOOP_PLUGIN_LIBRARY)");
}

TEST_CASE("a plugin built for another ABI major version is refused") {
  CHECK(load_error(bad("abi_major_2")) ==
        bad("abi_major_2") + ": built for plugin ABI 2." + std::to_string(TLOOP_ABI_VERSION_MINOR) +
            ", but this tloop speaks ABI 1." + std::to_string(TLOOP_ABI_VERSION_MINOR) +
            " (major versions must match); rebuild the plugin against this tloop's SDK");
}

TEST_CASE("a plugin built for a newer minor version than the host is refused") {
  const std::string host = "1." + std::to_string(TLOOP_ABI_VERSION_MINOR);
  const std::string newer = "1." + std::to_string(TLOOP_ABI_VERSION_MINOR + 1);
  CHECK(load_error(bad("abi_newer_minor")) == bad("abi_newer_minor") + ": built for plugin ABI " + newer +
                                                   ", newer than this tloop's ABI " + host +
                                                   "; upgrade tloop or rebuild the plugin against ABI " + host);
}

TEST_CASE("a plugin built against another LibTorch version is refused") {
  const std::string host = tloop::host_torch_version();
  CHECK(load_error(bad("torch_mismatch")) == bad("torch_mismatch") +
                                                 ": built against LibTorch 1.0.0, but this tloop runs LibTorch " +
                                                 host + "; rebuild the plugin against LibTorch " + host);
}

TEST_CASE("two plugins with the same name are refused, naming both files") {
  tloop::Catalog catalog;
  catalog.load_file(bad("dup_a"));
  std::string msg;
  try {
    catalog.load_file(bad("dup_b"));
  } catch (const tloop::PluginLoadError& e) {
    msg = e.what();
  }
  CHECK(msg == "two plugins are named 'dup_hook': one in " + bad("dup_a") + " and one in " + bad("dup_b") +
                   "; remove one of them from the plugin path");
}

TEST_CASE("a refused library on the plugin path stops a run with exit code 2") {
  TempDir dir;
  std::filesystem::create_directories(dir / "plugins");
  std::filesystem::copy_file(bad("abi_major_2"), dir / "plugins" / "abi_major_2.so");
  test::write_file(dir / "spec.toml", "[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\n[trainer]\nmax_steps = 1\n[task]\nplugin = \"regression_mlp\"\n");
  auto r = test::run_command("TLOOP_PLUGIN_PATH=" + (dir / "plugins").string() + " " + test::cli() + " run " +
                             (dir / "spec.toml").string());
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK(r.output.find((dir / "plugins" / "abi_major_2.so").string() + ": built for plugin ABI 2.") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "ws"));
}

TEST_CASE("plugins built against the frozen v1.0, v1.1, v1.2 and v1.3 headers load and work in the current host") {
  TempDir dir;
  const std::string v10 = (dir / "v1_0.txt").string(), v11 = (dir / "v1_1.txt").string(),
                    v12 = (dir / "v1_2.txt").string(), v13 = (dir / "v1_3.txt").string();
  auto run = test::train(dir, std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR +
                                  "\"]\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"regression_mlp\"\n"
                                  "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_0_hook\"\nfile = \"" + v10 + "\"\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_1_hook\"\nfile = \"" + v11 + "\"\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_2_hook\"\nfile = \"" + v12 + "\"\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_3_hook\"\nfile = \"" + v13 + "\"\n");
  // Hooks built for 1.2 or older have the update phase: their after_step
  // comes before logging's (the log phase), which logs the step.
  const std::vector<std::string> events = {"before_train 0",
                                           "before_step 1",
                                           "before_optimizer_step 1 loss",
                                           "after_step 1 loss",
                                           "on_log 1 loss",
                                           "before_step 2",
                                           "before_optimizer_step 2 loss",
                                           "after_step 2 loss",
                                           "on_log 2 loss",
                                           "after_train 2 loss"};
  INFO(test::read_file(v10));
  CHECK(test::read_lines(v10) == events);
  // 1.1 added the resume event, before any before_train.
  std::vector<std::string> with_resume = {"resume 0"};
  with_resume.insert(with_resume.end(), events.begin(), events.end());
  INFO(test::read_file(v11));
  CHECK(test::read_lines(v11) == with_resume);
  // 1.2 added finish, with the exit code, once training has ended.
  std::vector<std::string> with_finish = with_resume;
  with_finish.push_back("finish 2 exit 0");
  INFO(test::read_file(v12));
  CHECK(test::read_lines(v12) == with_finish);
  // 1.3 added phases (this one saves: its after_step comes after logging's
  // log call) and extensions (it takes the micro-step events).
  const std::vector<std::string> v13_events = {
      "resume 0",         "before_train 0",
      "before_step 1",    "after_forward 1 micro 0",
      "before_optimizer_step 1 loss", "on_log 1 loss",
      "after_step 1 loss", "before_step 2",
      "after_forward 2 micro 0", "before_optimizer_step 2 loss",
      "on_log 2 loss",    "after_step 2 loss",
      "after_train 2 loss", "finish 2 exit 0"};
  INFO(test::read_file(v13));
  CHECK(test::read_lines(v13) == v13_events);
  for (const char* hook : {"frozen_v1_0_hook", "frozen_v1_1_hook", "frozen_v1_2_hook", "frozen_v1_3_hook"})
    CHECK(std::get<int64_t>(run->plugin_state().at(std::string("hooks/") + hook + "/events")) == 1);
}

TEST_CASE("an array of options is read with its elements' struct_size, so a later minor may grow them") {
  tloop::Catalog catalog;
  catalog.load_file(bad("grown_options"));
  const tloop::LoadedPlugin* p = catalog.find("grown_options");
  REQUIRE(p != nullptr);
  REQUIRE(p->schema.size() == 2);
  CHECK(p->schema[0].name == "alpha");
  CHECK(p->schema[0].doc == "first option");
  CHECK(p->schema[0].max == 10.0);
  CHECK(p->schema[1].name == "beta");
  CHECK(p->schema[1].choices == std::vector<std::string>{"x", "y"});
}

TEST_CASE("an option named like a run-spec key is refused, naming the file") {
  CHECK(load_error(bad("reserved_option")) ==
        bad("reserved_option") + ": plugin 'reserved_option': option 'on_error' is reserved by the run spec (plugin, key, on_error)");
}

TEST_CASE("an option type newer than the plugin's ABI minor is refused, naming the file") {
  CHECK(load_error(bad("int_or_string_1_3")) ==
        bad("int_or_string_1_3") + ": plugin 'int_or_string_1_3': option 'mode' has type 6, not a tloop_value_type "
                                   "of ABI 1.3 (0 to 5)");
  tloop::Catalog catalog;
  catalog.load_file(bad("int_or_string_1_4"));
  CHECK(catalog.find("int_or_string_1_4")->schema.at(0).type == TLOOP_TYPE_INT_OR_STRING);
}

TEST_CASE("a descriptor is checked at load: the plugin's name, unique options, defaults of their type, choices on strings") {
  CHECK(load_error(bad("bad_name")) == bad("bad_name") + ": plugin 'Bad-Name': a plugin name is lowercase letters, "
                                                          "digits and '_', starting with a letter");
  CHECK(load_error(bad("dup_option")) == bad("dup_option") + ": plugin 'dup_option': option 'mode' is declared twice");
  CHECK(load_error(bad("bad_default")) ==
        bad("bad_default") + ": plugin 'bad_default': option 'mode' has the default \"abc\", which is not an integer");
  CHECK(load_error(bad("choices_on_int")) == bad("choices_on_int") + ": plugin 'choices_on_int': option 'mode' has "
                                                                      "choices, but only string options can have "
                                                                      "them (it is an integer)");
}

TEST_CASE("a hook declares its phase, hooks that declare none update, and an unknown phase is refused") {
  tloop::Catalog catalog;
  catalog.load_file(bad("save_phase"));
  catalog.load_file(bad("good_c_hook"));  // built against this header, leaves `phase` zero
  CHECK(catalog.find("save_phase")->phase == TLOOP_PHASE_SAVE);
  CHECK(catalog.find("good_c_hook")->phase == TLOOP_PHASE_UPDATE);
  const std::string msg = load_error(bad("bad_phase"));
  CHECK(msg == bad("bad_phase") + ": plugin 'bad_phase' declares phase 9, not a tloop_hook_phase (0 to 5)");
  // Built against the frozen 1.2 header, which has no phase: update.
  const tloop::Catalog frozen = tloop::load_catalog(search({TLOOP_TEST_PLUGIN_DIR}));
  CHECK(frozen.find("frozen_v1_2_hook")->phase == TLOOP_PHASE_UPDATE);
}

TEST_CASE("every permutation of the default spec's hooks runs measure, update, log, then save") {
  const tloop::Catalog catalog = tloop::load_catalog(search({}));
  const toml::table spec = toml::parse_file(std::string(TLOOP_SOURCE_DIR) + "/configs/default.toml");
  std::vector<std::string> names;
  for (const auto& hook : *spec["hooks"].as_array()) names.push_back(*(*hook.as_table())["plugin"].value<std::string>());
  REQUIRE(names.size() == 8);  // checkpointing among them
  const std::map<std::string, tloop_hook_phase> declared = {
      {"cuda_max_memory", TLOOP_PHASE_MEASURE}, {"ema", TLOOP_PHASE_UPDATE},   {"checkpointing", TLOOP_PHASE_SAVE},
      {"progress", TLOOP_PHASE_LOG},            {"logging", TLOOP_PHASE_LOG},  {"image_files", TLOOP_PHASE_LOG},
      {"tensorboard", TLOOP_PHASE_LOG},         {"wandb", TLOOP_PHASE_LOG}};
  for (const auto& name : names) {
    INFO(name);
    REQUIRE(declared.count(name) == 1);
    CHECK(catalog.find(name)->phase == declared.at(name));
  }
  // For every order a spec could list them in: cuda_max_memory adds its step
  // info first, ema updates next, the log-phase hooks follow in the spec's
  // order, and checkpointing saves last.
  std::sort(names.begin(), names.end());
  size_t permutations = 0;
  std::string failed;
  do {
    ++permutations;
    std::vector<tloop_hook_phase> phases;
    for (const auto& n : names) phases.push_back(catalog.find(n)->phase);
    const std::vector<size_t> order = tloop::dispatch_order(phases);
    std::map<std::string, size_t> at;
    for (size_t k = 0; k < order.size(); ++k) at[names[order[k]]] = k;
    bool ok = at["cuda_max_memory"] == 0 && at["ema"] == 1 && at["checkpointing"] == 7;
    for (size_t i = 0; i < names.size(); ++i)
      for (size_t j = i + 1; j < names.size(); ++j)
        if (phases[i] == phases[j] && at[names[i]] > at[names[j]]) ok = false;  // list order within a phase
    if (!ok && failed.empty()) failed = tloop::join(names, ", ");
  } while (std::next_permutation(names.begin(), names.end()));
  CHECK(permutations == 40320);
  CHECK_MESSAGE(failed.empty(), "wrong dispatch order for the list: ", failed);
}

TEST_CASE("a plugin that asks for an extension the host lacks gets none and runs without it") {
  TempDir dir;
  const std::string events = (dir / "events.txt").string();
  test::train(dir, std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR +
                       "\"]\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"regression_mlp\"\n"
                       "[[hooks]]\nplugin = \"event_recorder\"\nquery_extension = \"tloop.no_such_extension/1\"\n"
                       "file = \"" + events + "\"\n");
  const auto lines = test::read_lines(events);
  REQUIRE(!lines.empty());
  CHECK(lines.front() == "hook extension 0 tloop.no_such_extension/1 absent");
  CHECK(lines.back() == "hook finish 2 0");
}

TEST_CASE("a plugin whose info() throws is refused with exit code 2, naming the file and its message") {
  TempDir dir;
  std::filesystem::create_directories(dir / "plugins");
  std::filesystem::copy_file(bad("info_throws"), dir / "plugins" / "info_throws.so");
  auto r = test::run_command("TLOOP_PLUGIN_PATH=" + (dir / "plugins").string() + " " + test::cli() + " plugins");
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("tloop plugin: the entry point failed: info() could not describe the plugin") != std::string::npos);
  CHECK(r.output.find((dir / "plugins" / "info_throws.so").string() + ": the entry point returned no valid library record") !=
        std::string::npos);
}

namespace {
namespace fs = std::filesystem;

// A plugin directory under `dir` holding a copy of the good C hook.
fs::path plugin_dir(const TempDir& dir, const std::string& name) {
  const fs::path d = dir / name;
  fs::create_directories(d);
  fs::permissions(d, fs::perms(0755));
  fs::copy_file(bad("good_c_hook"), d / "good_c_hook.so");
  fs::permissions(d / "good_c_hook.so", fs::perms(0755));
  return d;
}

// `tloop validate` and `tloop run` of a spec whose [plugins] table is `plugins`:
// both must give `code` and `message`, and a refused run writes nothing.
void check_validate_and_run(const TempDir& dir, const std::string& plugins, int code, const std::string& message) {
  test::write_file(dir / "spec.toml", "[plugins]\n" + plugins + "\n[run]\nworkspace = \"" + (dir / "ws").string() +
                                          "\"\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"regression_mlp\"\n"
                                          "[[hooks]]\nplugin = \"good_c_hook\"\n");
  for (const char* command : {" validate ", " run "}) {
    const auto r = test::run_command(test::cli() + command + (dir / "spec.toml").string() + " 2>&1");
    INFO(command, r.output);
    CHECK(r.exit_code == code);
    CHECK(r.output.find(message) != std::string::npos);
  }
  if (code != 0) CHECK_FALSE(fs::exists(dir / "ws"));
}

std::string paths(const fs::path& d) { return "paths = [\"" + d.string() + "\"]"; }
}  // namespace

TEST_CASE("plugins that other users can write or own are refused unless allow_insecure, group-writable ones warn") {
  TempDir dir;
  SUBCASE("a directory writable by every user") {
    const fs::path d = plugin_dir(dir, "open");
    fs::permissions(d, fs::perms(0777));
    const std::string why = "plugin directory " + d.string() +
                            " is writable by every user (mode 0777): anyone could put code there that tloop would "
                            "run; fix it with chmod o-w " + d.string() + ", or set [plugins] allow_insecure = true";
    check_validate_and_run(dir, paths(d), 2, why);
    const auto listed = test::run_command(test::cli() + " plugins --path " + d.string() + " 2>&1");
    CHECK(listed.exit_code == 2);
    CHECK(listed.output.find(why) != std::string::npos);
    // Told to, it loads them, and still says what is unsafe.
    check_validate_and_run(dir, paths(d) + "\nallow_insecure = true", 0, "(loaded: [plugins] allow_insecure = true)");
    CHECK(test::run_command(test::cli() + " plugins --allow-insecure --path " + d.string()).exit_code == 0);
  }
  SUBCASE("a library writable by every user, in a safe directory") {
    const fs::path d = plugin_dir(dir, "safe");
    fs::permissions(d / "good_c_hook.so", fs::perms(0666));
    check_validate_and_run(dir, paths(d), 2,
                           "plugin library " + (d / "good_c_hook.so").string() +
                               " is writable by every user (mode 0666)");
  }
  SUBCASE("a group-writable directory loads with a warning (clusters use umask 002)") {
    const fs::path d = plugin_dir(dir, "group");
    fs::permissions(d, fs::perms(0775));
    check_validate_and_run(dir, paths(d), 0,
                           "plugin directory " + d.string() + " is writable by its group (mode 0775): loaded");
  }
  SUBCASE("a directory owned by another user than you or root") {
    const fs::path d = plugin_dir(dir, "theirs");
    if (::getuid() != 0) {
      MESSAGE("not root: this subcase cannot give a directory to another user, so it checks nothing");
    } else {
      REQUIRE(::chown(d.c_str(), 65534, static_cast<gid_t>(-1)) == 0);  // nobody
      check_validate_and_run(dir, paths(d), 2, "plugin directory " + d.string() + " is owned by ");
      check_validate_and_run(dir, paths(d), 2, "(uid 65534), neither you nor root");
    }
  }
}

TEST_CASE("a plugin path that is missing, a file or a symbolic link loop is named, in validate and run alike") {
  TempDir dir;
  SUBCASE("missing") {
    check_validate_and_run(dir, paths(dir / "nowhere"), 2,
                           "spec.toml:2:10: plugins.paths[0]: " + (dir / "nowhere").string() + ": no such directory");
    const auto listed = test::run_command(test::cli() + " plugins --path " + (dir / "nowhere").string() + " 2>&1");
    CHECK(listed.exit_code == 2);
    CHECK(listed.output.find("plugin directory " + (dir / "nowhere").string() + ": no such directory") !=
          std::string::npos);
  }
  SUBCASE("a file") {
    test::write_file(dir / "file", "x");
    check_validate_and_run(dir, paths(dir / "file"), 2, "plugins.paths[0]: " + (dir / "file").string() + ": not a directory");
  }
  SUBCASE("a symbolic link loop") {
    fs::create_directory_symlink(dir / "loop", dir / "loop");
    check_validate_and_run(dir, paths(dir / "loop"), 2,
                           "plugins.paths[0]: " + (dir / "loop").string() + ": Too many levels of symbolic links");
  }
  SUBCASE("a library that is a symbolic link loop") {
    const fs::path d = plugin_dir(dir, "links");
    fs::create_symlink(d / "self.so", d / "self.so");
    check_validate_and_run(dir, paths(d), 2,
                           (d / "self.so").string() + ": cannot be loaded: Too many levels of symbolic links");
  }
}
