// wandb: writes a Weights & Biases offline run, the directory `wandb sync`
// uploads later (cluster nodes rarely have network):
//   <WANDB_DIR or workspace>/wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>/
//     run-<id>.wandb         header, run, config, history, summary, files, exit, final records
//     files/media/images/... the logged images, referenced from the history
// Options and environment overrides follow trainloop's WandbHook. The run id is
// kept in <workspace>/wandb_run_id and reused when the run resumes from a
// checkpoint. Rank 0 only; flushed every `flush_interval` steps or
// `flush_secs` seconds and at finish, so a killed run syncs up to its last flush.
#include "../common/image_encode.h"
#include "../common/protobuf.h"
#include "record_log.h"

#include <tloop/sdk.hpp>

#include <nlohmann/json.hpp>
#include <picosha2.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>

namespace {

namespace fs = std::filesystem;
namespace pb = hooks::pb;
using json = nlohmann::json;

// Field numbers from wandb/proto/wandb_internal.proto (and google/protobuf/timestamp.proto).
namespace field {
constexpr int kRecordNum = 1, kRecordHistory = 2, kRecordSummary = 3, kRecordConfig = 5, kRecordFiles = 6,
              kRecordRun = 17, kRecordExit = 18, kRecordFinal = 20, kRecordHeader = 21;
constexpr int kHeaderVersionInfo = 1, kVersionProducer = 1;
constexpr int kRunId = 1, kRunEntity = 2, kRunProject = 3, kRunGroup = 6, kRunJobType = 7, kRunDisplayName = 8, kRunNotes = 9, kRunTags = 10,
              kRunHost = 13, kRunStartingStep = 14, kRunStartTime = 17, kRunResumed = 18, kRunRuntime = 20;
constexpr int kTimestampSeconds = 1, kTimestampNanos = 2;
constexpr int kItemsUpdate = 1;                      // ConfigRecord.update, SummaryRecord.update
constexpr int kItemKey = 1, kItemValueJson = 16;     // ConfigItem, SummaryItem, HistoryItem
constexpr int kHistoryItem = 1, kHistoryStep = 2, kHistoryStepNum = 1;
constexpr int kFilesItem = 1, kFilePath = 1;         // policy NOW (0), as wandb writes media files
constexpr int kExitCode = 1, kExitRuntime = 2;
}  // namespace field

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A number as Python's json.dumps writes it, which is what wandb reads: NaN
// and the infinities have no JSON spelling of their own.
std::string json_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return json(v).dump();
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[picosha2::k_digest_size];
  picosha2::hash256(bytes.begin(), bytes.end(), digest, digest + picosha2::k_digest_size);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char d : digest) (out += hex[d >> 4]) += hex[d & 15];
  return out;
}

