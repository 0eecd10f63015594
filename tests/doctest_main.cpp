// The doctest main shared by the test binaries (doctest_main.h).
#define DOCTEST_CONFIG_IMPLEMENT
#include "doctest_main.h"

#include <doctest/doctest.h>

#include <cstdio>

namespace {

int g_cases_run = 0;

struct CaseCounter : doctest::IReporter {
  explicit CaseCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { ++g_cases_run; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

DOCTEST_REGISTER_LISTENER("case_counter", 1, CaseCounter);

namespace test {

int doctest_main(int argc, char** argv, const char* (*unavailable)()) {
  doctest::Context context(argc, argv);  // parses the command line: shouldExit() is known now
  if (!context.shouldExit() && unavailable != nullptr)
    if (const char* why = unavailable()) {
      std::printf("skipped: %s\n", why);
      std::fflush(stdout);
      return kSkipReturnCode;
    }
  const int result = context.run();
  if (context.shouldExit()) return result;  // --help, --list-test-cases, ...
  if (g_cases_run == 0) {
    std::fprintf(stderr, "no test case matched the filter\n");
    return 1;
  }
  return result;
}

}  // namespace test
