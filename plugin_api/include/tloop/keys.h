/*
 * tloop key names: the step-info keys and run-state keys that the host and
 * the built-in hooks write and that plugins read. One list, so that a reader
 * and a writer cannot drift apart. Part of the contract: within a major ABI
 * version a key is never renamed or given another meaning (new keys may come).
 * Plain C; the C++ SDK includes it.
 */
#ifndef TLOOP_KEYS_H
#define TLOOP_KEYS_H

/* ---------------------------------------------------------------- step info
 * Each key holds a list of doubles for the current step. */

/* Written by the host, one value per micro-step (data_time: per fetch). */
#define TLOOP_INFO_LOSS "loss"               /* the micro-step's loss */
#define TLOOP_INFO_LOSS_TERM "loss/"         /* + name: a named loss term (tloop.step_outputs/1) */
#define TLOOP_INFO_RECORD "records/"         /* + key: a task's record */
#define TLOOP_INFO_DATA_TIME "data_time"     /* seconds in next_batch, per fetch (retried attempts' too);
                                                the step's data time is their sum */
/* Written by the host, one value per step. */
#define TLOOP_INFO_STEP_TIME "step_time"     /* seconds, before_step to the scheduler */
#define TLOOP_INFO_GRAD_NORM "grad_norm"     /* before clipping; only with trainer.grad_clip */
#define TLOOP_INFO_RETRIES "retries"         /* attempts repeated for non-finite gradients */
#define TLOOP_INFO_LOSS_SCALE "loss_scale"   /* fp16: the grad scaler's scale used by the step */
#define TLOOP_INFO_LR "lr/"                  /* + param group: the learning rate the step used */
/* Written by the host, one value per step, when the task declares epochs (tloop.epochs/1). */
#define TLOOP_INFO_EPOCH "epoch"             /* epochs completed before the step began (0-based) */
#define TLOOP_INFO_EPOCH_END "epoch_end"     /* epochs completed during the step (1 at an epoch's end) */
/* Written by the host at a step that evaluated ([eval]): seconds the
 * evaluation took, not part of step_time. */
#define TLOOP_INFO_EVAL_TIME "eval_time"
/* Written by built-in hooks. */
#define TLOOP_INFO_MAX_MEMORY "max_memory"   /* cuda_max_memory: peak CUDA memory of the step, GiB */
#define TLOOP_INFO_MAX_RSS "max_rss"         /* cuda_max_memory on CPU: peak resident memory, GiB */
#define TLOOP_INFO_CHECKPOINT_STALL "checkpoint_stall"         /* checkpointing: seconds the loop waited */
#define TLOOP_INFO_CHECKPOINT_SAVE_TIME "checkpoint_save_time" /* checkpointing: seconds to write */
#define TLOOP_INFO_CHECKPOINT_WAIT "checkpoint_wait"           /* checkpointing: waiting for the last async save */

/* ---------------------------------------------------------------- run state
 * Keys of run_state_dict / run_load_state_dict (a checkpoint's contents). */
#define TLOOP_STATE_MODEL "model/"           /* + parameter or buffer name */
#define TLOOP_STATE_OPTIMIZER "optimizer/"   /* + group name + "/" + ... */
#define TLOOP_STATE_STEP "trainer/step"
#define TLOOP_STATE_BATCHES "trainer/batches" /* micro-batches drawn so far (tasks with epochs) */
#define TLOOP_STATE_GRAD_SCALER_SCALE "grad_scaler/scale"
#define TLOOP_STATE_GRAD_SCALER_GROWTH "grad_scaler/growth_tracker"
#define TLOOP_STATE_RNG_CPU "rng/cpu"
#define TLOOP_STATE_RNG_CUDA "rng/cuda"
#define TLOOP_STATE_TASK "task/"             /* + the task's own keys */
#define TLOOP_STATE_HOOKS "hooks/"           /* + a hook's state key + "/" + its own keys */
#define TLOOP_STATE_META_SPEC "meta/spec"
#define TLOOP_STATE_META_PLUGINS "meta/plugins"

#endif /* TLOOP_KEYS_H */
