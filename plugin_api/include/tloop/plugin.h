/*
 * tloop plugin ABI — the contract between the tloop host and plugin libraries.
 *
 * Pure C. Nothing but integers, doubles, UTF-8 strings, opaque handles and
 * function-pointer tables crosses this boundary; no C++ type and no exception.
 *
 * VERSIONING RULES
 *   - TLOOP_ABI_VERSION_MAJOR changes when anything here changes incompatibly
 *     (a field or function removed, reordered or re-typed, a semantic change).
 *     The host refuses plugins whose major differs from its own.
 *   - TLOOP_ABI_VERSION_MINOR changes when something is added compatibly: a new
 *     function or field at the END of a struct, a new enum value, a new event.
 *     The host loads plugins built for its minor or an older one, and refuses
 *     plugins built for a newer minor than its own.
 *   - Every struct starts with `uint32_t struct_size` = sizeof(struct) as the
 *     writer compiled it. A reader never touches a member that lies at or
 *     beyond `struct_size` (use TLOOP_HAS_MEMBER); a NULL function pointer means
 *     "not implemented". This is how an old plugin works with a new host.
 *   - Bumping: add at the end, bump the minor, mark the new member
 *     "since 1.N". Never edit a released member.
 *   - Since 1.3 the core structs no longer grow for new features: a feature
 *     is an EXTENSION, a frozen struct named by a versioned id string
 *     ("tloop.<name>/<version>"). The host offers its extensions through
 *     tloop_host_api.get_extension, a plugin offers its own through its
 *     vtable's get_extension; both return NULL for an id they do not know,
 *     and the asking side then does without. An extension is never changed
 *     once released: a new version is a new id. docs/abi.md lists the ids.
 *
 * ARRAYS
 *   An array of versioned structs (tloop_option_desc[], tloop_metric[],
 *   tloop_image[]) is written with every element's struct_size equal, and is
 *   read with that size as the stride (TLOOP_ARRAY_AT), never with the
 *   reader's own sizeof: a writer built against a newer minor may have grown
 *   the element. (Through 1.2 readers indexed with their sizeof; the host
 *   therefore hands a plugin built for 1.2 or older elements of the size that
 *   plugin knows.)
 *
 * THREAD RULES
 *   The host calls every plugin function on the training thread, one call at
 *   a time. A plugin calls host functions from inside such a call, on that
 *   thread, except the functions marked [any thread]: those may be called
 *   from any thread, at any time while the host is alive (a background
 *   writer releasing tensors, a watchdog reading pending_signal). The state_*
 *   functions marked [any thread, per state] may run on any thread for a
 *   state made by state_new, as long as one thread at a time uses that state.
 *
 * ERRORS
 *   Every plugin function that can fail returns tloop_status. On failure it
 *   calls `api->set_error(host, message)` first (the host copies the message)
 *   and returns a non-zero status. The host turns it into one error naming the
 *   plugin and the event. A plugin function must catch everything: an
 *   exception escaping through this boundary terminates the process.
 *
 * OWNERSHIP
 *   Strings passed to a plugin are BORROWED: valid until the call returns,
 *   unless documented otherwise. Tensor handles are either BORROWED (valid
 *   until the call returns; retain to keep) or NEW REFERENCES (the receiver
 *   owns one reference and must release it exactly once).
 */
#ifndef TLOOP_PLUGIN_H
#define TLOOP_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TLOOP_ABI_VERSION_MAJOR 1
#define TLOOP_ABI_VERSION_MINOR 4

/* The one symbol every plugin library exports. */
#define TLOOP_ENTRY_SYMBOL "tloop_plugin_entry"

#if defined(_WIN32)
#define TLOOP_EXPORT __declspec(dllexport)
#else
#define TLOOP_EXPORT __attribute__((visibility("default")))
#endif

/* True when a struct written with `struct_size` bytes contains `member`. */
#define TLOOP_HAS_MEMBER(ptr, type, member) \
  ((ptr) != NULL && (ptr)->struct_size >= offsetof(type, member) + sizeof(((type*)0)->member))

/* since 1.3: element `index` of an array of versioned structs, stepping by
 * the struct_size of its first element (see ARRAYS above). */
#define TLOOP_ARRAY_AT(type, array, index) \
  ((const type*)((const char*)(array) + (size_t)(index) * (size_t)(array)[0].struct_size))

/* ---------------------------------------------------------------- status */

