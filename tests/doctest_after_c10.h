// doctest for a test file that also includes LibTorch headers bringing in
// c10's logging (serialization, CUDA), which defines glog-style CHECK macros:
// include this after them, and doctest's macros win.
#pragma once

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#undef CHECK_FALSE
#undef CHECK_THROWS
#undef CHECK_NOTHROW
#include <doctest/doctest.h>
