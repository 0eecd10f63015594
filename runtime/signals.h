// Signals end a run at the next step boundary instead of mid-write.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace tloop {

/// Installs handlers for SIGINT, SIGTERM, SIGUSR1 and SIGHUP that only record
/// the signal. A second signal of the same kind kills the process at once.
void install_signal_handlers();
/// The first signal received, or 0.
int pending_signal();

/// A hook asked to end the run (request_exit); the CLI exits with `code`.
class ExitRequested : public std::runtime_error {
 public:
  explicit ExitRequested(int code) : std::runtime_error("exit requested with code " + std::to_string(code)), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

/// Thrown at a step boundary after a signal, or in a step abandoned after
/// one (`detail` says so); the CLI exits with 128 + signal.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal, const std::string& detail = "");
  int signal() const { return signal_; }

 private:
  int signal_;
};

}  // namespace tloop
