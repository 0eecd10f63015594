// Fuzz target: the checkpoint reader. The first byte picks the file:
//   0  model.pt / state.pt  (tloop::load_tensors)
//   1  manifest.json        (checkpointing::parse_manifest)
//   2  state.json           (checkpointing::parse_state_json)
// and the rest is its content. Any refusal is an exception; a crash, a read
// out of bounds or an allocation far beyond the input (scripts/fuzz runs
// with -malloc_limit_mb) is a finding.
#include "checkpoint_reader.h"

#include <tloop/torch_save.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::vector<char> bytes(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  try {
    switch (data[0] % 3) {
      case 0:
        for (const auto& [name, t] : tloop::load_tensors(bytes)) {
          // Touch every byte the view can reach, in instrumented code: a view
          // beyond its storage is found here, not later in LibTorch.
          if (t.numel() == 0) continue;
          const auto* first = static_cast<const char*>(t.storage().data()) + t.storage_offset() * t.element_size();
          std::vector<char> copy(static_cast<size_t>(tloop::detail::view_extent(t) - t.storage_offset()) *
                                 t.element_size());
          std::memcpy(copy.data(), first, copy.size());
          (void)t.clone();  // and LibTorch's own read of it
        }
        break;
      case 1: checkpointing::parse_manifest(bytes); break;
      case 2: checkpointing::parse_state_json(bytes); break;
    }
  } catch (const std::exception&) {
  }
  return 0;
}
