/* ld_train: contrastive-divergence training: settings, state, iteration,
 * checkpoints (in ld_ckpt's format) and the run (see ld_train.h).
 *
 * Invariants:
 *   - self->iteration iterations are fully applied to model, EMA, Adam, RNG
 *     and history (self->history.n == self->iteration); a step that fails
 *     leaves no partial iteration counted (after a divergence the weights
 *     may hold the bad update, which is why nothing is written from such a
 *     state);
 *   - every random number of the trajectory comes from self->rng (stream
 *     LD_TRAIN_STREAM_ITER of the seed); previews use their own stream and
 *     never touch it, so previews and checkpoints do not change the run;
 *   - in latent mode the crop buffers (crop, crop_mask: image space) and the
 *     model-input buffers (img, mask: the latent grid) are distinct; in pixel
 *     mode they are the same layout and crops go straight to img, mask. */
#include "ld_train.h"
#include "ld_adam.h"
#include "ld_ckpt.h"
#include "ld_colour.h"
#include "ld_dataset.h"
#include "ld_error.h"
#include "ld_langevin.h"
#include "ld_latent.h"
#include "ld_model.h"
#include "ld_rng.h"
#include "ld_threadpool.h"
#include "ld_trainpreview.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- settings ---------------------------------------------------------------- */

/* Rows in the order files have always listed them (pairs between the data
 * halves). */
#define F(f) LD_SETTING_FIELD(ld_train_config_t, f)
static const ld_setting_t rows[] = {
    LD_TRAINDATA_WHERE_ROWS(ld_train_config_t, data),
    { "pairs", LD_SET_STR, F(pairs), 0, 0, 1, NULL,
      "ordered source:target pairs to train for, e.g. A:B,B:A (default: every ordered pair)" },
    LD_TRAINDATA_HOW_ROWS(ld_train_config_t, data),
    { "size", LD_SET_INT, F(size), 1, LD_EBM_MAX_SIZE, 1, NULL, "crop side in working pixels" },
    { "whole-images", LD_SET_INT, F(whole_images), 0, 1, 1, NULL,
      "1: every crop is a whole image, cut to its FOV's box, longer side --size, centred and padded (not --scale)" },
    { "latent", LD_SET_STR, F(latent), 0, 0, 0, NULL,
      "autoencoder file (langdaug train-ae): train on its latents of the crops (latent mode)" },
    { "widths", LD_SET_STR, F(widths), 0, 0, 1, NULL, "network widths w0,...,wL (L blocks)" },
    { "batch", LD_SET_INT, F(batch), 1, 4096, 1, NULL, "positives (and negatives) per iteration" },
    LD_SETTINGS_ADAM_ROWS(ld_train_config_t, adam),
    { "alpha", LD_SET_DBL, F(alpha), 0, 1e6, 1, NULL, "energy regularisation weight" },
    { "ema", LD_SET_DBL, F(ema), 0, 1, 1, NULL, "EMA decay of the served weights (0: none)" },
    { "langevin-steps", LD_SET_INT, F(langevin_steps), 1, 100000, 1, NULL, "Langevin steps K for negatives" },
    { "step-size", LD_SET_DBL, F(step_size), 1e-12, 1e6, 1, NULL, "Langevin step size eta" },
    { "noise", LD_SET_DBL, F(noise), 0, 1e6, 1, NULL, "Langevin noise sigma" },
    { "seed", LD_SET_U64, F(seed), 0, 0, 1, NULL, "random seed" },
    { "max-energy", LD_SET_DBL, F(max_energy), 1e-3, 1e30, 0, NULL, "|E| beyond this counts as divergence" },
    { "threads", LD_SET_INT, F(threads), 1, 256, -1, NULL, "threads for every evaluation" },
};
#undef F

/* Keys added after checkpoints were first written, with the value a
 * checkpoint without them was trained with. */
static const ld_setting_added_t keys_added[] = {
    { "colour-space", "rgb" },
    { "pairs", "" },
    { "latent", "" },
    { "whole-images", "0" },
};

