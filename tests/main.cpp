// Main of tloop_tests.
#include "doctest_main.h"

int main(int argc, char** argv) { return test::doctest_main(argc, argv); }
