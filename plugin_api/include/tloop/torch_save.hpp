// Named tensors in a file that Python's torch.load reads, including
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
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <exception>
#include <fstream>
#include <functional>
#include <stdexcept>

#include <string>
#include <utility>
#include <vector>

namespace tloop {

/// Streams the bytes of a file holding {name: tensor} (tensors moved to the
/// CPU) to `sink`, in order, without building the file in memory.
inline void serialize_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::function<void(const char*, size_t)>& sink) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().to(at::kCPU));
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* bytes, size_t n) { pickle.insert(pickle.end(), bytes, bytes + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  // A sink that throws (a full disk) must not throw through the writer: its
  // destructor would then throw again and terminate. Keep the first error,
  // let the writer finish into nothing, then rethrow.
  std::exception_ptr error;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    if (!error) {
      try {
        sink(static_cast<const char*>(data), n);
      } catch (...) {
        error = std::current_exception();
      }
    }
    return n;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
  if (error) std::rethrow_exception(error);
}

/// The bytes of a file holding {name: tensor}.
inline std::vector<char> serialize_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<char> file;
  serialize_tensors(tensors, [&](const char* data, size_t n) { file.insert(file.end(), data, data + n); });
  return file;
}

/// Writes {name: tensor} to `path`. Write to a temporary name and rename for atomicity.
inline void save_tensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  const std::vector<char> bytes = serialize_tensors(tensors);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}

/// Reads a {name: tensor} file written by serialize_tensors (or torch.save of
/// a plain dict of tensors).
inline std::vector<std::pair<std::string, at::Tensor>> load_tensors(const std::vector<char>& bytes) {
  const c10::IValue value = torch::jit::pickle_load(bytes);
  if (!value.isGenericDict()) throw std::runtime_error("not a dict of tensors");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& entry : value.toGenericDict()) {
    if (!entry.key().isString() || !entry.value().isTensor()) throw std::runtime_error("not a dict of tensors");
    out.emplace_back(entry.key().toStringRef(), entry.value().toTensor());
  }
  return out;
}

}  // namespace tloop
