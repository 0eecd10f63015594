#include "exit_codes.h"

#include "host.h"
#include "plugin_loader.h"
#include "signals.h"
#include "spec.h"

#include <stdexcept>

namespace tloop {

int exit_code_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const ExitRequested& e) {
    return e.code();
  } catch (const Interrupted& e) {
    return 128 + e.signal();
  } catch (const SpecError&) {
    return kExitBadInput;
  } catch (const PluginLoadError&) {
    return kExitBadInput;
  } catch (const PluginBadInput&) {  // PluginCreateError too
    return kExitBadInput;
  } catch (const std::invalid_argument&) {
    return kExitBadInput;
  } catch (...) {
    return kExitTrainingFailed;
  }
}

}  // namespace tloop