static const ld_settings_t settings = {
    .rows = rows,
    .n = sizeof rows / sizeof rows[0],
    .cfg_size = sizeof(ld_train_config_t),
    .what = "training setting",
    .prefix = "train.",
    .added = keys_added,
    .n_added = sizeof keys_added / sizeof keys_added[0],
};

const ld_settings_t *ld_train_settings(void)
{
    return &settings;
}

void ld_train_config_defaults(ld_train_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    ld_traindata_defaults(&cfg->data);
    cfg->size = 64;
    snprintf(cfg->widths, sizeof cfg->widths, "32,64,128");
    cfg->batch = 16;
    cfg->adam = (ld_settings_adam_t){ 1e-3, { 0.5, 0.999 }, 1e-8 };
    cfg->alpha = 0.1;
    cfg->ema = 0.999;
    cfg->langevin_steps = 40;
    cfg->step_size = 5;
    cfg->noise = 0.005;
    cfg->seed = 1;
    cfg->max_energy = 1e4;
    cfg->threads = ld_threadpool_default_threads(64);
}

int ld_train_config_set(ld_train_config_t *cfg, const char *key, const char *value)
{
    return ld_settings_set(&settings, cfg, key, value);
}

static void langevin_params(const ld_train_config_t *cfg, ld_langevin_params_t *p)
{
    memset(p, 0, sizeof *p);
    p->step_size = (float)cfg->step_size;
    p->noise = (float)cfg->noise;
    p->steps = cfg->langevin_steps;
}

int ld_train_config_validate(const ld_train_config_t *cfg)
{
    int rc = ld_traindata_validate(&cfg->data);
    if (rc)
        return rc;
    ld_ebm_arch_t arch;
    memset(&arch, 0, sizeof arch);
    rc = ld_ebm_arch_set_widths(&arch, cfg->widths);
    if (rc)
        return rc;
    if (cfg->size % (1 << arch.n_blocks) != 0)
        return ld_seterr(LD_ERANGE, "--size: %d is not a multiple of 2^%d (one halving per block of --widths %s)",
                         cfg->size, arch.n_blocks, cfg->widths);
    ld_adam_params_t ap;
    rc = ld_settings_adam_params(&cfg->adam, &ap);
    if (rc)
        return rc;
    if (!(cfg->ema < 1))
        return ld_seterr(LD_ERANGE, "--ema: %g must be below 1", cfg->ema);
    ld_langevin_params_t lp;
    langevin_params(cfg, &lp);
    return ld_langevin_validate(&lp);
}

/* ---- the training state --------------------------------------------------- */

struct ld_train_s {
    ld_train_config_t cfg;
    ld_dataset_t *ds;
    ld_ebm_arch_t arch;
    ld_ebm_pair_t pairs[LD_EBM_MAX_PAIRS]; /* cfg.pairs resolved; n_pairs = 0: every ordered pair */
    int n_pairs;
    ld_ebm_t *model, *ema;
    ld_adam_t *adam;
    ld_ebm_ws_t *ws;
    ld_ae_t *ae;               /* latent mode: the autoencoder (cfg.latent), else NULL */
    ld_ae_ws_t *ae_ws;
    char ae_hash[65];
    ld_rng_t rng;
    int64_t iteration;
    size_t numel;
    size_t img_len, mask_len;  /* floats / bytes per sample of the model's input (the latent in latent mode) */
    size_t crop_len, crop_mask_len; /* floats / bytes per dataset crop (= img_len, mask_len in pixel mode) */
    float *img;                /* [2n,C,S,S]: x+ then x- */
    uint8_t *mask;             /* [2n,S,S] */
    float *crop;               /* latent mode: [n,C,S,S] crops before encoding */
    uint8_t *crop_mask;        /* latent mode: [n,S,S] */
    int32_t *target;           /* [2n] */
    float *energy, *coef;      /* [2n] */
    uint64_t *chain;           /* [n] */
    float *grad;               /* [numel] */
    ld_ckpt_rows_t history;    /* LD_TRAIN_HISTORY_COLS a row */
};

