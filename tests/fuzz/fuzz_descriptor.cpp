// Fuzz target: the loader's checks of what a library's entry point returns
// (tloop::plugins_of): the library record, each plugin descriptor and its
// option schema (names, types, defaults parsed as TOML, bounds, choices).
//
// The bytes choose every field. The memory they describe is consistent, as
// any library's static data is: each struct is allocated at least as large as
// the struct_size it declares, an array's stride is its elements' struct_size,
// and strings end in NUL. What the loader must survive is every value in it.
#include "plugin_loader.h"

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace {

// Bytes consumed front to back; zeros once they run out. (libFuzzer's
// FuzzedDataProvider is clang's only, and the replay test builds with GCC.)
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  uint32_t u32() { return u8() | (uint32_t{u8()} << 8) | (uint32_t{u8()} << 16) | (uint32_t{u8()} << 24); }
  double f64() {
    uint64_t bits = uint64_t{u32()} | (uint64_t{u32()} << 32);
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }
  /// A string of up to 255 bytes, NUL-terminated where it lies.
  const char* str() {
    const size_t n = u8();
    std::string s;
    for (size_t i = 0; i < n && p_ < end_; ++i) s.push_back(static_cast<char>(*p_++));
    return strings_.emplace_back(std::move(s)).c_str();
  }
  const char* maybe_str() { return u8() % 4 == 0 ? nullptr : str(); }
  /// `full`, or now and then something smaller or larger (a future ABI).
  uint32_t struct_size(uint32_t full) {
    switch (u8() % 8) {
      case 0: return u8();
      case 1: return full + 8 * (u8() % 4);
      default: return full;
    }
  }
  void* block(size_t size) { return blocks_.emplace_back(std::make_unique<char[]>(size)).get(); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  std::deque<std::string> strings_;
  std::vector<std::unique_ptr<char[]>> blocks_;
};

// A non-null function pointer of any type: the loader checks presence only,
// never calls it. void(*)() converts to every function pointer type.
void noop() {}
template <class F>
F present() {
  return reinterpret_cast<F>(&noop);
}

template <class T>
T* fill(Bytes& in, const T& value) {
  const uint32_t size = value.struct_size > sizeof(T) ? value.struct_size : sizeof(T);
  T* out = static_cast<T*>(in.block(size));
  std::memcpy(static_cast<void*>(out), &value, sizeof(T));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  std::vector<const tloop_plugin_descriptor*> descriptors;
  const uint32_t plugin_count = in.u8() % 4;
  for (uint32_t i = 0; i < plugin_count; ++i) {
    if (in.u8() % 16 == 0) {
      descriptors.push_back(nullptr);
      continue;
    }
    tloop_plugin_descriptor d{};
    d.struct_size = in.struct_size(sizeof d);
    d.name = in.u8() % 8 == 0 ? nullptr : in.str();
    d.kind = static_cast<tloop_plugin_kind>(in.u8() % 3);
    d.version = in.maybe_str();
    d.description = in.maybe_str();
    // Options: an array whose stride is its elements' struct_size.
    d.option_count = in.u8() % 5;
    const uint32_t stride = in.struct_size(sizeof(tloop_option_desc));
    const size_t element = stride > sizeof(tloop_option_desc) ? stride : sizeof(tloop_option_desc);
    char* options = d.option_count && in.u8() % 16 ? static_cast<char*>(in.block(element * d.option_count)) : nullptr;
    for (uint32_t k = 0; options && k < d.option_count; ++k) {
      tloop_option_desc o{};
      // The first element's struct_size is the array's stride (the loader reads
      // the array with it); a later one may differ, which the loader refuses.
      o.struct_size = k > 0 && in.u8() % 16 == 0 ? in.struct_size(sizeof o) : stride;
      o.name = in.u8() % 16 == 0 ? nullptr : in.str();
      o.type = static_cast<tloop_value_type>(in.u8() % 10);
      o.default_value = in.maybe_str();
      o.doc = in.maybe_str();
      o.has_min = in.u8() % 2;
      o.min = in.f64();
      o.has_max = in.u8() % 2;
      o.max = in.f64();
      o.choices = in.u8() % 2 ? nullptr : in.str();
      // Each element is read at k * stride; an element is at most `element` bytes.
      std::memcpy(options + k * stride, &o, std::min<size_t>(sizeof o, stride));
      if (stride < sizeof o) break;  // the loader refuses the stride before reading on
    }
    d.options = reinterpret_cast<const tloop_option_desc*>(options);
    if (in.u8() % 8) {
      tloop_hook_vtable h{};
      h.struct_size = in.struct_size(sizeof h);
      if (in.u8() % 8) h.create = present<decltype(h.create)>();
      if (in.u8() % 8) h.destroy = present<decltype(h.destroy)>();
      h.phase = static_cast<tloop_hook_phase>(static_cast<int32_t>(in.u32()) % 8);
      d.hook = fill(in, h);
    }
    if (in.u8() % 8) {
      tloop_task_vtable t{};
      t.struct_size = in.struct_size(sizeof t);
      const uint8_t members = in.u8();
      if (members & 1) t.create = present<decltype(t.create)>();
      if (members & 2) t.destroy = present<decltype(t.destroy)>();
      if (members & 4) t.setup = present<decltype(t.setup)>();
      if (members & 8) t.next_batch = present<decltype(t.next_batch)>();
      if (members & 16) t.forward = present<decltype(t.forward)>();
      d.task = fill(in, t);
    }
    descriptors.push_back(fill(in, d));
  }
  tloop_library lib{};
  lib.struct_size = in.struct_size(sizeof lib);
  lib.abi_major = in.u8() % 8 == 0 ? in.u32() : TLOOP_ABI_VERSION_MAJOR;
  lib.abi_minor = in.u8() % 4 == 0 ? in.u32() : in.u8() % (TLOOP_ABI_VERSION_MINOR + 1);
  const uint8_t torch = in.u8() % 4;
  lib.torch_version = torch == 0 ? nullptr : torch == 1 ? in.str() : tloop::host_torch_version();
  lib.plugins = descriptors.empty() && in.u8() % 2 ? nullptr : descriptors.data();
  lib.plugin_count = plugin_count;
  const tloop_library* record = in.u8() % 32 == 0 ? nullptr : fill(in, lib);
  try {
    for (const tloop::LoadedPlugin& p : tloop::plugins_of(record, "fuzz.so")) {
      // What the loader accepted must be usable: a name, a schema of known types.
      if (p.name.empty()) __builtin_trap();
      for (const tloop::OptionSpec& o : p.schema)
        if (o.name.empty() || static_cast<uint32_t>(o.type) > TLOOP_TYPE_INT_OR_STRING) __builtin_trap();
    }
  } catch (const tloop::PluginLoadError&) {
  }
  return 0;
}
