// Signals end a run at the next step boundary instead of mid-write.
#pragma once

#include <stdexcept>
#include <string>

namespace tloop {

/// Installs handlers for SIGINT, SIGTERM, SIGUSR1 and SIGHUP that only record
/// the signal. A second signal of the same kind kills the process at once.
void install_signal_handlers();
/// The first signal received, or 0.
int pending_signal();

/// Thrown at a step boundary after a signal; the CLI exits with 128 + signal.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int signal);
  int signal() const { return signal_; }

 private:
  int signal_;
};

}  // namespace tloop
