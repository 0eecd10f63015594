// The CUDA paths: autocast and the grad scaler on the GPU, cuda_max_memory's
// allocator statistics, the CUDA RNG state in checkpoints, async saves of GPU
// tensors, EMA on the GPU and the profiler's kernels. Built into
// tloop_cuda_tests, whose main exits 77 (ctest: skipped) without a CUDA
// device; every case is in the "cuda" suite,
// which doctest_discover_tests turns into the ctest label "cuda".
// Every wait polls for observed progress with a deadline (test::wait_until); no
// check depends on how fast the machine is.
#include "support.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <c10/core/Allocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <nlohmann/json.hpp>
#include <tloop/torch_save.hpp>

#include "checks.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <sys/wait.h>
#include <unistd.h>

using test::TempDir;
namespace fs = std::filesystem;
using json = nlohmann::json;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

// "cat name" of each trace event whose args carry `correlation`, for messages.
std::string with_correlation(const json& events, int64_t correlation) {
  std::string out;
  for (const json& e : events)
    if (e.contains("args") && e["args"].value("correlation", int64_t{-1}) == correlation)
      out += "[" + e.value("cat", "") + " " + e.value("name", "") + "] ";
  return out.empty() ? "none" : out;
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
const std::string kPlugins = std::string("[plugins]\npaths = [\"") + TLOOP_TEST_PLUGIN_DIR + "\"]\n";

const std::string kPlain = "plugin = \"regression_mlp\"";
const std::string kDropout = "plugin = \"regression_mlp\"\ndropout = 0.25\ninput_noise = 0.05";

// A regression_mlp run on cuda:0 with logging of every step into metrics.jsonl;
// kDropout as `task` makes it draw dropout masks and input noise on the GPU.
std::string mlp_spec(const std::string& task, int64_t steps, const std::string& trainer_extra = "",
                     const std::string& hooks = "", int64_t hidden_dim = 64) {
  return kPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) + "\ndevice = \"cuda\"\n" + trainer_extra +
         "\n[task]\n" + task + "\nbatch_size = 64\nhidden_dim = " + std::to_string(hidden_dim) +
         "\ndataset_size = 2048\n" +
         "\n[optimizer]\ntype = \"adamw\"\nlr = 0.003\n[[hooks]]\nplugin = \"logging\"\ninterval = 1\n" + hooks;
}

// scripted_task on cuda:0 with SGD lr 1: loss = grad_scale * sum(w), w starts at ones.
std::string scripted_spec(int64_t steps, const std::string& trainer_extra, const std::string& task_extra,
                          const std::string& hooks) {
  return kPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) + "\ndevice = \"cuda\"\n" + trainer_extra +
         "\n[task]\nplugin = \"scripted_task\"\ndim = 3\n" + task_extra +
         "\n[optimizer]\ntype = \"sgd\"\nlr = 1.0\n" + hooks;
}

// The one value logged per step, for steps 1..n (fails when a step is missing).
std::vector<double> per_step(const fs::path& metrics, const std::string& key, int64_t n) {
  const auto all = test::logged(metrics, key);
  std::vector<double> out;
  for (int64_t s = 1; s <= n; ++s) {
    INFO("step ", s, " of ", metrics.string());
    REQUIRE(all.count(s) == 1);
    REQUIRE(all.at(s).size() == 1);
    out.push_back(all.at(s)[0]);
  }
  return out;
}

double mean(const std::vector<double>& v, size_t from, size_t to) {
  double sum = 0;
  for (size_t i = from; i < to; ++i) sum += v[i];
  return sum / static_cast<double>(to - from);
}

