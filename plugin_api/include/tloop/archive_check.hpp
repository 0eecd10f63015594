// Checks of an untrusted torch.save file before LibTorch opens it
// (load_tensors in torch_save.hpp): its zip directory, then its pickle.
// No LibTorch: plain C++17.
//
// Why by hand, both of them. PyTorchStreamReader allocates each record's
// declared size as it opens the archive (its version record first), before
// any caller can look: a 1 KB file whose directory says a record inflates to
// 1 GB gets 1 GB. check_zip reads the zip's central directory (the format's
// own structure, in PKWARE's APPNOTE) and accepts only what torch.save
// writes: stored records whose sizes fit in the file together.
//
// LibTorch's torch::jit::Unpickler trusts the lengths in the
// stream. A 10-byte pickle whose BINUNICODE8 claims 2^40 bytes makes it
// allocate that much before it finds the stream short, and a pickle that nests
// lists a million deep is unpickled fine but overflows the stack when the
// result is destroyed (IValue destruction recurses). No library checks a
// pickle's opcode stream without running it, so this walks it once: every
// opcode known, every length within the bytes left, the stack and memo
// references valid, and containers nested at most `max_depth` deep (cycles,
// never in a tensor file, count as too deep).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace tloop {
namespace detail {

class PickleWalker {
 public:
  PickleWalker(const char* data, size_t size, size_t max_depth)
      : begin_(data), p_(data), end_(data + size), max_depth_(max_depth) {}

  void run() {
    for (;;) {
      const size_t at = static_cast<size_t>(p_ - begin_);
      if (p_ == end_) fail(at, "the pickle ends without STOP");
      const auto op = static_cast<unsigned char>(*p_++);
      switch (op) {
        case '.':  // STOP
          if (p_ != end_) fail(at, "bytes after STOP");
          return;
        case 0x80: skip(1); break;  // PROTO
        case 0x95: skip(8); break;  // FRAME: a length hint only
        case '(': mark(); break;    // MARK
        case '0': pop(1); break;    // POP
        case '1': pop_mark(); break;  // POP_MARK
        case '2': need(1); stack_.push_back(stack_.back()); break;  // DUP
        // Scalars and strings: their bytes must be in the stream.
        case 'N': case 0x88: case 0x89: push_scalar(); break;  // NONE, NEWTRUE, NEWFALSE
        case 'K': skip(1); push_scalar(); break;                // BININT1
        case 'M': skip(2); push_scalar(); break;                // BININT2
        case 'J': skip(4); push_scalar(); break;                // BININT
        case 'G': skip(8); push_scalar(); break;                // BINFLOAT
        case 'I': case 'L': case 'F': case 'S': case 'V': case 'P':  // INT, LONG, FLOAT, STRING, UNICODE, PERSID
          line(); push_scalar(); break;
        case 0x8a: skip(length(1)); push_scalar(); break;       // LONG1
        case 0x8b: skip(length(4)); push_scalar(); break;       // LONG4
        case 'U': case 'C': case 0x8c: skip(length(1)); push_scalar(); break;  // SHORT_BINSTRING/BINBYTES/BINUNICODE
        case 'T': case 'B': case 'X': skip(length(4)); push_scalar(); break;   // BINSTRING, BINBYTES, BINUNICODE
        case 0x8d: case 0x8e: skip(length(8)); push_scalar(); break;           // BINUNICODE8, BINBYTES8
        case 'c': line(); line(); push_scalar(); break;           // GLOBAL module\nname\n
        case 0x93: pop(2); push_scalar(); break;                  // STACK_GLOBAL
        // Memo.
        case 'p': put(number(line_text())); break;  // PUT
        case 'q': put(length(1)); break;            // BINPUT
        case 'r': put(length(4)); break;            // LONG_BINPUT
        case 0x94: put(memo_.size()); break;        // MEMOIZE
        case 'g': get(number(line_text())); break;  // GET
        case 'h': get(length(1)); break;            // BINGET
        case 'j': get(length(4)); break;            // LONG_BINGET
        // Containers.
        case ']': case '}': case ')': case 0x8f: push_container({}); break;  // EMPTY_LIST/DICT/TUPLE/SET
        case 0x85: push_container(take(1)); break;  // TUPLE1
        case 0x86: push_container(take(2)); break;  // TUPLE2
        case 0x87: push_container(take(3)); break;  // TUPLE3
        case 't': case 'l': case 'd': case 0x91: push_container(take_to_mark()); break;  // TUPLE, LIST, DICT, FROZENSET
        case 'a': add_to_top(take(1)); break;                    // APPEND
        case 's': add_to_top(take(2)); break;                    // SETITEM
        case 'e': case 'u': case 0x90: add_to_top(take_to_mark()); break;  // APPENDS, SETITEMS, ADDITEMS
        case 'b': add_to_top(take(1)); break;                    // BUILD: state into the object
        // Calls: the result may hold its arguments.
        case 'R': push_container(take(2)); break;     // REDUCE: callable, args
        case 0x81: push_container(take(2)); break;    // NEWOBJ: class, args
        case 0x92: push_container(take(3)); break;    // NEWOBJ_EX: class, args, kwargs
        case 'Q': push_container(take(1)); break;     // BINPERSID
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          fail(at, std::string("opcode ") + hex + " is not one a tensor file uses");
        }
      }
    }
  }

