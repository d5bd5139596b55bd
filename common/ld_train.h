/* ld_train: contrastive-divergence training of the conditional energy model.
 *
 * One iteration (ld_train_step), all randomness from the run's ld_rng_t:
 *   pick a source domain s and a target t != s (uniformly among the
 *   configured pairs when `pairs` lists some, else s uniform and t uniform
 *   among the others);
 *   x+ = n random crops of domain t (with masks), x- starts as n random crops
 *   of domain s and runs K Langevin steps toward t under the current weights
 *   (no gradient through the chain); with colour-space lab every crop is
 *   converted to scaled LAB (ld_colour.h) as it is drawn, so the model, the
 *   chains and the loss only ever see LAB;
 *   loss = mean E(x+,t) - mean E(x-,t) + alpha (mean E+^2 + mean E-^2),
 *   i.e. per-sample coefficients 1/n + 2 alpha E+/n and -1/n + 2 alpha E-/n
 *   for ld_ebm_backward_params (low energy = looks like domain t);
 *   Adam step; EMA of the weights (the EMA weights are what gets saved and
 *   served).
 * Latent mode (cfg.latent names an autoencoder file, ld_latent.h): the
 * model is the energy network on the autoencoder's latents (its image
 * channels = the latent channels, its side = size / factor); every crop is
 * encoded as it is drawn (in the autoencoder's colour space, which must be
 * cfg.data.colour_space; the crop side must be the autoencoder's size), masks
 * go to the latent grid (ld_latent_mask), chains move latents unclamped,
 * and the checkpoint and the model name the autoencoder by its SHA-256.
 * A non-finite value or an energy beyond max_energy stops the step with
 * LD_ENUMERIC and a detail naming the iteration; nothing is written then.
 *
 * Determinism: the state after N iterations is a pure function of the
 * trajectory keys of the configuration and the data (not of threads, not of
 * how often the run was checkpointed and resumed). A checkpoint (ld_ckpt.h:
 * tensor sets "params.", "ema.", "adam_m.", "adam_v.", the state.* scalars
 * of stream LD_TRAIN_STREAM_ITER, "state.history") holds the weights, Adam
 * moments and step, EMA weights, RNG stream, iteration and curve, and the
 * configuration in its metadata, so a resumed run continues bit-exactly.
 *
 * Settings: one table (ld_train_settings(), ld_settings.h) gives the
 * `langdaug train` long options, their help and checks, and the
 * checkpoint/model metadata keys "train.<key>".
 *
 * Run loop (ld_train_run): ld_ckpt_run's (checkpoints and previews when
 * due; a failed step writes nothing; cancel checkpoints and stops).
 * Previews: ld_trainpreview.h, from their own stream LD_TRAIN_STREAM_PREVIEW.
 *
 * Ownership: ld_train_t owns its dataset, models, optimiser and buffers. */
#ifndef LD_TRAIN_H
#define LD_TRAIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_ckpt.h"
#include "ld_ebm.h"
#include "ld_safetensors.h"
#include "ld_settings.h"
#include "ld_traindata.h"

#define LD_TRAIN_PATH_MAX LD_TRAINDATA_PATH_MAX
#define LD_TRAIN_STREAM_ITER 1
#define LD_TRAIN_STREAM_PREVIEW 2

typedef struct {
    ld_traindata_t data;                /* data, manifest, ..., colour space; data and manifest may change on
                                           resume; domains and channels resolved by ld_train_new */
    char pairs[LD_TRAIN_PATH_MAX];      /* "A:B,C:D" ordered source:target; "" = every ordered pair */
    /* model */
    int size;                           /* crop side S */
    int whole_images;                   /* 1: every crop is a whole image (ld_dataset_opts_t.fit = size) */
    char latent[LD_TRAIN_PATH_MAX];     /* latent mode: the autoencoder file (ld_latent.h), or "" for pixels;
                                           the path may change on resume, the file (its SHA-256) may not */
    char widths[256];                   /* "w0,...,wL" */
    /* optimisation */
    int batch;                          /* n positives and n negatives */
    ld_settings_adam_t adam;            /* lr, betas, eps */
    double alpha;                       /* energy regularisation */
    double ema;                         /* EMA decay in [0, 1); 0 = EMA equals the weights */
    /* negatives */
    int langevin_steps;                 /* K */
    double step_size, noise;            /* eta, sigma */
    uint64_t seed;
    /* not part of the trajectory */
    double max_energy;                  /* |E| beyond this is divergence */
    int threads;                        /* default: the CPUs online */
} ld_train_config_t;