void ld_train_destroy(ld_train_t **self_p)
{
    ld_train_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ld_dataset_destroy(&self->ds);
    ld_ebm_destroy(&self->model);
    ld_ebm_destroy(&self->ema);
    ld_adam_destroy(&self->adam);
    ld_ebm_ws_destroy(&self->ws);
    ld_ae_destroy(&self->ae);
    ld_ae_ws_destroy(&self->ae_ws);
    free(self->crop);
    free(self->crop_mask);
    free(self->img);
    free(self->mask);
    free(self->target);
    free(self->energy);
    free(self->coef);
    free(self->chain);
    free(self->grad);
    ld_ckpt_rows_free(&self->history);
    free(self);
    *self_p = NULL;
}

/* The data of cfg.data (at least 2 domains), whole images when asked. */
static int open_data(ld_train_t *self)
{
    const int size = self->cfg.size;
    return ld_traindata_open_fit(&self->cfg.data, 2, LD_EBM_MAX_DOMAINS, size, self->cfg.whole_images ? size : 0,
                                 &self->ds);
}

static int build_arch(ld_train_t *self)
{
    ld_ebm_arch_t *a = &self->arch;
    memset(a, 0, sizeof *a);
    const ld_ae_arch_t *ae = self->ae ? ld_ae_arch(self->ae) : NULL;
    a->image_channels = ae ? ae->latent_channels : self->cfg.data.channels;
    a->mask_classes = ld_dataset_n_classes(self->ds);
    a->size = ae ? ae->size / ae->factor : self->cfg.size;
    a->colour_space = self->cfg.data.colour_space;
    int rc = ld_ebm_arch_set_widths(a, self->cfg.widths);
    if (!rc)
        rc = ld_ebm_arch_set_domains(a, self->cfg.data.domains);
    if (!rc)
        rc = ld_ebm_arch_validate(a);
    if (rc && ae)
        return ld_seterr(rc, "the energy model on the latent (%d channels, side %d): %s", a->image_channels, a->size,
                         ld_errdetail());
    return rc;
}

/* Latent mode: the autoencoder of --latent, which must encode the crops
 * the data gives (channels, --size, --colour-space). */
static int open_autoencoder(ld_train_t *self)
{
    const ld_train_config_t *cfg = &self->cfg;
    if (!cfg->latent[0])
        return LD_OK;
    int rc = ld_ae_load(cfg->latent, &self->ae, NULL, self->ae_hash);
    if (rc)
        return ld_seterr(rc, "--latent: %s", ld_errdetail());
    const ld_ae_arch_t *a = ld_ae_arch(self->ae);
    if (a->image_channels != cfg->data.channels)
        return ld_seterr(LD_EINVAL, "--latent %s encodes %d-channel images; the data has %d channel(s)", cfg->latent,
                         a->image_channels, cfg->data.channels);
    if (a->size != cfg->size)
        return ld_seterr(LD_EINVAL, "--latent %s encodes %d px images; give --size %d (not %d)", cfg->latent,
                         a->size, a->size, cfg->size);
    if (a->colour_space != cfg->data.colour_space)
        return ld_seterr(LD_EINVAL, "--latent %s works in %s; give --colour-space %s", cfg->latent,
                         ld_colour_space_name(a->colour_space), ld_colour_space_name(a->colour_space));
    return ld_ae_ws_new(a, 2 * cfg->batch, cfg->threads, &self->ae_ws);
}

static int resolve_pairs(ld_train_t *self)
{
    if (ld_ebm_arch_parse_pairs(&self->arch, self->cfg.pairs, self->pairs, &self->n_pairs) != LD_OK)
        return ld_seterr(LD_EINVAL, "--pairs: %s", ld_errdetail());
    return LD_OK;
}

