// cuda_max_memory: resets the CUDA allocator's peak statistics before each
// step and records the step's peak allocated memory (GiB) as `max_memory` in
// the step info, for progress and logging. On a CPU device it says so once and
// records the process's peak resident set size as `max_rss` (GiB) instead.
#include <tloop/torch.hpp>

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <sys/resource.h>

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

class CudaMaxMemory : public tloop::Hook {
 public:
  // Adds max_memory / max_rss to the step info before any hook reads it.
  static constexpr tloop_hook_phase phase = TLOOP_PHASE_MEASURE;

  static tloop::PluginInfo info() {
    return {"cuda_max_memory",
            "1.0.0",
            "Peak CUDA memory per step as max_memory (GiB); peak RSS as max_rss on CPU",
            {}};
  }

  CudaMaxMemory(tloop::Context& ctx, const tloop::Options&) : device_(ctx.device()) {}

  void before_train(tloop::Context& ctx) override {
    if (!device_.is_cuda())
      ctx.info("cuda_max_memory: the run is on " + device_.str() +
               "; recording the process's peak resident memory as max_rss instead");
  }

  void before_step(tloop::Context&) override {
    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
  }

  void after_step(tloop::Context& ctx) override {
    if (device_.is_cuda()) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index());
      const auto peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
      ctx.step_info_append(TLOOP_INFO_MAX_MEMORY, static_cast<double>(peak) / kGiB);
    } else {
      struct rusage usage {};
      getrusage(RUSAGE_SELF, &usage);
      ctx.step_info_append(TLOOP_INFO_MAX_RSS, static_cast<double>(usage.ru_maxrss) * 1024.0 / kGiB);  // ru_maxrss is KiB
    }
  }

 private:
  c10::Device device_;
};

}  // namespace

TLOOP_PLUGIN_LIBRARY(tloop::hook<CudaMaxMemory>())