// wandb's run ids: 8 characters of [a-z0-9].
std::string new_run_id() {
  static const char* alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  std::uniform_int_distribution<int> pick(0, 35);
  std::string id;
  for (int i = 0; i < 8; ++i) id += alphabet[pick(rd)];
  return id;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

// The option when the spec gives one, else the environment variable.
std::string or_env(const std::string& option, const char* name) { return option.empty() ? env(name) : option; }

json to_json(const toml::node& node) {
  if (const toml::table* t = node.as_table()) {
    json out = json::object();
    for (auto&& [k, v] : *t) out[std::string(k.str())] = to_json(v);
    return out;
  }
  if (const toml::array* a = node.as_array()) {
    json out = json::array();
    for (const auto& v : *a) out.push_back(to_json(v));
    return out;
  }
  if (const auto* v = node.as_boolean()) return v->get();
  if (const auto* v = node.as_integer()) return v->get();
  if (const auto* v = node.as_floating_point()) return v->get();
  if (const auto* v = node.as_string()) return v->get();
  std::ostringstream os;  // dates and times: their TOML spelling
  node.visit([&](const auto& n) { os << n; });
  return os.str();
}

class Wandb : public tloop::Hook {
 public:
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_LOG;

  static tloop::PluginInfo info() {
    return {"wandb",
            "1.0.0",
            "Weights & Biases offline run (wandb sync uploads it): metrics, images, the run spec as config",
            {
                tloop::option("project", "tloop", "W&B project; WANDB_PROJECT overrides it"),
                tloop::option(
                    "config", "", "JSON file with the run config (relative to the working directory); empty: the resolved run spec"),
                tloop::option("tags", std::vector<std::string>{}, "run tags; WANDB_TAGS (comma-separated) adds to them"),
                tloop::option("image_format", "png", "encoding of images: png or jpg").one_of({"png", "jpg"}),
                tloop::option("mode", "offline", "offline: write the run; disabled: write nothing")
                    .one_of({"offline", "disabled"}),
                tloop::option("name", "", "display name; empty: WANDB_NAME, else the run's name from [run]"),
                tloop::option("group", "", "run group; empty: WANDB_RUN_GROUP"),
                tloop::option("notes", "", "run notes; empty: WANDB_NOTES"),
                tloop::option("entity", "", "W&B entity (user or team); empty: WANDB_ENTITY"),
                tloop::option("job_type", "", "run job type; empty: WANDB_JOB_TYPE"),
                tloop::option("flush_interval", 10, "steps between flushes").at_least(1),
                tloop::option("flush_secs", 30.0, "seconds between flushes, whatever the step").at_least(0),
            }};
  }

  Wandb(tloop::Context& ctx, const tloop::Options& o)
      : project_(env("WANDB_PROJECT").empty() ? o.get_string("project") : env("WANDB_PROJECT")),
        image_format_(o.get_string("image_format")),
        // As wandb.init: an argument given wins over its environment variable.
        name_(or_env(o.get_string("name"), "WANDB_NAME")),
        group_(or_env(o.get_string("group"), "WANDB_RUN_GROUP")),
        notes_(or_env(o.get_string("notes"), "WANDB_NOTES")),
        entity_(or_env(o.get_string("entity"), "WANDB_ENTITY")),
        job_type_(or_env(o.get_string("job_type"), "WANDB_JOB_TYPE")),
        flush_interval_(o.get_int("flush_interval")),
        flush_secs_(o.get_double("flush_secs")),
        workspace_(ctx.workspace()) {
    const std::string mode = env("WANDB_MODE");
    disabled_ = o.get_string("mode") == "disabled" || mode == "disabled";
    if (!mode.empty() && !disabled_ && mode != "offline" && mode != "dryrun")
      ctx.warn("wandb: WANDB_MODE=" + mode + ": tloop never uploads while training; it writes an offline run "
               "that `wandb sync <run directory>` uploads (the directory is printed when the run starts)");
    // trainloop: the spec's tags, then WANDB_TAGS, duplicates dropped, order kept.
    std::vector<std::string> tags = o.get_string_list("tags");
    std::stringstream env_tags(env("WANDB_TAGS"));
    for (std::string t; std::getline(env_tags, t, ',');) {
      t.erase(0, t.find_first_not_of(" \t"));
      t.erase(t.find_last_not_of(" \t") + 1);
      if (!t.empty()) tags.push_back(t);
    }
    for (const auto& t : tags)
      if (std::find(tags_.begin(), tags_.end(), t) == tags_.end()) tags_.push_back(t);
    resume_ = env("WANDB_RESUME");
    if (!resume_.empty() && resume_ != "allow" && resume_ != "must" && resume_ != "never" && resume_ != "auto")
      throw tloop::Error("WANDB_RESUME='" + resume_ + "': expected allow, must, never or auto");
    forced_id_ = env("WANDB_RUN_ID");
    if (forced_id_.find_first_of("/\\#?%:") != std::string::npos)
      throw tloop::Error("WANDB_RUN_ID='" + forced_id_ + "': a run id must not contain any of / \\ # ? % :");
    // Read now, so that a bad file fails the run before it starts.
    const std::string config_file = o.get_string("config");
    if (!config_file.empty()) {
      std::ifstream in(config_file);
      if (!in) throw tloop::Error("config: cannot read JSON file '" + config_file + "'");
      try {
        config_ = json::parse(in);
      } catch (const json::parse_error& e) {
        throw tloop::Error("config: '" + config_file + "' is not valid JSON: " + e.what());
      }
      if (!config_.is_object()) throw tloop::Error("config: '" + config_file + "' must hold a JSON object");
    }
  }

  void load_state_dict(tloop::Context&, const tloop::StateReader& state) override {
    resumed_ = true;
    runtime_offset_ = state.get_double("runtime").value_or(0.0);
  }

  void state_dict(tloop::Context&, tloop::StateWriter& state) override {
    if (log_) state.put("runtime", runtime());
  }

  void before_train(tloop::Context& ctx) override {
    if (ctx.rank() != 0 || disabled_) return;
    const toml::table spec = toml::parse(ctx.resolved_spec());
    if (name_.empty()) name_ = spec["run"]["name"].value_or(std::string());
    if (config_.is_null()) config_ = to_json(spec);

    const fs::path id_file = fs::path(workspace_) / "wandb_run_id";
    std::optional<std::string> stored;
    if (resumed_ && resume_ != "never") {
      std::ifstream in(id_file);
      std::string id;
      if (in >> id) stored = id;
    }
    if (resume_ == "must" && forced_id_.empty() && !stored)
      throw std::invalid_argument("WANDB_RESUME=must, but there is no run to resume: set WANDB_RUN_ID, or resume a run whose "
                         "workspace has wandb_run_id");
    id_ = !forced_id_.empty() ? forced_id_ : stored.value_or(new_run_id());
    const bool continues = stored.has_value() || (!forced_id_.empty() && resumed_);

    start_ = now();
    const fs::path root = fs::path(env("WANDB_DIR").empty() ? workspace_ : env("WANDB_DIR")) / "wandb";
    dir_ = run_dir(root, static_cast<std::time_t>(start_));
    try {
      fs::create_directories(dir_ / "files" / "media" / "images");
    } catch (const fs::filesystem_error& e) {  // dir (or WANDB_DIR) names a place that cannot be one
      throw std::invalid_argument("dir: " + root.string() + " cannot hold the run: " + e.code().message());
    }
    log_ = std::make_unique<wandb_offline::RecordLog>((dir_ / ("run-" + id_ + ".wandb")).string());
    write_text(id_file, id_);
    latest_run_link(root);

    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    pb::Message run;
    run.bytes(field::kRunId, id_).bytes(field::kRunProject, project_);
    if (!entity_.empty()) run.bytes(field::kRunEntity, entity_);
    if (!group_.empty()) run.bytes(field::kRunGroup, group_);
    if (!job_type_.empty()) run.bytes(field::kRunJobType, job_type_);
    if (!name_.empty()) run.bytes(field::kRunDisplayName, name_);
    if (!notes_.empty()) run.bytes(field::kRunNotes, notes_);
    for (const auto& t : tags_) run.bytes(field::kRunTags, t);
    run.bytes(field::kRunHost, host).int64(field::kRunStartingStep, ctx.step());
    const auto seconds = static_cast<int64_t>(start_);
    run.message(field::kRunStartTime, pb::Message()
                                          .int64(field::kTimestampSeconds, seconds)
                                          .int64(field::kTimestampNanos, static_cast<int64_t>((start_ - seconds) * 1e9)));
    if (continues) run.varint(field::kRunResumed, 1);
    run.int64(field::kRunRuntime, static_cast<int64_t>(runtime_offset_));

    record(field::kRecordHeader,
           pb::Message().message(field::kHeaderVersionInfo, pb::Message().bytes(field::kVersionProducer, "tloop-wandb 1.0.0")));
    record(field::kRecordRun, run);
    pb::Message config;
    for (const auto& [key, value] : config_.items())
      config.message(field::kItemsUpdate, item(key, value.dump()));
    record(field::kRecordConfig, config);
    flush(true);
    ctx.info("wandb: writing offline run " + dir_.string() + " (upload: wandb sync " + dir_.string() + ")");
  }

  void on_log(tloop::Context& ctx, const tloop::Metrics& metrics) override {
    if (!log_) return;
    auto& row = row_at(ctx.step());
    for (const auto& [key, value] : metrics) row[key] = json_number(value);
  }

  void on_log_images(tloop::Context& ctx, const std::vector<tloop::ImageView>& images) override {
    if (!log_) return;
    auto& row = row_at(ctx.step());
    pb::Message files;
    for (const auto& im : images) {
      const std::string bytes = hooks::encode_image(im, image_format_);
      const std::string sha = sha256_hex(bytes);
      // wandb's layout: media/images/<key>_<step>_<first 20 hex digits of the sha256>.<format>
      std::string key_path;
      hooks::image_key_path(im.key, key_path);
      const fs::path rel = fs::path("media/images") / ((key_path.empty() ? "_" : key_path) + "_" +
                                                        std::to_string(ctx.step()) + "_" + sha.substr(0, 20) + "." +
                                                        image_format_);
      const fs::path file = dir_ / "files" / rel;
      fs::create_directories(file.parent_path());
      write_text(file, bytes);
      files.message(field::kFilesItem, pb::Message().bytes(field::kFilePath, rel.string()));
      row[im.key] = json{{"_type", "image-file"},      {"path", rel.string()},   {"sha256", sha},
                         {"size", bytes.size()},        {"format", image_format_}, {"width", im.width},
                         {"height", im.height}}.dump();
    }
    record(field::kRecordFiles, files);  // the files exist before any record names them
  }

  void before_step(tloop::Context& ctx) override {
    if (log_) end_rows_before(ctx.step());
  }

  void after_step(tloop::Context& ctx) override {
    if (!log_) return;
    if (ctx.step() % flush_interval_ == 0 || now() - last_flush_ >= flush_secs_) {
      write_summary();
      flush(false);
    }
  }

  void finish(tloop::Context&, int exit_code) override {
    if (!log_) return;
    end_rows_before(INT64_MAX);
    write_summary();
    record(field::kRecordExit, pb::Message()
                                   .int64(field::kExitCode, exit_code)
                                   .int64(field::kExitRuntime, static_cast<int64_t>(runtime())));
    record(field::kRecordFinal, pb::Message());
    flush(true);
    log_.reset();
  }

 private:
  using Row = std::map<std::string, std::string>;  // key -> value_json

  double runtime() const { return runtime_offset_ + (now() - start_); }

  // offline-run-<local YYYYMMDD_HHMMSS>-<id>, as wandb names it; a resumed run
  // restarted within the same second takes the next free second.
  fs::path run_dir(const fs::path& root, std::time_t t) const {
    for (;; ++t) {
      std::tm tm{};
      localtime_r(&t, &tm);
      char stamp[32];
      std::strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", &tm);
      fs::path dir = root / ("offline-run-" + std::string(stamp) + "-" + id_);
      if (!fs::exists(dir)) return dir;
    }
  }

  // wandb/latest-run -> the newest run directory, as the wandb SDK keeps it.
  void latest_run_link(const fs::path& root) const {
    const fs::path link = root / "latest-run", tmp = root / (".latest-run." + std::to_string(getpid()));
    std::error_code ec;
    fs::remove(tmp, ec);
    fs::create_directory_symlink(dir_.filename(), tmp, ec);
    if (!ec) fs::rename(tmp, link, ec);
  }

  // Written to a temporary name and renamed: a reader never sees half a file.
  static void write_text(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << text;
      out.flush();
      if (!out) throw tloop::Error("cannot write " + tmp.string());
    }
    fs::rename(tmp, path);
  }

  static pb::Message item(const std::string& key, const std::string& value_json) {
    return pb::Message().bytes(field::kItemKey, key).bytes(field::kItemValueJson, value_json);
  }

  void record(int type, const pb::Message& body) {
    log_->append(pb::Message().int64(field::kRecordNum, ++num_).message(type, body).str());
  }

  // Everything logged at one step is one history row, as wandb.log(..., step=)
  // merges calls at the same step; a row is written once a later step begins.
  Row& row_at(int64_t step) {
    end_rows_before(step);
    return rows_[step];
  }

  void end_rows_before(int64_t step) {
    for (auto it = rows_.begin(); it != rows_.end() && it->first < step; it = rows_.erase(it)) {
      Row& row = it->second;
      const double t = now();
      row["_step"] = std::to_string(it->first);
      row["_runtime"] = json_number(runtime());
      row["_timestamp"] = json_number(t);
      pb::Message history;
      for (const auto& [key, value] : row) {
        history.message(field::kHistoryItem, item(key, value));
        summary_[key] = value;
      }
      history.message(field::kHistoryStep, pb::Message().int64(field::kHistoryStepNum, it->first));
      record(field::kRecordHistory, history);
    }
  }

  // The latest value of every key that changed since the last summary record.
  void write_summary() {
    if (summary_.empty()) return;
    pb::Message summary;
    for (const auto& [key, value] : summary_) summary.message(field::kItemsUpdate, item(key, value));
    record(field::kRecordSummary, summary);
    summary_.clear();
  }

  void flush(bool sync) {
    log_->flush(sync);
    last_flush_ = now();
  }

  std::string project_, image_format_, name_, group_, notes_, entity_, job_type_;
  int64_t flush_interval_;
  double flush_secs_;
  std::string workspace_;
  bool disabled_ = false;
  std::vector<std::string> tags_;
  std::string resume_, forced_id_;
  json config_;  // null: the resolved spec, read in before_train

  bool resumed_ = false;
  double runtime_offset_ = 0;
  std::string id_;
  fs::path dir_;
  double start_ = 0, last_flush_ = 0;
  std::unique_ptr<wandb_offline::RecordLog> log_;
  int64_t num_ = 0;
  std::map<int64_t, Row> rows_;
  Row summary_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<Wandb>())