typedef int32_t tloop_status;
enum {
  TLOOP_OK = 0,
  TLOOP_ERROR = 1,            /* generic failure; message set */
  TLOOP_INVALID_ARGUMENT = 2, /* bad option, key or handle; message set. Since 1.4,
                               * returned by a plugin event it means the run's
                               * input is wrong (an option combination, a
                               * checkpoint to load): the run ends as bad input,
                               * exit code 2 (any other failure: 1). */
  TLOOP_NOT_FOUND = 3,        /* a looked-up key does not exist (not an error by itself) */
  TLOOP_TYPE_MISMATCH = 4     /* a key exists with another type */
};

typedef enum tloop_log_level {
  TLOOP_LOG_DEBUG = 0,
  TLOOP_LOG_INFO = 1,
  TLOOP_LOG_WARN = 2,
  TLOOP_LOG_ERROR = 3
} tloop_log_level;

/* ---------------------------------------------------------------- handles */

/* The host; opaque. Valid for the lifetime of every plugin instance. */
typedef struct tloop_host tloop_host;

/*
 * A tensor: one reference to a c10::TensorImpl (the object behind an
 * at::Tensor, autograd metadata included). Only plugins that report the
 * host's exact LibTorch version (tloop_library.torch_version) may look inside;
 * to everyone else it is opaque. The C++ SDK (tloop/torch.hpp) converts
 * between handles and at::Tensor.
 */
typedef struct tloop_tensor_impl* tloop_tensor;

/* Options given to `create`; read through tloop_host_api.option_*. Valid only
 * during `create`. */
typedef struct tloop_options tloop_options;

/* A state dictionary being written (state_dict) or read (load_state_dict). */
typedef struct tloop_state tloop_state;

/* ---------------------------------------------------------------- options schema */

typedef enum tloop_value_type {
  TLOOP_TYPE_BOOL = 0,
  TLOOP_TYPE_INT = 1,    /* int64 */
  TLOOP_TYPE_DOUBLE = 2, /* an integer literal is accepted too */
  TLOOP_TYPE_STRING = 3,
  TLOOP_TYPE_STRING_LIST = 4,
  TLOOP_TYPE_INT_LIST = 5, /* since 1.1 */
  /* since 1.4: an integer literal or a string (checkpointing's exit_code:
   * 3 or "128+signal"). `choices` constrains the string form, min/max the
   * integer form; the default is either. Read it with option_int, and with
   * option_string when that returns TLOOP_TYPE_MISMATCH. */
  TLOOP_TYPE_INT_OR_STRING = 6
} tloop_value_type;

/* One option a plugin accepts in its `[[hooks]]` / `[task]` table. */
typedef struct tloop_option_desc {
  uint32_t struct_size;
  const char* name;          /* key in the spec table */
  tloop_value_type type;
  /* TOML literal of the default ("10", "0.5", "true", "\"png\"", "[]");
   * NULL: the spec must give it; "": optional with no default. */
  const char* default_value;
  const char* doc;           /* one line for `tloop describe` */
  int32_t has_min;           /* numeric types: inclusive bounds when set */
  double min;
  int32_t has_max;
  double max;
  const char* choices;       /* strings: allowed values separated by '|', or NULL */
} tloop_option_desc;

/* ---------------------------------------------------------------- plain data */

/* A scalar metric. Keys are '/'-separated paths ("train/loss"). */
typedef struct tloop_metric {
  uint32_t struct_size;
  const char* key;
  double value;
} tloop_metric;

/* An 8-bit image, rows top to bottom, channels interleaved (HWC). */
typedef struct tloop_image {
  uint32_t struct_size;
  const char* key;        /* '/'-separated path ("samples/0") */
  int32_t width;
  int32_t height;
  int32_t channels;       /* 1 (gray), 3 (RGB) or 4 (RGBA) */
  int64_t row_stride;     /* bytes between rows; >= width * channels */
  const uint8_t* pixels;  /* BORROWED */
} tloop_image;

/* ---------------------------------------------------------------- the host API */

typedef void (*tloop_step_info_visitor)(void* user, const char* key, const double* values, size_t count);

/* since 1.1: one entry of a state dictionary, as state_visit reports it. */
typedef enum tloop_state_kind {
  TLOOP_STATE_TENSOR = 0,
  TLOOP_STATE_INT = 1,
  TLOOP_STATE_DOUBLE = 2,
  TLOOP_STATE_STRING = 3
} tloop_state_kind;
typedef struct tloop_state_value {
  uint32_t struct_size;
  tloop_state_kind kind;
  tloop_tensor tensor; /* BORROWED; TLOOP_STATE_TENSOR */
  int64_t int_value;   /* TLOOP_STATE_INT */
  double double_value; /* TLOOP_STATE_DOUBLE */
  const char* string_value; /* BORROWED; TLOOP_STATE_STRING */
} tloop_state_value;
typedef void (*tloop_state_visitor)(void* user, const char* key, const tloop_state_value* value);
typedef void (*tloop_tensor_visitor)(void* user, const char* name, tloop_tensor tensor /* BORROWED */);