std::optional<at::Tensor> tensor_named(const Named& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  return std::nullopt;
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

void check_params_on_cuda(tloop::Run& run) {
  REQUIRE(!run.host().parameters().empty());
  for (const auto& [name, p] : run.host().parameters()) {
    const std::string& param = name;  // INFO's lambda cannot capture a structured binding before C++20
    INFO(param);
    CHECK(p.is_cuda());
    CHECK(std::string(c10::toString(p.scalar_type())) == "Float");  // autocast keeps float32 master weights
  }
}

// ------------------------------------------------------------- subprocesses
// test::spawn starts `tloop run`; test::wait_until polls with a deadline.

std::string log_text(const fs::path& log) { return fs::exists(log) ? test::read_file(log) : std::string(); }

// Lets the running `pid` go on until `latest` names a step >= min_checkpoint and
// metrics.jsonl shows a step after that checkpoint (work the kill will lose);
// then SIGKILLs it. Returns the checkpoint step and the last logged step, as
// found once the process is dead. Fails if the run exits first or the deadline passes.
std::pair<int64_t, int64_t> kill_after_progress(pid_t pid, const fs::path& ws, const fs::path& log,
                                                int64_t min_checkpoint) {
  const fs::path metrics = ws / "metrics.jsonl";
  try {
    test::wait_until(
        [&] {
          const int64_t checkpoint = test::latest_step(ws);
          return checkpoint >= min_checkpoint && test::last_logged_step(metrics) > checkpoint;
        },
        "checkpoint >= " + std::to_string(min_checkpoint) + " with a logged step after it", pid);
  } catch (const std::exception& e) {
    FAIL(std::string(e.what()), "; its output:\n", log_text(log));
  }
  REQUIRE(kill(pid, SIGKILL) == 0);
  CHECK(test::wait_exit(pid) == 128 + SIGKILL);
  return {test::latest_step(ws), test::last_logged_step(metrics)};
}

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("cuda: bf16 autocast trains on the GPU with a finite and decreasing loss") {
  const int64_t steps = 300;
  TempDir bf16_dir, fp32_dir;
  auto run = test::train(bf16_dir, mlp_spec(kPlain, steps, "mixed_precision = \"bf16\""));
  check_params_on_cuda(*run);
  const std::vector<double> loss = per_step(bf16_dir / "ws" / "metrics.jsonl", "train/loss", steps);
  CHECK(all_finite(loss));
  const double first = mean(loss, 0, 20), last = mean(loss, steps - 20, steps);
  INFO("mean loss of the first 20 steps ", first, ", of the last 20 ", last);
  CHECK(last < 0.5 * first);
  for (double w : test::values(*run, "fc1.weight")) REQUIRE(std::isfinite(w));
  CHECK(run->host().step_info().count("loss_scale") == 0);  // bf16 needs no grad scaler
  CHECK(run->trainer().scaler() == nullptr);

  // Autocast really ran on the CUDA device type: the first loss (same weights,
  // same batch) differs from full precision by bf16 rounding, and only by that.
  test::train(fp32_dir, mlp_spec(kPlain, 1));
  const double fp32_first = per_step(fp32_dir / "ws" / "metrics.jsonl", "train/loss", 1)[0];
  INFO("step 1 loss: bf16 ", loss[0], ", fp32 ", fp32_first);
  CHECK(loss[0] != fp32_first);
  CHECK(std::abs(loss[0] - fp32_first) < 0.05 * fp32_first);
}

TEST_CASE("cuda: fp16 autocast with the grad scaler trains on the GPU and keeps finite weights") {
  const int64_t steps = 300;
  TempDir fp16_dir, fp32_dir;
  auto run = test::train(fp16_dir, mlp_spec(kPlain, steps, "mixed_precision = \"fp16\""));
  check_params_on_cuda(*run);
  REQUIRE(run->trainer().scaler() != nullptr);
  CHECK(run->trainer().scaler()->scale_tensor().is_cuda());
  const fs::path metrics = fp16_dir / "ws" / "metrics.jsonl";
  const std::vector<double> scale = per_step(metrics, "train/loss_scale", steps);
  // torch.amp.GradScaler: starts at 65536; a step with inf/NaN gradients halves
  // it; it only grows after 2000 clean steps in a row, so never in 300.
  CHECK(scale[0] == 65536.0);
  for (size_t i = 0; i < scale.size(); ++i) {
    INFO("step ", i + 1, " scale ", scale[i]);
    int exponent = 0;
    CHECK(std::frexp(scale[i], &exponent) == 0.5);  // a power of two
    if (i > 0) CHECK((scale[i] == scale[i - 1] || scale[i] == 0.5 * scale[i - 1]));
  }
  for (const char* name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
    INFO(name);
    CHECK(all_finite(test::values(*run, name)));
  }
  const std::vector<double> loss = per_step(metrics, "train/loss", steps);
  CHECK(all_finite(loss));
  const double first = mean(loss, 0, 20), last = mean(loss, steps - 20, steps);
  INFO("mean loss of the first 20 steps ", first, ", of the last 20 ", last);
  CHECK(last < 0.5 * first);

  test::train(fp32_dir, mlp_spec(kPlain, 1));
  const double fp32_first = per_step(fp32_dir / "ws" / "metrics.jsonl", "train/loss", 1)[0];
  INFO("step 1 loss: fp16 ", loss[0], ", fp32 ", fp32_first);
  CHECK(loss[0] != fp32_first);  // the forward ran in half precision
  CHECK(std::abs(loss[0] - fp32_first) < 0.05 * fp32_first);
}

TEST_CASE("cuda: the grad scaler halves and skips on non-finite gradients and grows after 2000 clean steps") {
  // The first 3 forwards give a NaN loss, so NaN gradients: those steps are
  // skipped and each halves the scale (65536 -> 32768 -> 16384 -> 8192). Then
  // every gradient is exactly 1 after unscaling; after 2000 clean steps in a
  // row (steps 4..2003) the scale doubles, as torch.amp.GradScaler's
  // growth_interval = 2000 does.
  const int64_t steps = 2004;
  TempDir dir;
  auto run = test::train(dir, scripted_spec(steps, "mixed_precision = \"fp16\"", "nan_forwards = 3",
                                            "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n"));
  const fs::path metrics = dir / "ws" / "metrics.jsonl";
  const std::vector<double> scale = per_step(metrics, "train/loss_scale", steps);
  for (int64_t s = 1; s <= steps; ++s) {
    const double expected = s <= 4 ? 65536.0 / std::pow(2.0, static_cast<double>(s - 1)) : s <= 2003 ? 8192.0 : 16384.0;
    if (scale[s - 1] != expected) FAIL_CHECK("step ", s, ": loss_scale ", scale[s - 1], ", expected ", expected);
  }
  const std::vector<double> loss = per_step(metrics, "train/loss", steps);
  for (int s = 0; s < 3; ++s) CHECK(std::isnan(loss[s]));
  CHECK(std::isfinite(loss[3]));
  CHECK(per_step(metrics, "train/retries", steps)[0] == 0.0);  // with a scaler, a bad step is skipped, not retried
  // Steps 1-3 did not move w; steps 4..2004 each subtracted exactly 1.
  for (double w : test::values(*run, "w")) CHECK(w == -2000.0);
  CHECK(run->trainer().scaler()->current_scale() == 16384.0);
}

TEST_CASE("cuda: cuda_max_memory records each step's peak allocated CUDA memory in GiB") {
  const c10::DeviceIndex device = 0;  // "cuda" is cuda:0
  const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  // A 1 GiB peak before the run: the hook resets the peak at every step, so no step may report it.
  {
    at::Tensor spike = at::empty({256 * 1024 * 1024}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device));
  }
  REQUIRE(c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[aggregate].peak >=
          static_cast<int64_t>(kGiB));

  const int64_t steps = 5, batch = 4096, hidden = 512;
  TempDir dir;
  auto run = test::train(dir, kPlugins + "[trainer]\nmax_steps = " + std::to_string(steps) +
                                  "\ndevice = \"cuda\"\n[task]\nplugin = \"regression_mlp\"\nbatch_size = " +
                                  std::to_string(batch) + "\nhidden_dim = " + std::to_string(hidden) +
                                  "\ndataset_size = 8192\n[optimizer]\ntype = \"adamw\"\n"
                                  "[[hooks]]\nplugin = \"cuda_max_memory\"\n"
                                  "[[hooks]]\nplugin = \"logging\"\ninterval = 1\n");
  // An independent read of torch.cuda.max_memory_allocated(0) now: nothing ran on
  // the GPU after the last step's after_step, so it is that step's peak.
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  const int64_t peak = stats.allocated_bytes[aggregate].peak;
  auto& info = run->host().step_info();
  REQUIRE(info.count("max_memory") == 1);
  REQUIRE(info["max_memory"].size() == 1);
  CHECK(info["max_memory"][0] == static_cast<double>(peak) / kGiB);
  CHECK(info.count("max_rss") == 0);  // the CPU fallback is not taken on CUDA

  // Every step's value: at least the hidden activations kept for backward
  // (batch x hidden float32), far below the 1 GiB peak from before the run.
  const std::vector<double> per = per_step(dir / "ws" / "metrics.jsonl", "train/max_memory", steps);
  for (int64_t s = 1; s <= steps; ++s) {
    INFO("step ", s, ": ", per[s - 1], " GiB");
    CHECK(per[s - 1] * kGiB >= static_cast<double>(batch * hidden * 4));
    CHECK(per[s - 1] < 0.5);
  }
  CHECK(per.back() == info["max_memory"][0]);
  const std::string log = test::read_file(dir / "ws" / "logs" / "tloop.log");
  CHECK(log.find("recording the process's peak resident memory") == std::string::npos);
}