/* Whether iterations draw (s, t): a listed pair, or any s != t. */
static int alloc_buffers(ld_train_t *self)
{
    size_t n = (size_t)self->cfg.batch, s = (size_t)self->cfg.size, side = (size_t)self->arch.size;
    self->img_len = (size_t)self->arch.image_channels * side * side;
    self->mask_len = side * side;
    self->crop_len = (size_t)self->cfg.data.channels * s * s;
    self->crop_mask_len = s * s;
    if (self->ae && (!(self->crop = malloc(n * self->crop_len * sizeof *self->crop)) ||
                     !(self->crop_mask = malloc(n * self->crop_mask_len))))
        return ld_seterr(LD_ENOMEM, "training buffers: out of memory");
    self->img = malloc(2 * n * self->img_len * sizeof *self->img);
    self->mask = malloc(2 * n * self->mask_len);
    self->target = malloc(2 * n * sizeof *self->target);
    self->energy = malloc(2 * n * sizeof *self->energy);
    self->coef = malloc(2 * n * sizeof *self->coef);
    self->chain = malloc(n * sizeof *self->chain);
    self->grad = malloc(self->numel * sizeof *self->grad);
    if (!self->img || !self->mask || !self->target || !self->energy || !self->coef || !self->chain ||
        !self->grad)
        return ld_seterr(LD_ENOMEM, "training buffers: out of memory");
    return LD_OK;
}

/* Everything but the weights' values: data, architecture, zero models,
 * optimiser, workspace and buffers. */
static int train_setup(const ld_train_config_t *cfg, ld_train_t **out)
{
    *out = NULL;
    int rc = ld_train_config_validate(cfg);
    if (rc)
        return rc;
    ld_train_t *self = calloc(1, sizeof *self);
    if (!self)
        return ld_seterr(LD_ENOMEM, "training: out of memory");
    self->cfg = *cfg;
    self->history.cols = LD_TRAIN_HISTORY_COLS;
    ld_adam_params_t ap;
    ld_settings_adam_params(&cfg->adam, &ap); /* validated above */
    if ((rc = open_data(self)) || (rc = open_autoencoder(self)) || (rc = build_arch(self)) ||
        (rc = resolve_pairs(self)) ||
        (rc = ld_ebm_new(&self->arch, &self->model)) || (rc = ld_ebm_new(&self->arch, &self->ema)))
        goto fail;
    self->numel = ld_ebm_numel(self->model);
    if ((rc = ld_adam_new(self->numel, &ap, &self->adam)) ||
        (rc = ld_ebm_ws_new(&self->arch, 2 * cfg->batch, cfg->threads, &self->ws)) ||
        (rc = alloc_buffers(self)))
        goto fail;
    ld_rng_init(&self->rng, cfg->seed, LD_TRAIN_STREAM_ITER);
    *out = self;
    return LD_OK;
fail:
    ld_train_destroy(&self);
    return rc;
}

int ld_train_new(const ld_train_config_t *cfg, ld_train_t **out)
{
    int rc = train_setup(cfg, out);
    if (rc)
        return rc;
    ld_train_t *self = *out;
    ld_ebm_init_random(self->model, cfg->seed);
    memcpy(ld_ebm_params(self->ema), ld_ebm_params_const(self->model), self->numel * sizeof(float));
    return LD_OK;
}

const ld_train_config_t *ld_train_config(const ld_train_t *self)
{
    return &self->cfg;
}

int64_t ld_train_iteration(const ld_train_t *self)
{
    return self->iteration;
}

const ld_ebm_t *ld_train_model(const ld_train_t *self)
{
    return self->model;
}

const float *ld_train_history(const ld_train_t *self, int64_t *n_rows)
{
    *n_rows = self->history.n;
    return self->history.v;
}

/* ---- one iteration ---------------------------------------------------------- */