 private:
  static constexpr int64_t kMark = -1;

  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw std::runtime_error("damaged or hostile pickle at byte " + std::to_string(at) + ": " + what);
  }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }
  void skip(size_t n) {
    if (n > static_cast<size_t>(end_ - p_))
      fail(offset(), "an argument of " + std::to_string(n) + " bytes, but only " + std::to_string(end_ - p_) + " are left");
    p_ += n;
  }
  /// A little-endian length of `bytes` bytes.
  size_t length(size_t bytes) {
    const char* at = p_;
    skip(bytes);
    uint64_t n = 0;
    for (size_t i = bytes; i-- > 0;) n = (n << 8) | static_cast<unsigned char>(at[i]);
    return n > SIZE_MAX ? SIZE_MAX : static_cast<size_t>(n);
  }
  std::string line_text() {
    const char* nl = static_cast<const char*>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
    if (nl == nullptr) fail(offset(), "a line argument without its newline");
    std::string text(p_, nl);
    p_ = nl + 1;
    return text;
  }
  void line() { line_text(); }
  size_t number(const std::string& text) const {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
      fail(offset(), "memo index '" + text.substr(0, 32) + "' is not a number");
    return std::stoul(text);
  }

  void need(size_t n) {
    // Marks belong to the mark stack, not the values: count down to the last mark.
    const size_t above_mark = marks_.empty() ? stack_.size() : stack_.size() - marks_.back();
    if (above_mark < n) fail(offset() - 1, "the opcode needs " + std::to_string(n) + " values on the stack");
  }
  void mark() { marks_.push_back(stack_.size()); }
  void pop(size_t n) { take(n); }
  void pop_mark() { take_to_mark(); }
  std::vector<int64_t> take(size_t n) {
    need(n);
    std::vector<int64_t> out(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    return out;
  }
  std::vector<int64_t> take_to_mark() {
    if (marks_.empty()) fail(offset() - 1, "the opcode needs a MARK");
    const size_t from = marks_.back();
    marks_.pop_back();
    std::vector<int64_t> out(stack_.begin() + static_cast<std::ptrdiff_t>(from), stack_.end());
    stack_.resize(from);
    return out;
  }
  // LibTorch's unpickler appends to its memo whatever index a PUT names, and
  // reserves room up to the index first (2^32 of them for a LONG_BINPUT of
  // 0xffffffff). Picklers number them 0, 1, 2, ...: anything else is refused.
  void put(size_t index) {
    need(1);
    if (index != memo_.size())
      fail(offset(), "memo index " + std::to_string(index) + " out of order (expected " + std::to_string(memo_.size()) + ")");
    memo_.push_back(stack_.back());
  }
  void get(size_t index) {
    if (index >= memo_.size()) fail(offset(), "memo index " + std::to_string(index) + " was never set");
    stack_.push_back(memo_[index]);
  }

  // Values on the stack are ids: scalars share id 0 (depth 0); every
  // container has its own, with its depth and the containers holding it.
  void push_scalar() { stack_.push_back(0); }
  void push_container(const std::vector<int64_t>& children) {
    depth_.push_back(1);
    parents_.emplace_back();
    const auto id = static_cast<int64_t>(depth_.size());  // ids from 1
    stack_.push_back(id);
    add(id, children);
  }
  void add_to_top(const std::vector<int64_t>& children) {
    need(1);
    add(stack_.back(), children);
  }
  void add(int64_t id, const std::vector<int64_t>& children) {
    if (id == 0) {  // into a scalar: LibTorch refuses it when it runs; nothing nests
      return;
    }
    for (int64_t child : children) {
      if (child == 0) continue;
      parents_[static_cast<size_t>(child - 1)].push_back(id);
      raise(id, depth_[static_cast<size_t>(child - 1)] + 1);
    }
  }
  /// Raises `id`'s depth and its holders' in turn. Each raise is by at least
  /// one, up to max_depth_: bounded work, and a cycle ends at the limit.
  void raise(int64_t id, size_t depth) {
    std::vector<std::pair<int64_t, size_t>> work{{id, depth}};
    while (!work.empty()) {
      const auto [c, d] = work.back();
      work.pop_back();
      size_t& current = depth_[static_cast<size_t>(c - 1)];
      if (d <= current) continue;
      if (d > max_depth_)
        fail(offset(), "containers nested more than " + std::to_string(max_depth_) + " deep (or in a cycle)");
      current = d;
      for (int64_t parent : parents_[static_cast<size_t>(c - 1)]) work.emplace_back(parent, d + 1);
    }
  }

  const char* const begin_;
  const char* p_;
  const char* const end_;
  const size_t max_depth_;
  std::vector<int64_t> stack_;
  std::vector<size_t> marks_;
  std::vector<int64_t> memo_;
  std::vector<size_t> depth_;                 // by id - 1
  std::vector<std::vector<int64_t>> parents_;  // by id - 1
};