TEST_CASE("cuda: a run SIGKILLed after checkpoints resumes the CUDA RNG to bit-identical losses and model.pt") {
  // regression_mlp with kDropout draws dropout masks and input noise from the default CUDA
  // generator every micro-step: a resume that did not restore its state would
  // draw other numbers and change the losses. A constant learning rate makes
  // the trajectory independent of max_steps, so the killed lives can run
  // "forever" (killed at a moment chosen by their progress, never racing the
  // end of the run) and the reference stops where the last life does.
  TempDir dir;
  const std::string ckpt = "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 25\nkeep_previous = 1\n";
  auto spec = [&](const fs::path& ws, int64_t steps) {
    return "[run]\nworkspace = \"" + ws.string() + "\"\n" +
           mlp_spec(kDropout, steps, "gradient_accumulation_steps = 2", ckpt);
  };
  const fs::path ws = dir / "faulty", log = dir / "faulty.log";
  test::write_file(dir / "forever.toml", spec(ws, 100000000));

  // Life 1: killed after a checkpoint >= 50 and at least one step after it.
  const auto life1 = kill_after_progress(test::spawn(dir / "forever.toml", log), ws, log, 50);
  const int64_t ckpt1 = life1.first, logged1 = life1.second;  // INFO cannot capture a structured binding before C++20
  INFO("life 1: checkpoint ", ckpt1, ", last logged step ", logged1);
  REQUIRE(ckpt1 >= 50);
  REQUIRE(logged1 > ckpt1);
  // Life 2: resumes, saves at least one more checkpoint, and is killed again.
  const auto life2 = kill_after_progress(test::spawn(dir / "forever.toml", log), ws, log, ckpt1 + 25);
  const int64_t ckpt2 = life2.first, logged2 = life2.second;  // INFO cannot capture a structured binding before C++20
  INFO("life 2: checkpoint ", ckpt2, ", last logged step ", logged2);
  REQUIRE(ckpt2 > ckpt1);
  REQUIRE(logged2 > ckpt2);
  // Life 3: resumes and finishes at N, well after everything logged so far.
  const int64_t n = std::max({ckpt2, logged1, logged2}) + 60;
  test::write_file(dir / "final.toml", spec(ws, n));
  // A run to its end is bounded by ctest's TIMEOUT, not by a deadline of ours:
  // how long it takes is up to the machine.
  const int final_code = test::wait_exit(test::spawn(dir / "final.toml", log));
  const std::string text = log_text(log);
  INFO(text);
  REQUIRE(final_code == 0);
  CHECK(text.find("checkpointing: resumed from " + (ws / "checkpoints" / std::to_string(ckpt1)).string()) !=
        std::string::npos);
  CHECK(text.find("checkpointing: resumed from " + (ws / "checkpoints" / std::to_string(ckpt2)).string()) !=
        std::string::npos);

  // The uninterrupted reference.
  const fs::path ref = dir / "ref";
  test::write_file(dir / "ref.toml", spec(ref, n));
  {
    const int ref_code = test::wait_exit(test::spawn(dir / "ref.toml", dir / "ref.log"));
    INFO(log_text(dir / "ref.log"));
    REQUIRE(ref_code == 0);
  }

  const auto reference = test::logged(ref / "metrics.jsonl", "train/loss");
  const auto faulty = test::logged(ws / "metrics.jsonl", "train/loss");
  // The steps each kill lost were trained again; their first rows were moved
  // to metrics.replaced.jsonl, so metrics.jsonl holds every step once.
  const auto replaced = test::logged(ws / "metrics.replaced.jsonl", "train/loss");
  REQUIRE(reference.size() == static_cast<size_t>(n));
  REQUIRE(faulty.size() == static_cast<size_t>(n));
  CHECK(replaced.size() >= 2);  // steps lost by each kill were trained again and compared
  size_t mismatches = 0;
  for (const auto* rows : {&faulty, &replaced})
    for (const auto& [step, values] : *rows) {
      REQUIRE(reference.count(step) == 1);
      if (rows == &faulty) CHECK(values.size() == 1);
      for (double v : values)
        if (!(v == reference.at(step).front())) {  // bit for bit; a NaN never matches
          if (mismatches++ < 10)
            FAIL_CHECK("step ", step, ": loss ", v, rows == &faulty ? " after resume, " : " before a kill, ",
                       reference.at(step).front(), " uninterrupted");
        }
    }
  CHECK(mismatches == 0);
  CHECK(test::latest_step(ref) == n);
  CHECK(test::latest_step(ws) == n);
  const fs::path ref_last = ref / "checkpoints" / std::to_string(n), faulty_last = ws / "checkpoints" / std::to_string(n);
  test::check_same_tensors(ref_last / "model.pt", faulty_last / "model.pt");
  test::check_same_tensors(ref_last / "state.pt", faulty_last / "state.pt");  // optimizer moments and RNG states too

  // The checkpoint holds the CUDA generator's state, and training advanced it.
  const Named state = test::read_tensors(ref_last / "state.pt");
  const auto rng = tensor_named(state, "rng/cuda");
  REQUIRE(rng.has_value());
  int64_t previous = -1;
  for (const auto& entry : fs::directory_iterator(ref / "checkpoints")) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name != std::to_string(n) && name.find_first_not_of("0123456789") == std::string::npos)
      previous = std::max<int64_t>(previous, std::stoll(name));
  }
  REQUIRE(previous > 0);  // keep_previous = 1
  const auto earlier = tensor_named(test::read_tensors(ref / "checkpoints" / std::to_string(previous) / "state.pt"), "rng/cuda");
  REQUIRE(earlier.has_value());
  CHECK_FALSE(at::equal(*rng, *earlier));
}

