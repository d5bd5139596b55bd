/* ld_aetrain: training the "aeconv" autoencoder (ld_ae.h) to reconstruct
 * crops of the source domains, with held-out evaluation.
 *
 * Data split: each domain's images are shuffled once by the seed (stream
 * LD_AETRAIN_STREAM_SPLIT) and the first max(1, round(val_fraction * n))
 * are held out for validation; training never draws a crop from them (a
 * domain needs at least one image left for training). Evaluation uses
 * eval_crops fixed crops per domain drawn from its validation images in
 * turn (stream LD_AETRAIN_STREAM_EVAL), the same crops all run long.
 *
 * One iteration (ld_aetrain_step), all randomness from the run's ld_rng_t:
 *   for each of the batch's n crops: a domain uniformly, one of its
 *   training images uniformly, a random crop of it (centre inside the FOV
 *   when there is one); with colour-space lab the crops are converted to
 *   scaled LAB, so the model and the loss only see LAB;
 *   y = decode(encode(x)); e = y - x over the N = n*C*S*S values;
 *   loss = mse * mean(e^2) + l1 * mean(|e|)
 *        + grad_diff * (mean_h |e(i,j+1) - e(i,j)| + mean_v |e(i+1,j) - e(i,j)|)
 *   (the gradient-difference term compares the images' finite differences,
 *   so thin structures such as vessels that a blurry reconstruction loses
 *   cost more than their few pixels; means over n*C*S*(S-1) pairs);
 *   dL/dy in closed form (sign(0) = 0), ld_ae_backward_params, Adam step.
 * A non-finite loss, gradient or weight stops the step with LD_ENUMERIC and
 * a detail naming the iteration; the run is then marked diverged and
 * nothing more is written from it (checkpoints, models and previews are
 * refused with LD_ESTATE).
 *
 * Evaluation (ld_aetrain_evaluate) per domain over its fixed held-out crops,
 * reconstructed by the current weights and compared in RGB (LAB models'
 * reconstructions converted back): PSNR of the pooled MSE (ld_quality.h,
 * range 2 on [-1, 1]) and the mean SSIM on luminance (BT.601 Y; grey data:
 * the grey plane), 11x11 Gaussian window, sigma 1.5.
 *
 * Determinism: the state after N iterations is a pure function of the
 * trajectory settings and the data (not of threads: the autoencoder's
 * results are bit-identical whatever the thread count; not of checkpoints,
 * previews or evaluations, which use their own streams). A checkpoint holds
 * the weights, Adam moments and step, RNG stream, iteration, the loss
 * history and the evaluations so far, and the settings in its metadata, so
 * a resumed run continues bit-exactly.
 *
 * Settings: one table (ld_aetrain.c) gives the `langdaug train-ae` long
 * options, their help, checks, and the "train_ae.<key>" metadata of
 * checkpoints and model files.
 *
 * Ownership: ld_aetrain_t owns its dataset, model, optimiser, workspace and
 * buffers. */
#ifndef LD_AETRAIN_H
#define LD_AETRAIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ld_ae.h"
#include "ld_ckpt.h"
#include "ld_settings.h"
#include "ld_traindata.h"

#define LD_AETRAIN_STREAM_ITER 1
#define LD_AETRAIN_STREAM_SPLIT 3
#define LD_AETRAIN_STREAM_EVAL 4
#define LD_AETRAIN_MAX_DOMAINS LD_EBM_MAX_DOMAINS
#define LD_AETRAIN_EVAL_COLS 3 /* per domain: PSNR, SSIM, vessel contrast ratio */

typedef struct {
    ld_traindata_t data;
    /* model */
    int size;                /* crop side S */
    char widths[256];        /* "w0,w1,w2" (factor 4) or 4 widths (factor 8) */
    int latent;              /* latent channels Z */
    /* held-out images */
    double val_fraction;     /* share of each domain's images held out */
    int eval_crops;          /* fixed crops per domain for evaluation */
    /* optimisation */
    int batch;
    ld_settings_adam_t adam; /* lr, betas, eps */
    double mse, l1, grad_diff; /* loss weights */
    uint64_t seed;
    /* not part of the trajectory */
    int threads;
} ld_aetrain_config_t;

/* The settings table (rows in a stable order, prefix "train_ae."). */
const ld_settings_t *ld_aetrain_settings(void);
void ld_aetrain_config_defaults(ld_aetrain_config_t *cfg);
/* Ranges and cross-field rules; LD_EINVAL/LD_ERANGE naming the option. */
int ld_aetrain_config_validate(const ld_aetrain_config_t *cfg);

