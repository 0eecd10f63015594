// Test plugin whose info() throws: the SDK's entry point must not let the
// exception out; the loader refuses the library, naming the file.
#include <tloop/sdk.hpp>

namespace {

class InfoThrows : public tloop::Hook {
 public:
  static tloop::PluginInfo info() { throw std::runtime_error("info() could not describe the plugin"); }
  InfoThrows(tloop::Context&, const tloop::Options&) {}
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<InfoThrows>())