TEST_CASE("cuda: async checkpoints of GPU tensors write the same model.pt and state.pt as sync saves") {
  // With kDropout the state includes the CUDA RNG state, which moves every step.
  const std::string hooks_sync = "[[hooks]]\nplugin = \"checkpointing\"\ninterval = 5\nkeep_previous = 2\n";
  const std::string hooks_async = hooks_sync + "async = true\n";
  TempDir sync_dir, async_dir;
  auto run_sync = test::train(sync_dir, mlp_spec(kDropout, 12, "", hooks_sync, 256));
  auto run_async = test::train(async_dir, mlp_spec(kDropout, 12, "", hooks_async, 256));
  check_params_on_cuda(*run_sync);
  // Saving comes last in a step: the stalls of the saves at steps 5 and 10
  // reach the step info, and the log, of steps 6 and 11.
  const auto stalls = test::logged(async_dir / "ws" / "metrics.jsonl", "train/checkpoint_stall");
  CHECK(stalls.size() == 2);
  CHECK(stalls.count(6) == 1);
  CHECK(stalls.count(11) == 1);
  // The trajectory itself repeats exactly on the GPU, so the files must too.
  CHECK(test::logged(sync_dir / "ws" / "metrics.jsonl", "train/loss") == test::logged(async_dir / "ws" / "metrics.jsonl", "train/loss"));
  for (const std::string step : {"5", "10", "12"}) {
    INFO("checkpoint ", step);
    const fs::path a = sync_dir / "ws" / "checkpoints" / step, b = async_dir / "ws" / "checkpoints" / step;
    REQUIRE(fs::exists(a / "manifest.json"));
    REQUIRE(fs::exists(b / "manifest.json"));
    test::check_same_tensors(a / "model.pt", b / "model.pt");
    test::check_same_tensors(a / "state.pt", b / "state.pt");
    CHECK(tensor_named(test::read_tensors(b / "state.pt"), "rng/cuda").has_value());
  }
  // And the last one holds the live weights of the run, bit for bit.
  const Named saved = test::read_tensors(async_dir / "ws" / "checkpoints" / "12" / "model.pt");
  const auto& params = run_async->host().parameters();
  REQUIRE(saved.size() == params.size());
  for (size_t i = 0; i < saved.size(); ++i) {
    INFO(saved[i].first);
    CHECK(saved[i].first == params[i].first);
    CHECK(at::equal(saved[i].second, params[i].second.detach().to(at::kCPU)));
  }
}

