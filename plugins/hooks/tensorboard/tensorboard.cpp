// tensorboard: writes a TensorBoard event file under <workspace>/<dir>/:
// scalars for every log key, images for log_images, the resolved run spec as
// text, and the spec's flat values as hparams (session start and end with its
// status). Rank 0 only; flushed every `flush_interval` steps or `flush_secs`
// seconds, and at finish (also when a signal or an error ends the run).
#include "../common/image_encode.h"
#include "event_file.h"
#include "../common/protobuf.h"

#include <tloop/sdk.hpp>

#include <filesystem>
#include <stdexcept>

#include <toml++/toml.h>

#include <chrono>
#include <memory>
#include <sstream>

namespace {

namespace pb = hooks::pb;

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Field numbers from tensorboard/compat/proto/{event,summary,tensor}.proto and
// tensorboard/plugins/hparams/plugin_data.proto.
namespace field {
constexpr int kEventWallTime = 1, kEventStep = 2, kEventSummary = 5, kEventSessionLog = 7;
constexpr int kSessionLogStatus = 1, kSessionLogStart = 1;  // SessionLog.status, SessionStatus.START
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueSimple = 2, kValueImage = 4, kValueTensor = 8, kValueMetadata = 9;
constexpr int kImageHeight = 1, kImageWidth = 2, kImageColorspace = 3, kImageEncoded = 4;
constexpr int kMetadataPluginData = 1, kPluginName = 1, kPluginContent = 2;
constexpr int kTensorDtype = 1, kTensorShape = 2, kTensorStringVal = 8;
constexpr int kDtString = 7;
constexpr int kHparamsVersion = 1, kHparamsSessionStart = 3, kHparamsSessionEnd = 4;
constexpr int kStartHparams = 1, kStartTime = 5, kEndStatus = 1, kEndTime = 2;
constexpr int kMapKey = 1, kMapValue = 2;
constexpr int kValueNumber = 2, kValueString = 3, kValueBool = 4;  // google.protobuf.Value
constexpr int kStatusSuccess = 1, kStatusFailure = 2;
}  // namespace field

pb::Message plugin_metadata(const std::string& plugin, const std::string& content = "") {
  return pb::Message().message(field::kMetadataPluginData,
                               pb::Message().bytes(field::kPluginName, plugin).bytes(field::kPluginContent, content));
}

// The spec's scalars by dotted path ("trainer.max_steps", "hooks.0.plugin").
void flatten(const toml::node& node, const std::string& prefix, pb::Message& hparams) {
  auto add = [&](const pb::Message& value) {
    hparams.message(field::kStartHparams,
                    pb::Message().bytes(field::kMapKey, prefix).message(field::kMapValue, value));
  };
  if (const toml::table* t = node.as_table()) {
    for (auto&& [k, v] : *t) flatten(v, prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str()), hparams);
  } else if (const toml::array* a = node.as_array()) {
    if (a->is_array_of_tables()) {
      for (size_t i = 0; i < a->size(); ++i) flatten(*a->get(i), prefix + "." + std::to_string(i), hparams);
    } else {
      std::ostringstream os;
      os << toml::toml_formatter{*a};
      add(pb::Message().bytes(field::kValueString, os.str()));
    }
  } else if (node.is_boolean()) {
    add(pb::Message().varint(field::kValueBool, node.as_boolean()->get() ? 1 : 0));
  } else if (node.is_integer()) {
    add(pb::Message().double_(field::kValueNumber, static_cast<double>(node.as_integer()->get())));
  } else if (node.is_floating_point()) {
    add(pb::Message().double_(field::kValueNumber, node.as_floating_point()->get()));
  } else if (node.is_string()) {
    add(pb::Message().bytes(field::kValueString, node.as_string()->get()));
  }
}

class TensorBoard : public tloop::Hook {
 public:
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;

  static tloop::PluginInfo info() {
    return {"tensorboard",
            "1.0.0",
            "TensorBoard event file: scalars, images, the run spec as text and as hparams",
            {
                tloop::option("dir", "tb", "directory in the workspace (or absolute)"),
                tloop::option("flush_interval", 10, "steps between flushes").at_least(1),
                tloop::option("flush_secs", 30.0, "seconds between flushes, whatever the step").at_least(0),
                tloop::option("image_format", "png", "encoding of images: png or jpg").one_of({"png", "jpg"}),
            }};
  }

  TensorBoard(tloop::Context& ctx, const tloop::Options& o)
      : flush_interval_(o.get_int("flush_interval")),
        flush_secs_(o.get_double("flush_secs")),
        image_format_(o.get_string("image_format")) {
    const std::string dir = o.get_string("dir");
    dir_ = !dir.empty() && dir[0] == '/' ? dir : ctx.workspace() + "/" + dir;
  }