typedef struct tloop_host_api {
  uint32_t struct_size;

  /* Errors and messages. `set_error` copies `message`; it reports the
   * failure of the plugin call it is made from. */
  void (*set_error)(tloop_host* host, const char* message);
  void (*log)(tloop_host* host, tloop_log_level level, const char* message); /* [any thread] */

  /* The run. Strings are BORROWED and valid for the host's lifetime. All
   * but `step` are fixed for the run: [any thread]. */
  int64_t (*step)(tloop_host* host);      /* last begun step; 0 before the first */
  int64_t (*max_steps)(tloop_host* host);
  int32_t (*rank)(tloop_host* host);
  int32_t (*world_size)(tloop_host* host);
  uint64_t (*seed)(tloop_host* host);
  const char* (*workspace)(tloop_host* host);     /* absolute path */
  const char* (*device)(tloop_host* host);        /* "cpu", "cuda:0", ... */
  const char* (*resolved_spec)(tloop_host* host); /* the fully resolved run spec, TOML text */

  /* Options; valid inside `create` only. Options are validated and defaulted
   * by the host against the plugin's schema, so reading a declared option of
   * the declared type always succeeds. Returned strings are BORROWED. */
  int32_t (*option_is_set)(const tloop_options* options, const char* name); /* 0 for an optional left out */
  tloop_status (*option_bool)(const tloop_options* options, const char* name, int32_t* out);
  tloop_status (*option_int)(const tloop_options* options, const char* name, int64_t* out);
  tloop_status (*option_double)(const tloop_options* options, const char* name, double* out);
  tloop_status (*option_string)(const tloop_options* options, const char* name, const char** out);
  tloop_status (*option_string_list)(const tloop_options* options, const char* name, size_t index,
                                     const char** out); /* TLOOP_NOT_FOUND past the end */

  /* Step info of the current step: each key holds a list of doubles (one per
   * micro-step for "loss", "data_time" and "records/<path>"; one for
   * "step_time", "grad_norm", "retries", "lr/<group>", ...). Hooks may append
   * their own keys (e.g. "max_memory"). `values` is BORROWED until the step
   * info next changes. */
  tloop_status (*step_info_get)(tloop_host* host, const char* key, const double** values, size_t* count);
  void (*step_info_append)(tloop_host* host, const char* key, double value);
  void (*step_info_visit)(tloop_host* host, tloop_step_info_visitor visit, void* user);

  /* Records of the current micro-step (tasks call it from `forward`). */
  void (*record)(tloop_host* host, const char* key, double value);

  /* Dispatch to every hook's on_log / on_log_images (and the host's own
   * sinks). Arrays are read with their elements' struct_size as the stride. */
  tloop_status (*log_metrics)(tloop_host* host, const tloop_metric* metrics, size_t count);
  tloop_status (*log_images)(tloop_host* host, const tloop_image* images, size_t count);

  /* Model and optimizer. Tensors are BORROWED. */
  void (*visit_parameters)(tloop_host* host, tloop_tensor_visitor visit, void* user);
  void (*visit_buffers)(tloop_host* host, tloop_tensor_visitor visit, void* user);
  size_t (*param_group_count)(tloop_host* host);
  const char* (*param_group_name)(tloop_host* host, size_t group); /* BORROWED */
  double (*param_group_lr)(tloop_host* host, size_t group);         /* current learning rate */

  /* Tasks register their model here from `setup`; the host takes its own
   * reference. Parameters are optimized; buffers are saved, not optimized. */
  tloop_status (*register_parameter)(tloop_host* host, const char* name, tloop_tensor tensor /* BORROWED */);
  tloop_status (*register_buffer)(tloop_host* host, const char* name, tloop_tensor tensor /* BORROWED */);

  /* Tensor references. [any thread] */
  tloop_tensor (*tensor_retain)(tloop_tensor tensor); /* returns a NEW REFERENCE to the same tensor */
  void (*tensor_release)(tloop_tensor tensor);        /* drops one reference; NULL is ignored */

  /* State dictionaries. Keys are '/'-separated paths under the plugin's own
   * key; put_* copy what they are given (tensors: a new reference is taken).
   * get_* return TLOOP_NOT_FOUND for a missing key; strings and tensors are
   * BORROWED for the duration of the call. [any thread, per state] for a
   * state made by state_new; on the training thread for one the host passes. */
  tloop_status (*state_put_tensor)(tloop_state* state, const char* key, tloop_tensor tensor);
  tloop_status (*state_put_int)(tloop_state* state, const char* key, int64_t value);
  tloop_status (*state_put_double)(tloop_state* state, const char* key, double value);
  tloop_status (*state_put_string)(tloop_state* state, const char* key, const char* value);
  tloop_status (*state_get_tensor)(const tloop_state* state, const char* key, tloop_tensor* out);
  tloop_status (*state_get_int)(const tloop_state* state, const char* key, int64_t* out);
  tloop_status (*state_get_double)(const tloop_state* state, const char* key, double* out);
  tloop_status (*state_get_string)(const tloop_state* state, const char* key, const char** out);

  /* ---- since 1.1: the whole run's state, for checkpointing hooks ---- */

  /* A new, empty state dictionary (keys are used as given, no prefix); free
   * it with state_free. [any thread, per state] */
  tloop_state* (*state_new)(tloop_host* host);
  void (*state_free)(tloop_state* state);
  /* Calls `visit` for every entry, in key order; values are BORROWED.
   * [any thread, per state] */
  void (*state_visit)(const tloop_state* state, tloop_state_visitor visit, void* user);
  /* Writes the complete state of the run into `out`: "model/<name>"
   * (parameters and buffers), "optimizer/...", "trainer/step", "grad_scaler/...",
   * "rng/...", "task/...", "hooks/<key>/...", "meta/spec", "meta/plugins".
   * Tensors are the live ones: copy them before the training goes on if they
   * are used later (e.g. by a background writer). */
  tloop_status (*run_state_dict)(tloop_host* host, tloop_state* out);
  /* Restores a state written by run_state_dict (call it from `resume`). */
  tloop_status (*run_load_state_dict)(tloop_host* host, const tloop_state* in);
  /* The first of SIGINT, SIGTERM, SIGUSR1 or SIGHUP received, or 0. The host's
   * handlers only record it. The loop stops, with exit code 128+N unless a
   * hook calls request_exit first, after a step whose after_step began with
   * the signal pending: every hook's after_step of that step sees it here.
   * [any thread] */
  int32_t (*pending_signal)(tloop_host* host);
  /* Ends the run with this exit code at the next step boundary: the step in
   * progress completes with all its events (after_step included, for every
   * hook), then no new step begins and after_train is not called; `finish`
   * receives the code. Asked for before the first step, no step runs. The
   * first request wins. */
  void (*request_exit)(tloop_host* host, int32_t exit_code);
  /* Like option_string_list, for TLOOP_TYPE_INT_LIST options. */
  tloop_status (*option_int_list)(const tloop_options* options, const char* name, size_t index, int64_t* out);

  /* ---- since 1.3 ---- */

  /* The host's extension named `id` ("tloop.<name>/<version>"): a pointer
   * to a frozen struct valid for the host's lifetime, or NULL when this host
   * does not provide it. [any thread] */
  const void* (*get_extension)(tloop_host* host, const char* id);
} tloop_host_api;

