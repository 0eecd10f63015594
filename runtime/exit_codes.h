// The process's exit codes, decided in one place: the CLI returns them and
// every hook's finish(exit_code) receives the same one.
#pragma once

#include <exception>

namespace tloop {

constexpr int kExitOk = 0;
/// Training could not go on (an error during the run).
constexpr int kExitTrainingFailed = 1;
/// Bad input: the spec, the command line, a plugin file or descriptor, an
/// option combination or a workspace a plugin refuses (TLOOP_INVALID_ARGUMENT).
constexpr int kExitBadInput = 2;

/// The exit code of a run that ended with `error`: a request_exit code,
/// 128 + N after signal N, kExitBadInput for bad input, else
/// kExitTrainingFailed.
int exit_code_of(const std::exception_ptr& error);

}  // namespace tloop
