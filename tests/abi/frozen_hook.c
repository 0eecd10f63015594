/* A hook compiled against a frozen, released ABI header (tests/abi/v1.N), not
 * the current one: the current host must load it and drive every event of
 * that version. Built once per frozen minor, named frozen_v1_<N>_hook.
 * Writes one line per event to the file named by its `file` option. */
#include <tloop/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if TLOOP_ABI_VERSION_MAJOR != 1 || TLOOP_ABI_VERSION_MINOR > 3
#error "this plugin must be built against a frozen 1.0, 1.1, 1.2 or 1.3 header"
#endif
#if TLOOP_ABI_VERSION_MINOR == 0
#define FROZEN_NAME "frozen_v1_0_hook"
#elif TLOOP_ABI_VERSION_MINOR == 1
#define FROZEN_NAME "frozen_v1_1_hook"
#elif TLOOP_ABI_VERSION_MINOR == 2
#define FROZEN_NAME "frozen_v1_2_hook"
#else
#define FROZEN_NAME "frozen_v1_3_hook"
#endif

typedef struct recorder {
  FILE* out;
} recorder;

static tloop_status create(const tloop_context* ctx, const tloop_options* options, void** out_self) {
  const char* file = NULL;
  if (ctx->api->option_string(options, "file", &file) != TLOOP_OK) {
    ctx->api->set_error(ctx->host, "option 'file' is missing");
    return TLOOP_INVALID_ARGUMENT;
  }
  recorder* self = calloc(1, sizeof(recorder));
  self->out = fopen(file, "w");
  if (self->out == NULL) {
    free(self);
    ctx->api->set_error(ctx->host, "cannot open the output file");
    return TLOOP_ERROR;
  }
  *out_self = self;
  return TLOOP_OK;
}

static void destroy(void* self) {
  fclose(((recorder*)self)->out);
  free(self);
}

static tloop_status event(void* self, const tloop_context* ctx, const char* name) {
  const double* loss = NULL;
  size_t n = 0;
  recorder* r = self;
  fprintf(r->out, "%s %lld", name, (long long)ctx->api->step(ctx->host));
  if (ctx->api->step_info_get(ctx->host, "loss", &loss, &n) == TLOOP_OK && n > 0) fprintf(r->out, " loss");
  fprintf(r->out, "\n");
  fflush(r->out);
  return TLOOP_OK;
}

static tloop_status before_train(void* s, const tloop_context* c) { return event(s, c, "before_train"); }
static tloop_status before_step(void* s, const tloop_context* c) { return event(s, c, "before_step"); }
static tloop_status before_optimizer_step(void* s, const tloop_context* c) {
  return event(s, c, "before_optimizer_step");
}
static tloop_status after_step(void* s, const tloop_context* c) { return event(s, c, "after_step"); }
static tloop_status after_train(void* s, const tloop_context* c) { return event(s, c, "after_train"); }
#if TLOOP_ABI_VERSION_MINOR >= 1
static tloop_status resume(void* s, const tloop_context* c) { return event(s, c, "resume"); }
#endif
#if TLOOP_ABI_VERSION_MINOR >= 2
static tloop_status finish(void* s, const tloop_context* c, int32_t exit_code) {
  recorder* r = s;
  fprintf(r->out, "finish %lld exit %d\n", (long long)c->api->step(c->host), (int)exit_code);
  fflush(r->out);
  return TLOOP_OK;
}
#endif
#if TLOOP_ABI_VERSION_MINOR >= 3
/* 1.3: extensions; this hook takes the micro-step events. */
static tloop_status after_forward(void* s, const tloop_context* c, int64_t micro_step) {
  recorder* r = s;
  fprintf(r->out, "after_forward %lld micro %lld\n", (long long)c->api->step(c->host), (long long)micro_step);
  fflush(r->out);
  return TLOOP_OK;
}
static const tloop_micro_step_events_v1 micro_step_events = {sizeof(tloop_micro_step_events_v1), after_forward, NULL,
                                                             NULL};
static const void* get_extension(const char* id) {
  return strcmp(id, TLOOP_MICRO_STEP_EVENTS_ID) == 0 ? &micro_step_events : NULL;
}
#endif
static tloop_status on_log(void* s, const tloop_context* c, const tloop_metric* m, size_t n) {
  (void)m;
  (void)n;
  return event(s, c, "on_log");
}
static tloop_status state_dict(void* s, const tloop_context* c, tloop_state* out) {
  (void)s;
  return c->api->state_put_int(out, "events", 1);
}

static const tloop_option_desc options[] = {
    {sizeof(tloop_option_desc), "file", TLOOP_TYPE_STRING, NULL, "output file", 0, 0, 0, 0, NULL},
};

static const tloop_hook_vtable vtable = {
    sizeof(tloop_hook_vtable), create,     destroy,     before_train, before_step, before_optimizer_step,
    after_step,                after_train, on_log,      NULL,         state_dict,  NULL,
#if TLOOP_ABI_VERSION_MINOR >= 1
    resume,
#endif
#if TLOOP_ABI_VERSION_MINOR >= 2
    finish,
#endif
#if TLOOP_ABI_VERSION_MINOR >= 3
    TLOOP_PHASE_SAVE, /* 1.3: phases; saving runs after logging */
    get_extension,
#endif
};

static const tloop_plugin_descriptor descriptor = {
    sizeof(tloop_plugin_descriptor), FROZEN_NAME, TLOOP_KIND_HOOK, "1.0.0", "built against a frozen ABI header",
    options, 1, &vtable, NULL,
};
static const tloop_plugin_descriptor* const plugins[] = {&descriptor};
static const tloop_library library = {
    sizeof(tloop_library), TLOOP_ABI_VERSION_MAJOR, TLOOP_ABI_VERSION_MINOR, NULL, plugins, 1,
};

TLOOP_EXPORT const tloop_library* tloop_plugin_entry(void) { return &library; }