/* Loss terms (unweighted means) and the weighted total. */
typedef struct {
    double loss, mse, l1, grad_diff;
} ld_aetrain_loss_t;

/* The loss of reconstruction y against x (n samples of [c,s,s]) under the
 * weights of cfg; grad_out (may be NULL) receives dL/dy. */
void ld_aetrain_loss(const ld_aetrain_config_t *cfg, int n, int c, int s, const float *x, const float *y,
                     ld_aetrain_loss_t *out, float *grad_out);

typedef struct {
    int64_t iteration;       /* completed iterations, including this one */
    ld_aetrain_loss_t loss;  /* of the batch, before the update */
    double grad_norm;        /* L2 norm of the parameter gradient */
} ld_aetrain_stats_t;

/* Per-iteration history kept in checkpoints: loss, mse, l1, grad_diff. */
#define LD_AETRAIN_HISTORY_COLS 4

typedef struct {
    int64_t iteration;
    int n_domains;
    double psnr[LD_AETRAIN_MAX_DOMAINS];
    double ssim[LD_AETRAIN_MAX_DOMAINS];
    double contrast[LD_AETRAIN_MAX_DOMAINS]; /* vessel contrast of the reconstructions / the originals' (1 = kept) */
} ld_aetrain_eval_t;

typedef struct ld_aetrain_s ld_aetrain_t;

/* Validates cfg, loads and splits the data, builds and initialises the
 * model (seeded). Caller owns *out. */
int ld_aetrain_new(const ld_aetrain_config_t *cfg, ld_aetrain_t **out);
/* Restores a run from a checkpoint; overrides as ld_settings_override
 * (data paths and threads may change, trajectory keys may not). */
int ld_aetrain_resume(const char *checkpoint, const ld_meta_t *overrides, ld_aetrain_t **out);
void ld_aetrain_destroy(ld_aetrain_t **self_p);

const ld_aetrain_config_t *ld_aetrain_config(const ld_aetrain_t *self);
int64_t ld_aetrain_iteration(const ld_aetrain_t *self);
const ld_ae_t *ld_aetrain_model(const ld_aetrain_t *self);
const ld_dataset_t *ld_aetrain_dataset(const ld_aetrain_t *self);
/* Held-out images of domain d (indices into the dataset's items). */
int ld_aetrain_n_val(const ld_aetrain_t *self, int d);
const int *ld_aetrain_val_items(const ld_aetrain_t *self, int d);
/* The last iteration's batch of crops ([batch, C,S,S], in the model's
 * colour space; overwritten by evaluations and previews). */
const float *ld_aetrain_batch(const ld_aetrain_t *self);
/* Rows of the loss history (LD_AETRAIN_HISTORY_COLS each). */
const float *ld_aetrain_history(const ld_aetrain_t *self, int64_t *n_rows);

/* One iteration (see above). */
int ld_aetrain_step(ld_aetrain_t *self, ld_aetrain_stats_t *stats);
/* Evaluates the current weights and records the result in the run's
 * evaluation history (once per iteration). */
int ld_aetrain_evaluate(ld_aetrain_t *self, ld_aetrain_eval_t *out);
/* The evaluations so far, oldest first. */
size_t ld_aetrain_n_evals(const ld_aetrain_t *self);
void ld_aetrain_eval_at(const ld_aetrain_t *self, size_t i, ld_aetrain_eval_t *out);

/* Atomic checkpoint of the whole state. */
int ld_aetrain_save_checkpoint(ld_aetrain_t *self, const char *path);
/* The weights as an autoencoder file (ld_ae_save) with "iterations", the
 * "train_ae.<key>" settings, "eval.<domain>.psnr" / ".ssim" when the last
 * evaluation is of the current weights, plus provenance (may be NULL). */
int ld_aetrain_save_model(ld_aetrain_t *self, const char *path, const ld_meta_t *provenance, char hash_out[65]);
/* A PNG grid: per domain a row of (original | reconstruction) pairs of its
 * first held-out crops, shown in RGB. */
int ld_aetrain_preview(ld_aetrain_t *self, const char *path);

typedef struct {
    int64_t iters;
    const char *checkpoint;    /* NULL = none */
    int64_t checkpoint_every;  /* 0 = only at the end */
    const char *preview_dir;   /* NULL = none */
    int64_t preview_every;
    int64_t eval_every;        /* 0 = none */
    void (*progress)(const ld_aetrain_stats_t *stats, void *user);
    void *user;
    const atomic_int *cancel;
} ld_aetrain_run_opts_t;

/* Iterates until opts->iters (ld_ckpt_run's loop). */
int ld_aetrain_run(ld_aetrain_t *self, const ld_aetrain_run_opts_t *opts);

#endif
