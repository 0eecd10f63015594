// The loader refuses every library it cannot use, with a message naming the file.
#include "support.h"

#include <doctest/doctest.h>

using test::TempDir;

namespace {

std::string bad(const std::string& name) { return std::string(TLOOP_BAD_PLUGIN_DIR) + "/" + name + ".so"; }

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
  CHECK(msg.rfind((dir / "fake.so").string() + ": not a tloop plugin: cannot be loaded as a shared library", 0) == 0);
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

TEST_CASE("plugins built against the frozen v1.0 and v1.1 headers load and work in the current host") {
  TempDir dir;
  const std::string v10 = (dir / "v1_0.txt").string(), v11 = (dir / "v1_1.txt").string();
  auto run = test::train(dir, std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR +
                                  "\"]\n[trainer]\nmax_steps = 2\n[task]\nplugin = \"regression_mlp\"\n"
                                  "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_0_hook\"\nfile = \"" + v10 + "\"\n"
                                  "[[hooks]]\nplugin = \"frozen_v1_1_hook\"\nfile = \"" + v11 + "\"\n");
  const std::vector<std::string> events = {"before_train 0",
                                           "before_step 1",
                                           "before_optimizer_step 1 loss",
                                           "on_log 1 loss",
                                           "after_step 1 loss",
                                           "before_step 2",
                                           "before_optimizer_step 2 loss",
                                           "on_log 2 loss",
                                           "after_step 2 loss",
                                           "after_train 2 loss"};
  INFO(test::read_file(v10));
  CHECK(test::read_lines(v10) == events);
  // 1.1 added the resume event, before any before_train.
  std::vector<std::string> with_resume = {"resume 0"};
  with_resume.insert(with_resume.end(), events.begin(), events.end());
  INFO(test::read_file(v11));
  CHECK(test::read_lines(v11) == with_resume);
  CHECK(std::get<int64_t>(run->plugin_state().at("hooks/frozen_v1_0_hook/events")) == 1);
  CHECK(std::get<int64_t>(run->plugin_state().at("hooks/frozen_v1_1_hook/events")) == 1);
}
