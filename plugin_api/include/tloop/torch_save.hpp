// Writes named tensors as a file that Python's torch.load reads, including
// with weights_only=True (the default since torch 2.6): a plain dict of
// name -> tensor in torch.save's zip format.
//
// Why not torch::pickle_save: it pickles typed containers wrapped in
// torch.jit._pickle.restore_type_tag, a global that weights_only loading
// refuses. This is the same code path (Pickler + writeArchiveAndTensors) with
// that tagging turned off.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <string>
#include <utility>
#include <vector>

namespace tloop {

/// Writes `tensors` (moved to the CPU) to `path` as {name: tensor}. The caller
/// chooses the path; write to a temporary name and rename for atomicity.
inline void save_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().to(at::kCPU));
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* bytes, size_t n) { pickle.insert(pickle.end(), bytes, bytes + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  caffe2::serialize::PyTorchStreamWriter writer(path);
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
}

}  // namespace tloop