/* Passed to every plugin call. */
typedef struct tloop_context {
  uint32_t struct_size;
  const tloop_host_api* api;
  tloop_host* host;
} tloop_context;

/* ---------------------------------------------------------------- hooks */

/*
 * Events, in order: resume (since 1.1); before_train; per step: before_step,
 * before_optimizer_step, after_step; after_train; finish (since 1.2).
 * on_log / on_log_images whenever anything logs.
 *
 * Since 1.3 every hook has a PHASE, and the host calls hooks phase by phase,
 * for every event: first the hooks of TLOOP_PHASE_MEASURE, then UPDATE,
 * EVALUATE, MONITOR, LOG and SAVE. Within a phase, hooks are called in the
 * order the spec lists them. So after a step the EMA is updated before
 * anything logs or saves, and a checkpoint, written last, holds every other
 * hook's state after the step (a logger's too) and follows its log rows,
 * wherever the spec lists them. Hooks built for 1.2 or older have the phase
 * TLOOP_PHASE_UPDATE.
 * Any member may be NULL.
 */
typedef enum tloop_hook_phase {
  /* The values are names, not the order (that is the list above): the
   * default is 0, so a vtable that leaves `phase` zero gets it. */
  TLOOP_PHASE_UPDATE = 0,   /* updates state that follows the weights (ema); the default */
  TLOOP_PHASE_MEASURE = 1,  /* adds step info about the step just done (cuda_max_memory) */
  TLOOP_PHASE_EVALUATE = 2, /* evaluates the model */
  TLOOP_PHASE_MONITOR = 3,  /* acts on what was measured (best checkpoints, early stopping) */
  TLOOP_PHASE_LOG = 4,      /* reports (logging, progress, trackers, image files) */
  TLOOP_PHASE_SAVE = 5      /* writes the run's state (checkpointing); last */
} tloop_hook_phase;