/* The settings table (rows in a stable order, prefix "train."; threads is
 * not saved: files do not depend on it). */
const ld_settings_t *ld_train_settings(void);
void ld_train_config_defaults(ld_train_config_t *cfg);
/* ld_settings_set on the table: one key from text, e.g. ("lr", "1e-3"),
 * ("betas", "0.5,0.999"). */
int ld_train_config_set(ld_train_config_t *cfg, const char *key, const char *value);
/* Checks ranges and cross-field rules (exactly one of data/manifest...). */
int ld_train_config_validate(const ld_train_config_t *cfg);

typedef struct {
    int64_t iteration;        /* completed iterations, including this one */
    int source, target;
    double loss;              /* full loss including the regulariser */
    double e_pos, e_neg;      /* mean energies of x+ and x- (before the update) */
    double grad_norm;         /* L2 norm of the parameter gradient */
} ld_train_stats_t;

typedef struct ld_train_s ld_train_t;

/* Validates cfg, loads the data, builds and initialises the model (seeded).
 * Caller owns *out. */
int ld_train_new(const ld_train_config_t *cfg, ld_train_t **out);
/* Restores a run from a checkpoint. overrides (may be NULL) maps keys to
 * values as given on the command line: keys outside the trajectory (data,
 * manifest, threads, max-energy) replace the checkpoint's; a trajectory key
 * must equal the checkpoint's value or LD_EINVAL names it. */
int ld_train_resume(const char *checkpoint, const ld_meta_t *overrides, ld_train_t **out);
void ld_train_destroy(ld_train_t **self_p);

const ld_train_config_t *ld_train_config(const ld_train_t *self);
int64_t ld_train_iteration(const ld_train_t *self);
const ld_ebm_t *ld_train_model(const ld_train_t *self);   /* current weights */

/* One iteration. cancel (may be NULL) interrupts the Langevin chain: the
 * iteration is then undone (LD_ECANCELED, state as before the call). */
int ld_train_step(ld_train_t *self, ld_train_stats_t *stats, const atomic_int *cancel);

/* Atomic checkpoint of the whole state. */
int ld_train_save_checkpoint(ld_train_t *self, const char *path);
/* The EMA weights as a model file (ld_model_save) with the maskmap, the
 * iteration count and "train.<key>" metadata, plus the keys of provenance
 * (may be NULL; e.g. command, created). */
int ld_train_save_model(ld_train_t *self, const char *path, const ld_meta_t *provenance,
                        char hash_out[65]);

/* Writes the preview grid PNG of the EMA weights (ld_trainpreview.h):
 * fixed crops and noise of the run's preview stream, the trained pairs. */
int ld_train_preview(ld_train_t *self, const char *path);

/* The training curve: one row per completed iteration, columns
 * LD_TRAIN_HISTORY_COLS (loss, mean E+, mean E-). Kept in checkpoints. */
#define LD_TRAIN_HISTORY_COLS 3
const float *ld_train_history(const ld_train_t *self, int64_t *n_rows);

/* The run's options are ld_ckpt's: iters, checkpoint and checkpoint_every,
 * preview_dir and preview_every, cancel; progress (may be NULL) receives
 * the ld_train_stats_t that each step writes to stats (then required);
 * evaluate_every is not used. */
typedef ld_ckpt_run_opts_t ld_train_run_opts_t;

/* Iterates until opts->iters (ld_ckpt_run's loop). */
int ld_train_run(ld_train_t *self, const ld_train_run_opts_t *opts);

#endif
