// The random number generators a run draws from, and their states: what a
// checkpoint saves and restores, and what an evaluation puts back after it.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <c10/core/Device.h>

#include <mutex>
#include <optional>

namespace tloop {

/// The CPU's default generator, and on a CUDA run that device's. Handles:
/// a copy shares its generator.
struct RunGenerators {
  explicit RunGenerators(c10::Device device) : cpu(at::detail::getDefaultCPUGenerator()) {
    if (device.is_cuda()) cuda = at::globalContext().defaultGenerator(device);
  }
  at::Generator cpu;
  std::optional<at::Generator> cuda;
};

/// A generator's state, read under its mutex (as torch.get_rng_state does).
inline at::Tensor rng_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

/// Sets a generator's state under its mutex.
inline void set_rng_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace tloop
