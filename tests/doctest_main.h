// The doctest main of the test binaries (main.cpp, cuda_main.cpp).
#pragma once

namespace test {

/// Exit code that the ctest tests of a binary declare as SKIP_RETURN_CODE.
constexpr int kSkipReturnCode = 77;

/// Runs doctest. Fails when a filter selects no test case: ctest runs each case
/// by name, and a name that stops matching must not pass silently. When
/// `unavailable` is given and returns a reason (not null), nothing runs: it is
/// printed and the binary exits kSkipReturnCode, so ctest reports the tests as
/// skipped, never as passed. Queries (--list-test-cases for test discovery,
/// --help, ...) always work.
int doctest_main(int argc, char** argv, const char* (*unavailable)() = nullptr);

}  // namespace test