inline uint64_t little_endian(const unsigned char* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = bytes; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

}  // namespace detail

/// Throws std::runtime_error unless `data` is a zip archive whose records are
/// all stored uncompressed and together fit in it, as torch.save writes them.
inline void check_zip(const char* data, size_t size) {
  const auto* b = reinterpret_cast<const unsigned char*>(data);
  auto fail = [](const std::string& what) { throw std::runtime_error("not a torch.save archive: " + what); };
  auto u = [&](uint64_t at, size_t bytes) {
    if (at > size || bytes > size - at) fail("its zip directory points beyond the file");
    return detail::little_endian(b + at, bytes);
  };
  // The end-of-central-directory record: the last 22 bytes and a comment.
  constexpr size_t kEocd = 22;
  if (size < kEocd) fail("too short for a zip archive");
  size_t eocd = SIZE_MAX;
  for (size_t at = size - kEocd + 1; at-- > 0 && size - at <= kEocd + 0xffff;)
    if (u(at, 4) == 0x06054b50 && at + kEocd + u(at + 20, 2) == size) {
      eocd = at;
      break;
    }
  if (eocd == SIZE_MAX) fail("no zip end-of-directory record");
  uint64_t entries = u(eocd + 10, 2), dir_size = u(eocd + 12, 4), dir_at = u(eocd + 16, 4);
  if (entries == 0xffff || dir_size == 0xffffffff || dir_at == 0xffffffff) {  // zip64
    if (eocd < 20 || u(eocd - 20, 4) != 0x07064b50) fail("no zip64 locator");
    const uint64_t z64 = u(eocd - 20 + 8, 8);
    if (u(z64, 4) != 0x06064b50) fail("no zip64 end-of-directory record");
    entries = u(z64 + 32, 8);
    dir_size = u(z64 + 40, 8);
    dir_at = u(z64 + 48, 8);
  }
  constexpr uint64_t kEntry = 46;
  if (dir_at > size || dir_size > size - dir_at || entries > dir_size / kEntry) fail("a directory larger than the file");
  uint64_t at = dir_at, total = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (u(at, 4) != 0x02014b50) fail("a damaged directory entry");
    const uint64_t method = u(at + 10, 2), name = u(at + 28, 2), extra = u(at + 30, 2), comment = u(at + 32, 2);
    uint64_t packed = u(at + 20, 4), unpacked = u(at + 24, 4);
    // zip64: the sizes that do not fit in 32 bits follow in extra field 0x0001.
    for (uint64_t e = at + kEntry + name; e + 4 <= at + kEntry + name + extra;) {
      const uint64_t id = u(e, 2), len = u(e + 2, 2);
      if (id == 1) {
        uint64_t f = e + 4;
        if (unpacked == 0xffffffff && f + 8 <= e + 4 + len) unpacked = u(f, 8), f += 8;
        if (packed == 0xffffffff && f + 8 <= e + 4 + len) packed = u(f, 8);
      }
      e += 4 + len;
    }
    if (method != 0 || packed != unpacked) fail("a compressed record (torch.save stores them whole)");
    if (unpacked > size - total)  // total <= size: no overflow
      fail("a record that claims " + std::to_string(unpacked) + " bytes, more than the file holds (" +
           std::to_string(size) + " in all)");
    total += unpacked;
    at += kEntry + name + extra + comment;
  }
}

/// Throws std::runtime_error naming the byte and the problem unless `data`
/// is a pickle whose every length fits in it, with valid stack and memo use
/// and containers nested at most `max_depth` deep.
inline void check_pickle(const char* data, size_t size, size_t max_depth = 32) {
  detail::PickleWalker(data, size, max_depth).run();
}

}  // namespace tloop
