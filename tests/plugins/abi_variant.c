/* Plain-C test plugins for the loader's checks. One source, built several
 * times with different definitions (tests/CMakeLists.txt):
 *   VARIANT_ABI_MAJOR / VARIANT_ABI_MINOR  the ABI version it claims
 *   VARIANT_TORCH                          the LibTorch version it claims (or none)
 *   VARIANT_NAME                           the plugin's name
 *   VARIANT_NO_ENTRY                       export no entry point at all
 *   VARIANT_GROWN_OPTIONS                  two options in elements larger than
 *                                          this header's tloop_option_desc, as
 *                                          a newer minor could write them
 *   VARIANT_PHASE                          the phase it declares (default: none)
 *   VARIANT_RESERVED_OPTION                one option with this (reserved) name
 *   VARIANT_OPTION_TYPE                    one option "mode" of this tloop_value_type,
 *                                          default 1 (VARIANT_DEFAULT_ABC: "abc"), choices
 *                                          none (VARIANT_CHOICES_1_2: "1|2"); twice
 *                                          with VARIANT_DUP_OPTION */
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

#ifdef VARIANT_PHASE
static const tloop_hook_vtable vtable = {
    .struct_size = sizeof(tloop_hook_vtable), .create = create, .destroy = destroy, .phase = VARIANT_PHASE};
#else
static const tloop_hook_vtable vtable = {.struct_size = sizeof(tloop_hook_vtable), .create = create, .destroy = destroy};
#endif

#ifdef VARIANT_GROWN_OPTIONS
/* A later minor's option element: this header's members, then one more. */
typedef struct grown_option {
  tloop_option_desc desc;
  double added_later;
} grown_option;
static const grown_option grown[] = {
    {{sizeof(grown_option), "alpha", TLOOP_TYPE_INT, "3", "first option", 1, 0, 1, 10, NULL}, 1.5},
    {{sizeof(grown_option), "beta", TLOOP_TYPE_STRING, "\"x\"", "second option", 0, 0, 0, 0, "x|y"}, 2.5},
};
#define VARIANT_OPTIONS (&grown[0].desc)
#define VARIANT_OPTION_COUNT 2
#elif defined(VARIANT_RESERVED_OPTION)
static const tloop_option_desc reserved[] = {
    {sizeof(tloop_option_desc), VARIANT_RESERVED_OPTION, TLOOP_TYPE_STRING, "\"x\"", "a name the run spec owns", 0, 0, 0, 0, NULL},
};
#define VARIANT_OPTIONS reserved
#define VARIANT_OPTION_COUNT 1
#elif defined(VARIANT_OPTION_TYPE)
#ifdef VARIANT_DEFAULT_ABC
#define VARIANT_OPTION_DEFAULT "\"abc\""
#else
#define VARIANT_OPTION_DEFAULT "1"
#endif
#ifdef VARIANT_CHOICES_1_2
#define VARIANT_OPTION_CHOICES "1|2"
#else
#define VARIANT_OPTION_CHOICES NULL
#endif
static const tloop_option_desc typed[] = {
    {sizeof(tloop_option_desc), "mode", (tloop_value_type)(VARIANT_OPTION_TYPE), VARIANT_OPTION_DEFAULT,
     "an option of a given type", 0, 0, 0, 0, VARIANT_OPTION_CHOICES},
#ifdef VARIANT_DUP_OPTION
    {sizeof(tloop_option_desc), "mode", (tloop_value_type)(VARIANT_OPTION_TYPE), "1", "the same name again", 0, 0, 0,
     0, NULL},
#endif
};
#define VARIANT_OPTIONS typed
#define VARIANT_OPTION_COUNT ((uint32_t)(sizeof(typed) / sizeof(typed[0])))
#else
#define VARIANT_OPTIONS NULL
#define VARIANT_OPTION_COUNT 0
#endif

static const tloop_plugin_descriptor descriptor = {
    sizeof(tloop_plugin_descriptor), VARIANT_NAME, TLOOP_KIND_HOOK, "0.1.0", "loader test plugin", VARIANT_OPTIONS,
    VARIANT_OPTION_COUNT, &vtable, NULL};

static const tloop_plugin_descriptor* const plugins[] = {&descriptor};

static const tloop_library library = {sizeof(tloop_library), VARIANT_ABI_MAJOR, VARIANT_ABI_MINOR, VARIANT_TORCH,
                                      plugins, 1};

#ifndef VARIANT_NO_ENTRY
TLOOP_EXPORT const tloop_library* tloop_plugin_entry(void) { return &library; }
#else
TLOOP_EXPORT const tloop_library* some_other_symbol(void) { return &library; }
#endif
