/* step_counter: a hook in plain C against tloop/plugin.h alone (no SDK).
 * Counts the steps it sees and the optimizer steps, and at the end writes
 * "<label> steps=<n>" to <workspace>/step_counter.txt. */
#include <tloop/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct counter {
  char label[64];
  int64_t steps;
} counter;

static tloop_status create(const tloop_context* ctx, const tloop_options* options, void** out_self) {
  const char* label = NULL;
  counter* self = calloc(1, sizeof(counter));
  if (self == NULL) {
    ctx->api->set_error(ctx->host, "out of memory");
    return TLOOP_ERROR;
  }
  if (ctx->api->option_string(options, "label", &label) != TLOOP_OK) {
    free(self);
    ctx->api->set_error(ctx->host, "option 'label' is missing");
    return TLOOP_INVALID_ARGUMENT;
  }
  snprintf(self->label, sizeof(self->label), "%s", label);
  *out_self = self;
  return TLOOP_OK;
}

static void destroy(void* self) { free(self); }

static tloop_status after_step(void* self, const tloop_context* ctx) {
  (void)ctx;
  ((counter*)self)->steps += 1;
  return TLOOP_OK;
}

static tloop_status after_train(void* self, const tloop_context* ctx) {
  const counter* c = self;
  char path[4096];
  snprintf(path, sizeof(path), "%s/step_counter.txt", ctx->api->workspace(ctx->host));
  FILE* f = fopen(path, "w");
  if (f == NULL) {
    ctx->api->set_error(ctx->host, "cannot open step_counter.txt in the workspace");
    return TLOOP_ERROR;
  }
  fprintf(f, "%s steps=%lld\n", c->label, (long long)c->steps);
  fclose(f);
  ctx->api->log(ctx->host, TLOOP_LOG_INFO, "step_counter: done");
  return TLOOP_OK;
}

static const tloop_option_desc options[] = {
    {sizeof(tloop_option_desc), "label", TLOOP_TYPE_STRING, "\"counter\"", "written before the count", 0, 0, 0, 0,
     NULL},
};

static const tloop_hook_vtable vtable = {
    sizeof(tloop_hook_vtable), create, destroy, NULL, NULL, NULL, after_step, after_train, NULL, NULL, NULL, NULL,
};

static const tloop_plugin_descriptor descriptor = {
    sizeof(tloop_plugin_descriptor), "step_counter", TLOOP_KIND_HOOK, "0.1.0", "Counts steps (plain C example)",
    options, 1, &vtable, NULL,
};

static const tloop_plugin_descriptor* const plugins[] = {&descriptor};

static const tloop_library library = {
    sizeof(tloop_library), TLOOP_ABI_VERSION_MAJOR, TLOOP_ABI_VERSION_MINOR, NULL /* no tensors */, plugins, 1,
};

TLOOP_EXPORT const tloop_library* tloop_plugin_entry(void) { return &library; }
