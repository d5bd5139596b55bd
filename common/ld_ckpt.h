/* ld_ckpt: what every trainer's checkpoint holds, the training record its
 * model file carries, and how a trainer's run loop checkpoints, previews
 * and evaluates.
 *
 * Checkpoint contents (safetensors, written atomically by the writer):
 *   <prefix><tensor>  for each parameter set (weights, Adam m and v, EMA...)
 *                     and each tensor of the network's table (ld_cn_params_t)
 *   state.iteration   U64[1]   completed iterations
 *   state.adam_step   U64[1]   Adam's t
 *   state.rng_u64     U64[3]   the trajectory stream: seed, stream, counter
 *   state.rng_u32     U32[5]   its current block and words used
 *   <rows name>       F32[n, cols] tables of per-iteration values (history)
 *   __metadata__      format, version, iteration, data_items, settings
 * A trainer describes its checkpoints once (ld_ckpt_kind_t) and its state
 * as pointers into itself (ld_ckpt_parts_t); ld_ckpt_save, ld_ckpt_open
 * and ld_ckpt_load then write, open and read them, and ld_ckpt_model_meta
 * gives the metadata of its model file: provenance, "iterations" and then
 * the settings and more_meta's keys as its checkpoints hold them.
 * Loading checks every tensor's dtype and size and that the RNG state is
 * the run's own stream, so a checkpoint of another run or a damaged one is
 * LD_EFORMAT naming the file and the tensor.
 *
 * Run loop (ld_ckpt_run), per iteration:
 *   cancel set?   -> checkpoint, LD_ECANCELED
 *   step failed   -> its error (the last checkpoint is left as it is)
 *   step done     -> progress; evaluation, checkpoint, preview when due
 *   reached iters -> checkpoint, 0 */
#ifndef LD_CKPT_H
#define LD_CKPT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_adam.h"
#include "ld_convnet.h"
#include "ld_dataset.h"
#include "ld_rng.h"
#include "ld_safetensors.h"
#include "ld_settings.h"

/* ---- parameter sets ---- */

typedef struct {
    const char *prefix; /* "params.", "adam_m." ... */
    float *data;        /* laid out as the table */
} ld_ckpt_set_t;

/* Adds every tensor of every set (data borrowed until the write). */
int ld_ckpt_add_sets(ld_st_writer_t *w, const ld_cn_params_t *table, const ld_ckpt_set_t *sets, int n_sets);
/* Copies every tensor of every set out of the checkpoint, shapes checked. */
int ld_ckpt_load_sets(const ld_st_t *st, const ld_cn_params_t *table, const ld_ckpt_set_t *sets, int n_sets);

/* ---- scalar state ---- */

typedef struct {
    uint64_t iteration, adam_step, rng64[3];
    uint32_t rng32[5];
} ld_ckpt_state_t;

void ld_ckpt_state_get(ld_ckpt_state_t *s, int64_t iteration, const ld_adam_t *adam, const ld_rng_t *rng);
/* Adds the state.* tensors (s borrowed until the write). */
int ld_ckpt_add_state(ld_st_writer_t *w, const ld_ckpt_state_t *s);
/* Reads them back into iteration, adam's step and rng, checking that rng is
 * stream `stream` of `seed`. */
int ld_ckpt_load_state(const ld_st_t *st, uint64_t seed, uint64_t stream, int64_t *iteration, ld_adam_t *adam,
                       ld_rng_t *rng);

/* ---- tables of rows ---- */

typedef struct {
    float *v;        /* [cap, cols] */
    int64_t n, cap;  /* rows used, rows allocated */
    int cols;
} ld_ckpt_rows_t;

/* Room for at least `rows` rows. */
int ld_ckpt_rows_reserve(ld_ckpt_rows_t *r, int64_t rows);
/* Appends one row of r->cols values. */
int ld_ckpt_rows_append(ld_ckpt_rows_t *r, const float *row);
void ld_ckpt_rows_free(ld_ckpt_rows_t *r);
int ld_ckpt_add_rows(ld_st_writer_t *w, const char *name, const ld_ckpt_rows_t *r);
/* Loads the table `name` of n_rows rows of r->cols values. */
int ld_ckpt_load_rows(const ld_st_t *st, const char *name, int64_t n_rows, ld_ckpt_rows_t *r);

/* ---- files ---- */

