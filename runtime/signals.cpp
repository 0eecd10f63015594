#include "signals.h"

#include <atomic>
#include <csignal>
#include <cstring>

namespace tloop {
namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {
    // Second signal: the user insists; die the default way.
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

}  // namespace

void install_signal_handlers() {
  for (int sig : {SIGINT, SIGTERM, SIGUSR1, SIGHUP}) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

int pending_signal() { return g_signal.load(); }

Interrupted::Interrupted(int signal, const std::string& detail)
    : std::runtime_error(std::string("interrupted by signal ") + std::to_string(signal) + " (" +
                         (strsignal(signal) ? strsignal(signal) : "?") + ")" + (detail.empty() ? "" : ": " + detail)),
      signal_(signal) {}

}  // namespace tloop