static int diverged(int64_t iteration, const char *what)
{
    return ld_seterr(LD_ENUMERIC,
                     "training diverged at iteration %" PRId64 ": %s; the last checkpoint is kept "
                     "(lower --lr or --step-size, or raise --alpha)",
                     iteration, what);
}

/* n random crops of domain d into samples [first, first+n), in the model's
 * colour space; in latent mode drawn into the crop buffers, then encoded
 * with their masks taken to the latent grid. */
static int draw_crops(ld_train_t *self, int domain, int first, int n)
{
    float *img = self->ae ? self->crop : self->img + (size_t)first * self->img_len;
    uint8_t *mask = self->ae ? self->crop_mask : self->mask + (size_t)first * self->mask_len;
    for (int i = 0; i < n; i++) {
        ld_crop_t crop;
        float *x = img + (size_t)i * self->crop_len;
        int rc = ld_dataset_random_crop(self->ds, domain, -1, self->cfg.size, &self->rng, &crop);
        if (!rc)
            rc = ld_dataset_extract(self->ds, &crop, x, mask + (size_t)i * self->crop_mask_len);
        if (rc)
            return rc;
        if (!self->ae && self->cfg.data.colour_space == LD_COLOUR_LAB)
            ld_colour_rgb_to_lab(x, x, self->crop_mask_len);
    }
    if (!self->ae)
        return LD_OK;
    ld_latent_mask(ld_ae_arch(self->ae), n, mask, self->mask + (size_t)first * self->mask_len);
    return ld_latent_encode_rgb(self->ae, self->ae_ws, n, img, img, self->img + (size_t)first * self->img_len);
}

/* Negatives: crops of s walked toward t under the current weights. */
static int make_negatives(ld_train_t *self, int n, const atomic_int *cancel)
{
    ld_langevin_params_t lp;
    langevin_params(&self->cfg, &lp);
    lp.seed = ld_rng_u64(&self->rng);
    lp.unbounded = self->ae != NULL;
    for (int i = 0; i < n; i++)
        self->chain[i] = (uint64_t)i;
    return ld_langevin_run(self->model, self->ws, &lp, n, self->img + (size_t)n * self->img_len,
                           self->mask + (size_t)n * self->mask_len, self->target + n, self->chain, NULL,
                           NULL, cancel);
}

/* Energies of x+ and x-, their checks, the loss and the per-sample
 * coefficients of its gradient. */
static int energies_and_coefs(ld_train_t *self, int n, int64_t it, ld_train_stats_t *st)
{
    int rc = ld_ebm_energy(self->model, self->ws, 2 * n, self->img, self->mask, self->target, self->energy,
                           NULL);
    if (rc)
        return rc;
    double sum_pos = 0, sum_neg = 0, sq_pos = 0, sq_neg = 0;
    for (int i = 0; i < 2 * n; i++) {
        double e = self->energy[i];
        if (!isfinite(e) || fabs(e) > self->cfg.max_energy) {
            char what[160];
            snprintf(what, sizeof what, "energy %g of a %s sample exceeds --max-energy %g", e,
                     i < n ? "positive" : "negative", self->cfg.max_energy);
            return diverged(it, what);
        }
        if (i < n) {
            sum_pos += e;
            sq_pos += e * e;
        } else {
            sum_neg += e;
            sq_neg += e * e;
        }
    }
    const double alpha = self->cfg.alpha;
    st->e_pos = sum_pos / n;
    st->e_neg = sum_neg / n;
    st->loss = st->e_pos - st->e_neg + alpha * (sq_pos / n + sq_neg / n);
    for (int i = 0; i < 2 * n; i++)
        self->coef[i] = (float)(((i < n) ? 1.0 : -1.0) / n + 2.0 * alpha * self->energy[i] / n);
    return LD_OK;
}