/* The tensor `name`, checked to hold numel values of dtype dt. */
int ld_ckpt_tensor(const ld_st_t *st, const char *name, ld_dtype_t dt, size_t numel, const ld_st_tensor_t **out);
/* LD_EFORMAT unless the file's format is `format` ("not a <what>"),
 * LD_ENOTSUP unless its version is `version`. */
int ld_ckpt_check_format(const ld_st_t *st, const char *format, const char *version, const char *what);

/* ---- a trainer's checkpoints ---- */

#define LD_CKPT_MAX_SETS 4

/* What a trainer's checkpoints are. */
typedef struct {
    const char *format, *version;  /* metadata "format" and "version" */
    const char *what;              /* the file's kind in errors, e.g. "langdaug training checkpoint" */
    const ld_settings_t *settings; /* kept as "<prefix><key>" metadata */
    void (*defaults)(void *cfg);   /* what a resumed run's settings start from */
    uint64_t stream;               /* the trajectory's RNG stream of the seed */
} ld_ckpt_kind_t;

/* A trainer's checkpointed state, as pointers into the trainer. */
typedef struct {
    const ld_cn_params_t *table;   /* the network's tensors */
    ld_ckpt_set_t sets[LD_CKPT_MAX_SETS];
    int n_sets;
    int64_t *iteration;
    ld_adam_t *adam;
    ld_rng_t *rng;                 /* stream kind->stream of seed */
    uint64_t seed;
    ld_ckpt_rows_t *history;       /* "state.history": one row per iteration */
    ld_ckpt_rows_t *evals;         /* "state.eval": rows at increasing iterations (column 0), or NULL */
    const void *cfg;               /* the run's settings (the kind's table) */
    const ld_dataset_t *ds;        /* the run's data: "data_items" */
    /* metadata written after the settings (may be NULL), e.g. latent mode's autoencoder */
    int (*more_meta)(const void *trainer, ld_meta_t *meta);
    const void *trainer;
} ld_ckpt_parts_t;

/* Writes p's checkpoint to path: metadata format, version, iteration,
 * data_items (ld_traindata_fingerprint), the settings and more_meta's keys;
 * then the sets, the state, history and evals. */
int ld_ckpt_save(const char *path, const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p);
/* The metadata of p's model file, in this order: a copy of provenance (may
 * be NULL), the trainer's keys `before`, "iterations" (*p->iteration), its
 * keys `after`, then the settings and more_meta's keys as in checkpoints.
 * before and after are key, value, ..., NULL (may be NULL). Caller
 * destroys *out. */
int ld_ckpt_model_meta(const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p, const ld_meta_t *provenance,
                       const char *const *before, const char *const *after, ld_meta_t **out);
/* Opens a checkpoint of kind k (ld_ckpt_check_format) and fills cfg from
 * k's defaults, the checkpoint's settings and the overrides
 * (ld_settings_override). Caller closes *out. */
int ld_ckpt_open(const char *path, const ld_ckpt_kind_t *k, const ld_meta_t *overrides, void *cfg, ld_st_t **out);
/* Reads p's sets, state, history and evals back from st, and warns when
 * the data changed since (ld_traindata_warn_changed). */
int ld_ckpt_load(const ld_st_t *st, const ld_ckpt_kind_t *k, const ld_ckpt_parts_t *p);

/* ---- run loop ---- */

/* A trainer's run: its checkpoints (written by ld_ckpt_save) and what the
 * loop calls on obj. */
typedef struct {
    const ld_ckpt_kind_t *kind;
    int (*step)(void *obj, void *stats, const atomic_int *cancel); /* one iteration */
    int (*preview)(void *obj, const char *path);
    int (*evaluate)(void *obj);                                    /* may be NULL */
} ld_ckpt_ops_t;

typedef struct {
    int64_t iters;             /* stop after this many iterations in total */
    const char *checkpoint;    /* NULL = no checkpoints */
    int64_t checkpoint_every;  /* 0 = only at the end */
    const char *preview_dir;   /* NULL = no previews; files preview_<iteration>.png */
    int64_t preview_every;     /* 0 = none */
    int64_t evaluate_every;    /* 0 = none */
    void (*progress)(const void *stats, void *user);
    void *user;
    void *stats;               /* filled by each step, handed to progress */
    const atomic_int *cancel;
} ld_ckpt_run_opts_t;

/* Iterates obj, whose checkpointed state p is, until opts->iters (see the
 * table at the top). */
int ld_ckpt_run(const ld_ckpt_ops_t *ops, void *obj, const ld_ckpt_parts_t *p, const ld_ckpt_run_opts_t *opts);

#endif