typedef struct tloop_hook_vtable {
  uint32_t struct_size;
  /* Creates an instance into *out_self. */
  tloop_status (*create)(const tloop_context* ctx, const tloop_options* options, void** out_self);
  void (*destroy)(void* self); /* must not fail */
  tloop_status (*before_train)(void* self, const tloop_context* ctx);
  tloop_status (*before_step)(void* self, const tloop_context* ctx);
  tloop_status (*before_optimizer_step)(void* self, const tloop_context* ctx);
  tloop_status (*after_step)(void* self, const tloop_context* ctx);
  tloop_status (*after_train)(void* self, const tloop_context* ctx);
  tloop_status (*on_log)(void* self, const tloop_context* ctx, const tloop_metric* metrics, size_t count);
  tloop_status (*on_log_images)(void* self, const tloop_context* ctx, const tloop_image* images, size_t count);
  tloop_status (*state_dict)(void* self, const tloop_context* ctx, tloop_state* out);
  tloop_status (*load_state_dict)(void* self, const tloop_context* ctx, const tloop_state* in);
  /* since 1.1: called for every hook, in order, before any before_train: a
   * hook that restores a previous run (checkpointing) does it here, so that
   * every before_train already sees the restored step. */
  tloop_status (*resume)(void* self, const tloop_context* ctx);
  /* since 1.2: called once for every hook when training ends, whichever way
   * it ends, with the exit code the process is about to return: 0 after
   * after_train; 128+N when signal N stopped the run; the code a hook passed
   * to request_exit; 1 when an error stopped it. Not called when the run fails
   * before training begins (the resume event). The place to close files and
   * sessions. A failure here is logged and does not change the run's outcome. */
  tloop_status (*finish)(void* self, const tloop_context* ctx, int32_t exit_code);
  /* since 1.3: a tloop_hook_phase; the host refuses a value outside it. */
  int32_t phase;
  /* since 1.3: the plugin's extension named `id` (a frozen struct with
   * static lifetime, its functions taking this hook's `self`), or NULL.
   * [any thread] */
  const void* (*get_extension)(const char* id);
} tloop_hook_vtable;

/* ---------------------------------------------------------------- tasks */

/*
 * A task owns the model and the data. The host calls: create, setup (register
 * the model on ctx's device), then per micro-step next_batch (timed as data
 * time) and forward; state_dict / load_state_dict around checkpoints.
 */
typedef struct tloop_task_vtable {
  uint32_t struct_size;
  tloop_status (*create)(const tloop_context* ctx, const tloop_options* options, void** out_self);
  void (*destroy)(void* self);
  tloop_status (*setup)(void* self, const tloop_context* ctx);
  /* Makes the next micro-batch current. */
  tloop_status (*next_batch)(void* self, const tloop_context* ctx);
  /* Forward on the current micro-batch, under the host's autocast. *out_loss:
   * a NEW REFERENCE to a scalar loss, or NULL to skip backward for this
   * micro-step. Records go through api->record. */
  tloop_status (*forward)(void* self, const tloop_context* ctx, tloop_tensor* out_loss);
  tloop_status (*state_dict)(void* self, const tloop_context* ctx, tloop_state* out);
  tloop_status (*load_state_dict)(void* self, const tloop_context* ctx, const tloop_state* in);
  /* since 1.3: as tloop_hook_vtable.get_extension. [any thread] */
  const void* (*get_extension)(const char* id);
} tloop_task_vtable;

/* ---------------------------------------------------------------- descriptors */

typedef enum tloop_plugin_kind { TLOOP_KIND_HOOK = 0, TLOOP_KIND_TASK = 1 } tloop_plugin_kind;