static int update_weights(ld_train_t *self, int n, int64_t it, ld_train_stats_t *st)
{
    memset(self->grad, 0, self->numel * sizeof *self->grad);
    int rc = ld_ebm_backward_params(self->model, self->ws, 2 * n, self->img, self->mask, self->target,
                                    self->coef, NULL, self->grad);
    if (rc)
        return rc;
    float *p = ld_ebm_params(self->model);
    if (ld_adam_step_checked(self->adam, p, self->grad, &st->grad_norm))
        return diverged(it, ld_errdetail());
    /* EMA warm-up as in TensorFlow's ExponentialMovingAverage(num_updates):
     * early averages do not drag the random initialisation along. */
    double warm = (1.0 + (double)it) / (10.0 + (double)it);
    double decay = self->cfg.ema < warm ? self->cfg.ema : warm;
    ld_ema_update(ld_ebm_params(self->ema), p, self->numel, decay);
    return LD_OK;
}

int ld_train_step(ld_train_t *self, ld_train_stats_t *stats, const atomic_int *cancel)
{
    const ld_rng_t saved = self->rng;
    const int n = self->cfg.batch, d_count = self->arch.n_domains;
    const int64_t it = self->iteration + 1;
    ld_train_stats_t st;
    memset(&st, 0, sizeof st);
    st.iteration = it;
    if (self->n_pairs) {
        const ld_ebm_pair_t *p = &self->pairs[ld_rng_below(&self->rng, (uint32_t)self->n_pairs)];
        st.source = p->source;
        st.target = p->target;
    } else {
        st.source = (int)ld_rng_below(&self->rng, (uint32_t)d_count);
        st.target = (int)ld_rng_below(&self->rng, (uint32_t)d_count - 1);
        st.target += st.target >= st.source;
    }
    int rc = ld_ckpt_rows_reserve(&self->history, it);
    if (!rc)
        rc = draw_crops(self, st.target, 0, n);
    if (!rc)
        rc = draw_crops(self, st.source, n, n);
    if (rc)
        goto undo;
    for (int i = 0; i < 2 * n; i++)
        self->target[i] = st.target;
    rc = make_negatives(self, n, cancel);
    if (rc == LD_ENUMERIC) {
        char what[600];
        snprintf(what, sizeof what, "Langevin chain toward %s: %s", self->arch.domains[st.target],
                 ld_errdetail());
        return diverged(it, what);
    }
    if (rc)
        goto undo;
    if ((rc = energies_and_coefs(self, n, it, &st)) || (rc = update_weights(self, n, it, &st)))
        return rc;
    const float row[LD_TRAIN_HISTORY_COLS] = { (float)st.loss, (float)st.e_pos, (float)st.e_neg };
    ld_ckpt_rows_append(&self->history, row); /* room reserved above */
    self->iteration = it;
    if (stats)
        *stats = st;
    return LD_OK;
undo:
    self->rng = saved;
    return rc;
}

/* ---- checkpoints ---------------------------------------------------------------- */

static void config_defaults(void *cfg)
{
    ld_train_config_defaults(cfg);
}

static const ld_ckpt_kind_t kind = {
    .format = "langdaug-train-checkpoint",
    .version = "1",
    .what = "langdaug training checkpoint",
    .settings = &settings,
    .defaults = config_defaults,
    .stream = LD_TRAIN_STREAM_ITER,
};

/* Latent mode: the autoencoder's name and SHA-256, which checkpoints and
 * model files record after the settings. */
static int latent_meta(const void *trainer, ld_meta_t *meta)
{
    const ld_train_t *self = trainer;
    return self->ae ? ld_latent_set_meta(meta, self->cfg.latent, self->ae_hash) : LD_OK;
}

static void ckpt_parts(ld_train_t *self, ld_ckpt_parts_t *p)
{
    *p = (ld_ckpt_parts_t){
        .table = ld_ebm_parameters_const(self->model),
        .sets = { { "params.", ld_ebm_params(self->model) }, { "ema.", ld_ebm_params(self->ema) },
                  { "adam_m.", ld_adam_m(self->adam) }, { "adam_v.", ld_adam_v(self->adam) } },
        .n_sets = 4,
        .iteration = &self->iteration,
        .adam = self->adam,
        .rng = &self->rng,
        .seed = self->cfg.seed,
        .history = &self->history,
        .cfg = &self->cfg,
        .ds = self->ds,
        .more_meta = latent_meta,
        .trainer = self,
    };
}

