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
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include "archive_check.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
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

namespace detail {

/// A PyTorchStreamReader source over bytes in memory.
class BytesReadAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReadAdapter(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/ = "") const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - static_cast<size_t>(pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::vector<char>& bytes_;
};

/// The highest element offset a view reaches, plus one; throws when it
/// overflows or a size or stride is negative.
inline uint64_t view_extent(const at::Tensor& t) {
  if (t.storage_offset() < 0) throw std::runtime_error("a negative storage offset");
  uint64_t last = static_cast<uint64_t>(t.storage_offset());
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t size = t.sizes()[d], stride = t.strides()[d];
    if (size < 0 || stride < 0) throw std::runtime_error("a negative size or stride");
    if (size == 0) return 0;  // no elements: nothing is read
    uint64_t reach = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(size - 1), static_cast<uint64_t>(stride), &reach) ||
        __builtin_add_overflow(last, reach, &last))
      throw std::runtime_error("a shape whose extent overflows");
  }
  return last + 1;
}

}  // namespace detail

/// Reads a {name: tensor} file written by serialize_tensors (or torch.save of
/// a plain dict of tensors) into CPU tensors.
///
/// The file may be hostile: a checksum proves only that it was not damaged
/// since it was written. Loading never runs code (LibTorch's unpickler knows
/// a fixed set of globals), allocates at most about the file's size, and
/// refuses, before any tensor's data is touched, what LibTorch's reader and
/// unpickler would take on trust: records that claim more bytes than the
/// file holds (a compressed zip entry: check_zip), a record read twice, a
/// storage that claims more bytes than its record, a view beyond its
/// storage, and a pickle whose lengths, memo or nesting do not hold
/// (check_pickle).
inline std::vector<std::pair<std::string, at::Tensor>> load_tensors(const std::vector<char>& bytes) {
  check_zip(bytes.data(), bytes.size());  // before the reader allocates what the directory says
  caffe2::serialize::PyTorchStreamReader reader(std::make_shared<detail::BytesReadAdapter>(bytes));
  at::DataPtr pickle;
  size_t pickle_size = 0;
  std::tie(pickle, pickle_size) = reader.getRecord("data.pkl");
  const char* pickle_bytes = static_cast<const char*>(pickle.get());
  check_pickle(pickle_bytes, pickle_size);

  size_t read = 0;
  auto read_pickle = [&](char* buf, size_t n) -> size_t {
    n = std::min(n, pickle_size - read);
    std::memcpy(buf, pickle_bytes + read, n);
    read += n;
    return n;
  };
  std::map<const void*, size_t> record_bytes;  // by where each record's copy lies
  std::set<std::string> records_read;
  auto read_record = [&](const std::string& key) {
    if (!records_read.insert(key).second) throw std::runtime_error("two storages read the record '" + key + "'");
    at::DataPtr data;
    size_t n = 0;
    std::tie(data, n) = reader.getRecord("data/" + key);
    record_bytes[data.get()] = n;
    return data;
  };
  torch::jit::Unpickler unpickler(read_pickle, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr, read_record,
                                  at::Device(at::kCPU));
  unpickler.set_version(reader.version());
  const c10::IValue value = unpickler.parse_ivalue();

  if (!value.isGenericDict()) throw std::runtime_error("not a dict of tensors");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& entry : value.toGenericDict()) {
    if (!entry.key().isString() || !entry.value().isTensor()) throw std::runtime_error("not a dict of tensors");
    const std::string& name = entry.key().toStringRef();
    const at::Tensor& t = entry.value().toTensor();
    if (!t.device().is_cpu() || t.layout() != at::kStrided || t.is_quantized())
      throw std::runtime_error("tensor '" + name + "' is not a plain tensor on the CPU");
    const at::Storage& storage = t.storage();
    const auto record = record_bytes.find(storage.data());
    const size_t holds = record == record_bytes.end() ? 0 : record->second;
    if (storage.nbytes() > holds)
      throw std::runtime_error("tensor '" + name + "' claims a storage of " + std::to_string(storage.nbytes()) +
                               " bytes, but its record holds " + std::to_string(holds));
    uint64_t needed = 0;
    try {
      needed = detail::view_extent(t);
    } catch (const std::exception& e) {
      throw std::runtime_error("tensor '" + name + "' has " + e.what());
    }
    if (needed > storage.nbytes() / t.element_size())
      throw std::runtime_error("tensor '" + name + "' reaches element " + std::to_string(needed) +
                               ", beyond its storage of " + std::to_string(storage.nbytes() / t.element_size()));
    out.emplace_back(name, t);
  }
  return out;
}

}  // namespace tloop