typedef struct tloop_plugin_descriptor {
  uint32_t struct_size;
  const char* name;        /* unique among all loaded plugins; [a-z0-9_]+ */
  tloop_plugin_kind kind;
  const char* version;     /* the plugin's own version, e.g. "1.2.0" */
  const char* description; /* one line */
  const tloop_option_desc* options; /* read with TLOOP_ARRAY_AT */
  uint32_t option_count;
  const tloop_hook_vtable* hook; /* kind == TLOOP_KIND_HOOK */
  const tloop_task_vtable* task; /* kind == TLOOP_KIND_TASK */
} tloop_plugin_descriptor;

typedef struct tloop_library {
  uint32_t struct_size;
  uint32_t abi_major; /* TLOOP_ABI_VERSION_MAJOR the library was built with */
  uint32_t abi_minor; /* TLOOP_ABI_VERSION_MINOR the library was built with */
  /* LibTorch version the library was built against ("2.11.0"), or NULL when
   * it never touches a tensor; the host refuses a mismatch. */
  const char* torch_version;
  const tloop_plugin_descriptor* const* plugins;
  uint32_t plugin_count;
} tloop_library;

/* The entry point: returns static data owned by the library, never NULL. */
typedef const tloop_library* (*tloop_plugin_entry_fn)(void);

/* ================================================================ extensions
 * Frozen structs looked up by id (see VERSIONING RULES). Each is released
 * once and never changed; a new version is a new id. */

/* ---------------------------------------------------------------- step outputs (host)
 *
 * What a task's micro-step produces, by name. From `forward` (training
 * thread):
 *   - add_loss: a named scalar loss term. When a micro-step adds any, its
 *     loss is their sum, `forward` must return NULL for *out_loss (returning
 *     a loss as well is an error), and each term is logged in the step info
 *     as "loss/<name>", one value per micro-step, read at the step's end
 *     with the tensor records (one copy). (The optimization work will
 *     weight the terms.)
 *   - record_tensor: a scalar record kept as a tensor, on its device, until
 *     the step ends; then all of a step's tensor records are read in one
 *     copy to the host into the step info ("records/<key>", one value per
 *     micro-step), instead of one device sync per record.
 *   - publish: a tensor of this micro-step for hooks (embeddings, logits,
 *     targets). The host holds a reference until after_forward has returned
 *     (so that the graph behind it can be freed); a hook that wants it longer
 *     retains it.
 * From hooks, during after_forward (tloop.micro_step_events/1):
 *   - published: a published tensor, BORROWED: read it without a copy, or
 *     retain it (tensor_retain) to keep it.
 * Tensors passed in are BORROWED; the host takes its own reference. */
#define TLOOP_STEP_OUTPUTS_ID "tloop.step_outputs/1"
typedef struct tloop_step_outputs_v1 {
  uint32_t struct_size;
  tloop_status (*add_loss)(tloop_host* host, const char* name, tloop_tensor loss);
  tloop_status (*record_tensor)(tloop_host* host, const char* key, tloop_tensor value);
  tloop_status (*publish)(tloop_host* host, const char* name, tloop_tensor tensor);
  /* TLOOP_NOT_FOUND when nothing of that name was published this micro-step. */
  tloop_status (*published)(tloop_host* host, const char* name, tloop_tensor* out);
  /* Every tensor published this micro-step, in the order published. */
  void (*visit_published)(tloop_host* host, tloop_tensor_visitor visit, void* user);
} tloop_step_outputs_v1;

/* ---------------------------------------------------------------- host errors (host)
 *
 * Why the last host function given `host` that failed did
 * (run_load_state_dict, log_metrics, register_parameter, add_loss, ...;
 * the state_* functions have no host and report only a status), so that a
 * plugin can put the host's words into its own error instead of replacing
 * them: "" when none failed yet. BORROWED until the next host call. */
#define TLOOP_HOST_ERRORS_ID "tloop.host_errors/1"
typedef struct tloop_host_errors_v1 {
  uint32_t struct_size;
  const char* (*last_error)(tloop_host* host);
} tloop_host_errors_v1;

/* ---------------------------------------------------------------- run failure (host)
 *
 * For hooks in `finish(exit_code)`: why the run ends, and whether its state
 * can still be saved.
 *   error           the error that ends the run ("hooks[2] (wandb) failed in
 *                   after_step: ..."), or NULL when it ends without one
 *                   (success, a signal, an exit request). BORROWED until
 *                   finish returns.
 *   resumable_step  1 with *step set when the run ends with an error at a
 *                   step boundary: the weights (all finite), the optimizer,
 *                   the data position and every hook of the measure, update,
 *                   evaluate and monitor phases hold step *step complete, so
 *                   a checkpoint taken in finish resumes as if the run had
 *                   stopped after that step (the checkpointing hook's
 *                   emergency save). 0 otherwise: no error, an error in the
 *                   middle of a step, or weights that are not finite.
 * The host's step() reads *step then too. */
