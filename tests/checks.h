// Assertions shared by the test files that compare checkpoints (doctest).
#pragma once

#include "support.h"

#include <ATen/ops/equal.h>

#include "doctest_after_c10.h"

#include <c10/core/ScalarType.h>

namespace test {

/// Two .pt files hold the same names in the same order and every tensor bit
/// for bit (dtype and shape included).
inline void check_same_tensors(const fs::path& a, const fs::path& b) {
  INFO(a.string(), " vs ", b.string());
  const auto ta = read_tensors(a), tb = read_tensors(b);
  REQUIRE(ta.size() == tb.size());
  REQUIRE(!ta.empty());
  for (size_t i = 0; i < ta.size(); ++i) {
    INFO(ta[i].first);
    CHECK(ta[i].first == tb[i].first);
    CHECK(std::string(c10::toString(ta[i].second.scalar_type())) == c10::toString(tb[i].second.scalar_type()));
    CHECK(at::equal(ta[i].second, tb[i].second));
  }
}

}  // namespace test
