// Main of tloop_cuda_tests. Without a usable CUDA device it runs nothing and
// exits 77, which the ctest tests of this binary declare as SKIP_RETURN_CODE:
// ctest reports them as skipped, never as passed (tests/CMakeLists.txt).
#include "doctest_main.h"

#include <torch/cuda.h>

int main(int argc, char** argv) {
  return test::doctest_main(argc, argv, [] { return torch::cuda::is_available() ? nullptr : "no CUDA device"; });
}
