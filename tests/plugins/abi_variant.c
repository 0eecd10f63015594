/* Plain-C test plugins for the loader's checks. One source, built several
 * times with different definitions (tests/CMakeLists.txt):
 *   VARIANT_ABI_MAJOR / VARIANT_ABI_MINOR  the ABI version it claims
 *   VARIANT_TORCH                          the LibTorch version it claims (or none)
 *   VARIANT_NAME                           the plugin's name
 *   VARIANT_NO_ENTRY                       export no entry point at all */
#include <tloop/plugin.h>

#ifndef VARIANT_ABI_MAJOR
#define VARIANT_ABI_MAJOR TLOOP_ABI_VERSION_MAJOR
#endif
#ifndef VARIANT_ABI_MINOR
#define VARIANT_ABI_MINOR TLOOP_ABI_VERSION_MINOR
#endif
#ifndef VARIANT_TORCH
#define VARIANT_TORCH NULL
#endif

static int32_t instances = 0;

static tloop_status create(const tloop_context* ctx, const tloop_options* options, void** out_self) {
  (void)ctx;
  (void)options;
  ++instances;
  *out_self = &instances;
  return TLOOP_OK;
}

static void destroy(void* self) { (void)self; }

static const tloop_hook_vtable vtable = {.struct_size = sizeof(tloop_hook_vtable), .create = create, .destroy = destroy};

static const tloop_plugin_descriptor descriptor = {
    sizeof(tloop_plugin_descriptor), VARIANT_NAME, TLOOP_KIND_HOOK, "0.1.0", "loader test plugin", NULL, 0, &vtable,
    NULL};

static const tloop_plugin_descriptor* const plugins[] = {&descriptor};

static const tloop_library library = {sizeof(tloop_library), VARIANT_ABI_MAJOR, VARIANT_ABI_MINOR, VARIANT_TORCH,
                                      plugins, 1};

#ifndef VARIANT_NO_ENTRY
TLOOP_EXPORT const tloop_library* tloop_plugin_entry(void) { return &library; }
#else
TLOOP_EXPORT const tloop_library* some_other_symbol(void) { return &library; }
#endif