int ld_train_save_checkpoint(ld_train_t *self, const char *path)
{
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    return ld_ckpt_save(path, &kind, &p);
}

/* A resumed latent run goes on with the very autoencoder it started with. */
static int same_autoencoder(const ld_train_t *self, const ld_st_t *st)
{
    const char *was = ld_meta_get(ld_st_meta(st), LD_LATENT_META_HASH);
    if (!was && !self->ae)
        return LD_OK;
    if (!was || !self->ae)
        return ld_seterr(LD_EINVAL, "%s: the checkpoint is of a %s run; --latent cannot be %s on resume",
                         ld_st_path(st), was ? "latent" : "pixel", was ? "dropped" : "added");
    if (strcmp(was, self->ae_hash) != 0)
        return ld_seterr(LD_EINVAL, "--latent %s has SHA-256 %.12s..., the checkpoint's run used %.12s...",
                         self->cfg.latent, self->ae_hash, was);
    return LD_OK;
}

static int load_checkpoint(ld_train_t *self, const ld_st_t *st)
{
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    int rc = same_autoencoder(self, st);
    return rc ? rc : ld_ckpt_load(st, &kind, &p);
}

int ld_train_resume(const char *checkpoint, const ld_meta_t *overrides, ld_train_t **out)
{
    *out = NULL;
    ld_st_t *st = NULL;
    ld_train_config_t cfg;
    int rc = ld_ckpt_open(checkpoint, &kind, overrides, &cfg, &st);
    if (!rc)
        rc = train_setup(&cfg, out);
    if (!rc && (rc = load_checkpoint(*out, st)))
        ld_train_destroy(out);
    ld_st_close(&st);
    return rc;
}

/* ---- model file --------------------------------------------------------------- */

int ld_train_save_model(ld_train_t *self, const char *path, const ld_meta_t *provenance, char hash_out[65])
{
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, self->cfg.seed);
    const char *const before[] = { "maskmap", self->cfg.data.maskmap, NULL }, *const after[] = { "seed", seed, NULL };
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    ld_meta_t *meta = NULL;
    int rc = ld_ckpt_model_meta(&kind, &p, provenance, before, after, &meta);
    if (!rc)
        rc = ld_model_save(path, self->ema, meta, hash_out);
    ld_meta_destroy(&meta);
    return rc;
}

/* ---- preview --------------------------------------------------------------------- */

int ld_train_preview(ld_train_t *self, const char *path)
{
    ld_langevin_params_t lp;
    langevin_params(&self->cfg, &lp);
    const ld_trainpreview_t p = {
        .model = self->ema,
        .ws = self->ws,
        .ae = self->ae,
        .ae_ws = self->ae_ws,
        .ds = self->ds,
        .size = self->cfg.size,
        .lp = &lp,
        .pairs = self->pairs,
        .n_pairs = self->n_pairs,
    };
    ld_rng_t rng;
    ld_rng_init(&rng, self->cfg.seed, LD_TRAIN_STREAM_PREVIEW);
    return ld_trainpreview_write(&p, &rng, path);
}

/* ---- run loop --------------------------------------------------------------------- */

static int op_step(void *obj, void *stats, const atomic_int *cancel)
{
    return ld_train_step(obj, stats, cancel);
}

static int op_preview(void *obj, const char *path)
{
    return ld_train_preview(obj, path);
}

int ld_train_run(ld_train_t *self, const ld_train_run_opts_t *opts)
{
    static const ld_ckpt_ops_t ops = { &kind, op_step, op_preview, NULL };
    ld_ckpt_parts_t p;
    ckpt_parts(self, &p);
    return ld_ckpt_run(&ops, self, &p, opts);
}