  void before_train(tloop::Context& ctx) override {
    if (ctx.rank() != 0) return;
    try {
      file_ = std::make_unique<tb::EventFile>(dir_);
    } catch (const std::filesystem::filesystem_error& e) {  // the dir option names a place that cannot be one
      throw std::invalid_argument("dir: " + dir_ + " cannot hold the event file: " + e.code().message());
    }
    ctx.info("tensorboard: writing " + file_->path() + " (tensorboard --logdir " + dir_ + ")");
    if (ctx.step() > 0) {
      // A resumed run logs the steps after its checkpoint again. TensorFlow's
      // writers mark a restart with SessionLog START at the first new step;
      // TensorBoard then drops what earlier files hold from that step on, so
      // each step shows once.
      file_->write(pb::Message()
                       .double_(field::kEventWallTime, now())
                       .int64(field::kEventStep, ctx.step() + 1)
                       .message(field::kEventSessionLog,
                                pb::Message().varint(field::kSessionLogStatus, field::kSessionLogStart))
                       .str());
    }
    const std::string spec = ctx.resolved_spec();
    pb::Message tensor;
    tensor.varint(field::kTensorDtype, field::kDtString).message(field::kTensorShape, pb::Message());
    tensor.bytes(field::kTensorStringVal, "```toml\n" + spec + "```");  // the text plugin renders markdown
    write_value(ctx.step(), pb::Message()
                                .bytes(field::kValueTag, "run_spec/text_summary")
                                .message(field::kValueMetadata, plugin_metadata("text"))
                                .message(field::kValueTensor, tensor));
    pb::Message start;
    try {
      flatten(toml::parse(spec), "", start);
    } catch (const toml::parse_error& e) {
      ctx.warn(std::string("tensorboard: cannot read the resolved spec for hparams: ") + e.what());
    }
    start.double_(field::kStartTime, now());
    hparams("_hparams_/session_start_info",
            pb::Message().varint(field::kHparamsVersion, 0).message(field::kHparamsSessionStart, start), ctx.step());
    flush();
  }

  void on_log(tloop::Context& ctx, const tloop::Metrics& metrics) override {
    if (!file_) return;
    pb::Message summary;
    for (const auto& [key, value] : metrics)
      summary.message(field::kSummaryValue,
                      pb::Message().bytes(field::kValueTag, key).float_(field::kValueSimple, static_cast<float>(value)));
    write_summary(ctx.step(), summary);
  }

  void on_log_images(tloop::Context& ctx, const std::vector<tloop::ImageView>& images) override {
    if (!file_) return;
    pb::Message summary;
    for (const auto& im : images) {
      pb::Message image;
      image.varint(field::kImageHeight, static_cast<uint64_t>(im.height))
          .varint(field::kImageWidth, static_cast<uint64_t>(im.width))
          .varint(field::kImageColorspace, static_cast<uint64_t>(image_format_ == "jpg" && im.channels == 4 ? 3 : im.channels))
          .bytes(field::kImageEncoded, hooks::encode_image(im, image_format_));
      summary.message(field::kSummaryValue, pb::Message().bytes(field::kValueTag, im.key).message(field::kValueImage, image));
    }
    write_summary(ctx.step(), summary);
  }

  void after_step(tloop::Context& ctx) override {
    if (!file_) return;
    if (ctx.step() % flush_interval_ == 0 || now() - last_flush_ >= flush_secs_) flush();
  }

  // However the run ended: a signal or an error closes the session as failed.
  void finish(tloop::Context&, int exit_code) override {
    if (!file_) return;
    session_end(exit_code == 0 ? field::kStatusSuccess : field::kStatusFailure);
  }

 private:
  void write_summary(int64_t step, const pb::Message& summary) {
    file_->write(pb::Message()
                     .double_(field::kEventWallTime, now())
                     .int64(field::kEventStep, step)
                     .message(field::kEventSummary, summary)
                     .str());
  }
  void write_value(int64_t step, const pb::Message& value) {
    write_summary(step, pb::Message().message(field::kSummaryValue, value));
  }
  void hparams(const std::string& tag, const pb::Message& plugin_data, int64_t step) {
    write_value(step, pb::Message()
                          .bytes(field::kValueTag, tag)
                          .message(field::kValueMetadata, plugin_metadata("hparams", plugin_data.str())));
  }
  void session_end(int status) {
    pb::Message end;
    end.varint(field::kEndStatus, static_cast<uint64_t>(status)).double_(field::kEndTime, now());
    hparams("_hparams_/session_end_info",
            pb::Message().varint(field::kHparamsVersion, 0).message(field::kHparamsSessionEnd, end), 0);
    flush();
  }
  void flush() {
    file_->flush();
    last_flush_ = now();
  }

  int64_t flush_interval_;
  double flush_secs_;
  std::string image_format_;
  std::string dir_;
  std::unique_ptr<tb::EventFile> file_;
  double last_flush_ = 0;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<TensorBoard>())