TEST_CASE("cuda: ema on the GPU equals the closed form") {
  // scripted_task, SGD lr 1, gradient 1: w_t = 1 - t. The first update copies,
  // then ema = decay * ema + (1 - decay) * w_t.
  TempDir dir;
  auto run = test::train(
      dir, scripted_spec(5, "", "",
                         "[[hooks]]\nplugin = \"ema\"\ndecay = 0.75\n"
                         "[[hooks]]\nplugin = \"ema\"\nkey = \"ema_cpu\"\ndecay = 0.5\nupdate_interval = 2\n"
                         "start_step = 3\ndevice = \"cpu\"\nfile = \"ema_cpu.pt\"\n"));
  double ema = 0.0;
  for (int t = 2; t <= 5; ++t) ema = 0.75 * ema + 0.25 * (1.0 - t);
  const tloop::StateDict state = run->plugin_state();
  CHECK(std::get<int64_t>(state.at("hooks/ema/n_averaged")) == 5);
  const at::Tensor on_gpu = std::get<at::Tensor>(state.at("hooks/ema/ema_model/w"));
  CHECK(on_gpu.is_cuda());  // device = "model": the average lives beside the weights
  const at::Tensor gpu_values = on_gpu.detach().to(at::kCPU, at::kDouble).contiguous();
  REQUIRE(gpu_values.numel() == 3);
  for (int64_t i = 0; i < gpu_values.numel(); ++i) CHECK(std::abs(gpu_values[i].item<double>() - ema) <= 1e-6);
  // Updates at steps 4 and 6 > 5: only step 4 copies w_4 = -3, on the CPU.
  const at::Tensor on_cpu = std::get<at::Tensor>(state.at("hooks/ema_cpu/ema_model/w"));
  CHECK_FALSE(on_cpu.is_cuda());
  CHECK(std::get<int64_t>(state.at("hooks/ema_cpu/n_averaged")) == 1);
  for (int64_t i = 0; i < on_cpu.numel(); ++i) CHECK(on_cpu[i].item<double>() == -3.0);
  // ema_model.pt holds the GPU average.
  const auto file = tensor_named(test::read_tensors(dir / "ws" / "ema_model.pt"), "w");
  REQUIRE(file.has_value());
  CHECK(at::equal(*file, on_gpu.detach().to(at::kCPU)));

  // A real trajectory: regression_mlp with AdamW on the GPU. The weights after
  // each step t come from runs of t steps (the GPU repeats a run exactly).
  const int64_t steps = 6;
  const double decay = 0.9;
  TempDir ema_dir;
  auto averaged = test::train(ema_dir, mlp_spec(kPlain, steps, "",
                                                "[[hooks]]\nplugin = \"ema\"\ndecay = 0.9\n"));
  const tloop::StateDict avg_state = averaged->plugin_state();
  CHECK(std::get<int64_t>(avg_state.at("hooks/ema/n_averaged")) == steps);
  std::map<std::string, std::vector<double>> closed;
  for (int64_t t = 1; t <= steps; ++t) {
    TempDir step_dir;
    auto partial = test::train(step_dir, mlp_spec(kPlain, t));
    for (const char* name : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
      const std::vector<double> w = test::values(*partial, name);
      auto& e = closed[name];
      if (t == 1) e = w;
      else
        for (size_t i = 0; i < w.size(); ++i) e[i] = decay * e[i] + (1.0 - decay) * w[i];
    }
  }
  for (const auto& [name, expected] : closed) {
    const std::string& param = name;  // INFO's lambda cannot capture a structured binding before C++20
    INFO(param);
    const at::Tensor t = std::get<at::Tensor>(avg_state.at("hooks/ema/ema_model/" + name));
    CHECK(t.is_cuda());
    const at::Tensor v = t.detach().to(at::kCPU, at::kDouble).contiguous().view({-1});
    REQUIRE(v.numel() == static_cast<int64_t>(expected.size()));
    double worst = 0;
    for (int64_t i = 0; i < v.numel(); ++i) worst = std::max(worst, std::abs(v.data_ptr<double>()[i] - expected[i]));
    CHECK(worst <= 1e-6);
    // and the average is not just the last weights
    CHECK(expected != test::values(*averaged, name));
  }
}