#define TLOOP_RUN_FAILURE_ID "tloop.run_failure/1"
typedef struct tloop_run_failure_v1 {
  uint32_t struct_size;
  const char* (*error)(tloop_host* host);
  int32_t (*resumable_step)(tloop_host* host, int64_t* step);
} tloop_run_failure_v1;

/* ---------------------------------------------------------------- micro-step events (hook)
 *
 * A hook that offers this extension gets three more events per micro-step,
 * `micro_step` counting the step's forwards from 0 (a retried step starts
 * again at 0):
 *   after_forward    after the task's forward: its published tensors are
 *                    readable (tloop.step_outputs/1 `published`);
 *   before_backward  before the backward of a micro-step that has a loss;
 *   after_backward   after it: the parameters' gradients hold the sum over
 *                    this step's micro-steps so far, this one included
 *                    (unscaled only at the step's end, when fp16 scales).
 * Hooks without it cost the micro-step nothing. Called in phase order. */
#define TLOOP_MICRO_STEP_EVENTS_ID "tloop.micro_step_events/1"
typedef struct tloop_micro_step_events_v1 {
  uint32_t struct_size;
  tloop_status (*after_forward)(void* self, const tloop_context* ctx, int64_t micro_step);
  tloop_status (*before_backward)(void* self, const tloop_context* ctx, int64_t micro_step);
  tloop_status (*after_backward)(void* self, const tloop_context* ctx, int64_t micro_step);
} tloop_micro_step_events_v1;

/* ---------------------------------------------------------------- epochs (task)
 *
 * A task that offers this extension declares how long one pass over its
 * training data is. The host calls batches_per_epoch once, after setup:
 * TLOOP_OK with *out > 0, or TLOOP_NOT_FOUND when this instance has no epochs
 * (a stream). The host then counts the micro-batches drawn (next_batch
 * calls, those of retried attempts included: their data was used) and keeps
 * the count in the run state ("trainer/batches"), so a resumed run counts on.
 * Each step's info holds "epoch", the epochs completed before the step began
 * (0-based, the epoch of the step's first batch: Lightning's current_epoch),
 * and "epoch_end", the epochs completed during the step (1 at the step that
 * drew an epoch's last batch, 0 elsewhere). The step info holds "epoch"
 * already in before_train (the epoch the first step will belong to), so a
 * hook can tell there whether the task has epochs. Hooks read them from the
 * step info (SDK: ctx.epoch(), ctx.epochs_ended(), tloop::Every). */
#define TLOOP_EPOCHS_ID "tloop.epochs/1"
typedef struct tloop_epochs_v1 {
  uint32_t struct_size;
  tloop_status (*batches_per_epoch)(void* self, const tloop_context* ctx, int64_t* out);
} tloop_epochs_v1;

/* ---------------------------------------------------------------- evaluation (task)
 *
 * A task that offers this extension can be evaluated on named splits
 * ("val", "test"). The host owns the loop, the task only iterates a split
 * and computes outputs. For one pass over a split the host calls
 *   set_training(0), eval_begin(split), then eval_next + eval_forward per
 *   batch until eval_next returns TLOOP_NOT_FOUND (or [eval] max_batches),
 *   eval_end(split), set_training(1);
 * with gradients off, under the training's autocast, and with every random
 * number generator of the host (CPU, the run's device) saved before and
 * restored after: a run with evaluation draws exactly the training random
 * numbers of a run without. The task keeps its evaluation position apart
 * from its training data position (next_batch never sees an eval pass).
 *
 * eval_forward gives its outputs through tloop.step_outputs/1:
 *   publish("logits", [B, C]), publish("targets", [B] class indices, or the
 *   regression targets), publish("predictions", [B, ...]): the built-in
 *   metrics read them (accuracy and top_k_accuracy: logits and targets;
 *   mse and mae: predictions and targets; "mean:<name>": any output). The
 *   first dimension counts the batch's samples: a pass's metrics are sums
 *   over samples divided by the split's sample count, never a mean of
 *   per-batch means.
 *   record_tensor(key, scalar): a task-defined metric, the batch's mean of
 *   something; the host weights it by the batch's sample count (the first
 *   dimension of "targets", else of the first published tensor, else 1).
 * With `predict` = 1 (tloop predict) every published tensor is written out,
 * one row per sample; "targets" may be left out.
 *
 *   visit_splits     the splits this instance evaluates, in order (asked
 *                    once, after create: `tloop validate` checks [eval]
 *                    against them); none: the task is not evaluated.
 *   visit_default_metrics  the metrics of `split` when [eval] metrics is
 *                    empty ("accuracy", "top_k_accuracy"); NULL or none: the
 *                    task's records only.
 *   set_training     the model's train (1) or eval (0) mode: dropout, batch
 *                    norm. Evaluation leaves it in train mode again.
 *   eval_begin       a new pass over `split` from its first batch:
 *                    *out_batches its batch count, or -1 when unknown.
 *   eval_next        the split's next batch: TLOOP_OK, or TLOOP_NOT_FOUND at
 *                    its end.
 *   eval_forward     the outputs of the current batch (above).
 *   eval_end         the pass is over: a task may log images here (a
 *                    confusion matrix of the last evaluation).
 * Any member but eval_begin, eval_next and eval_forward may be NULL. */
