// image_files: trainloop's ImageFileLoggerHook. Every log_images call writes
// <workspace>/visualizations/<step>/<key path>.<format> (rank 0 only), PNG or
// JPEG (alpha flattened onto white). Keys are sanitised so that no image can
// land outside its step directory.
#include "../common/image_encode.h"

#include <tloop/sdk.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

namespace {
namespace fs = std::filesystem;

class ImageFiles : public tloop::Hook {
 public:
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;

  static tloop::PluginInfo info() {
    return {"image_files",
            "1.0.0",
            "Writes logged images to <workspace>/visualizations/<step>/<key>.<format>",
            {
                tloop::option("image_format", "png", "png or jpg (alpha flattened onto white)").one_of({"png", "jpg"}),
                tloop::option("jpeg_quality", 95, "JPEG quality").range(1, 100),
                tloop::option("dir", "visualizations", "directory in the workspace"),
            }};
  }

  ImageFiles(tloop::Context& ctx, const tloop::Options& o)
      : format_(o.get_string("image_format")), quality_(static_cast<int>(o.get_int("jpeg_quality"))),
        dir_(tloop::workspace_path(ctx, "dir", o.get_string("dir"))) {}

  void on_log_images(tloop::Context& ctx, const std::vector<tloop::ImageView>& images) override {
    if (ctx.rank() != 0) return;
    const fs::path step_dir = fs::path(dir_) / std::to_string(ctx.step());
    for (const auto& im : images) {
      std::string rel;
      if (hooks::image_key_path(im.key, rel) && warned_.insert(im.key).second)
        ctx.warn("image_files: key '" + im.key + "' is not a safe relative path; writing it as '" + rel + "'");
      if (rel.empty()) {
        ctx.warn("image_files: key '" + im.key + "' has no usable name; image skipped");
        continue;
      }
      const fs::path path = step_dir / (rel + "." + format_);
      fs::create_directories(path.parent_path());
      write(path, im);
    }
  }

 private:
  void write(const fs::path& path, const tloop::ImageView& im) {
    const std::string bytes = hooks::encode_image(im, format_, quality_);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) throw tloop::Error("cannot write image " + path.string());
  }

  std::string format_;
  int quality_;
  std::string dir_;
  std::set<std::string> warned_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<ImageFiles>())
