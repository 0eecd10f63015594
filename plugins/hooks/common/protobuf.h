// A minimal protocol-buffers encoder, shared by the TensorBoard and W&B hooks:
// each writes its messages with the field numbers of the public .proto files.
// Hand-written rather than libprotobuf: libtorch_cpu.so exports its own
// google::protobuf symbols into the process, and a second libprotobuf loaded
// beside it would have its symbols bound to torch's copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace hooks::pb {

class Message {
 public:
  Message& varint(int field, uint64_t v) {
    key(field, 0);
    raw_varint(v);
    return *this;
  }
  Message& int64(int field, int64_t v) { return varint(field, static_cast<uint64_t>(v)); }
  Message& double_(int field, double v) {
    key(field, 1);
    char b[8];
    std::memcpy(b, &v, 8);  // little-endian, as on every machine tloop runs on
    out_.append(b, 8);
    return *this;
  }
  Message& float_(int field, float v) {
    key(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    out_.append(b, 4);
    return *this;
  }
  Message& bytes(int field, const std::string& v) {
    key(field, 2);
    raw_varint(v.size());
    out_ += v;
    return *this;
  }
  Message& message(int field, const Message& m) { return bytes(field, m.str()); }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire_type) { raw_varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void raw_varint(uint64_t v) {
    while (v >= 0x80) {
      out_ += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out_ += static_cast<char>(v);
  }
  std::string out_;
};

}  // namespace hooks::pb