#define TLOOP_EVAL_ID "tloop.eval/1"
typedef void (*tloop_name_visitor)(void* user, const char* name);
typedef struct tloop_eval_v1 {
  uint32_t struct_size;
  tloop_status (*visit_splits)(void* self, const tloop_context* ctx, tloop_name_visitor visit, void* user);
  tloop_status (*visit_default_metrics)(void* self, const tloop_context* ctx, const char* split,
                                        tloop_name_visitor visit, void* user);
  tloop_status (*set_training)(void* self, const tloop_context* ctx, int32_t training);
  tloop_status (*eval_begin)(void* self, const tloop_context* ctx, const char* split, int64_t* out_batches);
  tloop_status (*eval_next)(void* self, const tloop_context* ctx);
  tloop_status (*eval_forward)(void* self, const tloop_context* ctx, int32_t predict);
  tloop_status (*eval_end)(void* self, const tloop_context* ctx, const char* split);
} tloop_eval_v1;

/* ---------------------------------------------------------------- evaluation events (hook)
 *
 * One pass of the evaluation loop, as hooks see it. BORROWED for the call. */
typedef struct tloop_eval_pass {
  uint32_t struct_size;
  const char* split;   /* "val" */
  const char* variant; /* "" for the plain pass, else a hook's variant ("ema") */
  const char* prefix;  /* its metrics' key prefix: "val", or "val_ema" for variant "ema" */
  int32_t sanity;      /* 1 in the sanity pass before the first step ([eval] sanity_batches):
                          nothing is logged, monitors ignore it */
  int32_t predict;     /* 1 under `tloop predict` */
  int64_t batches;     /* batches the pass runs; -1 when unknown */
} tloop_eval_pass;

/* A hook that offers this extension gets, around every evaluation pass:
 *   visit_variants    called once, before the first pass: more passes this
 *                     hook asks for, by name. Every split is then evaluated
 *                     once plainly and once per variant, the variant's
 *                     metrics under "<split>_<variant>/" (ema's
 *                     eval_with_ema = "both": "val_ema/accuracy").
 *   before_eval       before a pass. A hook that evaluates other weights
 *                     swaps them into the model here (ema) ...
 *   after_eval_batch  after each batch, `batch` counting from 1 (progress);
 *   after_eval        ... and back here, bit for bit. `metrics` hold the
 *                     pass's results with full keys ("val/accuracy").
 *                     Monitors (best checkpoints, early stopping) act on
 *                     them. Once every pass of an evaluation is done, all
 *                     their metrics are logged in one call (not those of
 *                     the sanity pass).
 * The evaluation runs in after_step, after the hooks of the update phase and
 * before those of the evaluate phase, when [eval] says it is due and always
 * at the last step; its events go to hooks in phase order.
 * Any member may be NULL. */
#define TLOOP_EVAL_EVENTS_ID "tloop.eval_events/1"
typedef struct tloop_eval_events_v1 {
  uint32_t struct_size;
  tloop_status (*visit_variants)(void* self, const tloop_context* ctx, tloop_name_visitor visit, void* user);
  tloop_status (*before_eval)(void* self, const tloop_context* ctx, const tloop_eval_pass* pass);
  tloop_status (*after_eval_batch)(void* self, const tloop_context* ctx, const tloop_eval_pass* pass, int64_t batch);
  tloop_status (*after_eval)(void* self, const tloop_context* ctx, const tloop_eval_pass* pass,
                             const tloop_metric* metrics, size_t count);
} tloop_eval_events_v1;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TLOOP_PLUGIN_H */