TEST_CASE("cuda: the profiler records the GPU kernels that each recorded step launched") {
  TempDir dir;
  test::train(dir, mlp_spec(kPlain, 5, "", "[[hooks]]\nplugin = \"profiler\"\nwait = 1\nwarmup = 1\nactive = 2\n"));
  const fs::path trace = dir / "ws" / "profiler" / "steps_3-4" / "rank0.pt.trace.json";
  REQUIRE(fs::exists(trace));
  std::ifstream in(trace);
  const json events = json::parse(in).at("traceEvents");
  double begin = INFINITY, end = -INFINITY;  // steps 3 and 4, on the host
  std::map<int64_t, double> launches;        // correlation -> launch time
  std::vector<int64_t> kernels;              // their correlations
  for (const json& e : events) {
    const std::string name = e.value("name", ""), cat = e.value("cat", "");
    if (name == "ProfilerStep#3" || name == "ProfilerStep#4") {
      begin = std::min(begin, e.at("ts").get<double>());
      end = std::max(end, e.at("ts").get<double>() + e.at("dur").get<double>());
    } else if ((cat == "cuda_runtime" || cat == "cuda_driver") && e.contains("args") &&
               e["args"].contains("correlation")) {
      // cuBLAS launches through the driver API (cuLaunchKernelEx): Kineto files
      // those calls under cuda_driver, the runtime's under cuda_runtime
      launches[e["args"]["correlation"].get<int64_t>()] = e.at("ts").get<double>();
    } else if (cat == "kernel") {
      kernels.push_back(e.at("args").at("correlation").get<int64_t>());
    }
  }
  REQUIRE(std::isfinite(begin));
  // forward, backward and AdamW launch kernels in both steps; the window ends
  // after a device sync, so the last step's kernels are in it too
  CHECK(kernels.size() >= 2);
  for (int64_t corr : kernels) {
    INFO("kernel with correlation ", corr, "; events with that correlation: ", with_correlation(events, corr));
    REQUIRE(launches.count(corr) == 1);
    CHECK(launches[corr] >= begin);
    CHECK(launches[corr] <= end);
  }
}

}  // TEST_SUITE("cuda")
